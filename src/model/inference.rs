//! Inference: the decoder stack over weights of any format ([`InferenceModel`]), with a KV cache per
//! sequence. One call runs any number of sequences, each extending its own cache by any number of
//! tokens (a prompt's prefill, one decode step, a few tokens of an eval continuation), so one read
//! of the weights serves the whole batch.
//!
//! One decoder layer, [`DecoderLayer::forward`], serves every path: f32 evaluation (the same kernels
//! and bits as the training forward), quantized generation, batched decoding.

use super::kv_cache::{KvCache, KvCacheType};
use super::llama::Llama;
use super::weights::{Linear, RowMode, WeightMatrix};
use crate::config::LlamaConfig;
use crate::kernels::attention::{
    attention_cached_batch, attention_forward, attention_scratch_len, AttnShape, CachedSeq,
};
use crate::kernels::cross_entropy::{head_cross_entropy_forward, log_sum_exp, HEAD_CHUNK_ROWS};
use crate::kernels::matmul::Output;
use crate::kernels::quant::dot::Activations;
use crate::kernels::quant::{f16_to_f32, f32_to_f16, Format};
use crate::kernels::rms_norm::{rms_norm_forward, rms_norm_forward_ggml};
use crate::kernels::rope::{rope_forward, RopeTable};
use crate::kernels::swiglu::swiglu_forward_rows;
use crate::kernels::worker_pool::{self, DisjointRows};
use anyhow::{ensure, Result};
use std::sync::Arc;

impl KvCache {
    pub fn new(model: &InferenceModel, max_len: usize) -> Self {
        let c = &model.cfg;
        Self::empty(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, max_len, model.half_kv_cache())
    }

    /// Bytes of one cache of `max_len` positions for `model`.
    pub fn bytes_for(model: &InferenceModel, max_len: usize) -> usize {
        Self::capacity(max_len) * Self::bytes_per_position(model)
    }

    /// Bytes of keys and values a position takes in `model`'s caches.
    pub fn bytes_per_position(model: &InferenceModel) -> usize {
        let c = &model.cfg;
        let element = if model.half_kv_cache() { 2 } else { 4 };
        2 * element * c.num_hidden_layers * c.kv_dim()
    }
}

/// One decoder layer's weights (pre-norm Llama block).
pub struct DecoderLayer {
    pub attn_norm: Vec<f32>,
    /// `[q; k; v]` by rows.
    pub wqkv: Linear,
    pub wo: Linear,
    pub mlp_norm: Vec<f32>,
    /// `[gate; up]` by rows.
    pub wgu: Linear,
    pub wdown: Linear,
}

/// A sequence of one forward call: the tokens to run at positions `cache.len..`.
pub struct Segment<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

/// Buffers of one forward call, sized for its rows.
#[derive(Default)]
struct Scratch {
    xn: Vec<f32>,
    rstd: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    gu: Vec<f32>,
    h: Vec<f32>,
    acts: Activations,
}

