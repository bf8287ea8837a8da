//! `tinyllama serve`: the OpenAI-compatible server's flags.

use super::{EngineArgs, KvArgs};
use anyhow::{ensure, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    /// A Hugging Face model directory (or a training checkpoint) with tokenizer.json, or a GGUF file;
    /// or a Hugging Face Hub id: `org/name`, `org/name:Q4_0` for a GGUF repository (a local path wins).
    #[arg(long, short = 'm')]
    model: PathBuf,
    #[command(flatten)]
    hub: super::hub::HubArgs,
    /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors; what `sft
    /// --lora-rank` and PEFT write), merged in memory into the weights of a safetensors model.
    #[arg(long, value_name = "ADAPTER_DIR")]
    lora: Option<PathBuf>,
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
    /// The model's name in the API (`model` of requests, /v1/models) [default: the Hub id, or the file or
    /// directory name].
    #[arg(long)]
    model_name: Option<String>,
    /// Sequences decoding together.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Requests that may wait for a place in the batch; more are answered 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// KV-cache memory for running sequences and cached prompt prefixes together, in MiB (prefixes
    /// are evicted least recently used first) [default: --max-batch + 1 full contexts].
    #[arg(long)]
    kv_budget_mib: Option<usize>,
    /// Require `Authorization: Bearer KEY` on /v1/ requests (also TINYLLAMA_API_KEY).
    #[arg(long, env = "TINYLLAMA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// No chat page at `/` (the API alone).
    #[arg(long)]
    no_webui: bool,
    /// Largest request body, in KiB.
    #[arg(long, default_value_t = 1024)]
    max_body_kib: usize,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(a: ServeArgs) -> Result<()> {
    ensure!(a.max_batch >= 1, "--max-batch must be at least 1");
    ensure!(a.max_queue >= 1, "--max-queue must be at least 1 (requests wait there for a place in the batch)");
    a.engine.check()?;
    let dtype = tinyllama::model::ModelDtype::parse_or_auto(&a.dtype)?;
    let kv = a.kv.kind()?;
    let mut loaded = tinyllama::loader::load_model_with_lora(&a.hub.locate(&a.model)?, a.lora.as_deref(), dtype, true)?;
    loaded.model.kv_cache = kv;
    let draft = a.engine.load_draft(&loaded, &a.kv, &a.hub)?;
    let by_hub_id = !a.model.exists() && a.model.to_str().and_then(tinyllama::hub::HubId::parse).is_some();
    let model_name = a.model_name.clone().unwrap_or_else(|| {
        if by_hub_id {
            // as vLLM names a model served by Hub id
            return a.model.to_string_lossy().into_owned();
        }
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
        webui: !a.no_webui,
    };
    let ctx = loaded.model.max_positions();
    let mut engine = a.engine.options(&loaded.model, a.max_batch, ctx);
    if let Some(b) = opts.kv_budget {
        engine.kv_budget = b;
    }
    tinyllama::serve::serve(loaded, draft, opts, engine)?;
    Ok(())
}
