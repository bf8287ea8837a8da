//! `tinyllama info`: a model's configuration and parameter count; for a GGUF file also what
//! llama.cpp says when it loads one (tensor types, size, memory, KV bytes per token).

use super::ModelArg;
use anyhow::Result;
use clap::Args;
use std::path::{Path, PathBuf};
use tinyllama::config::LlamaConfig;

#[derive(Args)]
pub struct InfoArgs {
    /// A model: Hugging Face directory (or its model.safetensors), training checkpoint, run
    /// directory (its latest checkpoint), or GGUF file; or a Hugging Face Hub id (a local path wins).
    #[arg(long, short = 'm', conflicts_with_all = ["preset", "config"])]
    model: Option<PathBuf>,
    #[command(flatten)]
    hub: super::hub::HubArgs,
    #[command(flatten)]
    spec: ModelArg,
}

pub fn run(m: InfoArgs) -> Result<()> {
    let mut gguf_summary = None;
    let (name, cfg) = match &m.model {
        Some(named) => {
            let resolved = tinyllama::checkpoint::paths::resolve_model_path(&m.hub.locate(named)?)?;
            if let Some(note) = &resolved.note {
                eprintln!("{note}");
            }
            let p = resolved.path;
            if tinyllama::loader::is_gguf(&p) {
                let g = tinyllama::gguf::GgufFile::open(&p)?;
                let cfg = tinyllama::gguf::llama::config(&g)?;
                gguf_summary = Some(tinyllama::gguf::llama::FileSummary::of(&g, &cfg)?);
                (p.display().to_string(), cfg)
            } else {
                let dir = if p.is_file() { p.parent().unwrap_or(Path::new(".")) } else { p.as_path() };
                let file = dir.join("config.json");
                (file.display().to_string(), LlamaConfig::from_hf_file(&file)?)
            }
        }
        None => m.spec.resolve("tiny-10m")?,
    };
    println!("{name}: {cfg}");
    println!("parameters: {}", cfg.num_params());
    if let Some(s) = gguf_summary {
        println!("{s}");
    }
    println!("{}", serde_json::to_string_pretty(&cfg)?);
    Ok(())
}
