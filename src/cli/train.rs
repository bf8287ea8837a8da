//! The training commands: `pretrain`, `sft`, `dpo`, `prepare`, `train-tokenizer`.

use super::{on_rank_zero, stop_on_interrupt, RunStart};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use tinyllama::config::LlamaConfig;
use tinyllama::tokenizer::Tokenizer;
use tinyllama::train::config::TrainConfig;
use tinyllama::train::finetune::{FinetuneConfig, Mode};

#[derive(Args)]
pub struct PretrainArgs {
    /// Model preset: tiny-10m, bench-50m, tinyllama-1.1b.
    #[arg(long)]
    preset: Option<String>,
    /// A TOML file of training settings (keys as in train_config.json's "train"); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory of prepared shards (from `tinyllama prepare`) [default: the built-in corpus].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run directory: metrics.jsonl, loss.svg, train_config.json, checkpoints/.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Optimiser steps to run (the cosine schedule spans them).
    #[arg(long)]
    max_steps: Option<u64>,
    #[command(flatten)]
    start: RunStart,
    /// Start from a Hugging Face checkpoint directory (continued pretraining), or a Hub id (`org/name`).
    #[arg(long)]
    init_from: Option<PathBuf>,
    #[command(flatten)]
    hub: super::hub::HubArgs,
    /// Seed of the initialisation and of the data order.
    #[arg(long)]
    seed: Option<u64>,
    /// Sequences per micro-batch.
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Tokens per training sequence.
    #[arg(long)]
    seq_len: Option<usize>,
    /// Tokens per optimiser step (micro-batches are accumulated to reach it) [default: one micro-batch
    /// per rank: --micro-batch × --seq-len × ranks].
    #[arg(long)]
    global_batch_tokens: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    max_lr: Option<f64>,
    /// Final learning rate of the cosine.
    #[arg(long)]
    min_lr: Option<f64>,
    /// Linear warmup steps [default: min(2000, max_steps / 10)].
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// Validate every N steps.
    #[arg(long)]
    eval_interval: Option<u64>,
    /// Checkpoint every N steps (and always at the end and on Ctrl-C).
    #[arg(long)]
    save_interval: Option<u64>,
    /// tokenizer.json [default: the built-in Llama-2 tokenizer].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Mixture weights, e.g. `slim=0.693584,star=0.306416`.
    #[arg(long)]
    mix: Option<String>,
}

/// What `sft` and `dpo` share. Defaults come from the mode's recipe (shown per command); a
/// resumed run takes its recorded settings, flags still overriding them.
#[derive(Args)]
pub struct FinetuneArgs {
    /// The Hugging Face model directory (or checkpoint) to start from (config.json,
    /// model.safetensors, tokenizer.json), or a Hugging Face Hub id (`org/name`; a local path wins).
    /// Required for a new run; a resumed run recorded it.
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    #[command(flatten)]
    hub: super::hub::HubArgs,
    /// Training data: a JSONL file in one of TRL's formats (see above). Required for a new run; a
    /// resumed run recorded it.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run directory: metrics.jsonl, loss.svg, train_config.json, checkpoints/.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A TOML file of settings (keys as in train_config.json's "finetune"); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `zephyr`, or a file holding a Jinja chat template [default: the model's own, else Zephyr's].
    #[arg(long)]
    chat_template: Option<String>,
    /// Passes over the data.
    #[arg(long)]
    epochs: Option<u64>,
    /// Optimiser steps [default: --epochs passes over the data].
    #[arg(long)]
    max_steps: Option<u64>,
    /// Peak learning rate.
    #[arg(long)]
    max_lr: Option<f64>,
    /// Final learning rate of the cosine.
    #[arg(long)]
    min_lr: Option<f64>,
    /// Linear warmup steps [default: 10% of the steps].
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// Examples (SFT) or pairs (DPO) per forward pass.
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Micro-batches per optimiser step.
    #[arg(long)]
    accumulation: Option<usize>,
    /// Tokens per sequence; longer ones are cut, the start kept [default: SFT 2048, DPO 1024, or
    /// the model's context if shorter].
    #[arg(long)]
    max_length: Option<usize>,
    /// Seed of the example order.
    #[arg(long)]
    seed: Option<u64>,
    /// Train LoRA adapters of this rank instead of every weight (PEFT's LoRA; 0: off).
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA's alpha: the adapters are scaled by alpha / rank.
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// The weights LoRA adapts: q,k,v,o,gate,up,down or a subset, or all.
    #[arg(long)]
    lora_targets: Option<String>,
    /// Start LoRA from a PEFT adapter directory (adapter_model.safetensors).
    #[arg(long)]
    lora_init: Option<PathBuf>,
    /// Recompute each layer's forward during the backward instead of keeping every layer's
    /// activations: activation memory of one layer (for long sequences), about a third more time;
    /// the same losses and weights, bit for bit.
    #[arg(long)]
    checkpoint_activations: bool,
    /// Checkpoint every N steps (and always at the end and on Ctrl-C).
    #[arg(long)]
    save_interval: Option<u64>,
    #[command(flatten)]
    start: RunStart,
}

