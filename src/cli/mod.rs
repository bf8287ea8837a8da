//! The command line's flags, one file a command (`train`, `generate`, `chat`, `serve`, `eval`,
//! `export`, `info`, `bench`), and what the commands share: how a model is named and loaded,
//! sampling flags, how a training run starts and stops.

pub mod bench;
pub mod chat;
pub mod eval;
pub mod export;
pub mod generate;
mod help;
pub mod hub;
pub mod info;
#[cfg(feature = "serve")]
pub mod serve;
pub mod train;

use anyhow::{ensure, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tinyllama::config::LlamaConfig;
use tinyllama::tokenizer::Tokenizer;
use tinyllama::train::pretrain::Resume;

use bench::BenchCmd;
use chat::ChatArgs;
use eval::EvalArgs;
use export::ExportArgs;
use generate::GenerateArgs;
use hub::DownloadArgs;
use info::InfoArgs;
#[cfg(feature = "serve")]
use serve::ServeArgs;
use train::{DpoArgs, PrepareArgs, PretrainArgs, SftArgs};

/// Recorded in every result file, with what the result was computed from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Parser)]
#[command(
    name = "tinyllama",
    version,
    about = "Pretrain, evaluate and run compact Llama-2-architecture models (TinyLlama) on CPU"
)]
pub struct Cli {
    /// Worker threads (also RAYON_NUM_THREADS) [default: all cores].
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

impl Cli {
    /// The command line, parsed; bad arguments exit with 1 like every other bad input (clap's own
    /// default is 2), `--help` and `--version` with 0.
    pub fn parse_with_defaults() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let parsed =
            help::with_defaults_shown(Cli::command()).try_get_matches().and_then(|m| Cli::from_arg_matches(&m));
        parsed.unwrap_or_else(|e| {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 1 } else { 0 })
        })
    }
}

