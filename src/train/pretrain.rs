//! The pretraining loop (`tinyllama pretrain`): data mixture → micro-batches with gradient
//! accumulation → global-norm clipping → AdamW on TinyLlama's schedule; metrics, validation,
//! plots and checkpoints along the way; bit-exact resume.

use super::config::TrainConfig;
use super::trainer::{claim_run_dir, resolved_config, DataPosition, Trainer};
pub use super::trainer::{existing_run, Resume};
use crate::checkpoint::hf::load_hf;
use crate::config::LlamaConfig;
use crate::data::builtin;
use crate::data::loader::{component_files, LoaderOptions, LoaderState, MixtureLoader};
use crate::dist::Collectives;
use crate::model::{Llama, Workspace};
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, ensure, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Debug)]
pub struct Outcome {
    pub step: u64,
    /// Loss of every step this run executed, in order.
    pub losses: Vec<f64>,
    pub val_loss: Option<f64>,
    pub checkpoint: Option<PathBuf>,
    pub wall_s: f64,
    pub tokens_per_s: f64,
    pub mfu: f64,
    pub interrupted: bool,
    pub final_params: Vec<f32>,
}

/// Model and tokenizer the run starts from: an HF checkpoint (`init_from`), a config.json or a preset.
fn initial_model(cfg: &TrainConfig) -> Result<(Llama, Tokenizer)> {
    if let Some(dir) = &cfg.init_from {
        let model = load_hf(dir)?;
        let tok = match &cfg.tokenizer {
            Some(p) => Tokenizer::from_file(p)?,
            None => Tokenizer::from_model_dir(dir)
                .with_context(|| format!("{}: the checkpoint's tokenizer (or pass --tokenizer)", dir.display()))?,
        };
        return Ok((model, tok));
    }
    let mc = match &cfg.model_config {
        Some(p) => LlamaConfig::from_hf_file(p)?,
        None => LlamaConfig::preset(&cfg.preset)?,
    };
    Ok((Llama::new_init(mc, cfg.seed), Tokenizer::from_file_or_builtin(cfg.tokenizer.as_deref())?))
}

/// Fields that fix the data stream and the batch: a resumed run must keep them to continue exactly.
fn check_resumable(saved: &TrainConfig, now: &TrainConfig, dir: &Path) -> Result<()> {
    let pairs = [
        ("seq_len", saved.seq_len.to_string(), now.seq_len.to_string()),
        ("micro_batch", saved.micro_batch.to_string(), now.micro_batch.to_string()),
        ("global_batch_tokens", format!("{:?}", saved.global_batch_tokens), format!("{:?}", now.global_batch_tokens)),
        ("seed", saved.seed.to_string(), now.seed.to_string()),
        ("mix", format!("{:?}", saved.mix), format!("{:?}", now.mix)),
        ("buffer_files", saved.buffer_files.to_string(), now.buffer_files.to_string()),
    ];
    for (k, a, b) in pairs {
        ensure!(
            a == b,
            "checkpoint {} was trained with {k} = {a}, this run has {b}: resuming would not continue the same run",
            dir.display()
        );
    }
    Ok(())
}

