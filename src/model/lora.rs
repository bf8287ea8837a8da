//! LoRA adapters (Hu et al., 2021, as PEFT runs them) on the training model's linear layers,
//! computed as LoRA: a target weight `W` `[out, in]` stays frozen and is never merged; its output
//! gets `s·(x·Aᵀ)·Bᵀ` beside `x·Wᵀ` (`A` `[r, in]`, `B` `[out, r]`, `s = alpha / r`), and the
//! backward computes, from the rank-r products only,
//! `∂L/∂B = s·gᵀ·t`, `dt = s·g·B`, `∂L/∂A = dtᵀ·x`, `∂L/∂x += dt·A` (`t = x·Aᵀ`, `g = ∂L/∂y`).
//! A target is a row block of one of the layer's fused matrices (q/k/v of `Wqkv`, gate/up of
//! `Wgu`), so its output is a column block of that matrix's output.

use super::params::ParamLayout;
use crate::config::LlamaConfig;
use crate::kernels::matmul::{matmul, Output, Stored};
use crate::rng::Rng;
use anyhow::{ensure, Result};
use std::ops::Range;

/// The layer's fused matrix a target belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fused {
    Qkv,
    O,
    GateUp,
    Down,
}

/// One adapted weight.
#[derive(Clone, Debug)]
pub struct LoraTarget {
    /// PEFT's module name, e.g. `model.layers.0.self_attn.q_proj`.
    pub module: String,
    pub layer: usize,
    pub fused: Fused,
    /// The weight in the model's flat parameters, `[out, in]`.
    pub weight: Range<usize>,
    /// Its first row in the fused matrix (the first column of its block of the fused output).
    pub row0: usize,
    pub out: usize,
    pub inp: usize,
    /// `A` `[r, in]` and `B` `[out, r]` in [`Adapters::weights`] (and in their gradient buffer).
    pub a: Range<usize>,
    pub b: Range<usize>,
}

#[derive(Debug)]
pub struct Adapters {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<LoraTarget>,
    /// Every `A` and `B`, one flat vector (what the optimiser updates).
    pub weights: Vec<f32>,
}

