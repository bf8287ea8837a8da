//! The model configuration: one struct, loaded from a Hugging Face `config.json` (transformers 4 or 5
//! style) or from a named preset, and printed in every run's log.

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// A Llama-2-architecture decoder as TinyLlama uses it: RMSNorm, rotate-half RoPE, grouped-query
/// attention, SwiGLU MLP, untied output head, no biases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    #[serde(serialize_with = "shortest_f32")]
    pub rms_norm_eps: f32,
    #[serde(serialize_with = "shortest_f32")]
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    pub bos_token_id: u32,
    /// The first (or only) end-of-sequence id.
    pub eos_token_id: u32,
    /// Further end-of-sequence ids where `config.json` gives `eos_token_id` as a list (generation
    /// stops at any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_eos_token_ids: Vec<u32>,
}

/// Names of the built-in presets, smallest first.
pub const PRESETS: &[&str] = &["tiny-10m", "bench-50m", "tinyllama-1.1b"];

impl LlamaConfig {
    /// A named preset: `tiny-10m` (trains in minutes on 2 cores), `bench-50m` (the benchmark shape)
    /// or `tinyllama-1.1b` (exactly the published TinyLlama-1.1B config).
    pub fn preset(name: &str) -> Result<Self> {
        let base = |vocab, d, layers, heads, kv, ffn, ctx| LlamaConfig {
            vocab_size: vocab,
            hidden_size: d,
            intermediate_size: ffn,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: d / heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: ctx,
            bos_token_id: 1,
            eos_token_id: 2,
            extra_eos_token_ids: vec![],
        };
        Ok(match name {
            "tiny-10m" => base(32000, 128, 4, 4, 2, 352, 256),
            "bench-50m" => base(32000, 512, 6, 8, 2, 1408, 256),
            "tinyllama-1.1b" => base(32000, 2048, 22, 32, 4, 5632, 2048),
            other => bail!(
                "unknown preset `{other}`{}; presets: {}",
                suggest(other, PRESETS).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(),
                PRESETS.join(", ")
            ),
        })
    }

