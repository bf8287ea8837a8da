//! Parity with Hugging Face transformers (`LlamaForCausalLM`, eager attention, f32): logits, loss,
//! every parameter gradient, the parameters after each of the AdamW steps, and the learning-rate
//! schedule, against a fixture written by `../shared/fixtures/make_fixture.py`.
//!
//! The fixture directories: `TINYLLAMA_HF_FIXTURE`, or else `tests/fixtures/hf-tiny` (vendored) and
//! `../shared/fixtures/hf-tiny`;
//! `TINYLLAMA_HF_FIXTURE=DIR cargo test --release hf_parity` runs these checks on any such directory.

mod common;

use serde_json::Value;
use std::path::PathBuf;
use tinyllama::checkpoint::hf::load_hf;
use tinyllama::checkpoint::safetensors::SafeTensorsFile;
use tinyllama::model::{Llama, Workspace};
use tinyllama::train::{clip_grad_norm, AdamW, AdamWConfig, CosineSchedule};

// Tolerances (max |ours − theirs| / max |theirs| per tensor). Measured on the shared fixture and on
// three more from make_fixture.py (6 heads / 1 KV head, θ 5e5, ε 1e-6, seq 13; MHA seq 31; GQA 4:1
// seq 70): logits ≤ 1.5e-6, loss ≤ 1e-7, gradients ≤ 2.3e-6, loss and grad norm along the steps
// ≤ 4.8e-5 (the 70-token fixture at lr 1e-2); AdamW on torch's own gradient within 1e-6; weights: below.
const TOL_LOGITS: f64 = 1e-5;
const TOL_LOSS: f64 = 1e-5;
const TOL_GRAD: f64 = 1e-4;
const TOL_STEP: f64 = 1e-4; // loss and grad norm after AdamW steps (the weights drift: see below)
                            // Parameters after AdamW steps. AdamW moves a weight by about lr · m / (sqrt(v) + ε): where the
                            // (running) gradient is ~0 that is a ratio of two tiny numbers, and a last-bit difference in the
                            // gradient (ours and torch's sums run in different orders) can flip its sign — seen on a fixture:
                            // g = 1.9e-8 against torch's −6.7e-9 (max |g| 0.04), and the weight moved by lr the other way.
                            // So: (1) AdamW itself, fed torch's own step-1 gradient, must reproduce torch's step-1 weights to
                            // 1e-6; (2) along the trajectory, all but a few weights per thousand agree to 1e-4 of the tensor's
                            // largest, and none differs by more than AdamW's largest possible move (2 lr per step).
const TOL_PARAMS: f64 = 1e-4;
const TOL_ADAMW_ON_TORCH_GRADS: f64 = 1e-6;
const MAX_ILL_CONDITIONED: f64 = 5e-3;

struct Fixture {
    dir: PathBuf,
    meta: Value,
    tensors: SafeTensorsFile,
    model: Llama,
    batch: usize,
    seq: usize,
    tokens: Vec<u32>,
    targets: Vec<u32>,
}

/// The fixtures to check: `TINYLLAMA_HF_FIXTURE` alone when set; otherwise the copy vendored in
/// `tests/fixtures/hf-tiny` (step-1 weights only, for size) and the whole one in `../shared`.
fn fixtures() -> Vec<Fixture> {
    let dirs: Vec<PathBuf> = match std::env::var("TINYLLAMA_HF_FIXTURE") {
        Ok(d) => vec![d.into()],
        Err(_) => {
            let shared = PathBuf::from("../shared/fixtures/hf-tiny");
            let mut v = vec![PathBuf::from("tests/fixtures/hf-tiny")];
            if common::require("HF parity on ../shared's fixture", &shared.join("fixture.safetensors")).is_some() {
                v.push(shared);
            }
            v
        }
    };
    dirs.into_iter().map(fixture).collect()
}

