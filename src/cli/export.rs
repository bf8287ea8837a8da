//! `tinyllama export`: flags, and the call into `tinyllama::export`.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("output").required(true).args(["hf", "gguf", "gguf_lora"])))]
pub struct ExportArgs {
    /// What to export: a checkpoint (runs/NAME/checkpoints/step-N; `step-400` for step-00000400), a
    /// run directory (its latest checkpoint) or any Hugging Face model directory. GGUF files are
    /// not read here. A Hugging Face Hub id (`org/name`) works too (a local path wins).
    #[arg(long, short = 'm', alias = "model")]
    checkpoint: PathBuf,
    #[command(flatten)]
    hub: super::hub::HubArgs,
    /// Output directory for a Hugging Face model (LlamaForCausalLM + tokenizer).
    #[arg(long, conflicts_with = "gguf")]
    hf: Option<PathBuf>,
    /// Output GGUF file for llama.cpp (tokenizer with SentencePiece scores and chat template embedded).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Output LoRA GGUF for llama.cpp's `--lora` (a LoRA checkpoint's adapter, as
    /// convert_lora_to_gguf.py writes it; f32), applied over a GGUF of the base model.
    #[arg(long, value_name = "ADAPTER.gguf", conflicts_with_all = ["hf", "gguf"])]
    gguf_lora: Option<PathBuf>,
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

pub fn run(a: ExportArgs) -> Result<()> {
    use tinyllama::export::{export, Existing, ExportOptions, ExportTarget, Lora};
    let target = match (a.hf, a.gguf, a.gguf_lora) {
        (Some(hf), _, _) => ExportTarget::Hf(hf),
        (None, Some(g), _) => ExportTarget::Gguf(g),
        (None, None, Some(l)) => ExportTarget::GgufLora(l),
        (None, None, None) => bail!("export needs --hf DIR, --gguf FILE or --gguf-lora FILE"),
    };
    let lines = export(&ExportOptions {
        source: a.hub.locate(&a.checkpoint)?,
        target,
        dtype: (a.dtype != "auto").then_some(a.dtype),
        lora: if a.merge_lora { Lora::Merge } else { Lora::AdapterOnly },
        existing: if a.overwrite { Existing::Replace } else { Existing::Refuse },
    })?;
    for l in lines {
        println!("{l}");
    }
    Ok(())
}
