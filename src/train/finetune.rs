//! Chat fine-tuning (`tinyllama sft`, `tinyllama dpo`) on the parts pretraining uses
//! ([`Trainer`]): supervised fine-tuning with the loss on completions, and Direct Preference
//! Optimization against a frozen reference — both as TRL's `SFTTrainer` / `DPOTrainer` compute
//! them. Defaults follow the alignment-handbook Zephyr recipe TinyLlama-1.1B-Chat was made with.
//!
//! Batches: each epoch visits the examples in a seeded order; a step takes `micro_batch ×
//! accumulation × ranks` of them (the epoch's last step what is left), so step `s` reads the same
//! examples on any number of ranks and after any resume. SFT's loss is the mean over every
//! completion token of the step (transformers' `num_items_in_batch`); DPO's the mean over pairs.

use super::checkpoint::TrainerState;
use super::config::TrainConfig;
use super::trainer::{claim_run_dir, resolved_config, DataPosition, Resume, Trainer};
use crate::checkpoint::hf::load_hf;
use crate::data::finetune::{
    pack_wrapped, preference_examples, sft_examples, LossOn, PreferenceExample, Renderer, SftExample,
};
use crate::dist::Collectives;
use crate::files::write_json;
use crate::kernels::cross_entropy::IGNORE_INDEX;
use crate::model::llama::Activations;
use crate::model::lora::Adapters;
use crate::model::{Llama, Workspace};
use crate::rng::Rng;
use crate::tokenizer::chat_template::{ChatTemplate, TemplateSource};
use crate::tokenizer::Tokenizer;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Sft,
    Dpo,
}

/// DPO's loss on a pair (TRL's `loss_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpoLoss {
    /// `−log σ(β·δ)`, δ the chosen minus the rejected log-ratio (the DPO paper).
    Sigmoid,
    /// `(δ' − 1/(2β))²` with log-ratios averaged over each completion's tokens (IPO).
    Ipo,
    /// `max(0, 1 − β·δ)` (SLiC).
    Hinge,
}

/// A fine-tuning run's settings: defaults per mode, a TOML file, flags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// The Hugging Face model directory training starts from.
    pub model: Option<PathBuf>,
    /// The data: JSONL in one of TRL's formats.
    pub data: Option<PathBuf>,
    pub out: PathBuf,
    /// `zephyr`, or a file holding a Jinja chat template; none: the model's own (Zephyr if it
    /// has none).
    pub chat_template: Option<String>,
    pub max_lr: f64,
    pub min_lr: f64,
    /// None: 10% of the steps (the recipe's `warmup_ratio` 0.1).
    pub warmup_steps: Option<u64>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    /// Examples (SFT) or pairs (DPO) per forward pass.
    pub micro_batch: usize,
    /// Micro-batches per optimiser step on each rank.
    pub accumulation: usize,
    /// None: `epochs` passes over the data.
    pub max_steps: Option<u64>,
    pub epochs: u64,
    pub seed: u64,
    /// Tokens per sequence; longer ones are cut, the start kept (TRL's `max_length`). None: the
    /// recipe's 2048 (SFT) or 1024 (DPO), or the model's context where that is shorter.
    pub max_length: Option<usize>,
    /// SFT: `completion` (what the assistant says / the completion) or `all` tokens.
    pub loss_on: LossOn,
    /// SFT: TRL's wrapped packing — the examples concatenated and cut into `max_length` pieces
    /// (no truncation, no padding; a piece may span two examples).
    pub packing: bool,
    /// DPO: the strength of the KL penalty.
    pub beta: f64,
    pub loss_type: DpoLoss,
    /// DPO: the frozen reference (default: the starting weights).
    pub ref_model: Option<PathBuf>,
    /// LoRA rank; 0: every weight is trained.
    pub lora_rank: usize,
    /// LoRA's alpha (the adapters are scaled by alpha / rank).
    pub lora_alpha: f64,
    /// The adapted weights: `q,k,v,o,gate,up,down` or a subset, or `all`.
    pub lora_targets: String,
    /// A PEFT adapter directory to start from (default: PEFT's initialisation, B = 0).
    pub lora_init: Option<PathBuf>,
    /// Recompute each layer's forward in the backward (activation memory of one layer).
    #[serde(default)]
    pub checkpoint_activations: bool,
    pub log_interval: u64,
    pub save_interval: u64,
    pub keep_last: usize,
    pub nan_patience: u32,
}

