//! `tinyllama bench generate` and `bench train`: flags and reports.

use super::{EngineArgs, KvArgs, ModelArg};
use anyhow::{ensure, Result};
use clap::Subcommand;
use std::path::PathBuf;
use tinyllama::checkpoint::safetensors::Dtype;
use tinyllama::tokenizer::Tokenizer;

#[derive(Subcommand)]
// parsed once per process: the variants' sizes do not matter
#[allow(clippy::large_enum_variant)]
pub enum BenchCmd {
    /// Prefill, decode and batched-decode speed (tokens/s) with the KV cache, against the read
    /// bandwidth measured in the same run; random weights of a preset/config, or a GGUF file.
    Generate {
        #[command(flatten)]
        model: ModelArg,
        /// A model to measure instead of random weights: a GGUF file, or a Hugging Face directory
        /// or training checkpoint (converted to --dtype at load); or a Hugging Face Hub id.
        #[arg(long = "model", short = 'm', conflicts_with_all = ["preset", "config"])]
        gguf: Option<PathBuf>,
        #[command(flatten)]
        hub: super::hub::HubArgs,
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
        /// The engine's step budget and speculative decoding. With --draft-dtype but no --draft,
        /// the draft is the measured model's own weights in that format (a model and its Q8_0).
        #[command(flatten)]
        engine: EngineArgs,
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
        /// Tokens per sequence [default: 256, capped at the model's context].
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

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Generate { model, gguf: None, dtype, write_gguf: Some(out), .. } => {
            let dtype = tinyllama::model::ModelDtype::parse(&dtype)?;
            let (name, m, tok) = random_model(&model, "--write-gguf")?;
            tinyllama::gguf::llama::export(&m.cfg, &m.params, &tok, None, dtype, &name, &out)?;
            println!("wrote {} ({name}, random weights, {})", out.display(), dtype.name());
        }
        BenchCmd::Generate { model, gguf: None, write_hf: Some(out), .. } => {
            let (name, m, tok) = random_model(&model, "--write-hf")?;
            anyhow::ensure!(!out.exists(), "{} exists; choose a new directory", out.display());
            tinyllama::checkpoint::hf::save_hf(&m, &out, Dtype::F32, u64::MAX)?;
            tok.save(&out.join("tokenizer.json"))?;
            println!("wrote {} ({name}, random weights, f32)", out.display());
        }
        BenchCmd::Generate {
            model, gguf, hub, dtype, kv, prompt_len, new_tokens, batch, runs, json, engine, ..
        } => {
            engine.check()?;
            let gguf = gguf.map(|p| hub.locate(&p)).transpose()?;
            let shape = [prompt_len, new_tokens, batch, runs];
            let r = measure_generate(&model, gguf.as_deref(), &dtype, &kv, &engine, &hub, shape)?;
            match json {
                true => println!("{}", serde_json::to_string(&r)?),
                false => println!("{r}"),
            }
        }
        BenchCmd::Train { model, batch, seq_len, steps, warmup, json, profile } => {
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
            match json {
                true => println!("{}", serde_json::to_string(&r)?),
                false => println!("{r}"),
            }
        }
    }
    Ok(())
}

/// `bench generate` on a model file or directory (`file`), or on random weights of a preset in
/// `dtype`; `[prompt_len, new_tokens, batch, runs]`.
fn measure_generate(
    model: &ModelArg,
    file: Option<&std::path::Path>,
    dtype: &str,
    kv: &KvArgs,
    engine: &EngineArgs,
    hub: &super::hub::HubArgs,
    [prompt_len, new_tokens, batch, runs]: [usize; 4],
) -> Result<tinyllama::bench::GenerateBench> {
    use tinyllama::model::{InferenceModel, ModelDtype};
    let dtype = ModelDtype::parse(dtype)?;
    // the 512 MiB probe only for models too small to be their own (taken before loading, so that
    // its buffer and the model are not in memory together)
    let approx_bytes = match file {
        Some(p) => std::fs::metadata(p).map(|m| m.len() as usize).unwrap_or(0),
        None => tinyllama::bench::approx_weight_bytes(&model.resolve("tinyllama-1.1b")?.1, dtype),
    };
    let bandwidth = (approx_bytes < 2 * tinyllama::bench::PROBE_MIN_BYTES).then(tinyllama::bench::read_bandwidth);
    let self_draft = engine.draft_dtype_of_self()?;
    let (name, mut target, mut draft) = match file {
        Some(p) => {
            let loaded = tinyllama::loader::load_model(p, (!tinyllama::loader::is_gguf(p)).then_some(dtype), false)?;
            let draft = engine.load_draft(&loaded, kv, hub)?.map(|d| d.model);
            (p.display().to_string(), loaded.model, draft)
        }
        None => {
            let (name, cfg) = model.resolve("tinyllama-1.1b")?;
            let params = tinyllama::model::Llama::new_init(cfg.clone(), 7).params;
            let draft = match self_draft {
                Some(dd) => Some(InferenceModel::from_params(cfg.clone(), params.clone(), dd)?),
                None => None,
            };
            anyhow::ensure!(
                engine.draft.is_none(),
                "--draft needs --model (random weights draft themselves: --draft-dtype)"
            );
            (name, InferenceModel::from_params(cfg, params, dtype)?, draft)
        }
    };
    target.kv_cache = kv.kind()?;
    if let Some(d) = draft.as_mut() {
        d.kv_cache = kv.kind()?;
    }
    let setup = tinyllama::bench::GenerateSetup {
        prompt_len,
        new_tokens,
        batch,
        runs,
        step_tokens: engine.step_tokens,
        draft: engine.draft_options(),
    };
    tinyllama::bench::generate_bench(&name, &target, draft.as_ref(), &setup, bandwidth)
}

/// The random model (seed 7) of a preset/config for `bench generate --write-*`, with the built-in
/// tokenizer, which its vocabulary must match.
fn random_model(model: &ModelArg, flag: &str) -> Result<(String, tinyllama::model::Llama, Tokenizer)> {
    let (name, cfg) = model.resolve("tinyllama-1.1b")?;
    let tok = Tokenizer::llama2();
    ensure!(cfg.vocab_size == tok.vocab_size(), "{flag} needs a model with the Llama-2 vocabulary (32000)");
    Ok((name, tinyllama::model::Llama::new_init(cfg, 7), tok))
}