#[derive(Args)]
pub struct SftArgs {
    #[command(flatten)]
    common: FinetuneArgs,
    /// Train on `completion` (what the assistant says, or a prompt's completion) or `all` tokens.
    #[arg(long, value_parser = ["completion", "all"])]
    loss_on: Option<String>,
    /// Pack the examples as TRL's `packing_strategy="wrapped"` (concatenated, cut into
    /// --max-length pieces; no padding, no truncation).
    #[arg(long)]
    packing: bool,
}

#[derive(Args)]
pub struct DpoArgs {
    #[command(flatten)]
    common: FinetuneArgs,
    /// β, the strength of the KL penalty.
    #[arg(long)]
    beta: Option<f64>,
    /// The loss: sigmoid (DPO's), ipo or hinge.
    #[arg(long, value_parser = ["sigmoid", "ipo", "hinge"])]
    loss_type: Option<String>,
    /// The frozen reference model [default: the starting weights].
    #[arg(long)]
    ref_model: Option<PathBuf>,
}

#[derive(Args)]
pub struct PrepareArgs {
    /// Input files or directories (*.jsonl, *.jsonl.zst, *.parquet; any other file is one text document).
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Output directory for the shards.
    #[arg(long)]
    output: PathBuf,
    /// Mixture component name, e.g. `slim` or `star`.
    #[arg(long)]
    prefix: String,
    /// tokenizer.json [default: the built-in Llama-2 tokenizer].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Tokens per shard file (TinyLlama: 2049 × 1024).
    #[arg(long, default_value_t = tinyllama::data::prepare::DEFAULT_CHUNK_SIZE)]
    chunk_size: usize,
    /// Fraction of documents held out as the validation split.
    #[arg(long, default_value_t = 0.0)]
    val_fraction: f64,
    /// `i/N`: this machine takes every N-th input file from the i-th (0-based).
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Stop at the first malformed row instead of counting and skipping it.
    #[arg(long)]
    strict: bool,
    /// Delete the shards an earlier run of this --prefix and --shard left in --output (without
    /// it they are an error: the loader would read old and new shards together).
    #[arg(long)]
    replace: bool,
}

pub fn pretrain(a: PretrainArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(p) => TrainConfig::from_toml_file(p)?,
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => {$(if let Some(v) = a.$field.clone() { cfg.$field = v; })*};
    }
    set!(preset, out, max_steps, seed, micro_batch, seq_len, max_lr, min_lr, eval_interval, save_interval);
    if a.data.is_some() {
        cfg.data = a.data.clone();
    }
    if let Some(p) = &a.init_from {
        cfg.init_from = Some(a.hub.locate(p)?);
    }
    if a.tokenizer.is_some() {
        cfg.tokenizer = a.tokenizer.clone();
    }
    if a.global_batch_tokens.is_some() {
        cfg.global_batch_tokens = a.global_batch_tokens;
    }
    if a.warmup_steps.is_some() {
        cfg.warmup_steps = a.warmup_steps;
    }
    if let Some(m) = &a.mix {
        cfg.mix = TrainConfig::parse_mix(m)?;
    }
    if let Some(name) = &a.preset {
        LlamaConfig::preset(name)?; // unknown presets fail before any work
    }
    let resume = a.start.resume();
    let interrupt = stop_on_interrupt()?;
    let comm = tinyllama::dist::init()?;
    let result = tinyllama::train::pretrain::pretrain(&cfg, resume, &interrupt, !a.start.quiet, comm.as_ref());
    let Some(out) = on_rank_zero(result, comm.as_ref())? else { return Ok(()) };
    if out.losses.is_empty() && !out.interrupted {
        println!(
            "nothing to do: the run in {} is at step {} of {} (raise --max-steps to continue it)",
            cfg.out.display(),
            out.step,
            cfg.max_steps
        );
        return Ok(());
    }
    let first = out.losses.first().copied().unwrap_or(f64::NAN);
    let last = out.losses.last().copied().unwrap_or(f64::NAN);
    println!(
        "{} at step {}: train loss {first:.4} → {last:.4}{}, {:.0} tokens/s, MFU {:.1}%, {:.1} s",
        if out.interrupted { "stopped" } else { "done" },
        out.step,
        out.val_loss.map(|v| format!(", val loss {v:.4} (ppl {:.1})", v.exp())).unwrap_or_default(),
        out.tokens_per_s,
        100.0 * out.mfu,
        out.wall_s
    );
    if let Some(c) = out.checkpoint {
        println!("checkpoint: {}", c.display());
    }
    println!("metrics: {}, plot: {}", cfg.out.join("metrics.jsonl").display(), cfg.out.join("loss.svg").display());
    if out.interrupted {
        // stopped, not finished: a script must not take it as a completed run
        std::process::exit(130);
    }
    Ok(())
}