fn fixture(dir: PathBuf) -> Fixture {
    assert!(dir.join("fixture.safetensors").exists(), "no fixture at {} (set TINYLLAMA_HF_FIXTURE)", dir.display());
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("fixture.json")).unwrap()).unwrap();
    let tensors = SafeTensorsFile::open(&dir.join("fixture.safetensors")).unwrap();
    let model = load_hf(&dir.join("model")).unwrap();
    let (ids, shape) = tensors.read_i64("input_ids").unwrap();
    let (tg, _) = tensors.read_i64("targets").unwrap();
    Fixture {
        dir,
        meta,
        model,
        batch: shape[0],
        seq: shape[1],
        tokens: ids.iter().map(|&x| x as u32).collect(),
        targets: tg.iter().map(|&x| x as u32).collect(),
        tensors,
    }
}

/// max |a − b| / max |b|
fn rel_err(ours: &[f32], theirs: &[f32]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    let scale = theirs.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs())).max(1e-30);
    ours.iter().zip(theirs).fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs())) / scale
}

#[test]
fn hf_parity_logits_and_loss() {
    for fx in fixtures() {
        logits_and_loss(fx);
    }
}

fn logits_and_loss(fx: Fixture) {
    let mut ws = Workspace::new(&fx.model.cfg, fx.batch, fx.seq);
    let logits = fx.model.forward_logits(&mut ws, &fx.tokens).unwrap();
    let (want, _) = fx.tensors.read_f32("logits").unwrap();
    let e = rel_err(&logits, &want);
    eprintln!("{}: logits relative error {e:.2e}", fx.dir.display());
    assert!(e <= TOL_LOGITS, "logits relative error {e:.2e} > {TOL_LOGITS:e}");
    let loss = fx.model.forward_loss(&mut ws, &fx.tokens, &fx.targets).unwrap();
    let want_loss = fx.tensors.read_f32("loss").unwrap().0[0] as f64;
    let e = (loss - want_loss).abs() / want_loss.abs();
    eprintln!("loss {loss} vs {want_loss}: relative error {e:.2e}");
    assert!(e <= TOL_LOSS);
}

#[test]
fn hf_parity_gradients() {
    for fx in fixtures() {
        gradients(fx);
    }
}

fn gradients(fx: Fixture) {
    let mut ws = Workspace::new(&fx.model.cfg, fx.batch, fx.seq);
    let mut grads = vec![0.0; fx.model.layout.total];
    let n = (fx.batch * fx.seq) as f32;
    fx.model.forward_backward(&mut ws, &mut grads, &fx.tokens, &fx.targets, 1.0 / n).unwrap();
    let mut worst = (0.0, String::new());
    for t in fx.model.layout.hf_tensors(&fx.model.cfg) {
        let (want, _) = fx.tensors.read_f32(&format!("grad.{}", t.name)).unwrap();
        let e = rel_err(&grads[t.range.clone()], &want);
        assert!(e <= TOL_GRAD, "gradient of {}: relative error {e:.2e} > {TOL_GRAD:e}", t.name);
        if e > worst.0 {
            worst = (e, t.name.clone());
        }
    }
    eprintln!("gradients: worst relative error {:.2e} ({})", worst.0, worst.1);
}

#[test]
fn hf_parity_adamw_steps_and_schedule() {
    for fx in fixtures() {
        adamw_steps_and_schedule(fx);
    }
}