impl FinetuneConfig {
    /// The alignment-handbook Zephyr recipe (TinyLlama-1.1B-Chat-v1.0): SFT lr 2e-5, DPO lr 5e-7
    /// and β 0.01, cosine to 0 after 10% warmup, one epoch, AdamW β (0.9, 0.999), no weight
    /// decay, clip 1.0; SFT sequences of 2048 tokens, DPO 1024.
    pub fn defaults(mode: Mode) -> Self {
        let sft = mode == Mode::Sft;
        FinetuneConfig {
            model: None,
            data: None,
            out: PathBuf::from(if sft { "runs/sft" } else { "runs/dpo" }),
            chat_template: None,
            max_lr: if sft { 2e-5 } else { 5e-7 },
            min_lr: 0.0,
            warmup_steps: None,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 1.0,
            micro_batch: if sft { 4 } else { 2 },
            accumulation: 1,
            max_steps: None,
            epochs: 1,
            seed: 42,
            max_length: None,
            loss_on: LossOn::Completion,
            packing: false,
            beta: 0.01,
            loss_type: DpoLoss::Sigmoid,
            ref_model: None,
            lora_rank: 0,
            lora_alpha: 16.0,
            lora_targets: "all".into(),
            lora_init: None,
            checkpoint_activations: false,
            log_interval: 1,
            save_interval: 500,
            keep_last: 2,
            nan_patience: 10,
        }
    }

    /// The optimiser, schedule and checkpoint settings as the shared training loop takes them.
    fn train_config(&self, model_dir: &Path, max_len: usize, max_steps: u64) -> TrainConfig {
        TrainConfig {
            preset: String::new(),
            init_from: Some(model_dir.to_path_buf()),
            out: self.out.clone(),
            seq_len: max_len,
            micro_batch: self.micro_batch,
            max_steps,
            max_lr: self.max_lr,
            min_lr: self.min_lr,
            warmup_steps: Some(self.warmup_steps.unwrap_or((max_steps as f64 * 0.1).ceil() as u64)),
            decay_steps: None,
            weight_decay: self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            grad_clip: self.grad_clip,
            log_interval: self.log_interval,
            save_interval: self.save_interval,
            keep_last: self.keep_last,
            seed: self.seed,
            nan_patience: self.nan_patience,
            ..TrainConfig::default()
        }
    }

    /// The settings a run in `out` recorded (`train_config.json`'s "finetune"), for a resumed run
    /// that does not repeat its flags; `None` where there is no such run.
    pub fn recorded(out: &Path) -> Result<Option<Self>> {
        let path = out.join("train_config.json");
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        match v.get("finetune") {
            Some(f) => Ok(Some(
                serde_json::from_value(f.clone())
                    .with_context(|| format!("{}: the recorded settings cannot be read", path.display()))?,
            )),
            None => Ok(None),
        }
    }

    /// The mode's defaults overlaid with a TOML file; an unknown key names the nearest known one.
    pub fn from_toml_file(mode: Mode, path: &Path) -> Result<Self> {
        super::config::overlay_toml_file(&Self::defaults(mode), path)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(self.model.is_some(), "no model: pass --model DIR (a Hugging Face model directory)");
        ensure!(self.data.is_some(), "no data: pass --data FILE.jsonl");
        ensure!(self.micro_batch >= 1 && self.accumulation >= 1, "micro_batch and accumulation must be at least 1");
        ensure!(self.max_length.is_none_or(|m| m >= 2), "max_length must be at least 2");
        ensure!(self.epochs >= 1 || self.max_steps.is_some(), "epochs must be at least 1");
        ensure!(self.max_steps != Some(0), "max_steps must be at least 1");
        ensure!(
            self.max_lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.max_lr,
            "need 0 <= min_lr <= max_lr, max_lr > 0"
        );
        ensure!(self.grad_clip > 0.0, "grad_clip must be positive");
        ensure!(self.beta.is_finite() && self.beta > 0.0, "beta must be positive");
        ensure!(self.lora_alpha.is_finite() && self.lora_alpha > 0.0, "lora_alpha must be positive");
        ensure!(self.keep_last >= 1, "keep_last must be at least 1");
        Ok(())
    }
}

