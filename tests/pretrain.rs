//! The pretraining run: bit-exact resume, export to Hugging Face layout, the NaN guard, and
//! refusals. A small model on the built-in corpus.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use tinyllama::checkpoint::hf::load_hf;
use tinyllama::checkpoint::safetensors::Dtype;
use tinyllama::dist::SingleProcess;
use tinyllama::train::checkpoint::{export_hf, list_checkpoints};
use tinyllama::train::config::TrainConfig;
use tinyllama::train::pretrain::{pretrain, Resume};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tinyllama-pt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 2-layer, d=32 model over the Llama-2 vocabulary.
fn small_model_config(dir: &Path) -> PathBuf {
    let mut c = tinyllama::config::LlamaConfig::preset("tiny-10m").unwrap();
    c.hidden_size = 32;
    c.intermediate_size = 64;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 1;
    c.head_dim = 16;
    c.max_position_embeddings = 64;
    let p = dir.join("config.json");
    std::fs::write(&p, serde_json::to_string(&c.to_hf_json()).unwrap()).unwrap();
    p
}

fn config(dir: &Path, max_steps: u64) -> TrainConfig {
    std::fs::create_dir_all(dir).unwrap();
    TrainConfig {
        model_config: Some(small_model_config(dir)),
        out: dir.join("run"),
        seq_len: 32,
        micro_batch: 2,
        global_batch_tokens: Some(2 * 32 * 2), // two micro-batches accumulated
        max_steps,
        max_lr: 3e-3,
        warmup_steps: Some(2),
        decay_steps: Some(6),
        eval_interval: 3,
        eval_batches: 2,
        save_interval: 3,
        ..Default::default()
    }
}