impl DecoderLayer {
    /// `x[rows, d] += attention(norm(x)); x += mlp(norm(x))` for the rows of `segs` (concatenated
    /// in order), extending each segment's cache at layer `l`.
    fn forward(
        &self,
        l: usize,
        x: &mut [f32],
        segs: &mut [Segment],
        m: &InferenceModel,
        mode: RowMode,
        s: &mut Scratch,
    ) {
        let c = &m.cfg;
        let n = x.len() / c.hidden_size;
        let f = c.intermediate_size;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        let qs = qd + 2 * kvd;
        m.norm(&mut s.xn, &mut s.rstd, x, &self.attn_norm);
        self.wqkv.forward(&mut s.qkv, &s.xn, n, Output::Overwrite, mode, &mut s.acts);
        // an f32 model's fresh prompt alone takes the training kernel, so that evaluation's numbers
        // are the training forward's; everything else the cached kernel, which is also the faster
        // one (Q4_0 prefill 1.2× at 256 tokens, 1.8× at 1,900: BENCHMARKS.md)
        let training =
            m.training_numerics && matches!(&*segs, [seg] if seg.cache.len == 0 && mode == RowMode::MayUseGemm);
        // each segment's rows rotated and cached, the segments of a decode batch in parallel (a
        // prompt's rows in parallel inside `rope_forward`)
        let starts: Vec<usize> =
            segs.iter().scan(0, |r0, seg| Some(std::mem::replace(r0, *r0 + seg.tokens.len()))).collect();
        let rows = DisjointRows(s.qkv.as_mut_ptr());
        worker_pool::for_each_mut(segs, &|i, seg| {
            let (k, p0) = (seg.tokens.len(), seg.cache.len);
            // SAFETY: segment i's rows, written by this task only; in bounds as `s.qkv` holds n rows.
            let qkv = unsafe { std::slice::from_raw_parts_mut(rows.get().add(starts[i] * qs), k * qs) };
            rope_forward(qkv, qs, nh + nkv, k, p0, &m.rope);
            seg.cache.store(l, qkv, qs, qd, p0, k);
            if training && seg.cache.is_half() {
                // the training kernel reads these rows, not the cache: the cache's values
                for row in qkv.chunks_exact_mut(qs) {
                    row[qd..].iter_mut().for_each(|x| *x = f16_to_f32(f32_to_f16(*x)));
                }
            }
        });
        if training {
            let shape = AttnShape { batch: 1, seq_len: n, n_heads: nh, n_kv_heads: nkv, head_dim: hd };
            let mut lse = vec![0.0f32; nh * n];
            let mut scratch = vec![0.0f32; attention_scratch_len(shape)];
            attention_forward(&mut s.att[..n * qd], &mut lse, &s.qkv[..n * qs], &mut scratch, shape);
        } else {
            let seqs: Vec<CachedSeq> = segs.iter().map(|seg| seg.cache.seq(l, seg.tokens.len())).collect();
            attention_cached_batch(&mut s.att[..n * qd], &s.qkv[..n * qs], qs, &seqs, nh, nkv, hd);
        }
        self.wo.forward(x, &s.att, n, Output::Accumulate, mode, &mut s.acts);
        m.norm(&mut s.xn, &mut s.rstd, x, &self.mlp_norm);
        self.wgu.forward(&mut s.gu, &s.xn, n, Output::Overwrite, mode, &mut s.acts);
        swiglu_forward_rows(&mut s.h, &s.gu, f);
        self.wdown.forward(x, &s.h, n, Output::Accumulate, mode, &mut s.acts);
    }
}

/// A Llama model for inference, its matrices in any [`Format`].
pub struct InferenceModel {
    pub cfg: LlamaConfig,
    pub embed: WeightMatrix,
    pub layers: Vec<DecoderLayer>,
    pub final_norm: Vec<f32>,
    pub lm_head: Linear,
    rope: RopeTable,
    /// The training forward's arithmetic (f32 models from safetensors: evaluation keeps the
    /// training numbers), or ggml's (GGUF and quantized models: llama.cpp's numbers).
    pub training_numerics: bool,
    /// The element type of this model's KV caches.
    pub kv_cache: KvCacheType,
}

/// llama.cpp's rule for Q4_K_M: these layers' `attn_v` and `ffn_down` get Q6_K.
pub fn q4_k_m_more_bits(layer: usize, n_layers: usize) -> bool {
    layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer as isize - (n_layers / 8) as isize) % 3 == 2
}

/// A weight format choice for a whole model: one format, or llama.cpp's Q4_K_M mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelDtype {
    Uniform(Format),
    Q4KM,
}

impl ModelDtype {
    pub const NAMES: &'static str = "f32, f16, bf16, q8_0, q4_0, q4_k, q6_k, q4_k_m";

    pub fn parse(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("q4_k_m") {
            return Ok(ModelDtype::Q4KM);
        }
        Format::parse(s)
            .map(ModelDtype::Uniform)
            .ok_or_else(|| anyhow::anyhow!("unknown weight format `{s}`: use one of {}", Self::NAMES))
    }

