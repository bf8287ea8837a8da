//! `tinyllama export`: a training checkpoint or Hugging Face directory written as a Hugging Face
//! directory (or, for a LoRA checkpoint, the PEFT adapter), or as a llama.cpp GGUF file.

use crate::checkpoint::paths::resolve_model_path;
use crate::checkpoint::safetensors::Dtype;
use crate::model::ModelDtype;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

pub enum ExportTarget {
    /// A Hugging Face directory (`LlamaForCausalLM` + tokenizer).
    Hf(PathBuf),
    /// A llama.cpp GGUF file.
    Gguf(PathBuf),
    /// A LoRA checkpoint's adapter as llama.cpp's LoRA GGUF (for `--lora` over the base GGUF).
    GgufLora(PathBuf),
}

/// Whether an existing output may be replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    Refuse,
    Replace,
}

/// A LoRA checkpoint's adapters: written alone (as PEFT saves them) or merged into the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lora {
    AdapterOnly,
    Merge,
}

pub struct ExportOptions {
    /// What the user named: a checkpoint, a run (its latest checkpoint), an HF directory.
    pub source: PathBuf,
    pub target: ExportTarget,
    /// The weight format; `None` keeps the source's (bf16 stays bf16; f32 when mixed).
    pub dtype: Option<String>,
    pub lora: Lora,
    pub existing: Existing,
}

/// Writes the export; returns the lines to print (what was written, and notes).
pub fn export(o: &ExportOptions) -> Result<Vec<String>> {
    let resolved = resolve_model_path(&o.source)?;
    let mut lines: Vec<String> = resolved.note.iter().cloned().collect();
    let mut dir = resolved.path;
    if crate::loader::is_gguf(&dir) {
        bail!(
            "{} is a GGUF file: export reads Hugging Face directories and training checkpoints, not GGUF \
             (run the file directly: `tinyllama generate -m {}`)",
            dir.display(),
            dir.display()
        );
    }
    if dir.is_file() {
        dir = dir.parent().unwrap_or(Path::new(".")).to_path_buf();
    }
    let out = match &o.target {
        ExportTarget::Hf(p) | ExportTarget::Gguf(p) | ExportTarget::GgufLora(p) => p,
    };
    if out.exists() && o.existing == Existing::Refuse {
        bail!("{} exists: choose another output, or pass --overwrite to replace it", out.display());
    }
    let has_adapter = dir.join("adapter_model.safetensors").exists();
    if o.lora == Lora::Merge && !has_adapter {
        bail!("--merge-lora: {} holds no LoRA adapter (adapter_model.safetensors)", dir.display());
    }
    match &o.target {
        ExportTarget::GgufLora(file) => {
            ensure!(
                has_adapter,
                "--gguf-lora: {} holds no LoRA adapter (adapter_model.safetensors): export a checkpoint of `sft`/`dpo --lora-rank`",
                dir.display()
            );
            ensure!(o.lora == Lora::AdapterOnly, "--gguf-lora writes the adapter alone: drop --merge-lora");
            ensure!(o.dtype.as_deref().is_none_or(|d| d == "f32"), "--gguf-lora writes f32 adapters: drop --dtype");
            let cfg = crate::config::LlamaConfig::from_hf_file(&dir.join("config.json"))?;
            let adapters = crate::checkpoint::peft::read_adapter(&dir, &cfg)?;
            let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            crate::gguf::llama::export_lora(&cfg, &adapters, &name, file)?;
            lines.push(format!(
                "wrote {} (LoRA rank {}, alpha {}, {} weights adapted; llama.cpp: --lora {} over a GGUF of the base model)",
                file.display(),
                adapters.rank,
                adapters.alpha,
                adapters.targets.len(),
                file.display()
            ));
        }
        ExportTarget::Hf(hf) if has_adapter && o.lora == Lora::AdapterOnly => {
            write_replacing(hf, |tmp| copy_adapter(&dir, tmp))?;
            lines.push(format!(
                "wrote the LoRA adapter to {} (PEFT's files; --merge-lora writes a plain model instead)",
                hf.display()
            ));
        }
        ExportTarget::Hf(hf) => {
            let dtype = hf_dtype(o.dtype.as_deref(), &dir)?;
            let model = crate::checkpoint::hf::load_hf(&dir)?;
            let tok = Tokenizer::from_model_dir(&dir)?;
            let template = crate::loader::chat_template_of(&dir);
            write_replacing(hf, |tmp| {
                crate::train::checkpoint::export_hf(&model, &tok, tmp, dtype, template.as_deref())
            })?;
            lines.push(format!(
                "wrote {} ({}, {} parameters, {})",
                hf.display(),
                model.cfg,
                model.cfg.num_params(),
                dtype_name(dtype)
            ));
        }
        ExportTarget::Gguf(file) => {
            let dtype = match o.dtype.as_deref() {
                Some(d) => ModelDtype::parse(d)?,
                None => {
                    ModelDtype::parse(dtype_name(crate::checkpoint::hf::stored_dtype(&dir)?.unwrap_or(Dtype::F32)))?
                }
            };
            let model = crate::checkpoint::hf::load_hf(&dir)?;
            let tok = Tokenizer::from_model_dir(&dir)
                .with_context(|| format!("{}: needs its tokenizer.json", dir.display()))?;
            let template = crate::loader::chat_template_of(&dir);
            let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            eprintln!("writing {} as {}…", file.display(), dtype.name());
            let done =
                crate::gguf::llama::export(&model.cfg, &model.params, &tok, template.as_deref(), dtype, &name, file)?;
            lines.extend(done.fallback_notes().into_iter().map(|n| format!("note: {n}")));
            let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
            lines.push(format!(
                "wrote {} ({}, {}, {:.1} MB)",
                file.display(),
                model.cfg,
                dtype.name(),
                size as f64 / 1e6
            ));
        }
    }
    Ok(lines)
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "f32",
        Dtype::BF16 => "bf16",
        Dtype::F16 => "f16",
    }
}

