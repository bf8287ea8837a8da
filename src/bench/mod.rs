//! Benchmarks (commands, never timed tests): the training step, with the GEMM peak it is measured
//! against (measured afresh in the same run: [`crate::perf::gemm_peak`]).

use crate::config::LlamaConfig;
use crate::model::{Llama, Workspace};
use crate::perf::gemm_peak;
use crate::profile::timed;
use crate::rng::Rng;
use crate::train::{clip_grad_norm, AdamW, AdamWConfig};
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;

mod generate;
pub use generate::{generate_bench, GenerateBench, GenerateSetup};

#[derive(Debug, Serialize)]
pub struct TrainBench {
    pub preset: String,
    pub params: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub threads: usize,
    pub steps: usize,
    /// Median step time (forward, backward, clip, AdamW).
    pub step_ms: f64,
    pub step_ms_min: f64,
    pub tokens_per_s: f64,
    pub gflop_per_step: f64,
    pub achieved_gflops: f64,
    pub gemm_peak_gflops: f64,
    pub gemm_peak_shape: String,
    /// achieved / GEMM peak, FLOPs counted as 6 × matmul parameters × tokens plus attention.
    pub mfu: f64,
    /// Process peak resident memory (VmHWM).
    pub peak_rss_bytes: u64,
    /// CPU seconds / wall seconds over the timed steps: ~threads when the process had its cores.
    pub cpu_utilisation: f64,
    pub loss_first: f64,
    pub loss_last: f64,
    /// Per-kernel (name, ms per step, calls per step), with `--profile`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profile: Vec<(String, f64, f64)>,
}

impl std::fmt::Display for TrainBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self;
        writeln!(f, "step time     {:.0} ms (median of {}, min {:.0} ms)", r.step_ms, r.steps, r.step_ms_min)?;
        writeln!(f, "tokens/s      {:.0}", r.tokens_per_s)?;
        writeln!(
            f,
            "throughput    {:.1} GFLOP/s ({:.1} GFLOP/step: 6 × matmul params × tokens + attention)",
            r.achieved_gflops, r.gflop_per_step
        )?;
        writeln!(
            f,
            "GEMM peak     {:.1} GFLOP/s (best of the model's GEMM shapes, {})",
            r.gemm_peak_gflops, r.gemm_peak_shape
        )?;
        writeln!(f, "MFU           {:.1}% of the measured GEMM peak", 100.0 * r.mfu)?;
        writeln!(f, "peak memory   {:.0} MiB (VmHWM)", r.peak_rss_bytes as f64 / (1 << 20) as f64)?;
        writeln!(f, "CPU use       {:.2} cores of {} threads", r.cpu_utilisation, r.threads)?;
        write!(f, "loss          {:.4} → {:.4}", r.loss_first, r.loss_last)?;
        if !r.profile.is_empty() {
            writeln!(f, "\n\nper step: kernel                          ms   calls   share")?;
            let total: f64 = r.profile.iter().map(|p| p.1).sum();
            for (name, ms, calls) in &r.profile {
                writeln!(f, "  {name:32} {ms:8.1} {calls:7.0} {:6.1}%", 100.0 * ms / total)?;
            }
            write!(f, "  {:32} {total:8.1}", "total")?;
        }
        Ok(())
    }
}

/// Times `steps` training steps after `warmup` untimed ones. With `profile`, the per-kernel
/// breakdown of the timed steps is in the result.
pub fn train_bench(
    preset: &str,
    cfg: &LlamaConfig,
    batch: usize,
    seq_len: usize,
    steps: usize,
    warmup: usize,
    profile: bool,
) -> Result<TrainBench> {
    let peak = gemm_peak(cfg, batch * seq_len);
    let mut model = Llama::new_init(cfg.clone(), 1234);
    let mut ws = Workspace::new(cfg, batch, seq_len);
    let mut grads = vec![0.0f32; model.layout.total];
    let mut opt = AdamW::new(model.layout.total, AdamWConfig::default());
    let mut r = Rng::new(42);
    let n = batch * seq_len;
    let ids: Vec<u32> = (0..n + 1).map(|_| r.below(cfg.vocab_size as u64) as u32).collect();
    let (tokens, targets) = (&ids[..n], &ids[1..]);
    let mut times = vec![];
    let mut losses = vec![];
    let mut cpu0 = 0.0;
    let mut wall0 = Instant::now();
    for i in 0..warmup + steps {
        if i == warmup {
            cpu0 = process_cpu_seconds();
            wall0 = Instant::now();
        }
        let t = Instant::now();
        crate::profile::enable(profile && i >= warmup);
        timed("zero_grad", || grads.fill(0.0));
        let loss = model.forward_backward(&mut ws, &mut grads, tokens, targets, 1.0 / n as f32)?;
        timed("clip_grad_norm", || clip_grad_norm(&mut grads, 1.0));
        timed("adamw", || opt.update(&mut model.params, &grads, 4e-4));
        crate::profile::enable(false);
        let dt = t.elapsed().as_secs_f64();
        losses.push(loss);
        if i >= warmup {
            times.push(dt);
        }
    }
    let cpu = process_cpu_seconds() - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = sorted[sorted.len() / 2];
    let flop = cfg.train_flops_per_token(seq_len) * n as f64;
    Ok(TrainBench {
        preset: preset.to_string(),
        params: cfg.num_params(),
        batch,
        seq_len,
        threads: rayon::current_num_threads(),
        steps,
        step_ms: med * 1e3,
        step_ms_min: sorted[0] * 1e3,
        tokens_per_s: n as f64 / med,
        gflop_per_step: flop / 1e9,
        achieved_gflops: flop / med / 1e9,
        gemm_peak_gflops: peak.gflops,
        gemm_peak_shape: peak.shape,
        mfu: flop / med / 1e9 / peak.gflops,
        peak_rss_bytes: peak_rss_bytes(),
        cpu_utilisation: cpu / wall,
        loss_first: losses[0],
        loss_last: *losses.last().unwrap(),
        profile: crate::profile::take()
            .into_iter()
            .map(|(name, s, calls)| (name.to_string(), s * 1e3 / steps as f64, calls as f64 / steps as f64))
            .collect(),
    })
}

