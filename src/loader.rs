//! Loading a model for inference from what a user points at: a Hugging Face directory (or its
//! `model.safetensors`), a training checkpoint, or a llama.cpp GGUF file.

use crate::checkpoint::safetensors::Dtype;
use crate::kernels::quant::Format;
use crate::model::{InferenceModel, ModelDtype};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub struct LoadedModel {
    pub model: InferenceModel,
    pub tokenizer: Tokenizer,
    /// The Jinja chat template (`tokenizer_config.json` or GGUF `tokenizer.chat_template`).
    pub chat_template: Option<String>,
    /// The file or directory read.
    pub source: PathBuf,
}

pub fn is_gguf(path: &Path) -> bool {
    path.is_file() && path.extension().map(|e| e.eq_ignore_ascii_case("gguf")).unwrap_or(false)
}

/// The chat template of a model directory, if any: `chat_template.jinja` (where transformers 5
/// saves it) or the `chat_template` of `tokenizer_config.json`.
pub fn chat_template_of(dir: &Path) -> Option<String> {
    if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Some(t);
    }
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("chat_template")?.as_str().map(str::to_string)
}

fn check_vocabulary(tok: &Tokenizer, cfg: &crate::config::LlamaConfig, source: &Path) -> Result<()> {
    tok.check_fits(cfg.vocab_size).with_context(|| source.display().to_string())
}

/// Loads `path` (any name `checkpoint::paths::resolve_model_path` reads: a run directory takes
/// its latest checkpoint, said on stderr). Safetensors weights are converted to `dtype` (`None`:
/// kept as stored where that is bf16 or f16, else f32); GGUF files keep the formats they store. `progress`: say on stderr what is being done.
pub fn load_model(path: &Path, dtype: Option<ModelDtype>, progress: bool) -> Result<LoadedModel> {
    load_model_with_lora(path, None, dtype, progress)
}

/// As [`load_model`], with a PEFT LoRA adapter directory merged into the weights (in memory, before
/// any conversion to `dtype`); the base must be a safetensors model.
pub fn load_model_with_lora(
    path: &Path,
    lora: Option<&Path>,
    dtype: Option<ModelDtype>,
    progress: bool,
) -> Result<LoadedModel> {
    let resolved = crate::checkpoint::paths::resolve_model_path(path)?;
    if let Some(note) = &resolved.note {
        eprintln!("{note}");
    }
    let path = resolved.path.as_path();
    if is_gguf(path) {
        if let Some(a) = lora {
            anyhow::bail!(
                "--lora {}: a PEFT adapter applies to a safetensors model, and {} is a GGUF file (pass the model's Hugging Face directory, or merge the adapter with `tinyllama export --merge-lora`)",
                a.display(),
                path.display()
            );
        }
        let g = crate::gguf::llama::load(path)?;
        if progress {
            if let Some(d) = dtype.filter(|d| *d != ModelDtype::Uniform(Format::F32)) {
                eprintln!(
                    "note: {} keeps its own weight formats; --dtype {} applies to safetensors models",
                    path.display(),
                    d.name()
                );
            }
        }
        check_vocabulary(&g.tokenizer, &g.model.cfg, path)?;
        return Ok(LoadedModel {
            model: g.model,
            tokenizer: g.tokenizer,
            chat_template: g.chat_template,
            source: path.into(),
        });
    }
    let dir = if path.is_file() { path.parent().unwrap_or(Path::new(".")).to_path_buf() } else { path.to_path_buf() };
    let mut llama = crate::checkpoint::hf::load_hf(&dir)?;
    if let Some(a) = lora {
        let adapters = crate::checkpoint::peft::read_adapter(a, &llama.cfg)?;
        if progress {
            eprintln!(
                "LoRA {}: rank {}, {} weights adapted, merged",
                a.display(),
                adapters.rank,
                adapters.targets.len()
            );
        }
        adapters.merge_into(&mut llama.params);
    }
    let tokenizer = Tokenizer::from_model_dir(&dir)
        .with_context(|| format!("{}: a model directory needs its tokenizer.json", dir.display()))?;
    check_vocabulary(&tokenizer, &llama.cfg, &dir)?;
    let chat_template = chat_template_of(&dir);
    let dtype = match dtype {
        Some(d) => d,
        None => match crate::checkpoint::hf::stored_dtype(&dir)? {
            Some(Dtype::BF16) => ModelDtype::Uniform(Format::BF16),
            Some(Dtype::F16) => ModelDtype::Uniform(Format::F16),
            _ => ModelDtype::Uniform(Format::F32),
        },
    };
    if progress && dtype != ModelDtype::Uniform(Format::F32) {
        eprintln!("converting {} parameters to {}…", llama.cfg.num_params(), dtype.name());
    }
    let cfg = llama.cfg.clone();
    let model = InferenceModel::from_params(cfg, llama.params, dtype)?;
    Ok(LoadedModel { model, tokenizer, chat_template, source: dir })
}

impl LoadedModel {
    /// Refuses a draft model (speculative decoding) that cannot serve this one: another
    /// vocabulary, or a shorter context.
    pub fn check_draft(&self, draft: &LoadedModel) -> Result<()> {
        let (t, d) = (&self.tokenizer, &draft.tokenizer);
        anyhow::ensure!(
            draft.model.cfg.vocab_size == self.model.cfg.vocab_size
                && d.vocab_size() == t.vocab_size()
                && (0..t.vocab_size() as u32).all(|i| d.id_to_token(i) == t.id_to_token(i)),
            "the draft model {} does not share the vocabulary of {} ({} and {} tokens): speculative decoding needs the same tokenizer",
            draft.source.display(),
            self.source.display(),
            draft.model.cfg.vocab_size,
            self.model.cfg.vocab_size
        );
        anyhow::ensure!(
            draft.model.max_positions() >= self.model.max_positions(),
            "the draft model {} has a context of {} tokens, shorter than the {} of {}: choose a draft with at least the model's context",
            draft.source.display(),
            draft.model.max_positions(),
            self.model.max_positions(),
            self.source.display()
        );
        Ok(())
    }
}
