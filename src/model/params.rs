//! Where each weight lives. All parameters sit in one flat f32 buffer (and the gradients and the
//! AdamW moments in buffers of the same layout), so that the optimiser, clipping and a future
//! sharded all-reduce see one contiguous array. The order inside a layer puts q/k/v and gate/up
//! next to each other, so that each pair is one `[out, in]` matrix and one GEMM; every Hugging Face
//! tensor is still one contiguous range of the buffer.

use crate::config::LlamaConfig;
use crate::rng::Rng;
use std::ops::Range;

#[derive(Clone, Debug)]
pub struct LayerParams {
    pub attn_norm: Range<usize>,
    /// `[q_proj; k_proj; v_proj]`, shape `[q_dim + 2 kv_dim, d]`
    pub wqkv: Range<usize>,
    pub wo: Range<usize>,
    pub mlp_norm: Range<usize>,
    /// `[gate_proj; up_proj]`, shape `[2 ffn, d]`
    pub wgu: Range<usize>,
    pub wdown: Range<usize>,
}

#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub embed: Range<usize>,
    pub layers: Vec<LayerParams>,
    pub final_norm: Range<usize>,
    pub lm_head: Range<usize>,
    pub total: usize,
}

/// One Hugging Face tensor: its name, shape and place in the flat buffer.
#[derive(Clone, Debug)]
pub struct HfTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
    /// Initialisation: standard deviation of the normal init, or `None` for ones (norm weights).
    pub init_std: Option<f64>,
}

impl ParamLayout {
    pub fn new(cfg: &LlamaConfig) -> Self {
        let mut at = 0usize;
        let mut take = |n: usize| {
            let r = at..at + n;
            at += n;
            r
        };
        let d = cfg.hidden_size;
        let embed = take(cfg.vocab_size * d);
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| LayerParams {
                attn_norm: take(d),
                wqkv: take((cfg.q_dim() + 2 * cfg.kv_dim()) * d),
                wo: take(d * cfg.q_dim()),
                mlp_norm: take(d),
                wgu: take(2 * cfg.intermediate_size * d),
                wdown: take(d * cfg.intermediate_size),
            })
            .collect();
        let final_norm = take(d);
        let lm_head = take(cfg.vocab_size * d);
        ParamLayout { embed, layers, final_norm, lm_head, total: at }
    }

    /// Every tensor under its Hugging Face name, in checkpoint order. Init as TinyLlama's
    /// `_init_weights`: N(0, sqrt(2/(5d))) for embeddings and linears; the attention and MLP output
    /// projections N(0, 1/sqrt(d)/n_layer); norms one.
    pub fn hf_tensors(&self, cfg: &LlamaConfig) -> Vec<HfTensor> {
        let d = cfg.hidden_size;
        let std = (2.0 / (5.0 * d as f64)).sqrt();
        let out_std = 1.0 / (d as f64).sqrt() / cfg.num_hidden_layers as f64;
        let (qd, kvd, ffn) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        let t = |name: String, shape: Vec<usize>, start: usize, init_std: Option<f64>| {
            let n: usize = shape.iter().product();
            HfTensor { name, shape, range: start..start + n, init_std }
        };
        let mut v = vec![t("model.embed_tokens.weight".into(), vec![cfg.vocab_size, d], self.embed.start, Some(std))];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}.");
            v.push(t(format!("{p}input_layernorm.weight"), vec![d], l.attn_norm.start, None));
            v.push(t(format!("{p}self_attn.q_proj.weight"), vec![qd, d], l.wqkv.start, Some(std)));
            v.push(t(format!("{p}self_attn.k_proj.weight"), vec![kvd, d], l.wqkv.start + qd * d, Some(std)));
            v.push(t(format!("{p}self_attn.v_proj.weight"), vec![kvd, d], l.wqkv.start + (qd + kvd) * d, Some(std)));
            v.push(t(format!("{p}self_attn.o_proj.weight"), vec![d, qd], l.wo.start, Some(out_std)));
            v.push(t(format!("{p}post_attention_layernorm.weight"), vec![d], l.mlp_norm.start, None));
            v.push(t(format!("{p}mlp.gate_proj.weight"), vec![ffn, d], l.wgu.start, Some(std)));
            v.push(t(format!("{p}mlp.up_proj.weight"), vec![ffn, d], l.wgu.start + ffn * d, Some(std)));
            v.push(t(format!("{p}mlp.down_proj.weight"), vec![d, ffn], l.wdown.start, Some(out_std)));
        }
        v.push(t("model.norm.weight".into(), vec![d], self.final_norm.start, None));
        v.push(t("lm_head.weight".into(), vec![cfg.vocab_size, d], self.lm_head.start, Some(std)));
        v
    }
}

/// A freshly initialised parameter buffer, seeded: each tensor draws from its own stream, so the
/// result does not depend on the thread count.
pub fn init_params(cfg: &LlamaConfig, layout: &ParamLayout, seed: u64) -> Vec<f32> {
    use rayon::prelude::*;
    let mut params = vec![0.0f32; layout.total];
    let tensors = layout.hf_tensors(cfg);
    // Split the buffer into the tensors' disjoint ranges (they are in buffer order but interleave
    // with the fused pairs; sort by start to carve the slice).
    let mut sorted: Vec<(usize, &HfTensor)> = tensors.iter().enumerate().collect();
    sorted.sort_by_key(|(_, t)| t.range.start);
    let mut rest: &mut [f32] = &mut params;
    let mut at = 0;
    let mut parts = Vec::with_capacity(sorted.len());
    for (i, t) in sorted {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(t.range.start - at);
        let (mine, tail) = tail.split_at_mut(t.range.len());
        parts.push((i, t, mine));
        rest = tail;
        at = t.range.end;
    }
    parts.into_par_iter().for_each(|(i, t, buf)| match t.init_std {
        None => buf.fill(1.0),
        Some(std) => {
            let mut r = Rng::fork(seed, i as u64);
            for v in buf.iter_mut() {
                *v = (r.normal() * std) as f32;
            }
        }
    });
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_tensors_tile_the_buffer() {
        let cfg = LlamaConfig::preset("tiny-10m").unwrap();
        let layout = ParamLayout::new(&cfg);
        let mut ranges: Vec<_> = layout.hf_tensors(&cfg).into_iter().map(|t| t.range).collect();
        ranges.sort_by_key(|r| r.start);
        let mut at = 0;
        for r in ranges {
            assert_eq!(r.start, at);
            at = r.end;
        }
        assert_eq!(at, layout.total);
        assert_eq!(layout.total, cfg.num_params());
    }

    #[test]
    fn init_has_tinyllama_std() {
        let cfg = LlamaConfig::preset("tiny-10m").unwrap();
        let layout = ParamLayout::new(&cfg);
        let p = init_params(&cfg, &layout, 3);
        for t in layout.hf_tensors(&cfg) {
            let x = &p[t.range.clone()];
            let n = x.len() as f64;
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
            let sd = (x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
            match t.init_std {
                None => assert!(x.iter().all(|&v| v == 1.0), "{}", t.name),
                Some(s) => assert!((sd / s - 1.0).abs() < 0.05 && mean.abs() < 0.1 * s, "{}: sd {sd} want {s}", t.name),
            }
        }
        assert_eq!(p, init_params(&cfg, &layout, 3));
        assert_ne!(p, init_params(&cfg, &layout, 4));
    }
}
