//! Inference with a KV cache: prefill a prompt, then one token at a time, or extend a cached
//! prefix with several tokens (how evaluation shares a context between answer choices). The
//! same kernels as training; attention reads the cached keys and values in place.

use super::llama::Llama;
use crate::kernels::attention::{attention_cached, attention_forward, attention_scratch_len, AttnShape};
use crate::kernels::cross_entropy::log_sum_exp;
use crate::kernels::embedding::embedding_forward;
use crate::kernels::matmul::{linear_forward, matmul};
use crate::kernels::rms_norm::rms_norm_forward;
use crate::kernels::rope::rope_forward;
use crate::kernels::swiglu::swiglu_forward;
use anyhow::{ensure, Result};

/// Keys and values of every layer for positions `0..len` of one sequence.
pub struct KvCache {
    pub len: usize,
    pub max_len: usize,
    kv_dim: usize,
    /// `[layer][position][kv_dim]`
    k: Vec<f32>,
    v: Vec<f32>,
    /// The tokens whose keys and values are cached (for prefix reuse).
    pub tokens: Vec<u32>,
}

impl KvCache {
    pub fn new(model: &Llama, max_len: usize) -> Self {
        let c = &model.cfg;
        let n = c.num_hidden_layers * max_len * c.kv_dim();
        KvCache { len: 0, max_len, kv_dim: c.kv_dim(), k: vec![0.0; n], v: vec![0.0; n], tokens: vec![] }
    }

    /// Forgets positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        self.tokens.truncate(self.len);
    }

    fn layer(&mut self, l: usize) -> (&mut [f32], &mut [f32]) {
        let sz = self.max_len * self.kv_dim;
        (&mut self.k[l * sz..(l + 1) * sz], &mut self.v[l * sz..(l + 1) * sz])
    }
}

impl Llama {
    /// Runs `tokens` at positions `cache.len..` and returns the final hidden states
    /// (`[tokens.len(), d]`, after the last norm), extending the cache.
    pub fn forward_cached_hidden(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let (n, p0) = (tokens.len(), cache.len);
        ensure!(
            p0 + n <= cache.max_len && p0 + n <= c.max_position_embeddings,
            "sequence of {} tokens exceeds the context ({})",
            p0 + n,
            cache.max_len.min(c.max_position_embeddings)
        );
        let (d, f, eps) = (c.hidden_size, c.intermediate_size, c.rms_norm_eps);
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        let qs = qd + 2 * kvd;
        let p = &self.params;
        let mut x = vec![0.0f32; n * d];
        embedding_forward(&mut x, tokens, &p[self.layout.embed.clone()], d)?;
        let (mut xn, mut rstd) = (vec![0.0f32; n * d], vec![0.0f32; n]);
        let mut qkv = vec![0.0f32; n * qs];
        let mut att = vec![0.0f32; n * qd];
        let mut gu = vec![0.0f32; n * 2 * f];
        let mut h = vec![0.0f32; n * f];
        for (l, lp) in self.layout.layers.iter().enumerate() {
            rms_norm_forward(&mut xn, &mut rstd, &x, &p[lp.attn_norm.clone()], d, eps);
            linear_forward(&mut qkv, &xn, &p[lp.wqkv.clone()], n, d, qs);
            rope_forward(&mut qkv, qs, c.num_attention_heads + c.num_key_value_heads, n, p0, self.rope());
            let (kc, vc) = cache.layer(l);
            for r in 0..n {
                kc[(p0 + r) * kvd..][..kvd].copy_from_slice(&qkv[r * qs + qd..][..kvd]);
                vc[(p0 + r) * kvd..][..kvd].copy_from_slice(&qkv[r * qs + qd + kvd..][..kvd]);
            }
            if p0 == 0 {
                // a fresh prompt: the tiled training kernel is the faster one
                let shape = AttnShape {
                    batch: 1,
                    seq_len: n,
                    n_heads: c.num_attention_heads,
                    n_kv_heads: c.num_key_value_heads,
                    head_dim: c.head_dim,
                };
                let mut lse = vec![0.0f32; c.num_attention_heads * n];
                let mut scratch = vec![0.0f32; attention_scratch_len(shape)];
                attention_forward(&mut att, &mut lse, &qkv, &mut scratch, shape);
            } else {
                let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
                attention_cached(&mut att, &qkv, qs, kc, vc, n, p0, nh, nkv, hd);
            }
            matmul(&mut x, &att, &p[lp.wo.clone()], n, d, qd, false, true, true);
            rms_norm_forward(&mut xn, &mut rstd, &x, &p[lp.mlp_norm.clone()], d, eps);
            linear_forward(&mut gu, &xn, &p[lp.wgu.clone()], n, d, 2 * f);
            swiglu_forward(&mut h, &gu, f);
            matmul(&mut x, &h, &p[lp.wdown.clone()], n, d, f, false, true, true);
        }
        rms_norm_forward(&mut xn, &mut rstd, &x, &p[self.layout.final_norm.clone()], d, eps);
        cache.len = p0 + n;
        cache.tokens.extend_from_slice(tokens);
        Ok(xn)
    }