    /// `--dtype` of a command that loads a model: `auto` (`None`) keeps the source's format.
    pub fn parse_or_auto(s: &str) -> Result<Option<Self>> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(None);
        }
        Self::parse(s).map(Some).map_err(|e| anyhow::anyhow!("{e}, or auto (the source's own)"))
    }

    pub fn name(self) -> String {
        match self {
            ModelDtype::Uniform(f) => f.name().to_string(),
            ModelDtype::Q4KM => "q4_K_M".into(),
        }
    }

    /// The format of one matrix (`kind`: `embed`, `head`, `q`, `k`, `v`, `o`, `gate`, `up`,
    /// `down`) of `cols` columns in `layer`, falling back (as llama-quantize does) where the row
    /// is not a whole number of blocks: K-quants to Q8_0, then anything to f16.
    pub fn format_for(self, kind: &str, layer: usize, n_layers: usize, cols: usize) -> Format {
        let want = self.wanted_format(kind, layer, n_layers);
        if cols.is_multiple_of(want.block_len()) {
            want
        } else if cols.is_multiple_of(32) && want.is_quantized() {
            Format::Q8_0
        } else if want.is_quantized() {
            Format::F16
        } else {
            want
        }
    }

    /// The format a matrix gets where its rows are whole blocks (before [`format_for`](Self::format_for)'s fallbacks).
    pub fn wanted_format(self, kind: &str, layer: usize, n_layers: usize) -> Format {
        match self {
            ModelDtype::Uniform(f) => f,
            ModelDtype::Q4KM => match kind {
                "head" => Format::Q6K,
                "v" | "down" if q4_k_m_more_bits(layer, n_layers) => Format::Q6K,
                _ => Format::Q4K,
            },
        }
    }
}

impl InferenceModel {
    /// Assembles a model; checks every shape against the config.
    pub fn new(
        cfg: LlamaConfig,
        embed: WeightMatrix,
        layers: Vec<DecoderLayer>,
        final_norm: Vec<f32>,
        lm_head: Linear,
    ) -> Result<Self> {
        cfg.validate()?;
        let (d, v, f) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        ensure!(
            embed.rows == v && embed.cols == d,
            "token embedding is {}×{}, expected {v}×{d}",
            embed.rows,
            embed.cols
        );
        ensure!(
            lm_head.rows == v && lm_head.cols == d,
            "output head is {}×{}, expected {v}×{d}",
            lm_head.rows,
            lm_head.cols
        );
        ensure!(final_norm.len() == d, "final norm has {} weights, expected {d}", final_norm.len());
        ensure!(
            layers.len() == cfg.num_hidden_layers,
            "{} layers, config says {}",
            layers.len(),
            cfg.num_hidden_layers
        );
        for (i, l) in layers.iter().enumerate() {
            let shapes = [
                ("q/k/v", &l.wqkv, qd + 2 * kvd, d),
                ("attention output", &l.wo, d, qd),
                ("gate/up", &l.wgu, 2 * f, d),
                ("down", &l.wdown, d, f),
            ];
            for (name, lin, rows, cols) in shapes {
                ensure!(
                    lin.rows == rows && lin.cols == cols,
                    "layer {i}: {name} is {}×{}, expected {rows}×{cols}",
                    lin.rows,
                    lin.cols
                );
            }
            ensure!(l.attn_norm.len() == d && l.mlp_norm.len() == d, "layer {i}: norm weights must have {d} entries");
        }
        let rope = RopeTable::new(cfg.head_dim, cfg.rope_theta, cfg.max_position_embeddings.max(1));
        Ok(InferenceModel {
            cfg,
            embed,
            layers,
            final_norm,
            lm_head,
            rope,
            training_numerics: false,
            kv_cache: KvCacheType::Auto,
        })
    }