/// `--dtype` for a Hugging Face export: asked, or the source's.
fn hf_dtype(asked: Option<&str>, source: &Path) -> Result<Dtype> {
    match asked {
        None => Ok(crate::checkpoint::hf::stored_dtype(source)?.unwrap_or(Dtype::F32)),
        Some("f32") => Ok(Dtype::F32),
        Some("bf16") => Ok(Dtype::BF16),
        Some("f16") => Ok(Dtype::F16),
        Some(other) => bail!("--dtype {other}: use f32, bf16 or f16 with --hf (quantized formats with --gguf)"),
    }
}

/// PEFT's adapter files, with the tokenizer and its config (chat template).
fn copy_adapter(from: &Path, to: &Path) -> Result<()> {
    for f in ["adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json"] {
        let src = from.join(f);
        if src.exists() {
            let bytes = std::fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
            crate::files::write_atomically(&to.join(f), |w| Ok(std::io::Write::write_all(w, &bytes)?))?;
        }
    }
    Ok(())
}

/// Fills a fresh directory beside `out`, then puts it in `out`'s place (an old `out`, allowed by
/// `--overwrite`, is removed only once the new one is complete).
fn write_replacing(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = out.file_name().with_context(|| format!("{}: not a directory name", out.display()))?;
    ensure!(!out.exists() || out.is_dir(), "{} exists and is not a directory", out.display());
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = parent.join(format!(".{}.old-{}", name.to_string_lossy(), std::process::id()));
    if out.exists() {
        std::fs::rename(out, &old).with_context(|| format!("cannot move {} aside", out.display()))?;
    }
    std::fs::rename(&tmp, out).with_context(|| format!("cannot move the export into {}", out.display()))?;
    crate::files::sync_dir(parent)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove the replaced {}", old.display()))?;
    }
    Ok(())
}
