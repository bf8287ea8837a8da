//! The `tinyllama` command line: a thin layer over the library.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use tinyllama::config::LlamaConfig;

#[derive(Parser)]
#[command(
    name = "tinyllama",
    version,
    about = "Pretrain, evaluate and run compact Llama-2-architecture models (TinyLlama) on CPU"
)]
struct Cli {
    /// Worker threads (default: all cores; also RAYON_NUM_THREADS).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a model configuration and its parameter count.
    Info(ModelArg),
    /// Benchmarks: `bench train` times a full training step.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Args)]
struct ModelArg {
    /// A built-in preset: tiny-10m, bench-50m, tinyllama-1.1b.
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// A Hugging Face config.json, or a checkpoint directory holding one.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ModelArg {
    fn resolve(&self, default: &str) -> Result<(String, LlamaConfig)> {
        match (&self.preset, &self.config) {
            (_, Some(p)) => {
                let file = if p.is_dir() { p.join("config.json") } else { p.clone() };
                Ok((file.display().to_string(), LlamaConfig::from_hf_file(&file)?))
            }
            (Some(name), None) => Ok((name.clone(), LlamaConfig::preset(name)?)),
            (None, None) => Ok((default.to_string(), LlamaConfig::preset(default)?)),
        }
    }
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time training steps (forward, backward, clip, AdamW) on random tokens and report tokens/s,
    /// MFU against the GEMM peak measured in the same run, and peak memory.
    Train {
        #[command(flatten)]
        model: ModelArg,
        /// Sequences per step.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Tokens per sequence (default: 256, capped at the model's context).
        #[arg(long)]
        seq_len: Option<usize>,
        /// Timed steps (the median is reported).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Also report the time of each kernel per step.
        #[arg(long)]
        profile: bool,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("cannot set the thread count")?;
    }
    match cli.cmd {
        Cmd::Info(m) => {
            let (name, cfg) = m.resolve("tiny-10m")?;
            println!("{name}: {cfg}");
            println!("parameters: {}", cfg.num_params());
            println!("{}", serde_json::to_string_pretty(&cfg)?);
        }
        Cmd::Bench(BenchCmd::Train { model, batch, seq_len, steps, warmup, json, profile }) => {
            let (name, cfg) = model.resolve("bench-50m")?;
            let seq = seq_len.unwrap_or(256.min(cfg.max_position_embeddings));
            if !json {
                eprintln!("model {name}: {cfg}");
                eprintln!(
                    "batch {batch} × seq {seq}, {} threads; measuring GEMM peak, then {warmup}+{steps} steps…",
                    rayon::current_num_threads()
                );
            }
            let r = tinyllama::bench::train_bench(&name, &cfg, batch, seq, steps.max(1), warmup, profile)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("step time     {:.0} ms (median of {}, min {:.0} ms)", r.step_ms, r.steps, r.step_ms_min);
                println!("tokens/s      {:.0}", r.tokens_per_s);
                println!(
                    "throughput    {:.1} GFLOP/s ({:.1} GFLOP/step: 6 × matmul params × tokens + attention)",
                    r.achieved_gflops, r.gflop_per_step
                );
                println!(
                    "GEMM peak     {:.1} GFLOP/s (best of the model's GEMM shapes, {})",
                    r.gemm_peak_gflops, r.gemm_peak_shape
                );
                println!("MFU           {:.1}% of the measured GEMM peak", 100.0 * r.mfu);
                println!("peak memory   {:.0} MiB (VmHWM)", r.peak_rss_bytes as f64 / (1 << 20) as f64);
                println!("CPU use       {:.2} cores of {} threads", r.cpu_utilisation, r.threads);
                println!("loss          {:.4} → {:.4}", r.loss_first, r.loss_last);
                if !r.profile.is_empty() {
                    println!("\nper step: kernel                          ms   calls   share");
                    let total: f64 = r.profile.iter().map(|p| p.1).sum();
                    for (name, ms, calls) in &r.profile {
                        println!("  {name:32} {ms:8.1} {calls:7.0} {:6.1}%", 100.0 * ms / total);
                    }
                    println!("  {:32} {total:8.1}", "total");
                }
            }
        }
    }
    Ok(())
}