    /// Logits `[rows, vocab]` of final hidden states `[rows, d]`.
    pub fn head_logits(&self, hidden: &[f32]) -> Vec<f32> {
        let (d, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let rows = hidden.len() / d;
        let mut logits = vec![0.0f32; rows * v];
        linear_forward(&mut logits, hidden, &self.params[self.layout.lm_head.clone()], rows, d, v);
        logits
    }

    /// Logits of the last of `tokens` after running them through the cache.
    pub fn next_token_logits(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let hidden = self.forward_cached_hidden(tokens, cache)?;
        let d = self.cfg.hidden_size;
        Ok(self.head_logits(&hidden[hidden.len() - d..]))
    }

    /// Log-likelihood of `continuation` after `context` (lm-eval's `loglikelihood`): the sum of
    /// log-probabilities of the continuation tokens, and whether each is the greedy choice. Reuses
    /// the longest cached prefix (but always recomputes the last context token, whose logits
    /// score the first continuation token). `context` must not be empty.
    pub fn loglikelihood(&self, context: &[u32], continuation: &[u32], cache: &mut KvCache) -> Result<(f64, bool)> {
        ensure!(!context.is_empty() && !continuation.is_empty(), "empty context or continuation");
        let seq: Vec<u32> = context.iter().chain(continuation).copied().collect();
        let input = &seq[..seq.len() - 1];
        let common = cache.tokens.iter().zip(input).take_while(|(a, b)| a == b).count();
        let keep = common.min(context.len() - 1);
        cache.truncate(keep);
        let hidden = self.forward_cached_hidden(&input[keep..], cache)?;
        let d = self.cfg.hidden_size;
        let rows = continuation.len();
        let logits = self.head_logits(&hidden[hidden.len() - rows * d..]);
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

    /// Log-likelihoods through the shared-prefix cache equal those read off one full forward pass.
    #[test]
    fn cached_loglikelihood_equals_full_forward() {
        let model = crate::model::test_model(300, 64, 8, 3.0);
        let cfg = model.cfg.clone();
        let ctx = [1u32, 45, 7, 210, 33, 90];
        let mut cache = KvCache::new(&model, 64);
        for cont in [vec![5u32, 6, 7], vec![5, 9], vec![250]] {
            let (ll, greedy) = model.loglikelihood(&ctx, &cont, &mut cache).unwrap();
            let seq: Vec<u32> = ctx.iter().chain(&cont).copied().collect();
            let n = seq.len() - 1;
            let mut ws = Workspace::new(&cfg, 1, n);
            let logits = model.forward_logits(&mut ws, &seq[..n]).unwrap();
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
    }
}