#[derive(Debug)]
pub struct FinetuneOutcome {
    pub step: u64,
    pub max_steps: u64,
    /// Every metrics row this run wrote, in order.
    pub rows: Vec<Value>,
    pub checkpoint: Option<PathBuf>,
    pub wall_s: f64,
    pub tokens_per_s: f64,
    pub interrupted: bool,
    pub final_params: Vec<f32>,
}

/// The chat template a run renders with: `--chat-template`, the model's, or Zephyr's.
pub fn template_for(choice: Option<&str>, model_dir: &Path, tok: &Tokenizer) -> Result<(ChatTemplate, String)> {
    let name = |id| tok.id_to_token(id).unwrap_or_default();
    let (bos, eos) = (name(tok.bos_id), name(tok.eos_id));
    let own = crate::loader::chat_template_of(model_dir);
    let (template, from) = ChatTemplate::choose(choice, own.as_deref(), &bos, &eos)?;
    let what = match from {
        TemplateSource::Flag(f) => format!("{f} (--chat-template)"),
        TemplateSource::Model => format!("{}/tokenizer_config.json", model_dir.display()),
        TemplateSource::ZephyrDefault => "zephyr (the model has none)".to_string(),
    };
    Ok((template, what))
}

/// The examples step `step` (0-based) reads: epoch `step / steps_per_epoch` in its seeded order.
fn step_examples(n: usize, global: usize, seed: u64, step: u64) -> Vec<usize> {
    let per_epoch = n.div_ceil(global) as u64;
    let (epoch, within) = (step / per_epoch, (step % per_epoch) as usize);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::fork(seed, epoch);
    for i in (1..n).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    order[within * global..((within + 1) * global).min(n)].to_vec()
}

/// Rows of `[batch, len]` padded with `pad` (ids) and [`IGNORE_INDEX`] (targets).
struct Padded {
    x: Vec<u32>,
    y: Vec<u32>,
    batch: usize,
    len: usize,
}

/// Sequences as (inputs, targets) of one length: each `(ids, mask)` → `x = ids[..n-1]`,
/// `y[t] = ids[t+1]` where `mask[t+1]`; the length rounded up to a multiple of 16 so that
/// workspaces are reused (padding after a sequence cannot change it: attention is causal).
fn pad(seqs: &[(Vec<u32>, Vec<bool>)], pad_id: u32, max_len: usize) -> Padded {
    let longest = seqs.iter().map(|(ids, _)| ids.len() - 1).max().unwrap_or(1);
    let len = longest.next_multiple_of(16).min(max_len.max(longest));
    let (mut x, mut y) = (vec![pad_id; seqs.len() * len], vec![IGNORE_INDEX; seqs.len() * len]);
    for (r, (ids, mask)) in seqs.iter().enumerate() {
        for t in 0..ids.len() - 1 {
            x[r * len + t] = ids[t];
            if mask[t + 1] {
                y[r * len + t] = ids[t + 1];
            }
        }
    }
    Padded { x, y, batch: seqs.len(), len }
}

/// One workspace kept for the last shape (a new one only when the shape changes).
struct Workspaces(Option<Workspace>, Activations);

impl Workspaces {
    fn of(fc: &FinetuneConfig) -> Self {
        let kept = if fc.checkpoint_activations { Activations::RecomputePerLayer } else { Activations::KeepAll };
        Workspaces(None, kept)
    }

    fn get(&mut self, model: &Llama, batch: usize, len: usize) -> &mut Workspace {
        if !matches!(&self.0, Some(w) if w.batch == batch && w.seq_len == len) {
            self.0 = None; // free the old one first
            self.0 = Some(Workspace::with_activations(&model.cfg, batch, len, self.1));
        }
        self.0.as_mut().expect("just set")
    }
}

/// Sum of the log-probabilities of each row's targets: `−Σ row_loss` per sequence of `len` rows.
fn sequence_logps(row_loss: &[f32], y: &[u32], len: usize) -> Vec<f64> {
    row_loss
        .chunks(len)
        .zip(y.chunks(len))
        .map(|(l, t)| -l.iter().zip(t).filter(|(_, &t)| t != IGNORE_INDEX).map(|(&v, _)| v as f64).sum::<f64>())
        .collect()
}

