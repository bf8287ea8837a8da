//! Data parallelism over MPI (`--features mpi`): `mpirun -np 2` against one process that
//! accumulates 2 micro-batches, bit-exact resume with ranks, and resharding 2 → 1. Skips when
//! `mpirun` is absent. Run as root, `mpirun` needs `--allow-run-as-root` (added here).
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use tinyllama::checkpoint::hf::load_hf;
use tinyllama::dist::SingleProcess;
use tinyllama::train::config::TrainConfig;
use tinyllama::train::pretrain::{pretrain, Resume};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tinyllama-mpi-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn setup(d: &Path) -> PathBuf {
    let mut c = tinyllama::config::LlamaConfig::preset("tiny-10m").unwrap();
    (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.head_dim, c.max_position_embeddings) =
        (64, 128, 2, 16, 64);
    std::fs::write(d.join("config.json"), serde_json::to_string(&c.to_hf_json()).unwrap()).unwrap();
    let toml = format!(
        "model_config = {:?}\nseq_len = 32\nmicro_batch = 4\nglobal_batch_tokens = 256\nmax_steps = 6\n\
         decay_steps = 6\nmax_lr = 3e-3\nwarmup_steps = 2\nsave_interval = 3\neval_interval = 3\neval_batches = 2\n",
        d.join("config.json").display().to_string()
    );
    let p = d.join("run.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

/// `mpirun -np N tinyllama --threads 1 pretrain --quiet --config TOML --out OUT EXTRA…`, after `prefix`.
fn mpirun_command(prefix: &[&str], np: usize, toml: &Path, out: &Path, extra: &[&std::ffi::OsStr]) -> Command {
    let mut c = Command::new(prefix.first().copied().unwrap_or("mpirun"));
    c.args(prefix.iter().skip(1))
        .args(if prefix.is_empty() { vec![] } else { vec!["mpirun"] })
        .args(["--oversubscribe", "--allow-run-as-root", "-np", &np.to_string(), env!("CARGO_BIN_EXE_tinyllama")])
        .args(["--threads", "1", "pretrain", "--quiet", "--config"])
        .arg(toml)
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

fn mpirun(np: usize, toml: &Path, out: &Path, extra: &[&str]) {
    let extra: Vec<&std::ffi::OsStr> = extra.iter().map(std::ffi::OsStr::new).collect();
    let o = mpirun_command(&[], np, toml, out, &extra).output().expect("mpirun");
    assert!(
        o.status.success(),
        "mpirun failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
        .collect()
}

fn final_params(out: &Path, step: u64) -> Vec<f32> {
    load_hf(&out.join(format!("checkpoints/step-{step:08}"))).unwrap().params
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64)) / scale
}

/// Whether `mpirun` runs here (else the test is skipped, saying so).
fn have_mpirun() -> bool {
    let ok = Command::new("mpirun").arg("--version").output().is_ok();
    if !ok {
        common::skip("MPI", "mpirun not found (apt-get install openmpi-bin libopenmpi-dev)");
    }
    ok
}

#[test]
fn two_ranks_match_one_rank_with_accumulation_and_resume_exactly() {
    if !have_mpirun() {
        return;
    }
    let d = tmpdir("dp");
    let toml = setup(&d);
    // 2 ranks × micro-batch 4
    let two = d.join("two");
    mpirun(2, &toml, &two, &[]);
    // 1 rank × 2 accumulated micro-batches of 4: the same global batch and the same data streams
    let cfg = TrainConfig { out: d.join("one"), ..TrainConfig::from_toml_file(&toml).unwrap() };
    let one = pretrain(&cfg, Resume::No, &AtomicBool::new(false), false, &SingleProcess).unwrap();
    let (l2, l1) = (losses(&two), one.losses.clone());
    assert_eq!(l2.len(), 6);
    // Not bit-identical: one process adds micro-batch 2's gradient onto micro-batch 1's inside
    // the GEMMs' k-blocked accumulation, the ranks sum two finished gradients. Measured ~1e-8.
    for (a, b) in l2.iter().zip(&l1) {
        assert!((a - b).abs() / b < 1e-6, "losses {l2:?} vs {l1:?}");
    }
    let e = rel(&final_params(&two, 6), &one.final_params);
    eprintln!("2 ranks vs 1 rank × 2 micro-batches: final weights relative difference {e:.2e}");
    // AdamW divides by sqrt(v): for weights whose gradient is ~0, a last-bit difference moves the
    // update by up to lr (3e-3) — so weights agree to ~lr × steps × 1e-3 of the largest (measured 2.8e-5).
    assert!(e < 1e-4, "weights differ by {e:e}");

    // resume with ranks: 3 steps, then --resume to 6, bit for bit the straight run
    let resumed = d.join("resumed");
    mpirun(2, &toml, &resumed, &["--max-steps", "3"]);
    mpirun(2, &toml, &resumed, &["--resume"]);
    let (a, b) = (losses(&resumed), l2.clone());
    assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), b.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    assert!(final_params(&resumed, 6) == final_params(&two, 6), "resumed weights differ");

    // resharding 2 → 1: the whole optimiser state is in the checkpoint, each world takes its shard
    let re1 = d.join("reshard");
    std::fs::create_dir_all(re1.join("checkpoints")).unwrap();
    let src = two.join("checkpoints/step-00000003");
    let dst = re1.join("checkpoints/step-00000003");
    std::fs::create_dir_all(&dst).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
    }
    let cfg = TrainConfig { out: re1.clone(), ..TrainConfig::from_toml_file(&toml).unwrap() };
    let cont = pretrain(&cfg, Resume::Latest, &AtomicBool::new(false), false, &SingleProcess).unwrap();
    for (a, b) in cont.losses.iter().zip(&l2[3..]) {
        assert!((a - b).abs() / b < 1e-6, "resharded continuation {:?} vs {:?}", cont.losses, &l2[3..]);
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_failing_rank_brings_the_job_down() {
    if !have_mpirun() {
        return;
    }
    let d = tmpdir("fail");
    let toml = setup(&d);
    // a data directory with no shards: every rank errors; the job must end (no hang) with the message
    let o = mpirun_command(&["timeout", "120"], 2, &toml, &d.join("out"), &["--data".as_ref(), d.as_os_str()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_ne!(o.status.code(), Some(124), "the job hung");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no shards for component"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

/// `sft` and `dpo` (with and without LoRA) on 2 ranks × 1 example against 1 process × 2
/// accumulated examples: the same batches, the same losses and DPO rewards.
#[test]
fn finetuning_on_two_ranks_matches_accumulation() {
    if !have_mpirun() {
        return;
    }
    let d = tmpdir("ft");
    let fx = common::trl_fixture();
    let model = common::trl_model(&d.join("model"));
    let rows = |out: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    for (mode, data, extra) in [
        ("sft", "sft_messages.jsonl", vec![]),
        ("dpo", "dpo_conv.jsonl", vec!["--beta", "0.1"]),
        ("sft", "sft_messages.jsonl", vec!["--lora-rank", "4"]),
    ] {
        let args = |out: &Path, accumulation: &str| {
            let mut v: Vec<String> = [mode, "--quiet", "--max-lr", "1e-3", "--max-steps", "3", "--micro-batch", "1"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            v.extend(["--accumulation".into(), accumulation.into(), "--model".into(), model.display().to_string()]);
            v.extend(["--data".into(), fx.join(data).display().to_string(), "--out".into(), out.display().to_string()]);
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let (two, one) = (d.join(format!("{mode}-two-{}", extra.len())), d.join(format!("{mode}-one-{}", extra.len())));
        let o = Command::new("mpirun")
            .args([
                "--oversubscribe",
                "--allow-run-as-root",
                "-np",
                "2",
                env!("CARGO_BIN_EXE_tinyllama"),
                "--threads",
                "1",
            ])
            .args(args(&two, "1"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = Command::new(env!("CARGO_BIN_EXE_tinyllama")).args(args(&one, "2")).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (a, b) = (rows(&two), rows(&one));
        assert_eq!(a.len(), 3);
        for (x, y) in a.iter().zip(&b) {
            for k in ["loss", "grad_norm", "rewards_chosen", "reward_margin"] {
                if let (Some(p), Some(q)) = (x[k].as_f64(), y[k].as_f64()) {
                    assert!(
                        (p - q).abs() <= 1e-5 * q.abs().max(1e-3),
                        "{mode} {extra:?} {k}: {p} on 2 ranks, {q} on 1"
                    );
                }
            }
        }
    }
    std::fs::remove_dir_all(d).unwrap();
}