    /// Loads a Hugging Face `config.json`. Refuses what this engine does not implement
    /// (rope scaling, biases, tied embeddings, another activation) rather than computing something else.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read model config {}", path.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        let cfg = Self::from_hf_json(&v).with_context(|| format!("unsupported model config {}", path.display()))?;
        let defaulted = Self::defaulted_keys(&v, &cfg);
        if !defaulted.is_empty() {
            eprintln!("note: {} does not set {}", path.display(), defaulted.join(", "));
        }
        Ok(cfg)
    }

    /// The keys `config.json` leaves out, with the value (transformers' default) used for each.
    pub fn defaulted_keys(v: &Value, cfg: &LlamaConfig) -> Vec<String> {
        let absent = |k: &str| v.get(k).is_none_or(Value::is_null);
        let mut out = vec![];
        let mut note = |k: &str, val: String| {
            if absent(k) {
                out.push(format!("{k} (using {val})"));
            }
        };
        note("rms_norm_eps", format!("{:e}", cfg.rms_norm_eps));
        note("max_position_embeddings", cfg.max_position_embeddings.to_string());
        note("num_key_value_heads", cfg.num_key_value_heads.to_string());
        note("head_dim", cfg.head_dim.to_string());
        note("bos_token_id", cfg.bos_token_id.to_string());
        note("eos_token_id", cfg.eos_token_id.to_string());
        if absent("rope_parameters") {
            note("rope_theta", cfg.rope_theta.to_string());
        }
        out
    }

    pub fn from_hf_json(v: &Value) -> Result<Self> {
        let get_usize = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .with_context(|| format!("missing or non-integer field `{k}`"))
        };
        if let Some(mt) = v.get("model_type").and_then(Value::as_str) {
            if mt != "llama" {
                bail!("model_type `{mt}` is not supported (only `llama`)");
            }
        }
        let act = v.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
        if act != "silu" {
            bail!("hidden_act `{act}` is not supported (only `silu`, i.e. SwiGLU)");
        }
        for k in ["attention_bias", "mlp_bias"] {
            if v.get(k).and_then(Value::as_bool) == Some(true) {
                bail!("`{k}: true` is not supported (TinyLlama has no biases)");
            }
        }
        if v.get("tie_word_embeddings").and_then(Value::as_bool) == Some(true) {
            bail!("`tie_word_embeddings: true` is not supported (TinyLlama's output head is untied)");
        }
        if let Some(tp) = v.get("pretraining_tp").and_then(Value::as_u64) {
            if tp != 1 {
                bail!("`pretraining_tp: {tp}` is not supported (only 1)");
            }
        }
        if let Some(rs) = v.get("rope_scaling") {
            if !rs.is_null() {
                bail!("`rope_scaling` ({rs}) is not supported: only plain RoPE");
            }
        }
        // transformers 5 keeps theta in `rope_parameters`, transformers 4 at the top level.
        let rope_theta = match v.get("rope_parameters").filter(|p| !p.is_null()) {
            Some(p) => {
                let ty = p.get("rope_type").and_then(Value::as_str).unwrap_or("default");
                if ty != "default" {
                    bail!("rope_parameters.rope_type `{ty}` is not supported: only `default`");
                }
                p.get("rope_theta").and_then(Value::as_f64).context("rope_parameters without `rope_theta`")?
            }
            None => v.get("rope_theta").and_then(Value::as_f64).unwrap_or(10000.0),
        };
        let hidden_size = get_usize("hidden_size")?;
        let heads = get_usize("num_attention_heads")?;
        let kv = match v.get("num_key_value_heads") {
            Some(x) if !x.is_null() => get_usize("num_key_value_heads")?,
            _ => heads,
        };
        let head_dim = match v.get("head_dim") {
            Some(x) if !x.is_null() => get_usize("head_dim")?,
            _ => hidden_size / heads.max(1),
        };
        // optional keys: absent (or null) takes the default; present, they must have the right type
        for (k, integer) in [("rms_norm_eps", false), ("rope_theta", false), ("bos_token_id", true)] {
            if let Some(x) = v.get(k).filter(|x| !x.is_null()) {
                let ok = if integer { x.as_u64().is_some_and(|t| t <= u32::MAX as u64) } else { x.as_f64().is_some() };
                ensure!(ok, "`{k}` is {x}: not {}", if integer { "a token id" } else { "a number" });
            }
        }
        let token =
            |k: &str, default: u32| -> u32 { v.get(k).and_then(Value::as_u64).map(|x| x as u32).unwrap_or(default) };
        // `eos_token_id`: an integer or a list of them (Llama 3 style), kept whole
        let eos: Vec<u32> = match v.get("eos_token_id") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_u64().map(|x| x as u32))
                .collect::<Option<Vec<u32>>>()
                .context("`eos_token_id` list holds a non-integer")?,
            Some(x) => vec![x.as_u64().context("`eos_token_id` is not an integer")? as u32],
        };
        let cfg = LlamaConfig {
            vocab_size: get_usize("vocab_size")?,
            hidden_size,
            intermediate_size: get_usize("intermediate_size")?,
            num_hidden_layers: get_usize("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            rms_norm_eps: v.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6) as f32,
            rope_theta: rope_theta as f32,
            // absent: transformers' LlamaConfig default; present, it must be an integer
            max_position_embeddings: match v.get("max_position_embeddings") {
                Some(x) if !x.is_null() => get_usize("max_position_embeddings")?,
                _ => 2048,
            },
            bos_token_id: token("bos_token_id", 1),
            eos_token_id: eos.first().copied().unwrap_or(2),
            extra_eos_token_ids: eos.get(1..).unwrap_or_default().to_vec(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every end-of-sequence id, the first one first.
    pub fn eos_ids(&self) -> Vec<u32> {
        std::iter::once(self.eos_token_id).chain(self.extra_eos_token_ids.iter().copied()).collect()
    }

    /// The `config.json` that transformers reads back as this model (`LlamaForCausalLM`).
    pub fn to_hf_json(&self) -> Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "hidden_act": "silu",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": shortest(self.rms_norm_eps),
            "rope_theta": shortest(self.rope_theta),
            "rope_scaling": null,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": if self.extra_eos_token_ids.is_empty() {
                serde_json::json!(self.eos_token_id)
            } else {
                serde_json::json!(self.eos_ids())
            },
            "tie_word_embeddings": false,
            "pretraining_tp": 1,
            "initializer_range": 0.02,
            "torch_dtype": "float32",
            "use_cache": true,
        })
    }

    pub fn validate(&self) -> Result<()> {
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (k, x) in nonzero {
            if x == 0 {
                bail!("`{k}` must be positive");
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            bail!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!("head_dim ({}) must be even for rotary embeddings", self.head_dim);
        }
        let max_hd = crate::kernels::attention::MAX_HEAD_DIM;
        if self.head_dim > max_hd {
            bail!("head_dim ({}) is above the {max_hd} the attention kernels support", self.head_dim);
        }
        if self.rms_norm_eps.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            bail!("rms_norm_eps must be positive");
        }
        if self.rope_theta.partial_cmp(&1.0) != Some(std::cmp::Ordering::Greater) {
            bail!("rope_theta must be greater than 1");
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Parameters in one decoder layer.
    pub fn layer_params(&self) -> usize {
        let d = self.hidden_size;
        2 * d + d * (self.q_dim() + 2 * self.kv_dim()) + self.q_dim() * d + 3 * d * self.intermediate_size
    }

    /// All parameters (embedding, layers, final norm, output head).
    pub fn num_params(&self) -> usize {
        let d = self.hidden_size;
        2 * self.vocab_size * d + d + self.num_hidden_layers * self.layer_params()
    }

    /// Parameters that take part in a matrix multiply (every linear layer and the output head;
    /// not the embedding lookup nor the norms): the `N` of the `6 N` FLOPs-per-token rule.
    pub fn matmul_params(&self) -> usize {
        let d = self.hidden_size;
        self.num_hidden_layers * (self.layer_params() - 2 * d) + self.vocab_size * d
    }

    /// Training FLOPs per token at sequence length `t`: 6 × matmul parameters plus attention's
    /// 12 × layers × (heads × head_dim) × t (the PaLM / nanoGPT convention, causal mask not discounted).
    pub fn train_flops_per_token(&self, t: usize) -> f64 {
        6.0 * self.matmul_params() as f64 + 12.0 * (self.num_hidden_layers * self.q_dim() * t) as f64
    }
}

impl std::fmt::Display for LlamaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "vocab {} | d {} | layers {} | heads {} (kv {}, head_dim {}) | ffn {} | rope θ {} | rms ε {:e} | ctx {} | {:.2}M params",
            self.vocab_size,
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
            self.intermediate_size,
            self.rope_theta,
            self.rms_norm_eps,
            self.max_position_embeddings,
            self.num_params() as f64 / 1e6
        )
    }
}

