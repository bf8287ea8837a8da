//! The pretraining loop (`tinyllama pretrain`): data mixture → micro-batches with gradient
//! accumulation → global-norm clipping → AdamW on TinyLlama's schedule; metrics, validation,
//! plots and checkpoints along the way; bit-exact resume.

use super::checkpoint::{
    latest_checkpoint, load_checkpoint, newest_loadable_checkpoint, remove_partial_checkpoints, save_checkpoint,
    step_dir, LoadedCheckpoint, TrainerState,
};
use super::config::TrainConfig;
use super::metrics::MetricsSink;
use super::{clip_to_norm, grad_sum_squares, AdamW, AdamWConfig, CosineSchedule};
use crate::checkpoint::hf::load_hf;
use crate::config::LlamaConfig;
use crate::data::builtin;
use crate::data::loader::{component_files, LoaderOptions, LoaderState, MixtureLoader};
use crate::dist::{shard_range, Collectives};
use crate::files::write_json;
use crate::model::{Llama, Workspace};
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub enum Resume {
    /// A new run; refused where `out` already holds one.
    No,
    /// A new run where `out` may hold one: the old run's directory is first moved aside to
    /// `<out>.replaced-<n>`, never deleted.
    Overwrite,
    Latest,
    From(PathBuf),
}

/// What in `out` shows that a run lives there (metrics, configuration, checkpoints).
pub fn existing_run(out: &Path) -> Option<String> {
    let ckpts = std::fs::read_dir(out.join("checkpoints")).map(|r| r.flatten().count()).unwrap_or(0);
    let mut found = vec![];
    for f in ["metrics.jsonl", "train_config.json"] {
        if out.join(f).exists() {
            found.push(f.to_string());
        }
    }
    if ckpts > 0 {
        found.push(format!("{ckpts} checkpoint(s)"));
    }
    (!found.is_empty()).then(|| found.join(", "))
}

