//! Training checkpoints: one directory per step, `CHECKPOINTS/step-{step:08}/`, holding the model as
//! a Hugging Face checkpoint (config.json, model.safetensors, tokenizer.json), the AdamW moments
//! (optimizer.safetensors) and everything else needed to continue bit for bit (trainer_state.json:
//! step, data-reader position, configs). Written into a temporary directory and renamed, so a
//! checkpoint is either complete or absent; older ones are pruned only after the new one exists.

use super::adamw::AdamW;
use super::config::TrainConfig;
use crate::checkpoint::hf::{load_hf, save_hf};
use crate::checkpoint::safetensors::{write_safetensors, Dtype, SafeTensorsFile, TensorOut};
use crate::config::LlamaConfig;
use crate::data::loader::LoaderState;
use crate::files::write_json;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps completed.
    pub step: u64,
    pub tokens_seen: u64,
    /// Data position of each rank.
    pub loaders: Vec<LoaderState>,
    pub world: usize,
    pub train_config: TrainConfig,
    pub model_config: LlamaConfig,
    pub elapsed_s: f64,
    pub consecutive_bad_steps: u32,
    /// Fine-tuning: where the example reader stands (pretraining keeps `loaders`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples: Option<serde_json::Value>,
}

use crate::checkpoint::paths::step_of;
pub use crate::checkpoint::paths::{latest_checkpoint, list_checkpoints, step_dir};

/// The newest checkpoint under `root` that loads whole, and why each newer one was passed over
/// (a step directory without trainer_state.json, a truncated safetensors file, …).
pub fn newest_loadable_checkpoint(root: &Path) -> Result<(PathBuf, LoadedCheckpoint, Vec<String>)> {
    let mut skipped = vec![];
    let mut dirs: Vec<(u64, PathBuf)> = std::fs::read_dir(root)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter_map(|p| step_of(&p).map(|s| (s, p))).collect())
        .unwrap_or_default();
    dirs.sort();
    for (_, dir) in dirs.into_iter().rev() {
        match load_checkpoint(&dir) {
            Ok(ck) => return Ok((dir, ck, skipped)),
            Err(e) => skipped.push(format!("checkpoint {} is damaged ({e:#})", dir.display())),
        }
    }
    match skipped.is_empty() {
        true => bail!("--resume: no checkpoint in {}", root.display()),
        false => bail!("--resume: no usable checkpoint in {}:\n  {}", root.display(), skipped.join("\n  ")),
    }
}

/// Removes the temporary directories of checkpoint writes that never finished (a killed run);
/// they are never complete checkpoints. Returns how many.
pub fn remove_partial_checkpoints(root: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(root) else { return 0 };
    rd.filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".step-") && n.contains(".tmp-"))
        })
        .filter(|p| std::fs::remove_dir_all(p).is_ok())
        .count()
}

