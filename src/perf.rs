//! What this machine can do, for MFU: the f32 GEMM peak our GEMM reaches on the model's own
//! shapes. `bench` measures it afresh in every run; `pretrain` measures it once per machine,
//! thread count and shape and keeps it in `~/.cache/tinyllama/gemm-peak.json`, so that a start or
//! a resume does not spend seconds on it.

use crate::config::LlamaConfig;
use crate::kernels::matmul::{matmul, Output, Stored};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GemmPeak {
    pub gflops: f64,
    /// `m×k×n` of the shape that reached it.
    pub shape: String,
    pub all: Vec<(String, f64)>,
}

/// The f32 GEMM peak of this machine as our GEMM reaches it: the best of several timed runs of
/// each of the model's own forward GEMM shapes (`[B*T, d]·[d, out]` for QKV, output projection,
/// gate/up, down and head), on all threads; GFLOP/s = 2mkn / time.
pub fn gemm_peak(cfg: &LlamaConfig, rows: usize) -> GemmPeak {
    let d = cfg.hidden_size;
    let shapes = [
        (rows, d, cfg.q_dim() + 2 * cfg.kv_dim()),
        (rows, cfg.q_dim(), d),
        (rows, d, 2 * cfg.intermediate_size),
        (rows, cfg.intermediate_size, d),
        (rows.min(256), d, cfg.vocab_size),
    ];
    let mut r = Rng::new(0);
    let mut all = vec![];
    for (m, k, n) in shapes {
        let a: Vec<f32> = (0..m * k).map(|_| r.normal() as f32).collect();
        let b: Vec<f32> = (0..n * k).map(|_| r.normal() as f32).collect();
        let mut c = vec![0.0f32; m * n];
        let flop = 2.0 * (m * n * k) as f64;
        let reps = ((2e10 / flop) as usize).clamp(2, 50);
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            for _ in 0..reps {
                matmul(&mut c, &a, &b, m, n, k, Stored::AsIs, Stored::Transposed, Output::Overwrite);
            }
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        all.push((format!("{m}x{k}x{n}"), flop / best / 1e9));
    }
    let (shape, gflops) = all.iter().cloned().fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
    GemmPeak { gflops, shape, all }
}

/// [`gemm_peak`] from the cache when this CPU, thread count and model shape were measured before;
/// measured (and cached) otherwise.
pub fn gemm_peak_cached(cfg: &LlamaConfig, rows: usize) -> GemmPeak {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let key = format!(
        "{cpu} | {} threads | d {} ffn {} q {} kv {} vocab {} rows {rows}",
        rayon::current_num_threads(),
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.vocab_size
    );
    let Some(dir) = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/tinyllama")) else {
        return gemm_peak(cfg, rows);
    };
    let path = dir.join("gemm-peak.json");
    let mut cache: std::collections::BTreeMap<String, GemmPeak> =
        std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    if let Some(p) = cache.get(&key) {
        return p.clone();
    }
    let p = gemm_peak(cfg, rows);
    cache.insert(key, p.clone());
    // a cache: a failed write costs a re-measurement next time, nothing else
    if std::fs::create_dir_all(&dir).is_ok() {
        if let Ok(v) = serde_json::to_value(&cache) {
            let _ = crate::files::write_json(&path, &v);
        }
    }
    p
}