/// Moves a run directory aside to the first free `<out>.replaced-<n>`; returns where.
fn move_run_aside(out: &Path) -> Result<PathBuf> {
    let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "run".into());
    let dest = (1..)
        .map(|n| out.with_file_name(format!("{name}.replaced-{n}")))
        .find(|p| !p.exists())
        .expect("an unused name");
    std::fs::rename(out, &dest).with_context(|| format!("cannot move {} to {}", out.display(), dest.display()))?;
    Ok(dest)
}

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
            None => Tokenizer::from_file(&dir.join("tokenizer.json"))
                .with_context(|| format!("{}: checkpoint without tokenizer.json (pass --tokenizer)", dir.display()))?,
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
    stop: &AtomicBool,
    verbose: bool,
    comm: &dyn Collectives,
) -> Result<Outcome> {
    cfg.validate()?;
    let (world, rank) = (comm.world(), comm.rank());
    let verbose = verbose && rank == 0;
    // rank 0 alone looks (the others could see the files it is about to write); its refusal
    // takes the whole job down
    if let Some(what) = existing_run(&cfg.out).filter(|_| rank == 0) {
        match resume {
            Resume::No => bail!(
                "{} holds a run ({what}): continue it with --resume, or start a new one with --overwrite \
                 (which moves the old run aside, deleting nothing) or another --out",
                cfg.out.display()
            ),
            Resume::Overwrite => {
                let to = move_run_aside(&cfg.out)?;
                if verbose {
                    eprintln!("moved the previous run in {} to {}", cfg.out.display(), to.display());
                }
            }
            _ => {}
        }
    }
    let (mut model, tok) = initial_model(cfg)?;
    let mc = model.cfg.clone();
    ensure!(
        tok.vocab_size() <= mc.vocab_size,
        "the tokenizer has {} tokens but the model's vocabulary is {}",
        tok.vocab_size(),
        mc.vocab_size
    );
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

    let data_dir = match &cfg.data {
        Some(d) => d.clone(),
        None if rank == 0 => builtin::prepared(&tok, cfg.val_fraction, verbose)?,
        None => {
            comm.barrier(); // rank 0 tokenizes the built-in corpus (once) first
            builtin::prepared(&tok, cfg.val_fraction, false)?
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
    let n_params = model.layout.total;
    let shard = shard_range(n_params, rank, world);
    let block = n_params.div_ceil(world);
    let adam_cfg = AdamWConfig { beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weight_decay: cfg.weight_decay };
    let mut adam = AdamW::new(shard.len(), adam_cfg);
    let sched =
        CosineSchedule { max_lr: cfg.max_lr, min_lr: cfg.min_lr, warmup_iters: cfg.warmup(), decay_iters: cfg.decay() };
    let ckpt_root = cfg.out.join("checkpoints");
    let (mut step, mut tokens_seen, mut elapsed_before, mut bad) = (0u64, 0u64, 0.0f64, 0u32);
    if rank == 0 {
        // directories a killed run left half-written: never a checkpoint, never listed
        remove_partial_checkpoints(&ckpt_root);
    }
    let resumed: Option<(PathBuf, LoadedCheckpoint)> = match resume {
        Resume::No | Resume::Overwrite => None,
        Resume::Latest => {
            let (dir, ck, skipped) = newest_loadable_checkpoint(&ckpt_root)?;
            for why in skipped.iter().filter(|_| rank == 0) {
                eprintln!("warning: {why}; resuming from the newest good one, {}", dir.display());
            }
            Some((dir, ck))
        }
        Resume::From(p) => {
            let ck = load_checkpoint(&p)?;
            Some((p, ck))
        }
    };
    let resume_dir = resumed.as_ref().map(|(d, _)| d.clone());
    if let Some((dir, ck)) = resumed {
        let dir = &dir;
        ensure!(
            ck.model.cfg == mc,
            "checkpoint {} is for another model ({}) than this run ({mc})",
            dir.display(),
            ck.model.cfg
        );
        check_resumable(&ck.state.train_config, cfg, dir)?;
        model.params = ck.model.params;
        // the optimiser state is stored whole: any world size takes its own shard of it
        adam.m = ck.adam_m[shard.clone()].to_vec();
        adam.v = ck.adam_v[shard.clone()].to_vec();
        adam.step = ck.adam_step;
        step = ck.state.step;
        tokens_seen = ck.state.tokens_seen;
        elapsed_before = ck.state.elapsed_s;
        bad = ck.state.consecutive_bad_steps;
        ensure!(
            ck.state.loaders.len() == streams,
            "checkpoint {} holds {} data streams (ranks × accumulation) but this run reads {streams}: keep \
             global_batch_tokens / (micro_batch × seq_len) the same when changing the number of ranks",
            dir.display(),
            ck.state.loaders.len()
        );
        for (j, l) in loaders.iter_mut().enumerate() {
            l.restore(&ck.state.loaders[rank * accum + j])?;
        }
    }

    if rank == 0 {
        std::fs::create_dir_all(&cfg.out).with_context(|| format!("cannot create {}", cfg.out.display()))?;
    }
    let resolved = json!({"train": cfg, "model": mc, "data_dir": data_dir, "accumulation": accum,
        "tokens_per_step": tokens_per_step, "warmup_steps": cfg.warmup(), "decay_steps": cfg.decay(), "world": world,
        "threads_per_rank": rayon::current_num_threads(), "resumed_from": resume_dir,
        "tinyllama_version": env!("CARGO_PKG_VERSION")});
    if rank == 0 {
        write_json(&cfg.out.join("train_config.json"), &resolved)?;
    }
    if verbose {
        eprintln!("model: {mc}");
        eprintln!("config:\n{}", config_block(&resolved, ""));
    }
    let mut metrics = MetricsSink::open(&cfg.out, step, rank == 0)?;

    let peak_gflops = crate::perf::gemm_peak_cached(&mc, cfg.micro_batch * cfg.seq_len).gflops;
    let flops_per_token = mc.train_flops_per_token(cfg.seq_len);
    let mut ws = Workspace::new(&mc, cfg.micro_batch, cfg.seq_len);
    // flat buffers padded to world × block for reduce-scatter / all-gather
    let mut grads = vec![0.0f32; block * world];
    let mut gshard = vec![0.0f32; block];
    let mut pshard = vec![0.0f32; block];
    let mut gathered = vec![0.0f32; if world > 1 { block * world } else { 0 }];
    let grad_scale = 1.0 / (cfg.micro_batch * cfg.seq_len * streams) as f32;
    let bar = progress_bar(verbose, cfg.max_steps, step);
    let t_start = Instant::now();
    let start_step = step;
    let mut out = Outcome {
        step,
        losses: vec![],
        val_loss: None,
        checkpoint: None,
        wall_s: 0.0,
        tokens_per_s: 0.0,
        mfu: 0.0,
        interrupted: false,
        final_params: vec![],
    };
    let mut last_saved = resume_dir.as_ref().map(|_| step);
    // All ranks take part (the optimiser shards and data positions are gathered); rank 0 writes.
    let save =
        |model: &Llama, adam: &AdamW, mine: &[LoaderState], step, tokens_seen, bad, elapsed| -> Result<PathBuf> {
            let all = comm.all_gather_bytes(&serde_json::to_vec(mine)?);
            let mut states = vec![];
            for b in &all {
                states.extend(serde_json::from_slice::<Vec<LoaderState>>(b)?);
            }
            let full = if world > 1 {
                // only rank 0 holds the whole optimizer state, and only while it writes it
                let gather = |x: &[f32]| {
                    let mut send = vec![0.0f32; block];
                    send[..x.len()].copy_from_slice(x);
                    let mut all = vec![0.0f32; if rank == 0 { block * world } else { 0 }];
                    comm.gather_to_root(&send, &mut all);
                    all.truncate(n_params);
                    all
                };
                AdamW { cfg: adam.cfg.clone(), m: gather(&adam.m), v: gather(&adam.v), step: adam.step }
            } else {
                AdamW { cfg: adam.cfg.clone(), m: adam.m.clone(), v: adam.v.clone(), step: adam.step }
            };
            let state = TrainerState {
                step,
                tokens_seen,
                loaders: states,
                world,
                train_config: cfg.clone(),
                model_config: mc.clone(),
                elapsed_s: elapsed,
                consecutive_bad_steps: bad,
            };
            let dir = if rank == 0 {
                save_checkpoint(&ckpt_root, model, &full, &tok, &state)
            } else {
                Ok(step_dir(&ckpt_root, step))
            };
            // every rank learns whether rank 0's write worked
            let ok = comm.all_gather_bytes(&[dir.is_ok() as u8]);
            let dir = dir?; // rank 0's own error says why
            ensure!(ok[0] == [1], "rank 0 could not write checkpoint {}", step_dir(&ckpt_root, step).display());
            Ok(dir)
        };

    // A step whose data cannot be read (a shard removed or truncated under the run) ends the run
    // with the error, after a checkpoint of the last good step (the data positions from before it).
    let fail_with_checkpoint = |e: anyhow::Error,
                                model: &Llama,
                                adam: &AdamW,
                                at: &[LoaderState],
                                step,
                                tokens_seen,
                                bad,
                                last_saved: Option<u64>,
                                elapsed|
     -> anyhow::Error {
        if bad != 0 {
            return e; // a run of NaN steps: the last good checkpoint stays the latest
        }
        if last_saved == Some(step) {
            return e.context(format!("step {} failed; step {step} is checkpointed: --resume continues", step + 1));
        }
        match save(model, adam, at, step, tokens_seen, bad, elapsed) {
            Ok(dir) => e.context(format!(
                "step {} failed; saved the last good step in {}: --resume continues from it",
                step + 1,
                dir.display()
            )),
            Err(e2) => e.context(format!("step {} failed, and so did the checkpoint of step {step}: {e2:#}", step + 1)),
        }
    };
    let mut batches: Vec<(Vec<u32>, Vec<u32>)> = vec![(vec![], vec![]); accum];
    while step < cfg.max_steps {
        // a signal on any rank stops every rank after the same step
        let mut stopping = [stop.load(Ordering::Relaxed) as u8 as f64];
        if world > 1 {
            comm.all_reduce_sum_f64(&mut stopping);
        }
        if stopping[0] > 0.0 {
            out.interrupted = true;
            break;
        }
        let t0 = Instant::now();
        let comm0 = comm.comm_seconds();
        let before = states(&loaders);
        let read =
            loaders.iter_mut().zip(batches.iter_mut()).try_for_each(|(l, (x, y))| l.next_batch(cfg.micro_batch, x, y));
        let mut failed = [read.is_err() as u8 as f64];
        if world > 1 {
            comm.all_reduce_sum_f64(&mut failed); // every rank stops, and saves, together
        }
        if failed[0] > 0.0 {
            let e = read.err().unwrap_or_else(|| anyhow!("another rank could not read its data"));
            let elapsed = elapsed_before + t_start.elapsed().as_secs_f64();
            return Err(fail_with_checkpoint(e, &model, &adam, &before, step, tokens_seen, bad, last_saved, elapsed));
        }
        grads.fill(0.0);
        let mut loss = 0.0;
        for (x, y) in &batches {
            loss += model.forward_backward(&mut ws, &mut grads[..n_params], x, y, grad_scale)?;
        }
        // ZeRO-1: sum the gradients and keep this rank's block
        comm.reduce_scatter_sum(&grads, &mut gshard);
        let g = &mut gshard[..shard.len()];
        let mut sums = [grad_sum_squares(g), loss];
        comm.all_reduce_sum_f64(&mut sums);
        let norm = sums[0].sqrt();
        let loss = sums[1] / streams as f64;
        clip_to_norm(g, cfg.grad_clip, norm);
        let lr = sched.lr(step + 1);
        let skipped = !loss.is_finite() || !norm.is_finite();
        if skipped {
            bad += 1;
            let msg = format!("step {}: loss {loss}, grad norm {norm}: update skipped ({bad} in a row)", step + 1);
            match &bar {
                Some(b) => b.println(&msg),
                None if rank == 0 => eprintln!("{msg}"),
                None => {}
            }
            if bad >= cfg.nan_patience {
                bail!(
                    "{bad} steps in a row had a NaN/inf loss or gradient norm; stopping. The last good checkpoint is {}",
                    latest_checkpoint(&ckpt_root).map(|p| p.display().to_string()).unwrap_or_else(|| "none".into())
                );
            }
        } else {
            adam.update(&mut model.params[shard.clone()], g, lr);
            bad = 0;
            if world > 1 {
                pshard[..shard.len()].copy_from_slice(&model.params[shard.clone()]);
                comm.all_gather(&pshard, &mut gathered);
                model.params.copy_from_slice(&gathered[..n_params]);
            }
        }
        step += 1;
        tokens_seen += tokens_per_step;
        let dt = t0.elapsed().as_secs_f64();
        let comm_s = comm.comm_seconds() - comm0;
        let tps = tokens_per_step as f64 / dt;
        let mfu = tps / world as f64 * flops_per_token / 1e9 / peak_gflops;
        out.losses.push(loss);
        let elapsed = elapsed_before + t_start.elapsed().as_secs_f64();
        metrics.step(json!({"step": step, "loss": loss, "lr": lr, "grad_norm": norm, "tokens": tokens_seen,
                "tokens_per_s": tps, "mfu": mfu, "comm_s": comm_s, "elapsed_s": elapsed, "skipped": skipped}))?;
        if let Some(b) = &bar {
            b.set_position(step);
            b.set_message(format!(
                "loss {loss:.4} | lr {lr:.2e} | gnorm {norm:.3} | {tps:.0} tok/s | MFU {:.0}%",
                100.0 * mfu
            ));
        } else if verbose && step % cfg.log_interval.max(1) == 0 {
            eprintln!("step {step}: loss {loss:.4} lr {lr:.2e} gnorm {norm:.3} {tps:.0} tok/s");
        }
        let interrupted = stop.load(Ordering::Relaxed);
        if let (Some(vo), 0) = (&val_opts, rank) {
            if step % cfg.eval_interval.max(1) == 0 || step == cfg.max_steps {
                let vl = match validate(&model, &mut ws, &data_dir, vo, cfg) {
                    Ok(vl) => vl,
                    Err(e) if world > 1 => return Err(e), // rank 0 alone validates: no collective save
                    Err(e) => {
                        let (now, lastsaved) = (states(&loaders), last_saved);
                        return Err(fail_with_checkpoint(
                            e,
                            &model,
                            &adam,
                            &now,
                            step,
                            tokens_seen,
                            bad,
                            lastsaved,
                            elapsed,
                        ));
                    }
                };
                out.val_loss = Some(vl);
                metrics.validation(step, vl)?;
                let msg = format!("step {step}: val loss {vl:.4}, perplexity {:.2}", vl.exp());
                match &bar {
                    Some(b) => b.println(&msg),
                    None if verbose => eprintln!("{msg}"),
                    None => {}
                }
            }
        }
        // no checkpoint during a run of NaN/inf steps: the last good one stays the latest
        if bad == 0 && (step % cfg.save_interval.max(1) == 0 || step == cfg.max_steps || interrupted) {
            metrics.flush()?;
            let dir = save(&model, &adam, &states(&loaders), step, tokens_seen, bad, elapsed)?;
            last_saved = Some(step);
            out.checkpoint = Some(dir);
            metrics.plot()?;
        }
    }
    if out.interrupted && last_saved != Some(step) && bad == 0 {
        let elapsed = elapsed_before + t_start.elapsed().as_secs_f64();
        out.checkpoint = Some(save(&model, &adam, &states(&loaders), step, tokens_seen, bad, elapsed)?);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    metrics.plot()?;
    out.step = step;
    out.wall_s = t_start.elapsed().as_secs_f64();
    let done = step - start_step;
    out.tokens_per_s = if out.wall_s > 0.0 { (done * tokens_per_step) as f64 / out.wall_s } else { 0.0 };
    out.mfu = out.tokens_per_s / world as f64 * flops_per_token / 1e9 / peak_gflops;
    out.final_params = model.params;
    Ok(out)
}

/// A configuration as `key = value` lines, nested keys dotted (`train.max_lr = 0.0004`).
fn config_block(v: &serde_json::Value, prefix: &str) -> String {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| config_block(v, &if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }))
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n"),
        serde_json::Value::Null => String::new(),
        other => format!("  {prefix} = {other}"),
    }
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

fn progress_bar(verbose: bool, max: u64, at: u64) -> Option<indicatif::ProgressBar> {
    if !verbose || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let b = indicatif::ProgressBar::new(max);
    b.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} | {msg} | ETA {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    b.set_position(at);
    Some(b)
}
