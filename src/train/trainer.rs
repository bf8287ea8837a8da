//! The parts every training mode shares (pretraining, SFT, DPO): the run directory, the optimiser
//! state sharded over ranks (ZeRO-1), resume from a checkpoint, one optimiser step from summed
//! gradients (reduce-scatter → global norm → clip → AdamW → all-gather), the metrics row and
//! progress line, and checkpoints. A mode brings its data and its loss: it fills
//! [`Trainer::model_and_grads`] and calls [`Trainer::update`].

use super::checkpoint::{
    latest_checkpoint, load_checkpoint, newest_loadable_checkpoint, remove_partial_checkpoints, save_checkpoint,
    step_dir, write_tokenizer_config, TrainerState,
};
use super::config::TrainConfig;
use super::metrics::MetricsSink;
use super::{clip_to_norm, grad_sum_squares, AdamW, AdamWConfig, CosineSchedule};
use crate::data::loader::LoaderState;
use crate::dist::{shard_range, Collectives};
use crate::files::write_json;
use crate::model::lora::Adapters;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::ops::Range;
use std::path::{Path, PathBuf};
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

/// Refuses to start a new run over an existing one unless told to move it aside. Rank 0 alone
/// looks (the others could see the files it is about to write).
pub fn claim_run_dir(out: &Path, resume: &Resume, rank: usize, verbose: bool) -> Result<()> {
    if let Some(what) = existing_run(out).filter(|_| rank == 0) {
        match resume {
            Resume::No => bail!(
                "{} holds a run ({what}): continue it with --resume, or start a new one with --overwrite \
                 (which moves the old run aside, deleting nothing) or another --out",
                out.display()
            ),
            Resume::Overwrite => {
                let to = move_run_aside(out)?;
                if verbose {
                    eprintln!("moved the previous run in {} to {}", out.display(), to.display());
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// One optimiser step as it was taken.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// The step's loss (the mean the mode defines, over all ranks).
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    /// NaN/inf loss or gradient: no update was made.
    pub skipped: bool,
}

/// Where a mode's data reader stands, saved in every checkpoint.
pub enum DataPosition<'a> {
    /// Pretraining: each of this rank's mixture streams (gathered over ranks when saved).
    Streams(&'a [LoaderState]),
    /// Fine-tuning: one position shared by every rank.
    Examples(Value),
}

pub struct Trainer<'a> {
    pub cfg: TrainConfig,
    pub model: Llama,
    pub tok: Tokenizer,
    comm: &'a dyn Collectives,
    pub world: usize,
    pub rank: usize,
    /// Rank 0 of a verbose run prints.
    pub verbose: bool,
    n_params: usize,
    shard: Range<usize>,
    block: usize,
    pub adam: AdamW,
    sched: CosineSchedule,
    pub ckpt_root: PathBuf,
    pub step: u64,
    pub tokens_seen: u64,
    elapsed_before: f64,
    /// Consecutive steps with a NaN/inf loss or gradient.
    pub bad: u32,
    pub last_saved: Option<u64>,
    pub resumed_from: Option<PathBuf>,
    // flat buffers padded to world × block for reduce-scatter / all-gather
    grads: Vec<f32>,
    gshard: Vec<f32>,
    pshard: Vec<f32>,
    gathered: Vec<f32>,
    metrics: Option<MetricsSink>,
    bar: Option<indicatif::ProgressBar>,
    t_start: Instant,
    pub start_step: u64,
    /// Written beside every checkpoint's model (`tokenizer_config.json`'s `chat_template`).
    pub chat_template: Option<String>,
    /// Where the base model came from (a LoRA adapter's `base_model_name_or_path`).
    pub base_model: String,
}

impl<'a> Trainer<'a> {
    /// The optimiser for `model` on this rank (a fresh state: see [`Trainer::resume`]).
    pub fn new(cfg: &TrainConfig, model: Llama, tok: Tokenizer, comm: &'a dyn Collectives, verbose: bool) -> Self {
        Self::with_lora(cfg, model, tok, comm, verbose, None)
    }

    /// As [`Trainer::new`]; with `lora`, the optimiser trains its adapters only.
    pub fn with_lora(
        cfg: &TrainConfig,
        mut model: Llama,
        tok: Tokenizer,
        comm: &'a dyn Collectives,
        verbose: bool,
        lora: Option<Adapters>,
    ) -> Self {
        let (world, rank) = (comm.world(), comm.rank());
        // LoRA: the adapters run beside the frozen weights, and are what the optimiser trains
        model.adapters = lora;
        let n_params = model.trainable_len();
        let shard = shard_range(n_params, rank, world);
        let block = n_params.div_ceil(world);
        let adam_cfg = AdamWConfig { beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weight_decay: cfg.weight_decay };
        let adam = AdamW::new(shard.len(), adam_cfg);
        let sched = CosineSchedule {
            max_lr: cfg.max_lr,
            min_lr: cfg.min_lr,
            warmup_iters: cfg.warmup(),
            decay_iters: cfg.decay(),
        };
        let ckpt_root = cfg.out.join("checkpoints");
        if rank == 0 {
            // directories a killed run left half-written: never a checkpoint, never listed
            remove_partial_checkpoints(&ckpt_root);
        }
        Trainer {
            cfg: cfg.clone(),
            model,
            tok,
            comm,
            world,
            rank,
            verbose: verbose && rank == 0,
            n_params,
            shard,
            block,
            adam,
            sched,
            ckpt_root,
            step: 0,
            tokens_seen: 0,
            elapsed_before: 0.0,
            bad: 0,
            last_saved: None,
            resumed_from: None,
            grads: vec![0.0; block * world],
            // one process: the summed gradient is `grads` itself, the parameters need no gathering
            // (at 1.1B each copy would be 4.4 GB)
            gshard: vec![0.0; if world > 1 { block } else { 0 }],
            pshard: vec![0.0; if world > 1 { block } else { 0 }],
            gathered: vec![0.0; if world > 1 { block * world } else { 0 }],
            metrics: None,
            bar: None,
            t_start: Instant::now(),
            start_step: 0,
            chat_template: None,
            base_model: String::new(),
        }
    }

    /// Loads the checkpoint `resume` names (none for a new run) into the model, the optimiser and
    /// the counters; returns its state so that the mode restores its data position.
    pub fn resume(&mut self, resume: &Resume) -> Result<Option<TrainerState>> {
        let (dir, ck) = match resume {
            Resume::No | Resume::Overwrite => return Ok(None),
            Resume::Latest => {
                let (dir, ck, skipped) = newest_loadable_checkpoint(&self.ckpt_root)?;
                for why in skipped.iter().filter(|_| self.rank == 0) {
                    eprintln!("warning: {why}; resuming from the newest good one, {}", dir.display());
                }
                (dir, ck)
            }
            Resume::From(p) => (p.clone(), load_checkpoint(p)?),
        };
        let mc = &self.model.cfg;
        ensure!(
            ck.model.cfg == *mc,
            "checkpoint {} is for another model ({}) than this run ({mc})",
            dir.display(),
            ck.model.cfg
        );
        ensure!(
            ck.adam_m.len() == self.n_params,
            "checkpoint {} holds the optimiser state of {} parameters, this run trains {}{}",
            dir.display(),
            ck.adam_m.len(),
            self.n_params,
            if self.model.adapters.is_some() { " (LoRA adapters: keep --lora-rank and --lora-targets)" } else { "" }
        );
        match &mut self.model.adapters {
            // the frozen weights are the base model's, as loaded; the checkpoint's are merged
            Some(a) => super::lora::load_peft(a, &dir)?,
            None => self.model.params = ck.model.params,
        }
        // the optimiser state is stored whole: any world size takes its own shard of it
        let (m, v) = (ck.adam_m, ck.adam_v);
        let take = |x: Vec<f32>, r: Range<usize>| if r.len() == x.len() { x } else { x[r].to_vec() };
        self.adam.m = take(m, self.shard.clone());
        self.adam.v = take(v, self.shard.clone());
        self.adam.step = ck.adam_step;
        self.step = ck.state.step;
        self.tokens_seen = ck.state.tokens_seen;
        self.elapsed_before = ck.state.elapsed_s;
        self.bad = ck.state.consecutive_bad_steps;
        self.last_saved = Some(self.step);
        self.resumed_from = Some(dir);
        if self.verbose {
            if let Some(note) = self.schedule_change_note() {
                eprintln!("{note}");
            }
        }
        Ok(Some(ck.state))
    }

    /// A resumed run whose schedule differs from the one its `train_config.json` recorded (a raised
    /// `--max-steps` re-plans the cosine): the old and the new schedule, and the lr at this step.
    fn schedule_change_note(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.cfg.out.join("train_config.json")).ok()?;
        let recorded: Value = serde_json::from_str(&text).ok()?;
        let before: CosineSchedule = serde_json::from_value(recorded.get("schedule")?.clone()).ok()?;
        if before == self.sched {
            return None;
        }
        Some(format!(
            "note: the learning-rate schedule is re-planned for {} steps (the run had {}): {} (was {}); lr at step {} is now {} (was {})",
            self.cfg.max_steps,
            recorded.get("max_steps").map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
            self.sched.describe(),
            before.describe(),
            self.step,
            super::format_lr(self.sched.lr(self.step)),
            super::format_lr(before.lr(self.step))
        ))
    }

    /// Writes the resolved configuration (`train_config.json`), prints it, opens the metrics and
    /// starts the clock: the run begins.
    pub fn begin(&mut self, resolved: &Value) -> Result<()> {
        if self.rank == 0 {
            std::fs::create_dir_all(&self.cfg.out)
                .with_context(|| format!("cannot create {}", self.cfg.out.display()))?;
            write_json(&self.cfg.out.join("train_config.json"), resolved)?;
        }
        if self.verbose {
            eprintln!("model: {}", self.model.cfg);
            eprintln!("config:\n{}", config_block(resolved, ""));
        }
        self.metrics = Some(MetricsSink::open(&self.cfg.out, self.step, self.rank == 0)?);
        self.bar = progress_bar(self.verbose, self.cfg.max_steps, self.step);
        self.t_start = Instant::now();
        self.start_step = self.step;
        Ok(())
    }

    /// Zeroes the gradient buffer before a step's micro-batches accumulate into it.
    pub fn zero_grads(&mut self) {
        self.grads.fill(0.0);
    }

    /// The parameters and the gradient buffer (in the parameter layout) a mode's
    /// forward/backward reads and accumulates into.
    pub fn model_and_grads(&mut self) -> (&Llama, &mut [f32]) {
        (&self.model, &mut self.grads[..self.n_params])
    }

    pub fn elapsed(&self) -> f64 {
        self.elapsed_before + self.t_start.elapsed().as_secs_f64()
    }

    /// Seconds spent in collectives so far.
    pub fn comm_seconds(&self) -> f64 {
        self.comm.comm_seconds()
    }

    /// Sums `v` element-wise over ranks (metrics a mode reports for the whole batch).
    pub fn sum_over_ranks(&self, v: &mut [f64]) {
        if self.world > 1 {
            self.comm.all_reduce_sum_f64(v);
        }
    }

    /// Any rank's `flag` raised, on every rank (a signal or a failure stops all ranks together).
    pub fn any_rank(&self, flag: bool) -> bool {
        let mut v = [flag as u8 as f64];
        if self.world > 1 {
            self.comm.all_reduce_sum_f64(&mut v);
        }
        v[0] > 0.0
    }

    /// One optimiser step from the gradients in [`Trainer::model_and_grads`] and this rank's loss sum:
    /// gradients summed over ranks (this rank keeps its block), the global norm, clipping, the
    /// scheduled learning rate, AdamW on this rank's shard, the parameters gathered again. The
    /// step's loss is `Σ_ranks loss_sum / loss_divisor`. A NaN/inf loss or norm skips the update;
    /// `nan_patience` of them in a row end the run.
    pub fn update(&mut self, loss_sum: f64, loss_divisor: f64, tokens: u64) -> Result<StepStats> {
        let shard = self.shard.clone();
        // ZeRO-1: sum the gradients and keep this rank's block
        let g = if self.world > 1 {
            self.comm.reduce_scatter_sum(&self.grads, &mut self.gshard);
            &mut self.gshard[..shard.len()]
        } else {
            &mut self.grads[..shard.len()]
        };
        let mut sums = [grad_sum_squares(g), loss_sum];
        self.comm.all_reduce_sum_f64(&mut sums);
        let norm = sums[0].sqrt();
        let loss = sums[1] / loss_divisor;
        clip_to_norm(g, self.cfg.grad_clip, norm);
        let lr = self.sched.lr(self.step + 1);
        let skipped = !loss.is_finite() || !norm.is_finite();
        if skipped {
            self.bad += 1;
            let msg = format!(
                "step {}: loss {loss}, grad norm {norm}: update skipped ({} in a row)",
                self.step + 1,
                self.bad
            );
            self.println(&msg, self.rank == 0);
            if self.bad >= self.cfg.nan_patience {
                bail!(
                    "{} steps in a row had a NaN/inf loss or gradient norm; stopping. The last good checkpoint is {}",
                    self.bad,
                    latest_checkpoint(&self.ckpt_root)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "none".into())
                );
            }
        } else {
            let trainable = match &mut self.model.adapters {
                Some(a) => &mut a.weights,
                None => &mut self.model.params,
            };
            self.adam.update(&mut trainable[shard.clone()], g, lr);
            self.bad = 0;
            if self.world > 1 {
                self.pshard[..shard.len()].copy_from_slice(&trainable[shard.clone()]);
                self.comm.all_gather(&self.pshard, &mut self.gathered);
                trainable.copy_from_slice(&self.gathered[..self.n_params]);
            }
        }
        self.step += 1;
        self.tokens_seen += tokens;
        Ok(StepStats { loss, grad_norm: norm, lr, skipped })
    }

    /// A line above the progress bar (or on stderr without one) when `show`.
    pub fn println(&self, msg: &str, show: bool) {
        match &self.bar {
            Some(b) => b.println(msg),
            None if show => eprintln!("{msg}"),
            None => {}
        }
    }

    /// The step's metrics row (`row` holds the mode's fields) and the progress line.
    pub fn record(&mut self, row: Value, progress: String) -> Result<()> {
        if let Some(m) = &mut self.metrics {
            m.step(row)?;
        }
        if let Some(b) = &self.bar {
            b.set_position(self.step);
            b.set_message(progress);
        } else if self.verbose && self.step.is_multiple_of(self.cfg.log_interval.max(1)) {
            eprintln!("step {}: {progress}", self.step);
        }
        Ok(())
    }

    pub fn record_validation(&mut self, loss: f64) -> Result<()> {
        if let Some(m) = &mut self.metrics {
            m.validation(self.step, loss)?;
        }
        let msg = format!("step {}: val loss {loss:.4}, perplexity {:.2}", self.step, loss.exp());
        self.println(&msg, self.verbose);
        Ok(())
    }

    /// Whether this step ends with a checkpoint: every `save_interval`, the last step, a stop —
    /// never during a run of NaN/inf steps (the last good one stays the latest).
    pub fn checkpoint_due(&self, interrupted: bool) -> bool {
        let c = &self.cfg;
        self.bad == 0 && (self.step.is_multiple_of(c.save_interval.max(1)) || self.step == c.max_steps || interrupted)
    }

    /// A checkpoint of the current step; every rank takes part (the optimiser shards and data
    /// positions are gathered), rank 0 writes. The metrics are flushed first and the plot redrawn.
    pub fn save(&mut self, data: DataPosition) -> Result<PathBuf> {
        if let Some(m) = &mut self.metrics {
            m.flush()?;
        }
        let dir = self.save_at(data, self.step, self.elapsed())?;
        self.last_saved = Some(self.step);
        if let Some(m) = &self.metrics {
            m.plot()?;
        }
        Ok(dir)
    }

    fn save_at(&self, data: DataPosition, step: u64, elapsed: f64) -> Result<PathBuf> {
        let (world, rank, block) = (self.world, self.rank, self.block);
        let (loaders, examples) = match data {
            DataPosition::Streams(mine) => {
                let all = self.comm.all_gather_bytes(&serde_json::to_vec(mine)?);
                let mut states = vec![];
                for b in &all {
                    states.extend(serde_json::from_slice::<Vec<LoaderState>>(b)?);
                }
                (states, None)
            }
            DataPosition::Examples(v) => (vec![], Some(v)),
        };
        let adam = &self.adam;
        // one process writes its own state; ranks gather theirs to rank 0, which holds the whole
        // optimizer state only while it writes it (a copy at 1.1B would be 8.8 GB)
        let gathered;
        let full: &AdamW = if world > 1 {
            let gather = |x: &[f32]| {
                let mut send = vec![0.0f32; block];
                send[..x.len()].copy_from_slice(x);
                let mut all = vec![0.0f32; if rank == 0 { block * world } else { 0 }];
                self.comm.gather_to_root(&send, &mut all);
                all.truncate(self.n_params);
                all
            };
            gathered = AdamW { cfg: adam.cfg.clone(), m: gather(&adam.m), v: gather(&adam.v), step: adam.step };
            &gathered
        } else {
            adam
        };
        let state = TrainerState {
            step,
            tokens_seen: self.tokens_seen,
            loaders,
            world,
            train_config: self.cfg.clone(),
            model_config: self.model.cfg.clone(),
            elapsed_s: elapsed,
            consecutive_bad_steps: self.bad,
            examples,
        };
        let extra = |dir: &Path| -> Result<()> {
            if let Some(t) = &self.chat_template {
                write_tokenizer_config(dir, &self.tok, self.model.cfg.max_position_embeddings, Some(t))?;
            }
            if let Some(a) = &self.model.adapters {
                super::lora::save_peft(a, dir, &self.base_model)?;
            }
            Ok(())
        };
        let dir = if rank == 0 {
            // a LoRA checkpoint's model is written merged, so that it runs and exports as a plain model
            save_checkpoint(&self.ckpt_root, &self.model, full, &self.tok, &state, &extra)
        } else {
            Ok(step_dir(&self.ckpt_root, step))
        };
        // every rank learns whether rank 0's write worked
        let ok = self.comm.all_gather_bytes(&[dir.is_ok() as u8]);
        let dir = dir?; // rank 0's own error says why
        ensure!(ok[0] == [1], "rank 0 could not write checkpoint {}", step_dir(&self.ckpt_root, step).display());
        Ok(dir)
    }

    /// A step whose data cannot be read (a shard removed or truncated under the run) ends the run
    /// with the error, after a checkpoint of the last good step at `before` (the data positions
    /// from before the failed step).
    pub fn fail_with_checkpoint(&self, e: anyhow::Error, before: DataPosition) -> anyhow::Error {
        let step = self.step;
        if self.bad != 0 {
            return e; // a run of NaN steps: the last good checkpoint stays the latest
        }
        if self.last_saved == Some(step) {
            return e.context(format!("step {} failed; step {step} is checkpointed: --resume continues", step + 1));
        }
        match self.save_at(before, step, self.elapsed()) {
            Ok(dir) => e.context(format!(
                "step {} failed; saved the last good step in {}: --resume continues from it",
                step + 1,
                dir.display()
            )),
            Err(e2) => e.context(format!("step {} failed, and so did the checkpoint of step {step}: {e2:#}", step + 1)),
        }
    }

    /// Closes the progress bar and redraws the plot; seconds since [`Trainer::begin`].
    pub fn finish(&mut self) -> Result<f64> {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if let Some(m) = &self.metrics {
            m.plot()?;
        }
        Ok(self.t_start.elapsed().as_secs_f64())
    }
}

/// A configuration as `key = value` lines, nested keys dotted (`train.max_lr = 0.0004`).
pub fn config_block(v: &Value, prefix: &str) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| config_block(v, &if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }))
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => format!("  {prefix} = {other}"),
    }
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

/// The resolved configuration a run writes and prints, with the fields every mode shares.
pub fn resolved_config(t: &Trainer, extra: Value) -> Value {
    let mut v = json!({"train": t.cfg, "max_steps": t.cfg.max_steps, "schedule": t.sched, "model": t.model.cfg, "world": t.world,
        "threads_per_rank": rayon::current_num_threads(), "resumed_from": t.resumed_from,
        "tinyllama_version": env!("CARGO_PKG_VERSION")});
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        m.extend(e);
    }
    v
}