/// Log-probabilities of each pair's chosen and rejected completions under `model`, forward only.
fn reference_logps(
    model: &Llama,
    pairs: &[PreferenceExample],
    micro_batch: usize,
    max_len: usize,
    pad_id: u32,
) -> Result<Vec<[f64; 2]>> {
    // forward only: one layer's activations suffice (the same bits as keeping them all)
    let mut ws = Workspaces(None, Activations::RecomputePerLayer);
    let mut out = vec![];
    for chunk in pairs.chunks(micro_batch) {
        let seqs: Vec<_> =
            [true, false].iter().flat_map(|&c| chunk.iter().map(move |p| p.sequence(c, max_len))).collect();
        let b = pad(&seqs, pad_id, max_len);
        let w = ws.get(model, b.batch, b.len);
        model.forward_loss(w, &b.x, &b.y)?;
        let lp = sequence_logps(&w.row_loss, &b.y, b.len);
        let k = chunk.len();
        out.extend((0..k).map(|i| [lp[i], lp[k + i]]));
    }
    Ok(out)
}

/// A pair's DPO loss and its derivatives with respect to the chosen and rejected log-ratios.
fn dpo_pair(loss: DpoLoss, beta: f64, dc: f64, dr: f64, nc: usize, nr: usize) -> (f64, f64, f64) {
    match loss {
        DpoLoss::Sigmoid => {
            let z = beta * (dc - dr);
            // −log σ(z) = softplus(−z), written to stay finite for large |z|
            let l = (-z).max(0.0) + (-z.abs()).exp().ln_1p();
            let s = 1.0 / (1.0 + z.exp()); // σ(−z)
            (l, -beta * s, beta * s)
        }
        DpoLoss::Hinge => {
            let m = 1.0 - beta * (dc - dr);
            if m > 0.0 {
                (m, -beta, beta)
            } else {
                (0.0, 0.0, 0.0)
            }
        }
        DpoLoss::Ipo => {
            let (nc, nr) = (nc.max(1) as f64, nr.max(1) as f64);
            let d = dc / nc - dr / nr - 1.0 / (2.0 * beta);
            (d * d, 2.0 * d / nc, -2.0 * d / nr)
        }
    }
}

/// The model directory a fine-tune starts from: any name `checkpoint::paths` reads (a run takes
/// its latest checkpoint, said when `say`), not a GGUF file.
fn start_dir(fc: &FinetuneConfig, say: bool) -> Result<PathBuf> {
    let named = crate::checkpoint::paths::resolve_model_path(fc.model.as_deref().unwrap_or(Path::new("")))?;
    if let (Some(note), true) = (&named.note, say) {
        eprintln!("{note}");
    }
    ensure!(
        !crate::loader::is_gguf(&named.path),
        "{}: fine-tuning starts from a Hugging Face model directory or checkpoint, not a GGUF file",
        named.path.display()
    );
    Ok(if named.path.is_file() { named.path.parent().unwrap_or(Path::new(".")).to_path_buf() } else { named.path })
}

/// The run's examples (SFT, packed or not) or preference pairs (DPO), with how many were cut to
/// `max_len` and how many left out.
fn read_examples(
    mode: Mode,
    fc: &FinetuneConfig,
    data: &Path,
    renderer: &Renderer,
    max_len: usize,
    say: &dyn Fn(&str),
) -> Result<(Vec<SftExample>, Vec<PreferenceExample>, usize, usize)> {
    Ok(match mode {
        Mode::Sft if fc.packing => {
            let p = sft_examples(data, renderer, fc.loss_on, usize::MAX)?;
            let packed = pack_wrapped(&p.examples, max_len);
            say(&format!(
                "packing: {} examples into {} sequences of up to {max_len} tokens",
                p.examples.len(),
                packed.len()
            ));
            (packed, vec![], 0, p.dropped)
        }
        Mode::Sft => {
            let p = sft_examples(data, renderer, fc.loss_on, max_len)?;
            (p.examples, vec![], p.truncated, p.dropped)
        }
        Mode::Dpo => {
            let p = preference_examples(data, renderer, max_len)?;
            (vec![], p.examples, p.truncated, p.dropped)
        }
    })
}

/// PEFT's LoRA adapters when `lora_rank` > 0 (PEFT's initialisation, or `lora_init`'s).
fn lora_adapters(fc: &FinetuneConfig, model: &Llama, say: &dyn Fn(&str)) -> Result<Option<Adapters>> {
    if fc.lora_rank == 0 {
        return Ok(None);
    }
    let r = fc.lora_rank;
    let targets = crate::train::lora::parse_targets(&fc.lora_targets)?;
    let mut l = Adapters::new(&model.cfg, &targets, r, fc.lora_alpha, fc.seed)?;
    if let Some(dir) = &fc.lora_init {
        crate::train::lora::load_peft(&mut l, dir)?;
    }
    say(&format!(
        "LoRA: rank {r}, alpha {}, {} weights adapted, {} trainable parameters of {}",
        fc.lora_alpha,
        l.targets.len(),
        l.weights.len(),
        model.layout.total
    ));
    Ok(Some(l))
}