fn adamw_steps_and_schedule(mut fx: Fixture) {
    let sched_meta = &fx.meta["schedule"];
    let sched = CosineSchedule {
        max_lr: sched_meta["max_lr"].as_f64().unwrap(),
        min_lr: sched_meta["min_lr"].as_f64().unwrap(),
        warmup_iters: sched_meta["warmup"].as_u64().unwrap(),
        decay_iters: sched_meta["decay"].as_u64().unwrap(),
    };
    for (it, lr) in sched_meta["samples"].as_object().unwrap() {
        let it: u64 = it.parse().unwrap();
        let lr = lr.as_f64().unwrap();
        assert!((sched.lr(it) - lr).abs() <= 1e-12 * lr.max(1e-3), "lr({it}) = {} vs {lr}", sched.lr(it));
    }
    let opt = &fx.meta["optimizer"];
    let betas = opt["betas"].as_array().unwrap();
    let cfg = AdamWConfig {
        beta1: betas[0].as_f64().unwrap(),
        beta2: betas[1].as_f64().unwrap(),
        eps: opt["eps"].as_f64().unwrap(),
        weight_decay: opt["weight_decay"].as_f64().unwrap(),
    };
    let clip = opt["grad_clip_global_norm"].as_f64().unwrap();
    let mut adam = AdamW::new(fx.model.layout.total, cfg);
    let mut ws = Workspace::new(&fx.model.cfg, fx.batch, fx.seq);
    let mut grads = vec![0.0; fx.model.layout.total];
    let n = (fx.batch * fx.seq) as f32;
    let tensors = fx.model.layout.hf_tensors(&fx.model.cfg);
    let mut lr_sum = 0.0f64;
    for (k, step) in fx.meta["steps"].as_array().unwrap().iter().enumerate() {
        let it = step["iteration"].as_u64().unwrap();
        grads.fill(0.0);
        let loss = fx.model.forward_backward(&mut ws, &mut grads, &fx.tokens, &fx.targets, 1.0 / n).unwrap();
        let want_loss = step["loss"].as_f64().unwrap();
        let e_loss = (loss - want_loss).abs() / want_loss;
        let norm = clip_grad_norm(&mut grads, clip);
        let want_norm = step["grad_norm_before_clip"].as_f64().unwrap();
        let e_norm = (norm - want_norm).abs() / want_norm;
        assert!(
            e_loss <= TOL_STEP && e_norm <= TOL_STEP,
            "step {it}: loss {loss} vs {want_loss}, grad norm {norm} vs {want_norm}"
        );
        let lr = sched.lr(it);
        assert!((lr - step["lr"].as_f64().unwrap()).abs() < 1e-12);
        let before = fx.model.params.clone();
        adam.update(&mut fx.model.params, &grads, lr);
        lr_sum += lr;
        if k == 0 {
            // AdamW and clipping alone, on torch's gradient
            let mut g_ref = vec![0.0f32; grads.len()];
            for t in &tensors {
                fx.tensors.read_f32_into(&format!("grad.{}", t.name), &mut g_ref[t.range.clone()]).unwrap();
            }
            let mut p = before.clone();
            let mut a = AdamW::new(p.len(), adam.cfg.clone());
            clip_grad_norm(&mut g_ref, clip);
            a.update(&mut p, &g_ref, lr);
            for t in &tensors {
                let (want, _) = fx.tensors.read_f32(&format!("step1.{}", t.name)).unwrap();
                let e = rel_err(&p[t.range.clone()], &want);
                assert!(e <= TOL_ADAMW_ON_TORCH_GRADS, "AdamW on torch's gradient: {} relative error {e:.2e}", t.name);
            }
        }
        let (mut worst_frac, mut worst_abs) = (0.0f64, 0.0f64);
        if !fx.tensors.tensors.keys().any(|n| n.starts_with(&format!("step{}.", k + 1))) {
            eprintln!("step {}: loss and grad norm checked; the fixture holds no weights of this step", k + 1);
            continue;
        }
        for t in &tensors {
            let (want, _) = fx.tensors.read_f32(&format!("step{}.{}", k + 1, t.name)).unwrap();
            let ours = &fx.model.params[t.range.clone()];
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
            let mut off = 0usize;
            for (i, (&o, &w)) in ours.iter().zip(&want).enumerate() {
                let d = (o - w).abs() as f64;
                off += (d > TOL_PARAMS * scale) as usize;
                worst_abs = worst_abs.max(d);
                assert!(d <= 2.0 * lr_sum, "step {}: {}[{i}] is {d} from torch's, beyond 2 Σ lr", k + 1, t.name);
            }
            let frac = off as f64 / want.len() as f64;
            assert!(
                frac <= MAX_ILL_CONDITIONED,
                "step {}: {} has {:.2}% of weights beyond {TOL_PARAMS:e} relative",
                k + 1,
                t.name,
                100.0 * frac
            );
            worst_frac = worst_frac.max(frac);
        }
        eprintln!(
            "step {}: loss rel err {e_loss:.2e}, grad-norm rel err {e_norm:.2e}; weights beyond 1e-4: at most \
             {:.3}% of a tensor, largest difference {worst_abs:.1e} (lr {lr:.1e})",
            k + 1,
            100.0 * worst_frac
        );
    }
}
