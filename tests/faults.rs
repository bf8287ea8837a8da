//! Fault injection on `tinyllama pretrain`, run as a user runs it (the binary, a TOML config):
//! `kill -9` at random moments (inside checkpoint writes among them), a full disk during a
//! checkpoint (`RLIMIT_FSIZE`), a damaged latest checkpoint, and shards removed or truncated under
//! a running job. After each, `--resume` must give the uninterrupted run's losses and weights bit
//! for bit. A small model (d 32, 2 layers) so that the whole file runs in well under a minute.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tinyllama::data::shard::{write_shard, TokenDtype};

const BIN: &str = env!("CARGO_BIN_EXE_tinyllama");

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tinyllama-fault-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// config.json of a 2-layer, d = 32 model over the Llama-2 vocabulary, and a run TOML whose
/// schedule does not depend on `max_steps` (so a 20-step run is the first 20 steps of a 60-step one).
fn setup(d: &Path, data: Option<&Path>, save_interval: u64, keep_last: usize) -> PathBuf {
    let mut c = tinyllama::config::LlamaConfig::preset("tiny-10m").unwrap();
    (c.hidden_size, c.intermediate_size, c.num_hidden_layers) = (32, 64, 2);
    (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.max_position_embeddings) = (2, 1, 16, 64);
    let mc = d.join("model.json");
    std::fs::write(&mc, serde_json::to_string(&c.to_hf_json()).unwrap()).unwrap();
    let mut toml = format!(
        "model_config = {mc:?}\nseq_len = 32\nmicro_batch = 2\nglobal_batch_tokens = 128\nmax_lr = 3e-3\n\
         warmup_steps = 2\ndecay_steps = 60\neval_interval = 10\neval_batches = 2\nsave_interval = {save_interval}\n\
         keep_last = {keep_last}\n"
    );
    if let Some(data) = data {
        toml += &format!("data = {data:?}\n");
    }
    let p = d.join("run.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

fn pretrain(toml: &Path, out: &Path, steps: u64, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["pretrain", "--config"]).arg(toml).arg("--out").arg(out).args(["--max-steps", &steps.to_string()]);
    c.args(extra).env("RAYON_NUM_THREADS", "2");
    c
}

fn run(mut c: Command) -> Output {
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `step → loss bits` and `step → val_loss bits` from metrics.jsonl.
fn curves(out: &Path) -> (BTreeMap<u64, u64>, BTreeMap<u64, u64>) {
    let (mut train, mut val) = (BTreeMap::new(), BTreeMap::new());
    for line in std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let step = v["step"].as_u64().unwrap();
        if let Some(l) = v["loss"].as_f64() {
            assert!(train.insert(step, l.to_bits()).is_none(), "step {step} logged twice");
        }
        if let Some(l) = v["val_loss"].as_f64() {
            assert!(val.insert(step, l.to_bits()).is_none(), "validation of step {step} logged twice");
        }
    }
    (train, val)
}

fn checkpoint(out: &Path, step: u64) -> PathBuf {
    out.join(format!("checkpoints/step-{step:08}"))
}

fn checkpoint_steps(out: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(out.join("checkpoints"))
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Losses, validation losses and final weights (and optimizer state) equal the reference run's.
fn assert_same_run(out: &Path, reference: &Path, steps: u64) {
    let (t, v) = curves(out);
    let (rt, rv) = curves(reference);
    assert_eq!(t.len() as u64, steps, "{}: {} training rows", out.display(), t.len());
    assert_eq!(t, rt.range(..=steps).map(|(k, v)| (*k, *v)).collect(), "losses differ from the uninterrupted run");
    assert_eq!(v, rv.range(..=steps).map(|(k, v)| (*k, *v)).collect(), "validation losses differ");
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let a = std::fs::read(checkpoint(out, steps).join(f)).unwrap();
        let b = std::fs::read(checkpoint(reference, steps).join(f)).unwrap();
        assert!(a == b, "{f} of step {steps} differs from the uninterrupted run's");
    }
}

fn no_partial_checkpoints(out: &Path) {
    let left: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "partial checkpoint directories left behind: {left:?}");
}