/// DPO's reference log-probabilities of each pair (chosen, rejected): those a resumed run kept in
/// `recorded` for the same data, else computed once from `policy` (the starting weights) or
/// `ref_model`.
#[allow(clippy::too_many_arguments)]
fn dpo_reference(
    fc: &FinetuneConfig,
    policy: &Llama,
    pairs: &[PreferenceExample],
    recorded: Option<&Path>,
    data_digest: &str,
    max_len: usize,
    pad_id: u32,
    say: &dyn Fn(&str),
) -> Result<Vec<[f64; 2]>> {
    let kept = recorded.and_then(|p| std::fs::read(p).ok()).and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    if let Some(v) = kept.filter(|v| v["data_digest"] == data_digest) {
        return serde_json::from_value(v["logps"].clone()).context("ref_logps.json");
    }
    say("computing the reference model's log-probabilities (once)");
    match &fc.ref_model {
        Some(dir) => {
            let r = load_hf(dir)?;
            ensure!(r.cfg.vocab_size == policy.cfg.vocab_size, "--ref-model has another vocabulary");
            reference_logps(&r, pairs, fc.micro_batch, max_len, pad_id)
        }
        None => reference_logps(policy, pairs, fc.micro_batch, max_len, pad_id),
    }
}

/// What one optimiser step of an objective gives the loop: the metrics row's own fields, the
/// progress line's, this rank's loss sum and the divisor of the mean, and the tokens it ran.
struct StepResult {
    row: Value,
    progress: String,
    loss_sum: f64,
    divisor: f64,
    tokens: u64,
}

/// SFT's step: the mean cross-entropy over the completion tokens of the whole `batch` (TRL's),
/// this rank's examples `mine` in micro-batches, gradients accumulated into the trainer's.
#[allow(clippy::too_many_arguments)]
fn sft_step(
    t: &mut Trainer,
    ws: &mut Workspaces,
    sft: &[SftExample],
    batch: &[usize],
    mine: &[usize],
    micro_batch: usize,
    pad_id: u32,
    max_len: usize,
) -> Result<StepResult> {
    let ex: Vec<&SftExample> = batch.iter().map(|&i| &sft[i]).collect();
    // at least 1, as TRL's clamp: a batch of pieces without completion tokens adds nothing
    let total: usize = ex.iter().map(|e| e.loss_tokens()).sum::<usize>().max(1);
    let (model, grads) = t.model_and_grads();
    let (mut loss_sum, mut tokens) = (0.0, 0u64);
    for mb in mine.chunks(micro_batch) {
        let seqs: Vec<_> = mb
            .iter()
            .map(|&i| (sft[i].input_ids.clone(), sft[i].labels.iter().map(|&l| l != IGNORE_INDEX).collect()))
            .collect();
        let b = pad(&seqs, pad_id, max_len);
        let w = ws.get(model, b.batch, b.len);
        let mean = model.forward_backward(w, grads, &b.x, &b.y, 1.0 / total as f32)?;
        let counted = b.y.iter().filter(|&&y| y != IGNORE_INDEX).count();
        loss_sum += mean * counted as f64;
        tokens += seqs.iter().map(|(ids, _)| ids.len() as u64).sum::<u64>();
    }
    Ok(StepResult {
        row: json!({"loss_tokens": total}),
        progress: String::new(),
        loss_sum,
        divisor: total as f64,
        tokens,
    })
}