impl Adapters {
    /// Adapters for `modules` (PEFT suffixes such as `self_attn.q_proj`) of every layer,
    /// initialised as PEFT does: `A` Kaiming-uniform (bound `1/√in`), seeded; `B` zero, so that
    /// training starts from the base model.
    pub fn new(cfg: &LlamaConfig, modules: &[String], rank: usize, alpha: f64, seed: u64) -> Result<Self> {
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
            ensure!(
                rank <= out.min(inp),
                "--lora-rank {rank} is above the size of {module} ({out}×{inp}): a rank is at most the smaller side"
            );
            let layer: usize = module["model.layers.".len()..].split('.').next().unwrap_or("").parse()?;
            let lp = &layout.layers[layer];
            let (fused, start) = match module.rsplit('.').next().unwrap_or("") {
                "q_proj" | "k_proj" | "v_proj" => (Fused::Qkv, lp.wqkv.start),
                "o_proj" => (Fused::O, lp.wo.start),
                "gate_proj" | "up_proj" => (Fused::GateUp, lp.wgu.start),
                _ => (Fused::Down, lp.wdown.start),
            };
            let a = at..at + rank * inp;
            let b = a.end..a.end + out * rank;
            at = b.end;
            let row0 = (t.range.start - start) / inp;
            targets.push(LoraTarget {
                module: module.to_string(),
                layer,
                fused,
                weight: t.range.clone(),
                row0,
                out,
                inp,
                a,
                b,
            });
        }
        ensure!(!targets.is_empty(), "no LoRA target found for {modules:?}");
        let mut weights = vec![0.0f32; at];
        let mut rng = Rng::new(seed ^ 0x4c6f_5241);
        for t in &targets {
            let bound = 1.0 / (t.inp as f64).sqrt();
            for v in &mut weights[t.a.clone()] {
                *v = ((rng.uniform() * 2.0 - 1.0) * bound) as f32;
            }
        }
        Ok(Adapters { rank, alpha, targets, weights })
    }

    pub fn scale(&self) -> f32 {
        (self.alpha / self.rank as f64) as f32
    }

    /// The targets on `layer`'s fused matrix `fused`, with their index (the slot of their `t`).
    pub fn on(&self, layer: usize, fused: Fused) -> impl Iterator<Item = (usize, &LoraTarget)> {
        self.targets.iter().enumerate().filter(move |(_, t)| t.layer == layer && t.fused == fused)
    }

    /// The widest target output, for the scratch a forward or backward needs.
    pub fn max_out(&self) -> usize {
        self.targets.iter().map(|t| t.out.max(t.inp)).max().unwrap_or(0)
    }

    /// `y[:, row0..row0+out] += s·(x·Aᵀ)·Bᵀ` over `n` rows of a fused output `width` wide; keeps
    /// `t = x·Aᵀ` (`[n, r]`) for the backward.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        tg: &LoraTarget,
        y: &mut [f32],
        width: usize,
        x: &[f32],
        n: usize,
        t: &mut [f32],
        u: &mut [f32],
    ) {
        let r = self.rank;
        let (a, b) = (&self.weights[tg.a.clone()], &self.weights[tg.b.clone()]);
        matmul(t, x, a, n, r, tg.inp, Stored::AsIs, Stored::Transposed, Output::Overwrite);
        let u = &mut u[..n * tg.out];
        matmul(u, t, b, n, tg.out, r, Stored::AsIs, Stored::Transposed, Output::Overwrite);
        let s = self.scale();
        for (row, ur) in y.chunks_exact_mut(width).zip(u.chunks_exact(tg.out)) {
            for (yv, &uv) in row[tg.row0..tg.row0 + tg.out].iter_mut().zip(ur) {
                *yv += uv * s;
            }
        }
    }

    /// The backward of [`Adapters::forward`] given `dy` (the fused output's gradient): `∂L/∂A`
    /// and `∂L/∂B` added into `grads` (the adapters' layout), `∂L/∂x` added into `dx`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        tg: &LoraTarget,
        grads: &mut [f32],
        dx: &mut [f32],
        dy: &[f32],
        width: usize,
        x: &[f32],
        t: &[f32],
        n: usize,
        scratch: &mut [f32],
    ) {
        let (r, s) = (self.rank, self.scale());
        let (g, dt) = scratch.split_at_mut(n * tg.out);
        let dt = &mut dt[..n * r];
        for (gr, row) in g.chunks_exact_mut(tg.out).zip(dy.chunks_exact(width)) {
            for (gv, &d) in gr.iter_mut().zip(&row[tg.row0..tg.row0 + tg.out]) {
                *gv = d * s;
            }
        }
        let (a, b) = (&self.weights[tg.a.clone()], &self.weights[tg.b.clone()]);
        matmul(&mut grads[tg.b.clone()], g, t, tg.out, r, n, Stored::Transposed, Stored::AsIs, Output::Accumulate);
        matmul(dt, g, b, n, r, tg.out, Stored::AsIs, Stored::AsIs, Output::Overwrite);
        matmul(&mut grads[tg.a.clone()], dt, x, r, tg.inp, n, Stored::Transposed, Stored::AsIs, Output::Accumulate);
        matmul(dx, dt, a, n, tg.inp, r, Stored::AsIs, Stored::AsIs, Output::Accumulate);
    }

    /// `W + s·B·A` written into `params` for every target (a plain model: export, inference).
    pub fn merge_into(&self, params: &mut [f32]) {
        for t in &self.targets {
            self.add_delta(t, &mut params[t.weight.clone()]);
        }
    }

    /// `w += s·B·A` for one target's weight `w`.
    pub fn add_delta(&self, t: &LoraTarget, w: &mut [f32]) {
        let s = self.scale();
        let mut delta = vec![0.0f32; t.out * t.inp];
        let (a, b) = (&self.weights[t.a.clone()], &self.weights[t.b.clone()]);
        matmul(&mut delta, b, a, t.out, t.inp, self.rank, Stored::AsIs, Stored::AsIs, Output::Overwrite);
        for (w, d) in w.iter_mut().zip(&delta) {
            *w += s * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::check;
    use crate::model::llama::{Llama, Workspace};
    use crate::rng::Rng;

    fn cfg() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 23,
            hidden_size: 12,
            intermediate_size: 20,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 4,
            ..LlamaConfig::preset("tiny-10m").unwrap()
        }
    }

    fn modules(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A model with adapters (B non-zero, so that every product matters) and a batch.
    fn adapted(targets: &[&str]) -> (Llama, Vec<u32>, Vec<u32>) {
        let c = cfg();
        let mut model = Llama::new_init(c.clone(), 5);
        for v in model.params.iter_mut() {
            *v *= 1.5;
        }
        let mut ad = Adapters::new(&c, &modules(targets), 2, 3.0, 7).unwrap();
        let mut r = Rng::new(3);
        for v in ad.weights.iter_mut() {
            *v += ((r.uniform() * 2.0 - 1.0) * 0.3) as f32;
        }
        model.adapters = Some(ad);
        let mut r = Rng::new(9);
        let ids: Vec<u32> = (0..20).map(|_| r.below(c.vocab_size as u64) as u32).collect();
        (model, ids[..10].to_vec(), ids[10..].to_vec())
    }

    /// The adapters' gradients through the whole model are those of the loss by finite
    /// differences, for each kind of target (a block of a fused matrix, or a whole one).
    #[test]
    fn adapter_gradients_through_the_model_match_finite_differences() {
        for targets in [
            &["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"][..],
            &["self_attn.k_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.gate_proj"],
        ] {
            let (mut model, tokens, targets_) = adapted(targets);
            let mut ws = Workspace::new(&model.cfg, 2, 5);
            let mut grads = vec![0.0; model.trainable_len()];
            model.forward_backward(&mut ws, &mut grads, &tokens, &targets_, 0.1).unwrap();
            let w = model.adapters.as_ref().unwrap().weights.clone();
            check(&format!("lora {targets:?}"), &w, &grads, &mut |a| {
                model.adapters.as_mut().unwrap().weights.copy_from_slice(a);
                model.forward_loss(&mut ws, &tokens, &targets_).unwrap()
            });
        }
    }

    /// Computed beside the frozen weights, the adapters give the loss of the merged model.
    #[test]
    fn the_adapter_path_equals_the_merged_weights() {
        let all = [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ];
        let (model, tokens, targets) = adapted(&all);
        let mut ws = Workspace::new(&model.cfg, 2, 5);
        let beside = model.forward_loss(&mut ws, &tokens, &targets).unwrap();
        let mut params = model.params.clone();
        model.adapters.as_ref().unwrap().merge_into(&mut params);
        let merged = Llama::from_params(model.cfg.clone(), params).forward_loss(&mut ws, &tokens, &targets).unwrap();
        assert!((beside - merged).abs() < 1e-5 * merged.abs(), "{beside} vs {merged}");
        let plain = Llama::from_params(model.cfg.clone(), model.params.clone())
            .forward_loss(&mut ws, &tokens, &targets)
            .unwrap();
        assert!((beside - plain).abs() > 1e-3, "the adapters change the loss: {beside} vs {plain}");
    }

    #[test]
    fn a_rank_above_a_layers_size_is_refused() {
        let e = Adapters::new(&cfg(), &modules(&["self_attn.k_proj"]), 9, 16.0, 1).unwrap_err().to_string();
        assert!(e.contains("--lora-rank 9 is above the size of model.layers.0.self_attn.k_proj (8×12)"), "{e}");
    }
}