pub fn sft(a: SftArgs) -> Result<()> {
    use tinyllama::data::finetune::LossOn;
    finetune(Mode::Sft, &a.common, |c| {
        match a.loss_on.as_deref() {
            Some("all") => c.loss_on = LossOn::All,
            Some(_) => c.loss_on = LossOn::Completion,
            None => {}
        }
        c.packing |= a.packing;
    })
}

pub fn dpo(a: DpoArgs) -> Result<()> {
    use tinyllama::train::finetune::DpoLoss;
    let ref_model = a.ref_model.as_ref().map(|p| a.common.hub.locate_other(p)).transpose()?;
    finetune(Mode::Dpo, &a.common, |c| {
        if let Some(b) = a.beta {
            c.beta = b;
        }
        match a.loss_type.as_deref() {
            Some("ipo") => c.loss_type = DpoLoss::Ipo,
            Some("hinge") => c.loss_type = DpoLoss::Hinge,
            Some(_) => c.loss_type = DpoLoss::Sigmoid,
            None => {}
        }
        if ref_model.is_some() {
            c.ref_model = ref_model;
        }
    })
}

/// The settings (the recipe's defaults, a resumed run's record, a TOML file, then the flags),
/// then the run.
fn finetune(mode: Mode, a: &FinetuneArgs, mode_flags: impl FnOnce(&mut FinetuneConfig)) -> Result<()> {
    use tinyllama::train::finetune::finetune;
    if a.lora_rank == Some(0) {
        anyhow::bail!("--lora-rank 0: a LoRA rank is at least 1 (leave --lora-rank out for a full fine-tune)");
    }
    let out = a.out.clone().unwrap_or_else(|| FinetuneConfig::defaults(mode).out);
    let recorded = match a.start.resume.is_some() && a.config.is_none() {
        true => FinetuneConfig::recorded(&out)?,
        false => None,
    };
    let mut c = match (&a.config, recorded) {
        (Some(p), _) => FinetuneConfig::from_toml_file(mode, p)?,
        (None, Some(r)) => {
            if !a.start.quiet {
                eprintln!(
                    "resuming the run in {} with its recorded settings (flags given override them)",
                    out.display()
                );
            }
            r
        }
        (None, None) => FinetuneConfig::defaults(mode),
    };
    macro_rules! set {
        ($($field:ident),*) => {$(if let Some(v) = a.$field.clone() { c.$field = v; })*};
    }
    set!(
        out,
        epochs,
        max_lr,
        min_lr,
        micro_batch,
        accumulation,
        seed,
        save_interval,
        lora_rank,
        lora_alpha,
        lora_targets
    );
    macro_rules! set_some {
        ($($field:ident),*) => {$(if a.$field.is_some() { c.$field = a.$field.clone(); })*};
    }
    set_some!(model, data, chat_template, max_steps, warmup_steps, max_length, lora_init);
    c.checkpoint_activations |= a.checkpoint_activations;
    if let Some(m) = &c.model {
        c.model = Some(a.hub.locate(m)?);
    }
    mode_flags(&mut c);
    let resume = a.start.resume();
    let interrupt = stop_on_interrupt()?;
    let comm = tinyllama::dist::init()?;
    let result = finetune(mode, &c, resume, &interrupt, !a.start.quiet, comm.as_ref());
    let Some(out) = on_rank_zero(result, comm.as_ref())? else { return Ok(()) };
    if out.rows.is_empty() && !out.interrupted {
        println!("nothing to do: the run in {} is at step {} of {}", c.out.display(), out.step, out.max_steps);
        return Ok(());
    }
    let loss = |r: Option<&serde_json::Value>| r.and_then(|r| r["loss"].as_f64()).unwrap_or(f64::NAN);
    let last = out.rows.last();
    let dpo = last
        .and_then(|r| r["reward_accuracy"].as_f64().map(|a| (a, r["reward_margin"].as_f64().unwrap_or(f64::NAN))))
        .map(|(a, m)| format!(", reward accuracy {a:.2}, margin {m:.3}"))
        .unwrap_or_default();
    println!(
        "{} at step {}/{}: loss {:.4} → {:.4}{dpo}, {:.0} tokens/s, {:.1} s",
        if out.interrupted { "stopped" } else { "done" },
        out.step,
        out.max_steps,
        loss(out.rows.first()),
        loss(last),
        out.tokens_per_s,
        out.wall_s
    );
    if let Some(ck) = &out.checkpoint {
        println!("checkpoint: {} (chat with `tinyllama chat --model {}`)", ck.display(), ck.display());
    }
    println!("metrics: {}, plot: {}", c.out.join("metrics.jsonl").display(), c.out.join("loss.svg").display());
    if out.interrupted {
        std::process::exit(130);
    }
    Ok(())
}