/// DPO's step: each pair's loss from the policy's and the reference's log-probabilities, its
/// gradient through per-token weights; rewards summed over ranks.
#[allow(clippy::too_many_arguments)]
fn dpo_step(
    t: &mut Trainer,
    ws: &mut Workspaces,
    pairs: &[PreferenceExample],
    refs: &[[f64; 2]],
    batch: &[usize],
    mine: &[usize],
    fc: &FinetuneConfig,
    pad_id: u32,
    max_len: usize,
) -> Result<StepResult> {
    let (model, grads) = t.model_and_grads();
    let npairs = batch.len() as f64;
    // per rank: loss, chosen and rejected rewards, accuracy, margin (sums over pairs)
    let mut sums = [0.0f64; 5];
    let mut tokens = 0u64;
    for mb in mine.chunks(fc.micro_batch) {
        let k = mb.len();
        let seqs: Vec<_> =
            [true, false].iter().flat_map(|&c| mb.iter().map(move |&i| pairs[i].sequence(c, max_len))).collect();
        let counts: Vec<usize> = seqs.iter().map(|(_, m)| m.iter().filter(|&&b| b).count()).collect();
        tokens += seqs.iter().map(|(ids, _)| ids.len() as u64).sum::<u64>();
        let b = pad(&seqs, pad_id, max_len);
        let w = ws.get(model, b.batch, b.len);
        let len = b.len;
        let y = &b.y;
        model.forward_backward_weighted(w, grads, &b.x, y, |row_loss| {
            let lp = sequence_logps(row_loss, y, len);
            let mut weights = vec![0.0f32; row_loss.len()];
            for j in 0..k {
                let [rc, rr] = refs[mb[j]];
                let (dc, dr) = (lp[j] - rc, lp[k + j] - rr);
                let (l, gc, gr) = dpo_pair(fc.loss_type, fc.beta, dc, dr, counts[j], counts[k + j]);
                let (cr, rj) = (fc.beta * dc, fc.beta * dr);
                for (s, v) in sums.iter_mut().zip([l, cr, rj, (cr > rj) as u8 as f64, cr - rj]) {
                    *s += v;
                }
                // ∂L/∂loss_t = −∂L/∂logp for every completion token of the sequence
                weights[j * len..(j + 1) * len].fill((-gc / npairs) as f32);
                weights[(k + j) * len..(k + j + 1) * len].fill((-gr / npairs) as f32);
            }
            weights
        })?;
    }
    let loss_sum = sums[0];
    let mut rest = [sums[1], sums[2], sums[3], sums[4]];
    t.sum_over_ranks(&mut rest);
    let r = rest.map(|v| v / npairs);
    Ok(StepResult {
        row: json!({"rewards_chosen": r[0], "rewards_rejected": r[1], "reward_accuracy": r[2],
            "reward_margin": r[3]}),
        progress: format!(" | margin {:.3} | acc {:.2}", r[3], r[2]),
        loss_sum,
        divisor: npairs,
        tokens,
    })
}

