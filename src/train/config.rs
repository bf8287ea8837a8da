//! The pretraining configuration: one struct, from defaults (TinyLlama's recipe), a TOML file and
//! command-line flags, in that order. Printed and saved at the start of every run.

use crate::config::suggest;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Model preset (ignored with `model_config` or `init_from`).
    pub preset: String,
    /// A Hugging Face config.json to train from scratch instead of a preset.
    pub model_config: Option<PathBuf>,
    /// Continue pretraining from a Hugging Face checkpoint directory (weights + tokenizer).
    pub init_from: Option<PathBuf>,
    /// Directory of prepared shards (`tinyllama prepare`); none: the built-in corpus.
    pub data: Option<PathBuf>,
    pub out: PathBuf,
    /// tokenizer.json for the built-in corpus and for checkpoints (default: built-in Llama-2).
    pub tokenizer: Option<PathBuf>,
    /// Mixture component → weight (TinyLlama: slim 0.693584, star 0.306416).
    pub mix: BTreeMap<String, f64>,
    pub seq_len: usize,
    /// Sequences per micro-batch (per rank).
    pub micro_batch: usize,
    /// Tokens per optimiser step across all ranks; a multiple of micro_batch × seq_len × ranks.
    /// None: one micro-batch per rank.
    pub global_batch_tokens: Option<usize>,
    pub max_steps: u64,
    pub max_lr: f64,
    pub min_lr: f64,
    /// None: min(2000, max_steps / 10), TinyLlama's 2000 unless the run is short.
    pub warmup_steps: Option<u64>,
    /// None: max_steps.
    pub decay_steps: Option<u64>,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub grad_clip: f64,
    pub log_interval: u64,
    pub eval_interval: u64,
    /// Validation batches (of micro_batch sequences) per evaluation.
    pub eval_batches: usize,
    pub save_interval: u64,
    pub keep_last: usize,
    /// Also keep every checkpoint whose step is a multiple of this.
    pub milestone_interval: Option<u64>,
    pub seed: u64,
    /// Held-out fraction when the built-in corpus is prepared.
    pub val_fraction: f64,
    /// Shard files whose blocks are shuffled together.
    pub buffer_files: usize,
    /// Stop after this many consecutive steps with a NaN/inf loss or gradient norm.
    pub nan_patience: u32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            preset: "tiny-10m".into(),
            model_config: None,
            init_from: None,
            data: None,
            out: PathBuf::from("runs/tinyllama"),
            tokenizer: None,
            mix: crate::data::loader::TINYLLAMA_MIX.iter().map(|(n, w)| (n.to_string(), *w)).collect(),
            seq_len: 256,
            micro_batch: 8,
            global_batch_tokens: None,
            max_steps: 400,
            max_lr: 4e-4,
            min_lr: 4e-5,
            warmup_steps: None,
            decay_steps: None,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            log_interval: 1,
            eval_interval: 100,
            eval_batches: 8,
            save_interval: 200,
            keep_last: 2,
            milestone_interval: None,
            seed: 1337,
            val_fraction: 0.02,
            buffer_files: 8,
            nan_patience: 10,
        }
    }
}

/// `defaults` overlaid with the keys of a TOML file, for any settings struct whose fields all
/// serialize (`None` as null): an unknown key is an error that names the nearest known one, a
/// value of the wrong type one that names the file.
pub fn overlay_toml_file<T: Serialize + serde::de::DeserializeOwned>(defaults: &T, path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let mut merged = serde_json::to_value(defaults)?;
    let known: Vec<String> = merged.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    for (k, v) in table {
        if !known.contains(&k.as_str()) {
            let hint = suggest(&k, &known).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
            bail!("{}: unknown config key `{k}`{hint}", path.display());
        }
        merged[&k] = serde_json::to_value(v)?;
    }
    serde_json::from_value(merged).with_context(|| format!("{}: bad value", path.display()))
}

