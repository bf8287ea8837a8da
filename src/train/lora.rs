//! LoRA adapters (Hu et al., 2021, as PEFT runs them): a target weight `W` `[out, in]` is used as
//! `W + s·B·A` with `A` `[r, in]`, `B` `[out, r]`, `s = alpha / r`; only `A` and `B` are trained.
//!
//! The adapted weights are merged into the model before each forward, so the model's own
//! forward/backward gives `∂L/∂W`, and the adapters' gradients follow from the chain rule:
//! `∂L/∂A = s·Bᵀ·∂L/∂W`, `∂L/∂B = s·∂L/∂W·Aᵀ` (exact, since the merged weight is linear in each).
//! The frozen base weights are kept, so merging never accumulates rounding. Adapters are read and
//! written in PEFT's layout (`adapter_model.safetensors`, `adapter_config.json`).

use crate::checkpoint::safetensors::{write_safetensors, Dtype, SafeTensorsFile, TensorOut};
use crate::config::LlamaConfig;
use crate::files::write_json;
use crate::kernels::matmul::{matmul, Output, Stored};
use crate::model::params::ParamLayout;
use crate::rng::Rng;
use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use std::ops::Range;
use std::path::Path;

/// PEFT's module names for the seven linear layers of a Llama block.
pub const TARGETS: [(&str, &str); 7] = [
    ("q", "self_attn.q_proj"),
    ("k", "self_attn.k_proj"),
    ("v", "self_attn.v_proj"),
    ("o", "self_attn.o_proj"),
    ("gate", "mlp.gate_proj"),
    ("up", "mlp.up_proj"),
    ("down", "mlp.down_proj"),
];

/// `q,k,v,o,gate,up,down` (any subset, or `all`) → PEFT module suffixes, in model order.
pub fn parse_targets(list: &str) -> Result<Vec<String>> {
    let want: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    ensure!(!want.is_empty(), "--lora-targets is empty");
    for w in &want {
        ensure!(
            *w == "all" || TARGETS.iter().any(|(short, _)| short == w),
            "--lora-targets: unknown `{w}` (use q, k, v, o, gate, up, down or all)"
        );
    }
    Ok(TARGETS
        .iter()
        .filter(|(short, _)| want.contains(short) || want.contains(&"all"))
        .map(|(_, module)| module.to_string())
        .collect())
}

/// One adapted weight.
#[derive(Clone, Debug)]
pub struct LoraTarget {
    /// PEFT's module name, e.g. `model.layers.0.self_attn.q_proj`.
    pub module: String,
    /// The weight in the model's flat parameters, `[out, in]`.
    pub weight: Range<usize>,
    pub out: usize,
    pub inp: usize,
    /// `A` `[r, in]` and `B` `[out, r]` in the adapter vector.
    pub a: Range<usize>,
    pub b: Range<usize>,
}

pub struct Lora {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<LoraTarget>,
    /// Every `A` and `B`, one flat vector (what the optimiser updates).
    pub adapters: Vec<f32>,
    /// The frozen base weights of the targets, in target order.
    base: Vec<f32>,
    /// `∂L/∂W` for the whole model, where the forward/backward accumulates.
    pub full_grads: Vec<f32>,
}

impl Lora {
    /// Adapters for `modules` (PEFT suffixes) of every layer, initialised as PEFT does: `A`
    /// Kaiming-uniform (bound `1/√in`), seeded; `B` zero, so training starts from the base model.
    pub fn new(
        cfg: &LlamaConfig,
        params: &[f32],
        modules: &[String],
        rank: usize,
        alpha: f64,
        seed: u64,
    ) -> Result<Self> {
        ensure!(rank >= 1, "--lora-rank must be at least 1");
        let layout = ParamLayout::new(cfg);
        let mut targets = vec![];
        let mut at = 0;
        for t in layout.hf_tensors(cfg) {
            let Some(module) = t.name.strip_suffix(".weight") else { continue };
            if !modules.iter().any(|m| module.ends_with(m.as_str())) || !module.starts_with("model.layers.") {
                continue;
            }
            let (out, inp) = (t.shape[0], t.shape[1]);
            let a = at..at + rank * inp;
            let b = a.end..a.end + out * rank;
            at = b.end;
            targets.push(LoraTarget { module: module.to_string(), weight: t.range.clone(), out, inp, a, b });
        }
        ensure!(!targets.is_empty(), "no LoRA target found for {modules:?}");
        let mut adapters = vec![0.0f32; at];
        let mut rng = Rng::new(seed ^ 0x4c6f_5241);
        for t in &targets {
            let bound = 1.0 / (t.inp as f64).sqrt();
            for v in &mut adapters[t.a.clone()] {
                *v = ((rng.uniform() * 2.0 - 1.0) * bound) as f32;
            }
        }
        let base = targets.iter().flat_map(|t| params[t.weight.clone()].iter().copied()).collect();
        Ok(Lora { rank, alpha, targets, adapters, base, full_grads: vec![0.0; params.len()] })
    }

    pub fn scale(&self) -> f32 {
        (self.alpha / self.rank as f64) as f32
    }

    /// `W = W_base + s·B·A` for every target, written into the model's parameters.
    pub fn merge_into(&self, params: &mut [f32]) {
        let (r, s) = (self.rank, self.scale());
        let mut at = 0;
        for t in &self.targets {
            let n = t.out * t.inp;
            let w = &mut params[t.weight.clone()];
            matmul(
                w,
                &self.adapters[t.b.clone()],
                &self.adapters[t.a.clone()],
                t.out,
                t.inp,
                r,
                Stored::AsIs,
                Stored::AsIs,
                Output::Overwrite,
            );
            for (w, &b) in w.iter_mut().zip(&self.base[at..at + n]) {
                *w = b + s * *w;
            }
            at += n;
        }
    }