/// Runs (or resumes) SFT or DPO; one process or one rank of a data-parallel job.
pub fn finetune(
    mode: Mode,
    fc: &FinetuneConfig,
    resume: Resume,
    interrupt: &AtomicBool,
    verbose: bool,
    comm: &dyn Collectives,
) -> Result<FinetuneOutcome> {
    fc.validate()?;
    if mode == Mode::Dpo {
        // SFT's settings would change nothing here: say so rather than ignore them
        ensure!(!fc.packing, "packing is an SFT setting (DPO keeps each pair's sequences apart)");
        ensure!(fc.loss_on == LossOn::Completion, "loss_on is an SFT setting: DPO scores the completions");
    }
    let (world, rank) = (comm.world(), comm.rank());
    let model_dir = start_dir(fc, verbose && rank == 0)?;
    let data = fc.data.clone().unwrap_or_default();
    claim_run_dir(&fc.out, &resume, rank, verbose && rank == 0)?;
    let model = load_hf(&model_dir)?;
    let tok = Tokenizer::from_model_dir(&model_dir)?;
    tok.check_fits(model.cfg.vocab_size).with_context(|| model_dir.display().to_string())?;
    let context = model.cfg.max_position_embeddings;
    let max_len = match fc.max_length {
        Some(m) => {
            ensure!(m <= context, "max_length {m} exceeds the model's context ({context})");
            m
        }
        None => context.min(if mode == Mode::Sft { 2048 } else { 1024 }),
    };
    let (template, template_from) = template_for(fc.chat_template.as_deref(), &model_dir, &tok)?;
    let renderer = Renderer::new(&tok, &template);
    let say = |m: &str| {
        if verbose && rank == 0 {
            eprintln!("{m}");
        }
    };
    let (sft, pairs, truncated, dropped) = read_examples(mode, fc, &data, &renderer, max_len, &say)?;
    let n = sft.len() + pairs.len();
    say(&format!(
        "data: {} {} from {} ({truncated} cut to max_length {}, {dropped} left out with nothing to learn); \
         chat template: {template_from}",
        n,
        if mode == Mode::Sft { "examples" } else { "pairs" },
        data.display(),
        max_len
    ));
    let global = fc.micro_batch * fc.accumulation * world;
    let per_epoch = n.div_ceil(global) as u64;
    let max_steps = fc.max_steps.unwrap_or(fc.epochs * per_epoch);
    let tc = fc.train_config(&model_dir, max_len, max_steps);
    let data_digest = format!("{:016x}", crate::files::digest(&std::fs::read(&data)?));
    let pad_id = tok.eos_id;
    let lora = lora_adapters(fc, &model, &say)?;
    let mut t = Trainer::with_lora(&tc, model, tok, comm, verbose, lora);
    t.chat_template = Some(template.source.clone());
    t.base_model = model_dir.display().to_string();

    // DPO's reference: log-probabilities computed once (from the starting weights or
    // --ref-model), kept in the run directory for resumes
    let ref_path = fc.out.join("ref_logps.json");
    let refs: Vec<[f64; 2]> = match mode {
        Mode::Sft => vec![],
        Mode::Dpo => {
            let recorded = (!matches!(resume, Resume::No | Resume::Overwrite)).then_some(ref_path.as_path());
            dpo_reference(fc, &t.model, &pairs, recorded, &data_digest, max_len, pad_id, &say)?
        }
    };

    if let Some(state) = t.resume(&resume)? {
        check_resumable(&state, &data_digest, fc, world, t.resumed_from.as_deref().unwrap_or(Path::new("")))?;
    }
    let mut resolved = resolved_config(
        &t,
        json!({"mode": if mode == Mode::Sft { "sft" } else { "dpo" }, "finetune": fc, "examples": n, "max_length": max_len,
            "truncated": truncated, "dropped": dropped, "steps_per_epoch": per_epoch, "chat_template": template_from,
            "data_digest": data_digest}),
    );
    // "finetune" and "schedule" hold the settings: the pretraining ones (mixture, shards, …) mean nothing here
    if let Some(m) = resolved.as_object_mut() {
        m.remove("train");
    }
    t.begin(&resolved)?;
    if mode == Mode::Dpo && rank == 0 {
        write_json(&ref_path, &json!({"data_digest": data_digest, "logps": refs}))?;
    }
    let position = json!({"data_digest": data_digest, "global_batch": global});
    // the chat template goes with the model (tokenizer_config.json) for `chat`, `serve`,
    // `export` and transformers; LoRA adapters beside it in PEFT's files
    let save = |t: &mut Trainer| t.save(DataPosition::Examples(position.clone()));

    let mut ws = Workspaces::of(fc);
    let mut out = FinetuneOutcome {
        step: t.step,
        max_steps,
        rows: vec![],
        checkpoint: None,
        wall_s: 0.0,
        tokens_per_s: 0.0,
        interrupted: false,
        final_params: vec![],
    };
    let mut tokens_done = 0u64;
    let (sft, pairs) = (&sft, &pairs);
    while t.step < max_steps {
        if t.any_rank(interrupt.load(Ordering::Relaxed)) {
            out.interrupted = true;
            break;
        }
        let t0 = Instant::now();
        let batch = step_examples(n, global, fc.seed, t.step);
        // this rank's part: contiguous, as even as possible
        let per = batch.len().div_ceil(world);
        let mine = &batch[(rank * per).min(batch.len())..((rank + 1) * per).min(batch.len())];
        t.zero_grads();
        let StepResult { mut row, progress, loss_sum, divisor, tokens } = match mode {
            Mode::Sft => sft_step(&mut t, &mut ws, sft, &batch, mine, fc.micro_batch, pad_id, max_len)?,
            Mode::Dpo => dpo_step(&mut t, &mut ws, pairs, &refs, &batch, mine, fc, pad_id, max_len)?,
        };
        let mut tk = [tokens as f64];
        t.sum_over_ranks(&mut tk);
        let s = t.update(loss_sum, divisor, tk[0] as u64)?;
        tokens_done += tk[0] as u64;
        let tps = tk[0] / t0.elapsed().as_secs_f64();
        let (loss, lr, norm) = (s.loss, s.lr, s.grad_norm);
        if let Value::Object(m) = &mut row {
            for (k, v) in [
                ("step", json!(t.step)),
                ("loss", json!(loss)),
                ("lr", json!(lr)),
                ("grad_norm", json!(norm)),
                ("tokens", json!(t.tokens_seen)),
                ("tokens_per_s", json!(tps)),
                ("elapsed_s", json!(t.elapsed())),
                ("epoch", json!((t.step as f64 / per_epoch as f64 * 1000.0).round() / 1000.0)),
                ("skipped", json!(s.skipped)),
            ] {
                m.insert(k.into(), v);
            }
        }
        out.rows.push(row.clone());
        t.record(
            row,
            format!("loss {loss:.4}{progress} | lr {} | gnorm {norm:.3} | {tps:.0} tok/s", super::format_lr(lr)),
        )?;
        if t.checkpoint_due(interrupt.load(Ordering::Relaxed)) {
            out.checkpoint = Some(save(&mut t)?);
        }
    }
    if out.interrupted && t.last_saved != Some(t.step) && t.bad == 0 {
        out.checkpoint = Some(save(&mut t)?);
    }
    out.wall_s = t.finish()?;
    out.step = t.step;
    out.tokens_per_s = if out.wall_s > 0.0 { tokens_done as f64 / out.wall_s } else { 0.0 };
    out.final_params = t.model.params;
    Ok(out)
}