#[test]
fn resume_is_bit_identical() {
    let no_stop = AtomicBool::new(false);
    let d = tmpdir("resume");
    let straight = pretrain(&config(&d.join("a"), 6), Resume::No, &no_stop, false, &SingleProcess).unwrap();
    assert_eq!(straight.losses.len(), 6);
    let b = d.join("b");
    let first = pretrain(&config(&b, 3), Resume::No, &no_stop, false, &SingleProcess).unwrap();
    let second = pretrain(&config(&b, 6), Resume::Latest, &no_stop, false, &SingleProcess).unwrap();
    let joined: Vec<u64> = first.losses.iter().chain(&second.losses).map(|l| l.to_bits()).collect();
    let want: Vec<u64> = straight.losses.iter().map(|l| l.to_bits()).collect();
    assert_eq!(joined, want, "losses of 3 + resume + 3 differ from 6 straight");
    assert!(
        second.final_params.iter().zip(&straight.final_params).all(|(a, b)| a.to_bits() == b.to_bits()),
        "final weights differ"
    );
    assert_eq!(second.val_loss.unwrap().to_bits(), straight.val_loss.unwrap().to_bits());
    // metrics: one row per step (6) plus two validation rows, with no duplicate after resume
    let rows = std::fs::read_to_string(b.join("run/metrics.jsonl")).unwrap();
    assert_eq!(rows.lines().filter(|l| l.contains("\"loss\"")).count(), 6);
    assert_eq!(rows.lines().filter(|l| l.contains("val_loss")).count(), 2);
    assert!(b.join("run/loss.svg").exists() && b.join("run/train_config.json").exists());
    // keep_last = 2 leaves steps 3 and 6
    let steps: Vec<u64> = list_checkpoints(&b.join("run/checkpoints")).into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![3, 6]);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn resume_refuses_another_run() {
    let no_stop = AtomicBool::new(false);
    let d = tmpdir("refuse");
    pretrain(&config(&d, 3), Resume::No, &no_stop, false, &SingleProcess).unwrap();
    let mut other = config(&d, 6);
    other.seq_len = 16;
    let err = format!("{:#}", pretrain(&other, Resume::Latest, &no_stop, false, &SingleProcess).unwrap_err());
    assert!(err.contains("seq_len"), "{err}");
    let mut bigger = config(&d, 6);
    let mut c = tinyllama::config::LlamaConfig::from_hf_file(&small_model_config(&d)).unwrap();
    c.num_hidden_layers = 3;
    let p = d.join("other.json");
    std::fs::write(&p, serde_json::to_string(&c.to_hf_json()).unwrap()).unwrap();
    bigger.model_config = Some(p);
    let err = format!("{:#}", pretrain(&bigger, Resume::Latest, &no_stop, false, &SingleProcess).unwrap_err());
    assert!(err.contains("another model"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

/// A new run into a directory holding one is refused; `Overwrite` moves the old run aside whole
/// (its metrics and checkpoints byte for byte) and starts afresh.
#[test]
fn new_run_never_destroys_an_old_one() {
    let no_stop = AtomicBool::new(false);
    let d = tmpdir("keep");
    let first = pretrain(&config(&d, 3), Resume::No, &no_stop, false, &SingleProcess).unwrap();
    let run = d.join("run");
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let weights = std::fs::read(run.join("checkpoints/step-00000003/model.safetensors")).unwrap();
    let err = format!("{:#}", pretrain(&config(&d, 2), Resume::No, &no_stop, false, &SingleProcess).unwrap_err());
    assert!(err.contains("holds a run") && err.contains("--resume") && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics, "the refusal touched the run");
    let second = pretrain(&config(&d, 2), Resume::Overwrite, &no_stop, false, &SingleProcess).unwrap();
    assert_eq!(second.losses, first.losses[..2], "a fresh run from the same seed");
    let aside = d.join("run.replaced-1");
    assert_eq!(std::fs::read(aside.join("metrics.jsonl")).unwrap(), metrics);
    assert_eq!(std::fs::read(aside.join("checkpoints/step-00000003/model.safetensors")).unwrap(), weights);
    // resuming a finished run does no step
    let again = pretrain(&config(&d, 2), Resume::Latest, &no_stop, false, &SingleProcess).unwrap();
    assert!(again.losses.is_empty() && again.step == 2 && !again.interrupted);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn nan_loss_skips_updates_then_stops() {
    let no_stop = AtomicBool::new(false);
    let d = tmpdir("nan");
    let mut c = config(&d, 6);
    c.max_lr = 1e38; // the first real update sends the weights to inf
    c.min_lr = 1e38;
    c.warmup_steps = Some(0);
    c.nan_patience = 2;
    c.save_interval = 1;
    let err = format!("{:#}", pretrain(&c, Resume::No, &no_stop, false, &SingleProcess).unwrap_err());
    assert!(err.contains("NaN/inf") && err.contains("step-00000001"), "{err}");
    let rows = std::fs::read_to_string(d.join("run/metrics.jsonl")).unwrap();
    assert!(rows.lines().filter(|l| l.contains("\"skipped\":true")).count() >= 1, "{rows}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn export_round_trips_and_matches_transformers_when_available() {
    let no_stop = AtomicBool::new(false);
    let d = tmpdir("export");
    let out = pretrain(&config(&d, 3), Resume::No, &no_stop, false, &SingleProcess).unwrap();
    let ckpt = out.checkpoint.unwrap();
    let model = load_hf(&ckpt).unwrap();
    let tok = tinyllama::tokenizer::Tokenizer::from_file(&ckpt.join("tokenizer.json")).unwrap();
    let hf = d.join("hf");
    export_hf(&model, &tok, &hf, Dtype::F32, None).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(hf.join(f).exists(), "{f} missing");
    }
    let gen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("generation_config.json")).unwrap()).unwrap();
    assert_eq!(gen["do_sample"], false);
    let back = load_hf(&hf).unwrap();
    assert!(back.params == model.params && back.cfg == model.cfg);

    // transformers' logits for the same tokens
    let Some(py) = common::python("export_round_trips (transformers comparison)", "transformers, torch") else {
        std::fs::remove_dir_all(d).unwrap();
        return;
    };
    let ids: Vec<u32> = tok.encode("It is a truth universally acknowledged").unwrap();
    let script = format!(
        "import torch, json, transformers\nm = transformers.AutoModelForCausalLM.from_pretrained({:?}, torch_dtype=torch.float32, attn_implementation='eager')\nprint(json.dumps(m(torch.tensor([{:?}])).logits[0].flatten().tolist()))",
        hf.display().to_string(),
        ids
    );
    let o = std::process::Command::new(py).args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: Vec<f32> = serde_json::from_slice(&o.stdout).unwrap();
    let mut ws = tinyllama::model::Workspace::new(&model.cfg, 1, ids.len());
    let ours = model.forward_logits(&mut ws, &ids).unwrap();
    let scale = theirs.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = ours.iter().zip(&theirs).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
    assert!(err < 1e-5, "logits differ from transformers: relative error {err:e}");
    std::fs::remove_dir_all(d).unwrap();
}