    /// The adapters' gradient from the whole model's (`full_grads`): `∂A = s·Bᵀ·∂W`, `∂B = s·∂W·Aᵀ`.
    pub fn project_grads(&self, out: &mut [f32]) {
        let (r, s) = (self.rank, self.scale());
        for t in &self.targets {
            let dw = &self.full_grads[t.weight.clone()];
            let (a, b) = (&self.adapters[t.a.clone()], &self.adapters[t.b.clone()]);
            matmul(&mut out[t.a.clone()], b, dw, r, t.inp, t.out, Stored::Transposed, Stored::AsIs, Output::Overwrite);
            matmul(&mut out[t.b.clone()], dw, a, t.out, r, t.inp, Stored::AsIs, Stored::Transposed, Output::Overwrite);
            for v in &mut out[t.a.start..t.b.end] {
                *v *= s;
            }
        }
    }

    /// `adapter_model.safetensors` + `adapter_config.json` as PEFT writes them.
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<()> {
        let name = |m: &str, ab: &str| format!("base_model.model.{m}.lora_{ab}.weight");
        let mut tensors = vec![];
        for t in &self.targets {
            tensors.push(TensorOut {
                name: name(&t.module, "A"),
                shape: vec![self.rank, t.inp],
                data: &self.adapters[t.a.clone()],
            });
            tensors.push(TensorOut {
                name: name(&t.module, "B"),
                shape: vec![t.out, self.rank],
                data: &self.adapters[t.b.clone()],
            });
        }
        write_safetensors(&dir.join("adapter_model.safetensors"), &tensors, Dtype::F32, &Default::default())?;
        let mut modules: Vec<&str> =
            self.targets.iter().filter_map(|t| t.module.rsplit('.').next()).collect::<Vec<_>>();
        modules.sort();
        modules.dedup();
        write_json(
            &dir.join("adapter_config.json"),
            &json!({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": self.rank, "lora_alpha": self.alpha,
                "lora_dropout": 0.0, "bias": "none", "target_modules": modules, "fan_in_fan_out": false,
                "use_rslora": false, "init_lora_weights": true, "base_model_name_or_path": base_model}),
        )
    }

    /// Adapter weights from a PEFT `adapter_model.safetensors` (in `dir`), which must cover the
    /// same targets and rank.
    pub fn load_peft(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("adapter_model.safetensors");
        let f = SafeTensorsFile::open(&path)?;
        for t in &self.targets {
            for (ab, range, shape) in [("A", &t.a, [self.rank, t.inp]), ("B", &t.b, [t.out, self.rank])] {
                let name = format!("base_model.model.{}.lora_{ab}.weight", t.module);
                let (v, dims) = f.read_f32(&name).with_context(|| format!("{}: no {name}", path.display()))?;
                if dims != shape {
                    bail!(
                        "{}: {name} has shape {dims:?}, this run's adapter {shape:?} (rank {})",
                        path.display(),
                        self.rank
                    );
                }
                self.adapters[range.clone()].copy_from_slice(&v);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::check;

    /// The projected gradients are those of `L(W_base + s·B·A)` by finite differences, for a
    /// loss `L(W) = Σ c ⊙ W` plus a square term.
    #[test]
    fn adapter_gradients_match_finite_differences() {
        let cfg = LlamaConfig::preset("tiny-10m").unwrap();
        let cfg = LlamaConfig {
            num_hidden_layers: 1,
            vocab_size: 8,
            hidden_size: 8,
            intermediate_size: 12,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 4,
            ..cfg
        };
        let layout = ParamLayout::new(&cfg);
        let params: Vec<f32> = (0..layout.total).map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0).collect();
        let mut lora = Lora::new(&cfg, &params, &parse_targets("q,down").unwrap(), 2, 4.0, 1).unwrap();
        for (i, v) in lora.adapters.iter_mut().enumerate() {
            *v += ((i * 13 % 7) as f32 - 3.0) / 10.0; // B non-zero too
        }
        let c: Vec<f32> = (0..layout.total).map(|i| ((i * 11 % 17) as f32 - 8.0) / 10.0).collect();
        let loss_of = |w: &[f32]| w.iter().zip(&c).map(|(&w, &c)| (c * w + 0.5 * w * w) as f64).sum::<f64>();
        let mut merged = params.clone();
        lora.merge_into(&mut merged);
        lora.full_grads = merged.iter().zip(&c).map(|(&w, &c)| c + w).collect();
        let mut g = vec![0.0f32; lora.adapters.len()];
        lora.project_grads(&mut g);
        let adapters = lora.adapters.clone();
        check("lora", &adapters, &g, &mut |a| {
            let mut l2 = Lora { adapters: a.to_vec(), full_grads: vec![], ..lora.clone_shape() };
            let mut w = params.clone();
            l2.merge_into(&mut w);
            l2.full_grads.clear();
            loss_of(&w)
        });
    }

    impl Lora {
        fn clone_shape(&self) -> Lora {
            Lora {
                rank: self.rank,
                alpha: self.alpha,
                targets: self.targets.clone(),
                adapters: self.adapters.clone(),
                base: self.base.clone(),
                full_grads: vec![],
            }
        }
    }

    #[test]
    fn targets_parse() {
        assert_eq!(parse_targets("q,v").unwrap(), ["self_attn.q_proj", "self_attn.v_proj"]);
        assert_eq!(parse_targets("all").unwrap().len(), 7);
        assert!(parse_targets("q,x").unwrap_err().to_string().contains("unknown `x`"));
    }
}