/// A resumed run must read the same data in the same batches.
fn check_resumable(state: &TrainerState, digest: &str, fc: &FinetuneConfig, world: usize, dir: &Path) -> Result<()> {
    let saved = state.examples.as_ref().with_context(|| format!("{} is a pretraining checkpoint", dir.display()))?;
    ensure!(
        saved["data_digest"] == digest,
        "checkpoint {} was trained on other data than {}",
        dir.display(),
        fc.data.as_deref().unwrap_or(Path::new("")).display()
    );
    let global = (fc.micro_batch * fc.accumulation * world) as u64;
    ensure!(
        saved["global_batch"].as_u64() == Some(global),
        "checkpoint {} took {} examples per step, this run {global}: keep micro_batch × accumulation × ranks",
        dir.display(),
        saved["global_batch"]
    );
    ensure!(
        state.train_config.seed == fc.seed,
        "checkpoint {} was trained with seed {}, this run has {}",
        dir.display(),
        state.train_config.seed,
        fc.seed
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overlays_the_mode_defaults() {
        let p = std::env::temp_dir().join(format!("tinyllama-ft-{}.toml", std::process::id()));
        std::fs::write(&p, "max_lr = 1e-4\nlora_rank = 8\nmax_length = 512\n").unwrap();
        let c = FinetuneConfig::from_toml_file(Mode::Dpo, &p).unwrap();
        assert_eq!((c.max_lr, c.lora_rank, c.max_length, c.beta), (1e-4, 8, Some(512), 0.01));
        std::fs::write(&p, "lora_rnak = 8\n").unwrap();
        let e = FinetuneConfig::from_toml_file(Mode::Sft, &p).unwrap_err().to_string();
        assert!(e.contains("unknown config key `lora_rnak`") && e.contains("did you mean `lora_rank`"), "{e}");
        std::fs::write(&p, "epochs = \"two\"\n").unwrap();
        assert!(FinetuneConfig::from_toml_file(Mode::Sft, &p).unwrap_err().to_string().contains("bad value"));
        std::fs::remove_file(p).unwrap();
    }

    /// DPO's pair gradients against finite differences of its losses.
    #[test]
    fn dpo_pair_derivatives() {
        for loss in [DpoLoss::Sigmoid, DpoLoss::Ipo, DpoLoss::Hinge] {
            for (dc, dr) in [(0.3, -0.2), (-1.5, 2.0), (4.0, 1.0)] {
                let (_, gc, gr) = dpo_pair(loss, 0.1, dc, dr, 3, 5);
                let h = 1e-6;
                let f = |c: f64, r: f64| dpo_pair(loss, 0.1, c, r, 3, 5).0;
                let (nc, nr) =
                    ((f(dc + h, dr) - f(dc - h, dr)) / (2.0 * h), (f(dc, dr + h) - f(dc, dr - h)) / (2.0 * h));
                assert!((gc - nc).abs() < 1e-6 && (gr - nr).abs() < 1e-6, "{loss:?} {dc} {dr}: {gc} {gr} vs {nc} {nr}");
            }
        }
    }
}