/// A deterministic sequence of small numbers for the kill moments (no dependence on the clock).
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn last_step(out: &Path) -> u64 {
    curves(out).0.keys().last().copied().unwrap_or(0)
}

fn wait_until(child: &mut Child, deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < deadline {
        if cond() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    panic!("nothing happened within {deadline:?}");
}

/// `kill -9` at ≥ 10 moments of a 60-step run (checkpoint every step): half of them while a
/// checkpoint is being written (its temporary directory exists), the others a random number of
/// steps in. Each time `--resume` picks up; the end equals the uninterrupted run bit for bit.
#[test]
fn kill_9_at_random_moments_then_resume_is_bit_identical() {
    let d = tmpdir("kill");
    let toml = setup(&d, None, 1, 2);
    let (steps, reference, out) = (60, d.join("reference"), d.join("run"));
    let o = run(pretrain(&toml, &reference, steps, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    let mut rng = Lcg(42);
    let (mut kills, mut in_checkpoint) = (0, 0);
    for attempt in 0.. {
        let mut c = pretrain(&toml, &out, steps, if attempt == 0 { &[] } else { &["--resume"] });
        let mut child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let target = last_step(&out) + 2 + rng.below(4); // step 1's checkpoint exists by step 2's row
        let during_write = attempt % 2 == 1;
        let ckdir = out.join("checkpoints");
        let hit = kills < 12
            && wait_until(&mut child, Duration::from_secs(60), || {
                last_step(&out) >= target
                    && (!during_write
                        || std::fs::read_dir(&ckdir)
                            .is_ok_and(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().contains(".tmp-"))))
            });
        if hit {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
            in_checkpoint += during_write as usize;
            continue;
        }
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "attempt {attempt}: {}", stderr(&o));
        break;
    }
    assert!(kills >= 10 && in_checkpoint >= 5, "{kills} kills, {in_checkpoint} inside checkpoint writes");
    eprintln!("{kills} kills ({in_checkpoint} inside a checkpoint write), then the run finished");
    assert_same_run(&out, &reference, steps);
    no_partial_checkpoints(&out);
    std::fs::remove_dir_all(d).unwrap();
}

/// A disk that fills during a checkpoint write (`RLIMIT_FSIZE`: the optimizer state, the largest
/// file, cannot be written): a clear error and exit code 1, the previous checkpoint untouched, no
/// partial directory left; `--resume` once there is room continues exactly.
#[test]
fn full_disk_during_a_checkpoint_keeps_the_previous_one() {
    use std::os::unix::process::CommandExt;
    let d = tmpdir("disk");
    let toml = setup(&d, None, 5, 2);
    let (reference, out) = (d.join("reference"), d.join("run"));
    assert!(run(pretrain(&toml, &reference, 20, &[])).status.success());
    assert!(run(pretrain(&toml, &out, 10, &[])).status.success());
    let before = std::fs::read(checkpoint(&out, 10).join("model.safetensors")).unwrap();
    let mut c = pretrain(&toml, &out, 20, &["--resume"]);
    // model.safetensors (8.3 MB) fits, optimizer.safetensors (16.6 MB) does not
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN); // write() then fails with EFBIG
            let lim = libc::rlimit { rlim_cur: 12 << 20, rlim_max: 12 << 20 };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = run(c);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write checkpoint") && err.contains("step-00000015"), "{err}");
    assert!(err.contains("File too large") && err.contains("previous one is intact"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(checkpoint_steps(&out), vec![5, 10]);
    assert_eq!(std::fs::read(checkpoint(&out, 10).join("model.safetensors")).unwrap(), before);
    no_partial_checkpoints(&out);
    let o = run(pretrain(&toml, &out, 20, &["--resume"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_run(&out, &reference, 20);
    std::fs::remove_dir_all(d).unwrap();
}

/// A latest checkpoint that is damaged (truncated weights; then its trainer_state.json gone too)
/// is named and passed over: `--resume` continues from the newest good one, exactly. When no
/// checkpoint loads, `--resume` refuses and lists why.
#[test]
fn damaged_latest_checkpoint_falls_back_to_the_newest_good_one() {
    let d = tmpdir("damaged");
    let toml = setup(&d, None, 5, 3);
    let (reference, out) = (d.join("reference"), d.join("run"));
    assert!(run(pretrain(&toml, &reference, 20, &[])).status.success());
    assert!(run(pretrain(&toml, &out, 15, &[])).status.success());
    assert_eq!(checkpoint_steps(&out), vec![5, 10, 15]);
    // step 15: weights cut in half
    let w = checkpoint(&out, 15).join("model.safetensors");
    let len = std::fs::metadata(&w).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&w).unwrap().set_len(len / 2).unwrap();
    // step 10: the trainer state is missing
    std::fs::remove_file(checkpoint(&out, 10).join("trainer_state.json")).unwrap();
    let o = run(pretrain(&toml, &out, 20, &["--resume"]));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("step-00000015 is damaged") && err.contains("model.safetensors"), "{err}");
    assert!(err.contains("step-00000010 is damaged") && err.contains("trainer_state.json"), "{err}");
    assert!(err.contains("resuming from the newest good one") && err.contains("step-00000005"), "{err}");
    assert_same_run(&out, &reference, 20);
    // nothing loads: a refusal that says why, for each
    for s in checkpoint_steps(&out) {
        std::fs::remove_file(checkpoint(&out, s).join("optimizer.safetensors")).unwrap();
    }
    let o = run(pretrain(&toml, &out, 25, &["--resume"]));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no usable checkpoint") && err.contains("optimizer.safetensors"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

/// Shards of the two mixture components (random ids) and a validation shard.
fn write_corpus(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Lcg(7);
    for (name, files) in [("slim", 4), ("star", 3)] {
        for f in 0..files {
            let toks: Vec<u32> = (0..3000).map(|_| 3 + rng.below(31000) as u32).collect();
            write_shard(&dir.join(format!("train_{name}_0_{f:010}.bin")), &toks, TokenDtype::U16).unwrap();
        }
    }
    let toks: Vec<u32> = (0..2000).map(|_| 3 + rng.below(31000) as u32).collect();
    write_shard(&dir.join("validation_slim_0_0000000000.bin"), &toks, TokenDtype::U16).unwrap();
}

/// The `star` shards removed (then, in a second run, truncated) under a running job: the run ends
/// with exit code 1 and an error naming the shard, after a checkpoint of the last step it
/// finished; with the shards back, `--resume` continues as if nothing had happened.
#[test]
fn shard_removed_or_truncated_mid_run_stops_with_a_checkpoint() {
    let d = tmpdir("shard");
    let data = d.join("data");
    write_corpus(&data);
    let toml = setup(&d, Some(&data), 1000, 2);
    let reference = d.join("reference");
    // long enough that the run is still going when the shards go (a step takes milliseconds)
    let steps = 150;
    let o = run(pretrain(&toml, &reference, steps, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    for (case, want) in
        [("removed", "was removed while it was being read"), ("truncated", "changed while it was being read")]
    {
        let out = d.join(case);
        let mut child = pretrain(&toml, &out, steps, &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        assert!(wait_until(&mut child, Duration::from_secs(60), || last_step(&out) >= 3), "the run ended early");
        let star: Vec<PathBuf> = std::fs::read_dir(&data)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains("train_star_"))
            .collect();
        let saved: Vec<Vec<u8>> = star.iter().map(|p| std::fs::read(p).unwrap()).collect();
        for p in &star {
            match case {
                "removed" => std::fs::remove_file(p).unwrap(),
                _ => std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(1000).unwrap(),
            }
        }
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{case}: {err}");
        assert!(err.contains(want) && err.contains("train_star_"), "{case}: {err}");
        let stopped = last_step(&out);
        assert!(stopped < steps, "{case}: the run finished");
        assert_eq!(checkpoint_steps(&out), vec![stopped], "{case}: the last good step is not checkpointed: {err}");
        assert!(err.contains(&format!("saved the last good step in {}", checkpoint(&out, stopped).display())), "{err}");
        for (p, b) in star.iter().zip(&saved) {
            std::fs::write(p, b).unwrap();
        }
        let o = run(pretrain(&toml, &out, steps, &["--resume"]));
        assert!(o.status.success(), "{case}: {}", stderr(&o));
        assert_same_run(&out, &reference, steps);
    }
    std::fs::remove_dir_all(d).unwrap();
}