pub fn prepare(a: PrepareArgs) -> Result<()> {
    let (i, n) = a
        .shard
        .split_once('/')
        .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)))
        .with_context(|| format!("--shard `{}`: expected i/N, e.g. 0/4", a.shard))?;
    let tok = Tokenizer::from_file_or_builtin(a.tokenizer.as_deref())?;
    let opts = tinyllama::data::prepare::PrepareOptions {
        inputs: a.input,
        output: a.output.clone(),
        prefix: a.prefix,
        chunk_size: a.chunk_size,
        val_fraction: a.val_fraction,
        shard: (i, n),
        strict: a.strict,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        replace: a.replace,
    };
    let s = tinyllama::data::prepare::prepare(&opts, &tok)?;
    println!(
        "{} files, {} documents ({} train / {} validation), {} + {} tokens, {:.1} MB in {:.1} s ({:.1} MB/s, {:.0} tokens/s)",
        s.files,
        s.documents,
        s.train_documents,
        s.val_documents,
        s.train_tokens,
        s.val_tokens,
        s.input_bytes as f64 / 1e6,
        s.seconds,
        s.input_bytes as f64 / 1e6 / s.seconds.max(1e-9),
        (s.train_tokens + s.val_tokens) as f64 / s.seconds.max(1e-9)
    );
    let skipped = s.skipped_malformed + s.skipped_no_text + s.skipped_invalid_utf8;
    if s.skipped_redpajama_github > 0 {
        println!("skipped {} RedPajamaGithub rows (as TinyLlama does)", s.skipped_redpajama_github);
    }
    if skipped > 0 {
        println!(
            "skipped {skipped} bad rows ({} malformed JSON, {} without text, {} invalid UTF-8); first at {}",
            s.skipped_malformed,
            s.skipped_no_text,
            s.skipped_invalid_utf8,
            s.first_skip.unwrap_or_default()
        );
    }
    println!("{} shard files in {}", s.shard_files.len(), a.output.display());
    Ok(())
}

pub fn train_tokenizer(input: Vec<PathBuf>, vocab_size: usize, output: PathBuf, max_mb: usize) -> Result<()> {
    let (docs, st) = tinyllama::data::prepare::read_corpus(&input, max_mb << 20)?;
    anyhow::ensure!(!docs.is_empty(), "no documents found in {input:?}");
    eprintln!("training a {vocab_size}-token BPE on {} documents from {} files", docs.len(), st.files);
    let tok = tinyllama::tokenizer::train_bpe(&docs, vocab_size, std::io::IsTerminal::is_terminal(&std::io::stderr()))?;
    tok.save(&output)?;
    println!("wrote {} ({} tokens; <s> = {}, </s> = {})", output.display(), tok.vocab_size(), tok.bos_id, tok.eos_id);
    Ok(())
}