/// The candidate nearest to `word` by edit distance, if it is close enough to be a plausible typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let dist = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1; b.len() + 1];
            for (j, &cb) in b.iter().enumerate() {
                cur[j + 1] = (prev[j] + (ca != cb) as usize).min(prev[j + 1] + 1).min(cur[j] + 1);
            }
            prev = cur;
        }
        prev[b.len()]
    };
    candidates.iter().map(|c| (dist(word, c), *c)).min().filter(|(d, c)| *d <= (c.len() / 2).max(2)).map(|(_, c)| c)
}

/// The shortest decimal that reads back as `x` (1e-5, not 9.999999747378752e-6), as f64 for JSON.
pub fn shortest(x: f32) -> f64 {
    format!("{x}").parse().unwrap_or(x as f64)
}

fn shortest_f32<S: serde::Serializer>(x: &f32, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(shortest(*x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_tinyllama_parameter_count() {
        let cfg = LlamaConfig::preset("tinyllama-1.1b").unwrap();
        assert_eq!(cfg.num_params(), 1_100_048_384);
    }

    #[test]
    fn bench_preset_parameter_count() {
        assert_eq!(LlamaConfig::preset("bench-50m").unwrap().num_params(), 49_682_944);
    }

    #[test]
    fn preset_matches_published_config_json() {
        // the config.json published with the TinyLlama-1.1B checkpoints (from ../shared)
        let path = Path::new("tests/fixtures/tinyllama-1.1b-config.json");
        let cfg = LlamaConfig::from_hf_file(path).unwrap();
        assert_eq!(cfg, LlamaConfig::preset("tinyllama-1.1b").unwrap());
    }

    #[test]
    fn transformers5_rope_parameters() {
        let path = Path::new("tests/fixtures/hf-tiny/model/config.json");
        let cfg = LlamaConfig::from_hf_file(path).unwrap();
        assert_eq!(cfg.rope_theta, 10000.0);
        assert_eq!((cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim), (64, 2, 16));
    }

    #[test]
    fn refuses_what_it_does_not_implement() {
        let good = LlamaConfig::preset("tiny-10m").unwrap().to_hf_json();
        assert_eq!(LlamaConfig::from_hf_json(&good).unwrap(), LlamaConfig::preset("tiny-10m").unwrap());
        for (k, v) in [
            ("rope_scaling", serde_json::json!({"type": "linear", "factor": 2.0})),
            ("attention_bias", serde_json::json!(true)),
            ("tie_word_embeddings", serde_json::json!(true)),
            ("hidden_act", serde_json::json!("gelu")),
            ("num_key_value_heads", serde_json::json!(3)),
            ("head_dim", serde_json::json!(1024)),
            ("max_position_embeddings", serde_json::json!("2048")),
        ] {
            let mut bad = good.clone();
            bad[k] = v;
            let err = LlamaConfig::from_hf_json(&bad).unwrap_err().to_string();
            assert!(err.contains(k) || err.contains("num_attention_heads"), "{k}: {err}");
        }
    }

    #[test]
    fn eos_token_id_list_is_kept_whole() {
        let mut j = LlamaConfig::preset("tiny-10m").unwrap().to_hf_json();
        j["eos_token_id"] = serde_json::json!([2, 32000, 7]);
        let c = LlamaConfig::from_hf_json(&j).unwrap();
        assert_eq!(c.eos_ids(), [2, 32000, 7]);
        assert_eq!(LlamaConfig::from_hf_json(&c.to_hf_json()).unwrap(), c, "written back as a list");
        j["eos_token_id"] = serde_json::json!("2");
        assert!(LlamaConfig::from_hf_json(&j).unwrap_err().to_string().contains("eos_token_id"));
    }

    /// Keys transformers defaults are filled in the same way and reported; a key of the wrong type
    /// is an error, not a silent default.
    #[test]
    fn defaulted_keys_are_reported_and_wrong_types_refused() {
        let full = LlamaConfig::preset("tiny-10m").unwrap();
        let mut j = full.to_hf_json();
        let o = j.as_object_mut().unwrap();
        for k in ["rms_norm_eps", "max_position_embeddings", "bos_token_id", "rope_theta"] {
            o.remove(k);
        }
        let c = LlamaConfig::from_hf_json(&j).unwrap();
        // transformers' LlamaConfig defaults
        assert_eq!((c.rms_norm_eps, c.max_position_embeddings, c.bos_token_id, c.rope_theta), (1e-6, 2048, 1, 10000.0));
        let d = LlamaConfig::defaulted_keys(&j, &c).join("; ");
        for want in [
            "rms_norm_eps (using 1e-6)",
            "max_position_embeddings (using 2048)",
            "bos_token_id (using 1)",
            "rope_theta (using 10000)",
        ] {
            assert!(d.contains(want), "{d}");
        }
        assert!(LlamaConfig::defaulted_keys(&full.to_hf_json(), &full).is_empty());
        for (k, bad) in [
            ("rms_norm_eps", serde_json::json!("1e-5")),
            ("rope_theta", serde_json::json!([1])),
            ("bos_token_id", serde_json::json!(-1)),
        ] {
            let mut j = full.to_hf_json();
            j[k] = bad;
            let e = LlamaConfig::from_hf_json(&j).unwrap_err().to_string();
            assert!(e.contains(k), "{k}: {e}");
        }
    }

    #[test]
    fn unknown_preset_suggests_nearest() {
        let err = LlamaConfig::preset("bench-5m").unwrap_err().to_string();
        assert!(err.contains("did you mean `bench-50m`"), "{err}");
    }
}