    /// RMSNorm of every row, with the arithmetic [`training_numerics`](Self::training_numerics) says.
    fn norm(&self, y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32]) {
        let (d, eps) = (self.cfg.hidden_size, self.cfg.rms_norm_eps);
        if self.training_numerics {
            rms_norm_forward(y, rstd, x, w, d, eps);
        } else {
            rms_norm_forward_ggml(y, x, w, d, eps);
        }
    }

    /// The model of a flat f32 parameter buffer ([`ParamLayout`](super::ParamLayout) order), its
    /// matrices in `dtype` (f32 shares the buffer; others are quantized from it).
    pub fn from_params(cfg: LlamaConfig, params: Vec<f32>, dtype: ModelDtype) -> Result<Self> {
        let layout = super::ParamLayout::new(&cfg);
        ensure!(params.len() == layout.total, "parameter buffer does not match the config");
        let buf = Arc::new(params);
        let (d, f, nl) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let mat = |kind: &str, layer: usize, start: usize, rows: usize, cols: usize| -> Result<WeightMatrix> {
            let fmt = dtype.format_for(kind, layer, nl, cols);
            let range = start..start + rows * cols;
            if fmt == Format::F32 {
                WeightMatrix::from_f32(buf.clone(), range, rows, cols)
            } else {
                WeightMatrix::quantize(&buf[range], rows, cols, fmt)
            }
        };
        // parts of one format stay one matrix (one GEMM); mixed formats are stacked
        let stacked = |parts: &[(&str, usize, usize)], layer: usize, start: usize, cols: usize| -> Result<Linear> {
            let fmts: Vec<Format> = parts.iter().map(|p| dtype.format_for(p.0, layer, nl, cols)).collect();
            if fmts.iter().all(|&x| x == fmts[0]) {
                let rows = parts.iter().map(|p| p.1).sum();
                return Ok(Linear::single(mat(parts[0].0, layer, start, rows, cols)?));
            }
            let mut at = start;
            let mut out = vec![];
            for p in parts {
                out.push(mat(p.0, layer, at, p.1, cols)?);
                at += p.1 * cols;
            }
            Linear::new(out)
        };
        let mut layers = vec![];
        for (i, lp) in layout.layers.iter().enumerate() {
            layers.push(DecoderLayer {
                attn_norm: buf[lp.attn_norm.clone()].to_vec(),
                wqkv: stacked(&[("q", qd, 0), ("k", kvd, 0), ("v", kvd, 0)], i, lp.wqkv.start, d)?,
                wo: Linear::single(mat("o", i, lp.wo.start, d, qd)?),
                mlp_norm: buf[lp.mlp_norm.clone()].to_vec(),
                wgu: stacked(&[("gate", f, 0), ("up", f, 0)], i, lp.wgu.start, d)?,
                wdown: Linear::single(mat("down", i, lp.wdown.start, d, f)?),
            });
        }
        let embed = mat("embed", 0, layout.embed.start, cfg.vocab_size, d)?;
        let lm_head = Linear::single(mat("head", 0, layout.lm_head.start, cfg.vocab_size, d)?);
        let final_norm = buf[layout.final_norm.clone()].to_vec();
        let mut m = Self::new(cfg, embed, layers, final_norm, lm_head)?;
        m.training_numerics = dtype == ModelDtype::Uniform(Format::F32);
        Ok(m)
    }

    /// A copy of a training model, in `dtype`.
    pub fn from_llama(model: &Llama, dtype: ModelDtype) -> Result<Self> {
        Self::from_params(model.cfg.clone(), model.params.clone(), dtype)
    }

    /// Whether this model's KV caches hold IEEE halves rather than f32 ([`KvCacheType`]).
    pub fn half_kv_cache(&self) -> bool {
        match self.kv_cache {
            KvCacheType::Auto => !self.training_numerics,
            KvCacheType::F16 => true,
            KvCacheType::F32 => false,
        }
    }

    /// Bytes of weights read per token (every matrix once; the embedding row is negligible).
    pub fn matmul_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.wqkv.size_bytes() + l.wo.size_bytes() + l.wgu.size_bytes() + l.wdown.size_bytes())
            .sum::<usize>()
            + self.lm_head.size_bytes()
    }

    /// The bytes of every matrix a decode step reads (see [`matmul_bytes`](Self::matmul_bytes)).
    pub fn matmul_weights(&self) -> Vec<&[u8]> {
        let lins = self.layers.iter().flat_map(|l| [&l.wqkv, &l.wo, &l.wgu, &l.wdown]);
        lins.chain([&self.lm_head]).flat_map(|lin| lin.parts.iter().map(|p| p.bytes())).collect()
    }

    /// Bytes of all weights held.
    pub fn weight_bytes(&self) -> usize {
        self.matmul_bytes() + self.embed.size_bytes() + 4 * self.cfg.hidden_size * (2 * self.cfg.num_hidden_layers + 1)
    }

    /// A short description of the formats, e.g. `q4_K ×154, q6_K ×23, f32 norms`.
    pub fn format_summary(&self) -> String {
        let mut counts: Vec<(Format, usize)> = vec![];
        let mut add = |f: Format| match counts.iter_mut().find(|c| c.0 == f) {
            Some(c) => c.1 += 1,
            None => counts.push((f, 1)),
        };
        add(self.embed.format);
        for l in &self.layers {
            for lin in [&l.wqkv, &l.wo, &l.wgu, &l.wdown] {
                lin.parts.iter().for_each(|p| add(p.format));
            }
        }
        self.lm_head.parts.iter().for_each(|p| add(p.format));
        counts.iter().map(|(f, n)| format!("{f} ×{n}")).collect::<Vec<_>>().join(", ")
    }

    /// The number of positions the rotary table covers: the config's context unless
    /// [`extend_positions`](Self::extend_positions) raised it.
    pub fn max_positions(&self) -> usize {
        self.rope.max_pos()
    }

    /// Lets sequences run to `n` positions, past the trained context, as transformers does
    /// (rotary angles are computed for any position; nothing else has a limit).
    pub fn extend_positions(&mut self, n: usize) {
        if n > self.rope.max_pos() {
            self.rope = RopeTable::new(self.cfg.head_dim, self.cfg.rope_theta, n);
        }
    }

    /// Runs each segment's tokens at positions `cache.len..` of its cache and returns the final
    /// hidden states (after the last norm) of all rows, `[Σ tokens, d]`, segments in order.
    pub fn forward(&self, segs: &mut [Segment], mode: RowMode) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let d = c.hidden_size;
        let mut tokens = Vec::new();
        for s in segs.iter() {
            let end = s.cache.len + s.tokens.len();
            ensure!(
                end <= s.cache.max_len && end <= self.rope.max_pos(),
                "sequence of {end} tokens exceeds the context ({})",
                s.cache.max_len.min(self.rope.max_pos())
            );
            tokens.extend_from_slice(s.tokens);
        }
        let n = tokens.len();
        let v = c.vocab_size;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= v) {
            anyhow::bail!("token id {t} is outside the vocabulary (size {v})");
        }
        let mut x = vec![0.0f32; n * d];
        for (row, &t) in x.chunks_exact_mut(d).zip(&tokens) {
            self.embed.row_f32(t as usize, row);
        }
        let z = |k: usize| vec![0.0f32; k];
        let mut s = Scratch {
            xn: z(n * d),
            rstd: z(n),
            qkv: z(n * (c.q_dim() + 2 * c.kv_dim())),
            att: z(n * c.q_dim()),
            gu: z(n * 2 * c.intermediate_size),
            h: z(n * c.intermediate_size),
            acts: Activations::default(),
        };
        for (l, layer) in self.layers.iter().enumerate() {
            layer.forward(l, &mut x, segs, self, mode, &mut s);
        }
        self.norm(&mut s.xn, &mut s.rstd, &x, &self.final_norm);
        for seg in segs.iter_mut() {
            seg.cache.len += seg.tokens.len();
            seg.cache.tokens.extend_from_slice(seg.tokens);
        }
        Ok(s.xn)
    }

    /// [`forward`](Self::forward) of one sequence.
    pub fn forward_cached_hidden(&self, tokens: &[u32], cache: &mut KvCache, mode: RowMode) -> Result<Vec<f32>> {
        self.forward(&mut [Segment { tokens, cache }], mode)
    }

    /// Logits `[rows, vocab]` of final hidden states `[rows, d]`.
    pub fn head_logits(&self, hidden: &[f32], mode: RowMode) -> Vec<f32> {
        let (d, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let rows = hidden.len() / d;
        let mut logits = vec![0.0f32; rows * v];
        self.lm_head.forward(&mut logits, hidden, rows, Output::Overwrite, mode, &mut Activations::default());
        logits
    }

    /// Logits of the last of `tokens` after running them through the cache (one sequence).
    pub fn next_token_logits(&self, tokens: &[u32], cache: &mut KvCache, mode: RowMode) -> Result<Vec<f32>> {
        ensure!(!tokens.is_empty(), "no tokens to compute the next token's logits from");
        let hidden = self.forward_cached_hidden(tokens, cache, mode)?;
        let d = self.cfg.hidden_size;
        Ok(self.head_logits(&hidden[hidden.len() - d..], mode))
    }

    /// Per-row cross-entropy of `targets` given final hidden states (evaluation, perplexity). An
    /// f32 head takes the training loss kernel, so f32 numbers equal the training forward's.
    pub fn row_losses(&self, hidden: &[f32], targets: &[u32]) -> Vec<f32> {
        let (d, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let mut loss = vec![0.0f32; targets.len()];
        if let (1, Some(w)) = (self.lm_head.parts.len(), self.lm_head.parts[0].f32s()) {
            let mut scratch = vec![0.0f32; HEAD_CHUNK_ROWS.min(targets.len()) * v];
            head_cross_entropy_forward(&mut loss, hidden, w, targets, d, v, &mut scratch);
            return loss;
        }
        for (r0, chunk) in (0..targets.len()).step_by(HEAD_CHUNK_ROWS).zip(targets.chunks(HEAD_CHUNK_ROWS)) {
            let logits = self.head_logits(&hidden[r0 * d..(r0 + chunk.len()) * d], RowMode::MayUseGemm);
            for (j, &t) in chunk.iter().enumerate() {
                if t != crate::kernels::cross_entropy::IGNORE_INDEX {
                    let row = &logits[j * v..(j + 1) * v];
                    loss[r0 + j] = log_sum_exp(row) - row[t as usize];
                }
            }
        }
        loss
    }

    /// Log-likelihood of `continuation` after `context` (lm-eval's `loglikelihood`): the sum of
    /// log-probabilities of the continuation tokens, and whether each is the greedy choice. Reuses
    /// the longest cached prefix (but always recomputes the last context token, whose logits
    /// score the first continuation token). `context` must not be empty.
    pub fn loglikelihood(&self, context: &[u32], continuation: &[u32], cache: &mut KvCache) -> Result<(f64, bool)> {
        ensure!(!context.is_empty() && !continuation.is_empty(), "empty context or continuation");
        let v = self.cfg.vocab_size;
        if let Some(&t) = continuation.iter().find(|&&t| t as usize >= v) {
            anyhow::bail!(
                "token id {t} is outside the model's vocabulary (size {v}): does the tokenizer fit the model?"
            );
        }
        let seq: Vec<u32> = context.iter().chain(continuation).copied().collect();
        let input = &seq[..seq.len() - 1];
        let common = cache.tokens.iter().zip(input).take_while(|(a, b)| a == b).count();
        let keep = common.min(context.len() - 1);
        cache.truncate(keep);
        let hidden = self.forward_cached_hidden(&input[keep..], cache, RowMode::MayUseGemm)?;
        let d = self.cfg.hidden_size;
        let rows = continuation.len();
        let logits = self.head_logits(&hidden[hidden.len() - rows * d..], RowMode::MayUseGemm);
        let v = self.cfg.vocab_size;
        let (mut sum, mut greedy) = (0.0f64, true);
        for (r, &t) in continuation.iter().enumerate() {
            let row = &logits[r * v..(r + 1) * v];
            sum += (row[t as usize] - log_sum_exp(row)) as f64;
            let best = crate::kernels::argmax(row);
            greedy &= best == t as usize;
        }
        Ok((sum, greedy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Workspace;

    fn f32_model(m: &Llama) -> InferenceModel {
        InferenceModel::from_llama(m, ModelDtype::Uniform(Format::F32)).unwrap()
    }

    /// Log-likelihoods through the shared-prefix cache equal those read off one full forward pass.
    #[test]
    fn cached_loglikelihood_equals_full_forward() {
        let llama = crate::model::test_model(300, 64, 8, 3.0);
        let model = f32_model(&llama);
        let cfg = model.cfg.clone();
        let ctx = [1u32, 45, 7, 210, 33, 90];
        let mut cache = KvCache::new(&model, 64);
        for cont in [vec![5u32, 6, 7], vec![5, 9], vec![250]] {
            let (ll, greedy) = model.loglikelihood(&ctx, &cont, &mut cache).unwrap();
            let seq: Vec<u32> = ctx.iter().chain(&cont).copied().collect();
            let n = seq.len() - 1;
            let mut ws = Workspace::new(&cfg, 1, n);
            let logits = llama.forward_logits(&mut ws, &seq[..n]).unwrap();
            let v = cfg.vocab_size;
            let (mut want, mut want_greedy) = (0.0f64, true);
            for (j, &t) in cont.iter().enumerate() {
                let row = &logits[(ctx.len() - 1 + j) * v..][..v];
                let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
                let z: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
                want += row[t as usize] as f64 - m - z.ln();
                want_greedy &= row.iter().all(|&x| x <= row[t as usize]);
            }
            assert!((ll - want).abs() < 1e-4, "{cont:?}: {ll} vs {want}");
            assert_eq!(greedy, want_greedy);
        }
        assert_eq!(cache.tokens[..ctx.len() - 1], ctx[..ctx.len() - 1], "the context prefix stays cached");
        // a continuation token outside the vocabulary (a tokenizer larger than the model) is an error
        let e = model.loglikelihood(&ctx, &[5, 300], &mut cache).unwrap_err();
        assert!(format!("{e}").contains("outside the model's vocabulary"), "{e}");
    }

    /// A fresh prompt in batched mode is the training forward, bit for bit (so evaluation's
    /// numbers did not move when it moved onto the inference model).
    #[test]
    fn f32_prefill_is_the_training_forward_bit_for_bit() {
        let llama = crate::model::test_model(300, 64, 3, 2.0);
        let model = f32_model(&llama);
        let tokens: Vec<u32> = (0..40).map(|i| (i * 37 % 300) as u32).collect();
        let targets: Vec<u32> = tokens[1..].iter().copied().chain([7]).collect();
        let mut ws = Workspace::new(&llama.cfg, 1, tokens.len());
        llama.forward_loss(&mut ws, &tokens, &targets).unwrap();
        let mut cache = KvCache::new(&model, 64);
        let hidden = model.forward_cached_hidden(&tokens, &mut cache, RowMode::MayUseGemm).unwrap();
        assert!(hidden.iter().zip(&ws.xf).all(|(a, b)| a.to_bits() == b.to_bits()));
        let loss = model.row_losses(&hidden, &targets);
        assert!(loss.iter().zip(&ws.row_loss).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    /// Sequences run together give each the bits it gets alone, in every format, for prefill
    /// chunks and decode steps mixed in one call.
    #[test]
    fn batched_sequences_equal_each_alone() {
        let mut llama = crate::model::test_model(300, 64, 5, 2.0);
        llama.cfg.vocab_size = 300;
        for dtype in
            [ModelDtype::Uniform(Format::F32), ModelDtype::Uniform(Format::Q8_0), ModelDtype::Uniform(Format::Q4_0)]
        {
            let model = InferenceModel::from_llama(&llama, dtype).unwrap();
            let prompts: [&[u32]; 3] = [&[1, 5, 9, 200], &[1, 77], &[1, 3, 3, 3, 3, 3, 8]];
            let alone: Vec<Vec<f32>> = prompts
                .iter()
                .map(|p| {
                    let mut c = KvCache::new(&model, 32);
                    model.forward_cached_hidden(&p[..p.len() - 1], &mut c, RowMode::BatchInvariant).unwrap();
                    model.forward_cached_hidden(&p[p.len() - 1..], &mut c, RowMode::BatchInvariant).unwrap()
                })
                .collect();
            let mut caches: Vec<KvCache> = (0..3).map(|_| KvCache::new(&model, 32)).collect();
            let mut segs: Vec<Segment> =
                caches.iter_mut().zip(&prompts).map(|(c, p)| Segment { tokens: &p[..p.len() - 1], cache: c }).collect();
            model.forward(&mut segs, RowMode::BatchInvariant).unwrap();
            let mut segs: Vec<Segment> =
                caches.iter_mut().zip(&prompts).map(|(c, p)| Segment { tokens: &p[p.len() - 1..], cache: c }).collect();
            let together = model.forward(&mut segs, RowMode::BatchInvariant).unwrap();
            let d = model.cfg.hidden_size;
            for (i, a) in alone.iter().enumerate() {
                assert!(
                    a.iter().zip(&together[i * d..(i + 1) * d]).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{dtype:?}: sequence {i}"
                );
            }
        }
    }

    /// A quantized model's prompt gives the same bits run whole or in pieces (its attention is
    /// always the cached kernel, whose rows do not depend on each other), with f16 and f32 caches.
    #[test]
    fn quantized_prompt_whole_equals_prompt_in_pieces() {
        let llama = crate::model::test_model(300, 64, 7, 2.0);
        let mut model = InferenceModel::from_llama(&llama, ModelDtype::Uniform(Format::Q8_0)).unwrap();
        let tokens: Vec<u32> = (0..60).map(|i| (i * 37 % 300) as u32).collect();
        let d = model.cfg.hidden_size;
        for kv in [KvCacheType::Auto, KvCacheType::F32] {
            model.kv_cache = kv;
            let mut whole_cache = KvCache::new(&model, 64);
            let whole = model.forward_cached_hidden(&tokens, &mut whole_cache, RowMode::MayUseGemm).unwrap();
            let mut cache = KvCache::new(&model, 64);
            let mut pieces = vec![];
            for part in [&tokens[..33], &tokens[33..34], &tokens[34..]] {
                pieces.extend(model.forward_cached_hidden(part, &mut cache, RowMode::MayUseGemm).unwrap());
            }
            assert_eq!(whole.len(), 60 * d);
            for (i, (a, b)) in whole.iter().zip(&pieces).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{kv:?}: row {}, element {}", i / d, i % d);
            }
        }
    }

    #[test]
    fn q4_k_m_gives_more_bits_where_llama_cpp_does() {
        // TinyLlama's 22 layers: llama.cpp gives Q6_K to layers 0-1, 19-21 and every third between
        let more: Vec<usize> = (0..22).filter(|&i| q4_k_m_more_bits(i, 22)).collect();
        assert_eq!(more, vec![0, 1, 4, 7, 10, 13, 16, 19, 20, 21]);
        let dt = ModelDtype::Q4KM;
        assert_eq!(dt.format_for("head", 0, 22, 2048), Format::Q6K);
        assert_eq!(dt.format_for("q", 5, 22, 2048), Format::Q4K);
        assert_eq!(dt.format_for("down", 4, 22, 5632), Format::Q6K);
        assert_eq!(dt.format_for("down", 5, 22, 5632), Format::Q4K);
        assert_eq!(dt.format_for("q", 5, 22, 64), Format::Q8_0);
        assert_eq!(dt.format_for("down", 5, 22, 176), Format::F16);
    }
}