impl TrainConfig {
    /// Defaults overlaid with a TOML file. An unknown key is an error that names the nearest
    /// known one.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        overlay_toml_file(&TrainConfig::default(), path)
    }

    /// A mixture from `NAME=WEIGHT,…` (the `--mix` flag), e.g. `slim=0.693584,star=0.306416`.
    pub fn parse_mix(s: &str) -> Result<BTreeMap<String, f64>> {
        s.split(',')
            .map(|kv| {
                let (k, v) = kv.split_once('=').with_context(|| format!("--mix: `{kv}` is not NAME=WEIGHT"))?;
                let w: f64 = v.trim().parse().with_context(|| format!("--mix: weight `{v}` is not a number"))?;
                Ok((k.trim().to_string(), w))
            })
            .collect()
    }

    pub fn warmup(&self) -> u64 {
        self.warmup_steps.unwrap_or_else(|| 2000.min(self.max_steps / 10))
    }

    pub fn decay(&self) -> u64 {
        self.decay_steps.unwrap_or(self.max_steps)
    }

    /// Micro-batches per optimiser step on each of `world` ranks.
    pub fn accumulation(&self, world: usize) -> Result<usize> {
        let per = self.micro_batch * self.seq_len * world;
        match self.global_batch_tokens {
            None => Ok(1),
            Some(g) => {
                ensure!(
                    g >= per && g % per == 0,
                    "global_batch_tokens {g} is not a multiple of micro_batch × seq_len × ranks = {per}"
                );
                Ok(g / per)
            }
        }
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(self.seq_len >= 1 && self.micro_batch >= 1, "seq_len and micro_batch must be positive");
        ensure!(self.max_steps >= 1, "max_steps must be at least 1");
        ensure!(
            self.max_lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.max_lr,
            "need 0 <= min_lr <= max_lr, max_lr > 0"
        );
        ensure!(self.grad_clip > 0.0, "grad_clip must be positive");
        ensure!(!self.mix.is_empty(), "the mixture is empty");
        for (k, w) in &self.mix {
            ensure!(w.is_finite() && *w > 0.0, "mixture weight of `{k}` is {w}: weights must be positive");
        }
        ensure!((0.0..1.0).contains(&self.val_fraction), "val_fraction must be in [0, 1)");
        ensure!(self.keep_last >= 1, "keep_last must be at least 1");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings' names, from the struct itself (every field serializes, `None` as null).
    fn keys() -> Vec<String> {
        match serde_json::to_value(TrainConfig::default()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => vec![],
        }
    }

    #[test]
    fn toml_overrides_and_unknown_keys() {
        let d = std::env::temp_dir().join(format!("tinyllama-tcfg-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("run.toml");
        std::fs::write(&p, "preset = \"bench-50m\"\nmax_steps = 10\n[mix]\nslim = 1.0\n").unwrap();
        let c = TrainConfig::from_toml_file(&p).unwrap();
        assert_eq!((c.preset.as_str(), c.max_steps, c.mix.len()), ("bench-50m", 10, 1));
        assert_eq!(c.max_lr, 4e-4);
        assert_eq!(keys().len(), 30, "{:?}", keys());
        std::fs::write(&p, "max_stpes = 10\n").unwrap();
        let err = TrainConfig::from_toml_file(&p).unwrap_err().to_string();
        assert!(err.contains("`max_stpes`") && err.contains("did you mean `max_steps`"), "{err}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn mix_flag() {
        let m = TrainConfig::parse_mix("slim=0.693584, star = 0.306416").unwrap();
        assert_eq!(m.into_iter().collect::<Vec<_>>(), [("slim".into(), 0.693584), ("star".into(), 0.306416)]);
        assert!(TrainConfig::parse_mix("slim").unwrap_err().to_string().contains("not NAME=WEIGHT"));
        assert!(TrainConfig::parse_mix("slim=x").unwrap_err().to_string().contains("not a number"));
    }

    #[test]
    fn tinyllama_schedule_defaults() {
        let mut c = TrainConfig { max_steps: 1_430_512, ..Default::default() };
        assert_eq!((c.warmup(), c.decay()), (2000, 1_430_512));
        c.max_steps = 400;
        assert_eq!(c.warmup(), 40);
        c.global_batch_tokens = Some(2048 * 3);
        assert_eq!(c.accumulation(1).unwrap(), 3);
        c.global_batch_tokens = Some(1000);
        assert!(c.accumulation(1).is_err());
    }
}