#[derive(Subcommand)]
pub enum Cmd {
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
    Sft(Box<SftArgs>),
    /// Direct Preference Optimization of a chat model (TRL's DPOTrainer, step for step).
    ///
    /// Data: JSONL with {"prompt", "chosen", "rejected"} (conversations or text). The reference
    /// model's log-probabilities are computed once (from the starting weights or --ref-model) and
    /// kept in the run directory. Defaults: the Zephyr DPO recipe — β 0.01, sigmoid loss, lr 5e-7,
    /// cosine after 10% warmup, 1 epoch, sequences of 1024 tokens.
    Dpo(Box<DpoArgs>),
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
    /// Chat with a chat model (its own chat template, else Zephyr's, as TinyLlama-1.1B-Chat).
    ///
    /// Reads lines from the terminal (with line editing and history) or from stdin. Ctrl-C stops a
    /// reply and keeps the session; Ctrl-D quits. The KV cache is kept across turns, and the
    /// oldest turns make room when the context fills.
    ///
    /// Commands: /help (this list), /reset (forget the conversation), /system TEXT (a new system
    /// prompt and conversation; /system alone removes it), /exit or /quit (quit).
    Chat(ChatArgs),
    /// An OpenAI-compatible HTTP server with continuous batching: /v1/completions,
    /// /v1/chat/completions (streaming as server-sent events), /v1/models, /health, /metrics.
    ///
    /// Requests join and leave the running batch between decode steps; a greedy or seeded request
    /// returns the same tokens whatever else is running. SIGTERM or Ctrl-C: stop accepting,
    /// finish the running requests, exit.
    ///
    /// Sampling is the request's: a request without `temperature` samples at 1, as OpenAI's API
    /// does (unlike `generate`, whose default is 0, greedy); `top_p` 1, `max_tokens` to the end of
    /// the context; `frequency_penalty` / `presence_penalty` as OpenAI defines them and
    /// `repetition_penalty` as vLLM and llama.cpp do.
    #[cfg(feature = "serve")]
    Serve(ServeArgs),
    /// Print a model configuration and its parameter count (a preset, a config.json, or a model:
    /// HF directory, its model.safetensors, a checkpoint or a GGUF file).
    Info(InfoArgs),
    /// Fetch a model from the Hugging Face Hub into its cache (huggingface_hub's, shared with
    /// Python), without running it; prints the local path.
    ///
    /// `org/name`: what a model needs (safetensors weights, config, tokenizer, chat template);
    /// `org/name:Q4_K_M` or --hf-file: one GGUF file; --include: files by pattern. Reads HF_HOME,
    /// HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN (or the token file) and HF_HUB_OFFLINE as huggingface_hub
    /// does. Interrupted downloads resume.
    Download(DownloadArgs),
    /// Benchmarks: `bench train` (training step, MFU), `bench generate` (prefill and decode).
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Args)]
pub struct ModelArg {
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

/// How a training run starts, and how much it says (pretrain, sft, dpo).
#[derive(Args)]
pub struct RunStart {
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
pub struct SamplingArgs {
    /// 0 = greedy (deterministic).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample among the most likely tokens whose probabilities sum to p (1: all).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    /// Seed of the sampler [default: a random one when sampling, printed so the run can be repeated].
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
    /// Subtract this × how often a token was generated from its logit, as OpenAI's API does (0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// Subtract this from the logit of every token generated already, as OpenAI's API does (0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// Weight format for a safetensors model: auto (as stored: bf16 and f16 stay so, else f32),
    /// f32, f16, bf16, q8_0, q4_0, q4_k_m, q4_k, q6_k (quantized at load). GGUF files keep their own.
    #[arg(long, default_value = "auto")]
    dtype: String,
    #[command(flatten)]
    kv: KvArgs,
}

/// `--kv-cache`, shared by the commands that run a model.
#[derive(Args, Clone, Debug)]
pub struct KvArgs {
    /// KV cache elements: f16 (llama.cpp's default: half the memory), f32, or auto — f16 for GGUF
    /// and quantized models, f32 for f32 models (whose numbers are then the training forward's).
    #[arg(long, default_value = "auto")]
    kv_cache: String,
}

/// How the decode engine runs: the rows of a step, and speculative decoding with a draft model.
#[derive(Args)]
pub struct EngineArgs {
    /// Rows one step computes while sequences are decoding: each one's next token (and the draft
    /// tokens it verifies) first, then chunks of waiting prompts fill the rest. Smaller keeps
    /// streams steady while long prompts arrive; larger gets those prompts their first token
    /// sooner. (With nothing decoding, prompts take up to 512 rows a step.)
    #[arg(long, default_value_t = tinyllama::decode::DEFAULT_STEP_TOKENS)]
    step_tokens: usize,
    /// A draft model with the same tokenizer (this model quantized, or TinyLlama for a larger
    /// Llama-2) for speculative decoding: greedy output is unchanged, sampling keeps its
    /// distribution; faster where the draft agrees.
    #[arg(long)]
    draft: Option<std::path::PathBuf>,
    /// Weight format of the draft (as --dtype: auto keeps a safetensors draft's stored format,
    /// e.g. q8_0 quantizes it at load; GGUF files keep their own). Without --draft: the model
    /// drafts for itself in this format.
    #[arg(long, default_value = "auto")]
    draft_dtype: String,
    /// Tokens the draft proposes per step at most (fewer where it is unsure, and adapting to how
    /// many the model accepts).
    #[arg(long, default_value_t = tinyllama::decode::DraftOptions::default().max_tokens)]
    draft_tokens: usize,
    /// The draft stops proposing where its most likely token is less likely than this (llama.cpp's
    /// --draft-p-min).
    #[arg(long, default_value_t = tinyllama::decode::DraftOptions::default().p_min)]
    draft_p_min: f32,
}

impl EngineArgs {
    /// The flags' values checked (before any model loads).
    fn check(&self) -> Result<()> {
        ensure!(self.step_tokens >= 1, "--step-tokens must be at least 1 (rows a step computes)");
        ensure!(self.draft_tokens >= 1, "--draft-tokens must be at least 1");
        ensure!((0.0..=1.0).contains(&self.draft_p_min), "--draft-p-min must be in [0, 1], not {}", self.draft_p_min);
        tinyllama::model::ModelDtype::parse_or_auto(&self.draft_dtype)
            .map_err(|e| anyhow::anyhow!("--draft-dtype: {e}"))?;
        Ok(())
    }