/// Runs (or resumes) a pretraining run on one process (`comm` = [`SingleProcess`]) or as one rank
/// of a data-parallel job (ZeRO-1: each rank owns 1/world of the optimiser state).
///
/// Data: the mixture is read as `world × accumulation` streams (ranks × micro-batch slots), stream
/// `rank · accumulation + j` feeding micro-batch `j` of this rank. So 2 ranks × 1 micro-batch read
/// exactly what 1 rank × 2 accumulated micro-batches read, and a run resumed with another world
/// size but the same global batch continues the same data.
pub fn pretrain(
    cfg: &TrainConfig,
    resume: Resume,
    interrupt: &AtomicBool,
    verbose: bool,
    comm: &dyn Collectives,
) -> Result<Outcome> {
    cfg.validate()?;
    let (world, rank) = (comm.world(), comm.rank());
    claim_run_dir(&cfg.out, &resume, rank, verbose && rank == 0)?;
    let (model, tok) = initial_model(cfg)?;
    let mc = model.cfg.clone();
    tok.check_fits(mc.vocab_size)?;
    ensure!(
        cfg.seq_len <= mc.max_position_embeddings,
        "seq_len {} exceeds the model's context ({})",
        cfg.seq_len,
        mc.max_position_embeddings
    );
    let accum = cfg.accumulation(world)?;
    // every rank must run the same configuration
    let digest = serde_json::to_vec(&json!({"train": cfg, "model": mc, "accum": accum}))?;
    let digests = comm.all_gather_bytes(&digest);
    let differ: Vec<usize> = (0..world).filter(|&r| digests[r] != digests[0]).collect();
    ensure!(differ.is_empty(), "ranks {differ:?} were started with another configuration than rank 0");
    let mut t = Trainer::new(cfg, model, tok, comm, verbose);
    let verbose = t.verbose;

    let data_dir = match &cfg.data {
        Some(d) => d.clone(),
        None if rank == 0 => builtin::prepared(&t.tok, cfg.val_fraction, verbose)?,
        None => {
            comm.barrier(); // rank 0 tokenizes the built-in corpus (once) first
            builtin::prepared(&t.tok, cfg.val_fraction, false)?
        }
    };
    if cfg.data.is_none() && rank == 0 {
        comm.barrier();
    }
    let mix: Vec<(String, f64)> = cfg.mix.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let streams = world * accum;
    let lopts = |stream: usize| LoaderOptions {
        split: "train".into(),
        mix: mix.clone(),
        block_size: cfg.seq_len + 1,
        seed: cfg.seed,
        rank: stream,
        world: streams,
        buffer_files: cfg.buffer_files,
        shuffle: true,
        vocab_size: Some(mc.vocab_size),
    };
    let mut loaders =
        (0..accum).map(|j| MixtureLoader::open(&data_dir, lopts(rank * accum + j))).collect::<Result<Vec<_>>>()?;
    let mut val_mix = vec![];
    for (n, w) in &mix {
        if !component_files(&data_dir, "validation", n)?.is_empty() {
            val_mix.push((n.clone(), *w));
        }
    }
    let val_opts = (!val_mix.is_empty()).then(|| LoaderOptions {
        split: "validation".into(),
        mix: val_mix,
        shuffle: false,
        seed: 0,
        rank: 0,
        world: 1,
        ..lopts(0)
    });
    let tokens_per_step = (streams * cfg.micro_batch * cfg.seq_len) as u64;

    if let Some(state) = t.resume(&resume)? {
        let dir = t.resumed_from.clone().unwrap_or_default();
        check_resumable(&state.train_config, cfg, &dir)?;
        ensure!(
            state.loaders.len() == streams,
            "checkpoint {} holds {} data streams (ranks × accumulation) but this run reads {streams}: keep \
             global_batch_tokens / (micro_batch × seq_len) the same when changing the number of ranks",
            dir.display(),
            state.loaders.len()
        );
        for (j, l) in loaders.iter_mut().enumerate() {
            l.restore(&state.loaders[rank * accum + j])?;
        }
    }
    let resolved = resolved_config(
        &t,
        json!({"data_dir": data_dir, "accumulation": accum, "tokens_per_step": tokens_per_step,
            "warmup_steps": cfg.warmup(), "decay_steps": cfg.decay()}),
    );
    t.begin(&resolved)?;

    let peak_gflops = crate::perf::gemm_peak_cached(&mc, cfg.micro_batch * cfg.seq_len).gflops;
    let flops_per_token = mc.train_flops_per_token(cfg.seq_len);
    let mut ws = Workspace::new(&mc, cfg.micro_batch, cfg.seq_len);
    let grad_scale = 1.0 / (cfg.micro_batch * cfg.seq_len * streams) as f32;
    let mut out = Outcome {
        step: t.step,
        losses: vec![],
        val_loss: None,
        checkpoint: None,
        wall_s: 0.0,
        tokens_per_s: 0.0,
        mfu: 0.0,
        interrupted: false,
        final_params: vec![],
    };
    let mut batches: Vec<(Vec<u32>, Vec<u32>)> = vec![(vec![], vec![]); accum];
    while t.step < cfg.max_steps {
        // a signal on any rank stops every rank after the same step
        if t.any_rank(interrupt.load(Ordering::Relaxed)) {
            out.interrupted = true;
            break;
        }
        let t0 = Instant::now();
        let comm0 = t.comm_seconds();
        let before = states(&loaders);
        let read =
            loaders.iter_mut().zip(batches.iter_mut()).try_for_each(|(l, (x, y))| l.next_batch(cfg.micro_batch, x, y));
        // every rank stops, and saves, together
        if t.any_rank(read.is_err()) {
            let e = read.err().unwrap_or_else(|| anyhow!("another rank could not read its data"));
            return Err(t.fail_with_checkpoint(e, DataPosition::Streams(&before)));
        }
        t.zero_grads();
        let (model, grads) = t.model_and_grads();
        let mut loss = 0.0;
        for (x, y) in &batches {
            loss += model.forward_backward(&mut ws, grads, x, y, grad_scale)?;
        }
        let s = t.update(loss, streams as f64, tokens_per_step)?;
        let step = t.step;
        let dt = t0.elapsed().as_secs_f64();
        let comm_s = t.comm_seconds() - comm0;
        let tps = tokens_per_step as f64 / dt;
        let mfu = tps / world as f64 * flops_per_token / 1e9 / peak_gflops;
        out.losses.push(s.loss);
        let elapsed = t.elapsed();
        let (loss, lr, norm) = (s.loss, s.lr, s.grad_norm);
        t.record(
            json!({"step": step, "loss": loss, "lr": lr, "grad_norm": norm, "tokens": t.tokens_seen,
                "tokens_per_s": tps, "mfu": mfu, "comm_s": comm_s, "elapsed_s": elapsed, "skipped": s.skipped}),
            format!(
                "loss {loss:.4} | lr {} | gnorm {norm:.3} | {tps:.0} tok/s | MFU {:.0}%",
                super::format_lr(lr),
                100.0 * mfu
            ),
        )?;
        let interrupted = interrupt.load(Ordering::Relaxed);
        if let (Some(vo), 0) = (&val_opts, rank) {
            if step.is_multiple_of(cfg.eval_interval.max(1)) || step == cfg.max_steps {
                let vl = match validate(&t.model, &mut ws, &data_dir, vo, cfg) {
                    Ok(vl) => vl,
                    Err(e) if world > 1 => return Err(e), // rank 0 alone validates: no collective save
                    Err(e) => return Err(t.fail_with_checkpoint(e, DataPosition::Streams(&states(&loaders)))),
                };
                out.val_loss = Some(vl);
                t.record_validation(vl)?;
            }
        }
        if t.checkpoint_due(interrupted) {
            out.checkpoint = Some(t.save(DataPosition::Streams(&states(&loaders)))?);
        }
    }
    if out.interrupted && t.last_saved != Some(t.step) && t.bad == 0 {
        out.checkpoint = Some(t.save(DataPosition::Streams(&states(&loaders)))?);
    }
    out.wall_s = t.finish()?;
    out.step = t.step;
    let done = t.step - t.start_step;
    out.tokens_per_s = if out.wall_s > 0.0 { (done * tokens_per_step) as f64 / out.wall_s } else { 0.0 };
    out.mfu = out.tokens_per_s / world as f64 * flops_per_token / 1e9 / peak_gflops;
    out.final_params = t.model.params;
    Ok(out)
}

fn states(loaders: &[MixtureLoader]) -> Vec<LoaderState> {
    loaders.iter().map(|l| l.state()).collect()
}

/// Mean loss over the same `eval_batches` validation batches every time.
fn validate(model: &Llama, ws: &mut Workspace, dir: &Path, vo: &LoaderOptions, cfg: &TrainConfig) -> Result<f64> {
    let mut l = MixtureLoader::open(dir, vo.clone())?;
    let (mut x, mut y) = (vec![], vec![]);
    let mut sum = 0.0;
    for _ in 0..cfg.eval_batches.max(1) {
        l.next_batch(cfg.micro_batch, &mut x, &mut y)?;
        sum += model.forward_loss(ws, &x, &y)?;
    }
    Ok(sum / cfg.eval_batches.max(1) as f64)
}