/// Peak resident set size of this process (Linux `VmHWM`), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// User + system CPU time of this process (Linux `/proc/self/stat`, clock ticks of 1/100 s).
pub fn process_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ut: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((ut + st) / 100.0)
        })
        .unwrap_or(0.0)
}

/// Matrices of at least this many bytes, far beyond the caches, are their own bandwidth probe.
pub const PROBE_MIN_BYTES: usize = 256 << 20;

/// About the bytes of a `dtype` model of `cfg` (every parameter in that format).
pub fn approx_weight_bytes(cfg: &LlamaConfig, dtype: crate::model::ModelDtype) -> usize {
    use crate::kernels::quant::Format;
    let f = match dtype {
        crate::model::ModelDtype::Uniform(f) => f,
        crate::model::ModelDtype::Q4KM => Format::Q4K,
    };
    cfg.num_params() / f.block_len() * f.block_bytes()
}

/// Read bandwidth (bytes / s) of a 512 MiB buffer held as model weights are (huge pages where
/// the system gives them): see [`stream_bandwidth`].
pub fn read_bandwidth() -> f64 {
    let len = 512usize << 20;
    let mut pages = crate::model::weights::page_buffer(len);
    let mut heap = Vec::new();
    let buf: &mut [u8] = match pages.as_mut() {
        Some(m) => m,
        None => {
            heap.resize(len, 0u8);
            &mut heap
        }
    };
    // touched (and not all zero), so that every page is resident before it is timed
    buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
    stream_bandwidth(&[&*buf], 5)
}

/// Read bandwidth over `bufs` (bytes / s): the best of `passes` passes, the threads taking pieces
/// of 1 MiB in turn and streaming each with software prefetch, as the decode kernels read their
/// rows. (A plain parallel sum, leaving the prefetching to the hardware, measured 5–10% less on
/// the same machine.)
pub fn stream_bandwidth(bufs: &[&[u8]], passes: usize) -> f64 {
    use rayon::prelude::*;
    let pieces: Vec<&[u8]> = bufs.iter().flat_map(|b| b.chunks(1 << 20)).collect();
    let bytes: usize = bufs.iter().map(|b| b.len()).sum();
    let mut best = 0.0f64;
    for _ in 0..passes {
        let t = Instant::now();
        let s: u64 = pieces.par_iter().map(|p| streamed_sum(p)).reduce(|| 0, u64::wrapping_add);
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max(bytes as f64 / dt);
    }
    best
}

/// A wrapping sum of `xs` as 64-bit words (a tail of fewer than 256 bytes skipped), asking for
/// the lines 9 KiB ahead of the reads (the group kernels' distance).
fn streamed_sum(xs: &[u8]) -> u64 {
    const AHEAD: usize = 9216;
    let mut acc = [0u64; 32];
    for (i, x) in xs.chunks_exact(256).enumerate() {
        #[cfg(target_arch = "x86_64")]
        {
            let p = (xs.as_ptr() as *const i8).wrapping_add(256 * i + AHEAD);
            for k in 0..4 {
                // SAFETY: a prefetch is a hint: it never faults, whatever the address.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.wrapping_add(64 * k))
                };
            }
        }
        for (a, w) in acc.iter_mut().zip(x.chunks_exact(8)) {
            *a = a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap_or_default()));
        }
    }
    acc.iter().fold(0, |s, a| s.wrapping_add(*a))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bandwidth probe reads every word it times: its sum is the plain sum of the 64-bit words
    /// of each whole 256-byte stretch, over pieces that split buffers of any length.
    #[test]
    fn the_probe_reads_every_word() {
        let buf: Vec<u8> = (0..(3 << 20) + 1000).map(|i: usize| ((i * 2654435761) >> 7) as u8).collect();
        let words = |b: &[u8]| -> u64 {
            let whole = &b[..b.len() / 256 * 256];
            whole.chunks_exact(8).fold(0u64, |s, w| s.wrapping_add(u64::from_le_bytes(w.try_into().unwrap())))
        };
        for len in [0, 255, 256, 9216 + 300, buf.len()] {
            assert_eq!(streamed_sum(&buf[..len]), words(&buf[..len]), "{len} bytes");
        }
        assert!(stream_bandwidth(&[&buf[..], &buf[5..]], 1) > 0.0);
    }
}