    fn draft_options(&self) -> tinyllama::decode::DraftOptions {
        tinyllama::decode::DraftOptions { max_tokens: self.draft_tokens, p_min: self.draft_p_min }
    }

    /// `--draft-dtype` given without `--draft`: the format in which a model drafts for itself.
    fn draft_dtype_of_self(&self) -> Result<Option<tinyllama::model::ModelDtype>> {
        match self.draft {
            Some(_) => Ok(None),
            None => tinyllama::model::ModelDtype::parse_or_auto(&self.draft_dtype),
        }
    }

    /// The engine's options for `max_batch` sequences of `max_len` positions.
    fn options(
        &self,
        model: &tinyllama::model::InferenceModel,
        max_batch: usize,
        max_len: usize,
    ) -> tinyllama::decode::EngineOptions {
        let mut o = tinyllama::decode::EngineOptions::for_model(model, max_batch, max_len);
        o.step_tokens = self.step_tokens;
        o.draft = self.draft_options();
        o
    }

    /// The draft model, checked against `target` (same vocabulary, enough context): `--draft`, or
    /// with `--draft-dtype` alone the target's own weights in that format.
    fn load_draft(
        &self,
        target: &tinyllama::loader::LoadedModel,
        kv: &KvArgs,
        hub: &hub::HubArgs,
    ) -> Result<Option<tinyllama::loader::LoadedModel>> {
        let dtype = tinyllama::model::ModelDtype::parse_or_auto(&self.draft_dtype)?;
        let path = match (&self.draft, dtype) {
            (Some(p), _) => hub.locate_other(p)?,
            (None, Some(_)) if tinyllama::loader::is_gguf(&target.source) => {
                anyhow::bail!("--draft-dtype without --draft: a GGUF model keeps its format, so it cannot draft for itself; pass --draft FILE")
            }
            (None, Some(_)) => target.source.clone(),
            (None, None) => return Ok(None),
        };
        let mut d = tinyllama::loader::load_model(&path, dtype, true)?;
        d.model.kv_cache = kv.kind()?;
        target.check_draft(&d)?;
        Ok(Some(d))
    }
}

impl KvArgs {
    fn kind(&self) -> Result<tinyllama::model::KvCacheType> {
        tinyllama::model::KvCacheType::parse(&self.kv_cache).map_err(|e| anyhow::anyhow!("--kv-cache: {e}"))
    }
}

impl SamplingArgs {
    /// The sampler's settings, refused when out of range (rather than silently misbehaving).
    fn options(&self) -> Result<tinyllama::decode::SamplingOptions> {
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
        for (v, flag) in
            [(self.frequency_penalty, "--frequency-penalty"), (self.presence_penalty, "--presence-penalty")]
        {
            ensure!((-2.0..=2.0).contains(&v), "{flag} must be in [-2, 2] (0 = off), not {v}");
        }
        Ok(tinyllama::decode::SamplingOptions {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed.unwrap_or(0),
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
        })
    }

    /// [`options`](Self::options) with a random seed when sampling without `--seed` (said on
    /// stderr, so that the run can be repeated).
    fn options_announced(&self) -> Result<tinyllama::decode::SamplingOptions> {
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

/// A training run's result where rank 0 reports it: an error on any rank of a job takes every
/// rank down; the other ranks get `None`.
pub fn on_rank_zero<T>(result: Result<T>, comm: &dyn tinyllama::dist::Collectives) -> Result<Option<T>> {
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
pub fn stop_on_interrupt() -> Result<Arc<AtomicBool>> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("interrupt: finishing this step, then writing a checkpoint (Ctrl-C again to abort)");
    })
    .context("cannot install the signal handler")?;
    Ok(interrupt)
}

pub fn load_model_dir(
    dir: &std::path::Path,
    dtype: &str,
    kv: &KvArgs,
) -> Result<(tinyllama::model::InferenceModel, Tokenizer)> {
    let (dtype, kv) = (tinyllama::model::ModelDtype::parse_or_auto(dtype)?, kv.kind()?);
    let mut m = tinyllama::loader::load_model(dir, dtype, true)?;
    m.model.kv_cache = kv;
    Ok((m.model, m.tokenizer))
}