/// Writes a checkpoint atomically and prunes old ones (keeping `keep_last` and milestones);
/// `extra` adds a mode's own files (a chat template, LoRA adapters) inside the same atomic write.
pub fn save_checkpoint(
    root: &Path,
    model: &Llama,
    adam: &AdamW,
    tok: &Tokenizer,
    state: &TrainerState,
    extra: &dyn Fn(&Path) -> Result<()>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let final_dir = step_dir(root, state.step);
    let tmp = root.join(format!(".step-{:08}.tmp-{}", state.step, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = (|| -> Result<()> {
        save_hf(model, &tmp, Dtype::F32, 0)?;
        tok.save(&tmp.join("tokenizer.json"))?;
        let mut meta = serde_json::Map::new();
        meta.insert("adam_step".into(), adam.step.to_string().into());
        let n = adam.m.len();
        write_safetensors(
            &tmp.join("optimizer.safetensors"),
            &[
                TensorOut { name: "exp_avg".into(), shape: vec![n], data: &adam.m, plus: None },
                TensorOut { name: "exp_avg_sq".into(), shape: vec![n], data: &adam.v, plus: None },
            ],
            Dtype::F32,
            &meta,
        )?;
        extra(&tmp)?;
        write_json(&tmp.join("trainer_state.json"), &serde_json::to_value(state)?)?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)?;
        }
        std::fs::rename(&tmp, &final_dir)?;
        crate::files::sync_dir(final_dir.parent().unwrap_or(Path::new(".")))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!("cannot write checkpoint {} (the previous one is intact)", final_dir.display())));
    }
    let cfg = &state.train_config;
    let all = list_checkpoints(root);
    let n = all.len();
    for (i, (step, dir)) in all.iter().enumerate() {
        let milestone = cfg.milestone_interval.map(|m| m > 0 && step % m == 0).unwrap_or(false);
        if i + cfg.keep_last < n && !milestone {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(final_dir)
}

pub struct LoadedCheckpoint {
    pub model: Llama,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
    pub adam_step: u64,
    pub state: TrainerState,
}

pub fn load_checkpoint(dir: &Path) -> Result<LoadedCheckpoint> {
    let sp = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&sp)
        .with_context(|| format!("{} is not a training checkpoint: cannot read {}", dir.display(), sp.display()))?;
    let state: TrainerState = serde_json::from_str(&text).with_context(|| format!("{}: unreadable", sp.display()))?;
    let model = load_hf(dir)?;
    ensure!(
        model.cfg == state.model_config,
        "{}: config.json and trainer_state.json disagree on the model",
        dir.display()
    );
    let opt = SafeTensorsFile::open(&dir.join("optimizer.safetensors"))?;
    let (adam_m, _) = opt.read_f32("exp_avg")?;
    let (adam_v, _) = opt.read_f32("exp_avg_sq")?;
    // the whole model's, or a LoRA run's adapters' (checked against the run when resuming)
    ensure!(
        adam_m.len() == adam_v.len() && adam_m.len() <= model.layout.total,
        "{}: optimizer state does not match the model's {} parameters",
        dir.display(),
        model.layout.total
    );
    let adam_step = opt
        .metadata
        .get("adam_step")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{}: optimizer.safetensors has no adam_step", dir.display()))?;
    Ok(LoadedCheckpoint { model, adam_m, adam_v, adam_step, state })
}

/// `tokenizer_config.json` as transformers reads it beside a Llama tokenizer.json, with the chat
/// template (which `apply_chat_template`, `chat` and `serve` render) when there is one.
pub fn write_tokenizer_config(dir: &Path, tok: &Tokenizer, max_len: usize, chat_template: Option<&str>) -> Result<()> {
    let name = |id: u32| tok.id_to_token(id).unwrap_or_default();
    let mut config = serde_json::json!({
        "tokenizer_class": "LlamaTokenizerFast",
        "bos_token": name(tok.bos_id),
        "eos_token": name(tok.eos_id),
        "unk_token": tok.id_to_token(0).unwrap_or_default(),
        "add_bos_token": tok.config.add_bos_token,
        "add_eos_token": tok.config.add_eos_token,
        "clean_up_tokenization_spaces": false,
        "legacy": tok.config.legacy,
        "model_max_length": max_len,
    });
    if !tok.config.add_prefix_space {
        config["add_prefix_space"] = false.into();
    }
    if let Some(t) = chat_template {
        config["chat_template"] = t.into();
    }
    write_json(&dir.join("tokenizer_config.json"), &config)
}

/// Writes a directory that transformers loads as `LlamaForCausalLM` with its tokenizer (and its
/// chat template, which `apply_chat_template` renders).
pub fn export_hf(model: &Llama, tok: &Tokenizer, out: &Path, dtype: Dtype, chat_template: Option<&str>) -> Result<()> {
    save_hf(model, out, dtype, 5 << 30)?;
    tok.save(&out.join("tokenizer.json"))?;
    write_tokenizer_config(out, tok, model.cfg.max_position_embeddings, chat_template)?;
    let name = |id: u32| tok.id_to_token(id).unwrap_or_default();
    write_json(
        &out.join("special_tokens_map.json"),
        &serde_json::json!({"bos_token": name(tok.bos_id), "eos_token": name(tok.eos_id), "unk_token": tok.id_to_token(0).unwrap_or_default()}),
    )?;
    write_json(
        &out.join("generation_config.json"),
        &serde_json::json!({
            "bos_token_id": model.cfg.bos_token_id,
            "eos_token_id": model.cfg.eos_token_id,
            "do_sample": false,
            "max_length": model.cfg.max_position_embeddings,
        }),
    )?;
    Ok(())
}
