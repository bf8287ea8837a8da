//! The whole model on one screen: forward and backward of the decoder stack over a workspace
//! allocated once per batch shape.
//!
//! Per layer (pre-norm, as Llama): `x_mid = x + Wo·attn(rope(Wqkv·norm1(x)))`,
//! `x_out = x_mid + Wdown·swiglu(Wgu·norm2(x_mid))`; then a final norm and the untied head.

use super::lora::{Adapters, Fused};
use super::params::{init_params, ParamLayout};
use crate::config::LlamaConfig;
use crate::kernels::attention::{attention_backward, attention_forward, attention_scratch_len, AttnShape};
use crate::kernels::cross_entropy::{
    head_cross_entropy_backward, head_cross_entropy_forward, RowScale, HEAD_CHUNK_ROWS,
};
use crate::kernels::embedding::{embedding_backward, embedding_forward};
use crate::kernels::matmul::{linear_backward_input, linear_backward_weight, linear_forward, matmul, Output, Stored};
use crate::kernels::rms_norm::{rms_norm_backward, rms_norm_forward};
use crate::kernels::rope::{rope_backward, rope_forward, RopeTable};
use crate::kernels::swiglu::{swiglu_backward, swiglu_forward};
use crate::profile;
use anyhow::{ensure, Result};

pub struct Llama {
    pub cfg: LlamaConfig,
    pub layout: ParamLayout,
    pub params: Vec<f32>,
    rope: RopeTable,
    /// LoRA: adapters computed beside the frozen weights. With them, the backward computes the
    /// adapters' gradients only (its gradient buffer is in their layout), no weight's.
    pub adapters: Option<Adapters>,
}

/// What a training forward keeps for the backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    /// Every layer's activations.
    KeepAll,
    /// Each layer's input only (`--checkpoint-activations`): the backward recomputes a layer's
    /// forward just before its backward, so activation memory is one layer's, for one more
    /// forward's time; the results are the same bits.
    RecomputePerLayer,
}

/// Activations kept for backward, and the gradient scratch, for one `(batch, seq_len)` shape.
/// Allocated once; a training step allocates nothing else of size.
pub struct Workspace {
    pub batch: usize,
    pub seq_len: usize,
    pub activations: Activations,
    /// Residual stream: `n_layers + 1` blocks of `[B*T, d]` (each layer's input, then the last output).
    resid: Vec<f32>,
    /// Per layer: normed inputs, fused QKV (after RoPE), attention output, log-sum-exp,
    /// mid residual, gate/up, SwiGLU output, and the two norms' 1/rms.
    xn1: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    lse: Vec<f32>,
    x_mid: Vec<f32>,
    xn2: Vec<f32>,
    gu: Vec<f32>,
    h: Vec<f32>,
    rstd1: Vec<f32>,
    rstd2: Vec<f32>,
    /// Final norm output and its 1/rms.
    pub xf: Vec<f32>,
    rstdf: Vec<f32>,
    /// Per-token loss of the last forward.
    pub row_loss: Vec<f32>,
    // backward scratch
    dres: Vec<f32>,
    dxn: Vec<f32>,
    dh: Vec<f32>,
    dgu: Vec<f32>,
    datt: Vec<f32>,
    dqkv: Vec<f32>,
    attn_scratch: Vec<f32>,
    head_scratch: Vec<f32>,
    /// LoRA, sized at the first step with adapters: each target's `x·Aᵀ` (`[n, r]`, kept for
    /// backward), the scratch of its products, and a sink for the frozen norms' gradients.
    lora_t: Vec<f32>,
    lora_scratch: Vec<f32>,
    norm_sink: Vec<f32>,
}

impl Workspace {
    pub fn new(cfg: &LlamaConfig, batch: usize, seq_len: usize) -> Self {
        Self::with_activations(cfg, batch, seq_len, Activations::KeepAll)
    }

    pub fn with_activations(cfg: &LlamaConfig, batch: usize, seq_len: usize, activations: Activations) -> Self {
        let n = batch * seq_len;
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        // per-layer activations: every layer's, or one layer's slot reused
        let l = if activations == Activations::KeepAll { cfg.num_hidden_layers } else { 1 };
        let qs = cfg.q_dim() + 2 * cfg.kv_dim();
        let z = |k: usize| vec![0.0f32; k];
        Workspace {
            batch,
            seq_len,
            activations,
            resid: z((cfg.num_hidden_layers + 1) * n * d),
            xn1: z(l * n * d),
            qkv: z(l * n * qs),
            att: z(l * n * cfg.q_dim()),
            lse: z(l * batch * cfg.num_attention_heads * seq_len),
            x_mid: z(l * n * d),
            xn2: z(l * n * d),
            gu: z(l * n * 2 * f),
            h: z(l * n * f),
            rstd1: z(l * n),
            rstd2: z(l * n),
            xf: z(n * d),
            rstdf: z(n),
            row_loss: z(n),
            dres: z(n * d),
            dxn: z(n * d),
            dh: z(n * f),
            dgu: z(n * 2 * f),
            datt: z(n * cfg.q_dim()),
            dqkv: z(n * qs),
            attn_scratch: z(attention_scratch_len(AttnShape {
                batch,
                seq_len,
                n_heads: cfg.num_attention_heads,
                n_kv_heads: cfg.num_key_value_heads,
                head_dim: cfg.head_dim,
            })),
            head_scratch: z(HEAD_CHUNK_ROWS.min(n) * cfg.vocab_size),
            lora_t: vec![],
            lora_scratch: vec![],
            norm_sink: vec![],
        }
    }

    pub fn tokens(&self) -> usize {
        self.batch * self.seq_len
    }

    /// Where layer `l`'s activations live in the per-layer buffers.
    fn slot(&self, l: usize) -> usize {
        match self.activations {
            Activations::KeepAll => l,
            Activations::RecomputePerLayer => 0,
        }
    }
}

impl Llama {
    /// A model with TinyLlama's initialisation, seeded.
    pub fn new_init(cfg: LlamaConfig, seed: u64) -> Self {
        let layout = ParamLayout::new(&cfg);
        let params = init_params(&cfg, &layout, seed);
        Self::from_params(cfg, params)
    }

    pub fn from_params(cfg: LlamaConfig, params: Vec<f32>) -> Self {
        let layout = ParamLayout::new(&cfg);
        assert_eq!(params.len(), layout.total, "parameter buffer does not match the config");
        let rope = RopeTable::new(cfg.head_dim, cfg.rope_theta, cfg.max_position_embeddings.max(1));
        Llama { cfg, layout, params, rope, adapters: None }
    }

    fn attn_shape(&self, ws: &Workspace) -> AttnShape {
        AttnShape {
            batch: ws.batch,
            seq_len: ws.seq_len,
            n_heads: self.cfg.num_attention_heads,
            n_kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim,
        }
    }

    /// The length of the gradient buffer a backward accumulates into: every parameter, or (LoRA)
    /// the adapters alone.
    pub fn trainable_len(&self) -> usize {
        self.adapters.as_ref().map_or(self.layout.total, |a| a.weights.len())
    }

    fn size_lora_buffers(&self, ws: &mut Workspace) {
        let Some(ad) = &self.adapters else { return };
        let n = ws.tokens();
        let (t, scratch) = (ad.targets.len() * n * ad.rank, n * (ad.max_out() + ad.rank));
        if ws.lora_t.len() != t || ws.lora_scratch.len() != scratch {
            ws.lora_t = vec![0.0; t];
            ws.lora_scratch = vec![0.0; scratch];
            ws.norm_sink = vec![0.0; self.cfg.hidden_size];
        }
    }

    /// The adapters on `layer`'s `fused` matrix added to its output `y` (`width` wide).
    #[allow(clippy::too_many_arguments)]
    fn adapt(
        &self,
        layer: usize,
        fused: Fused,
        y: &mut [f32],
        width: usize,
        x: &[f32],
        n: usize,
        lora_t: &mut [f32],
        scratch: &mut [f32],
    ) {
        let Some(ad) = &self.adapters else { return };
        let r = ad.rank;
        profile::timed("lora_forward", || {
            for (i, tg) in ad.on(layer, fused) {
                ad.forward(tg, y, width, x, n, &mut lora_t[i * n * r..][..n * r], scratch);
            }
        });
    }

    /// `dx = dy·W`, and the gradients of what trains: `∂L/∂W` (a full model), or the adapters'
    /// on `W` (LoRA; `∂L/∂x` gets their part too).
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        grads: &mut [f32],
        (layer, fused, w): (usize, Fused, std::ops::Range<usize>),
        dx: &mut [f32],
        dy: &[f32],
        x: &[f32],
        (n, d_in, d_out): (usize, usize, usize),
        lora_t: &[f32],
        scratch: &mut [f32],
    ) {
        profile::timed("linear_backward_input", || {
            linear_backward_input(dx, dy, &self.params[w.clone()], n, d_in, d_out)
        });
        match &self.adapters {
            None => profile::timed("linear_backward_weight", || {
                linear_backward_weight(&mut grads[w], dy, x, n, d_in, d_out)
            }),
            Some(ad) => profile::timed("lora_backward", || {
                let r = ad.rank;
                for (i, tg) in ad.on(layer, fused) {
                    ad.backward(tg, grads, dx, dy, d_out, x, &lora_t[i * n * r..][..n * r], n, scratch);
                }
            }),
        }
    }

    /// Forward through the decoder stack and the final norm; `ws.xf` then holds the hidden states
    /// the head reads. `tokens` is `[batch, seq_len]`, row-major.
    pub fn forward_hidden(&self, ws: &mut Workspace, tokens: &[u32]) -> Result<()> {
        let cfg = &self.cfg;
        let n = ws.tokens();
        ensure!(tokens.len() == n, "expected {n} tokens ({}×{}), got {}", ws.batch, ws.seq_len, tokens.len());
        ensure!(
            ws.seq_len <= self.rope.max_pos(),
            "sequence length {} exceeds max_position_embeddings {}",
            ws.seq_len,
            self.rope.max_pos()
        );
        let (d, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let p = &self.params;
        profile::timed("embedding_forward", || {
            embedding_forward(&mut ws.resid[..n * d], tokens, &p[self.layout.embed.clone()], d)
        })?;
        self.size_lora_buffers(ws);
        for l in 0..cfg.num_hidden_layers {
            self.layer_forward(ws, l);
        }
        let last = &ws.resid[cfg.num_hidden_layers * n * d..][..n * d];
        profile::timed("rms_norm_forward", || {
            rms_norm_forward(&mut ws.xf, &mut ws.rstdf, last, &p[self.layout.final_norm.clone()], d, eps)
        });
        Ok(())
    }

    /// Layer `l`'s forward: from `resid[l]` to `resid[l + 1]`, its activations in its slot.
    fn layer_forward(&self, ws: &mut Workspace, l: usize) {
        let cfg = &self.cfg;
        let n = ws.tokens();
        let (d, f, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
        let (qd, qs) = (cfg.q_dim(), cfg.q_dim() + 2 * cfg.kv_dim());
        let p = &self.params;
        let shape = self.attn_shape(ws);
        let lp = &self.layout.layers[l];
        let s = ws.slot(l);
        let (x_in, x_out) = ws.resid[l * n * d..(l + 2) * n * d].split_at_mut(n * d);
        let xn1 = &mut ws.xn1[s * n * d..][..n * d];
        let qkv = &mut ws.qkv[s * n * qs..][..n * qs];
        let att = &mut ws.att[s * n * qd..][..n * qd];
        let x_mid = &mut ws.x_mid[s * n * d..][..n * d];
        let xn2 = &mut ws.xn2[s * n * d..][..n * d];
        let gu = &mut ws.gu[s * n * 2 * f..][..n * 2 * f];
        let h = &mut ws.h[s * n * f..][..n * f];
        let rstd1 = &mut ws.rstd1[s * n..][..n];
        let rstd2 = &mut ws.rstd2[s * n..][..n];
        let lse = &mut ws.lse[s * shape.batch * shape.n_heads * shape.seq_len..]
            [..shape.batch * shape.n_heads * shape.seq_len];

        profile::timed("rms_norm_forward", || rms_norm_forward(xn1, rstd1, x_in, &p[lp.attn_norm.clone()], d, eps));
        profile::timed("linear_forward", || linear_forward(qkv, xn1, &p[lp.wqkv.clone()], n, d, qs));
        self.adapt(l, Fused::Qkv, qkv, qs, xn1, n, &mut ws.lora_t, &mut ws.lora_scratch);
        profile::timed("rope_forward", || {
            rope_forward(qkv, qs, cfg.num_attention_heads + cfg.num_key_value_heads, ws.seq_len, 0, &self.rope)
        });
        profile::timed("attention_forward", || attention_forward(att, lse, qkv, &mut ws.attn_scratch, shape));
        // residual add fused into the GEMM: x_mid = x_in + att·Woᵀ
        x_mid.copy_from_slice(x_in);
        profile::timed("matmul_residual", || {
            matmul(x_mid, att, &p[lp.wo.clone()], n, d, qd, Stored::AsIs, Stored::Transposed, Output::Accumulate)
        });
        self.adapt(l, Fused::O, x_mid, d, att, n, &mut ws.lora_t, &mut ws.lora_scratch);
        profile::timed("rms_norm_forward", || rms_norm_forward(xn2, rstd2, x_mid, &p[lp.mlp_norm.clone()], d, eps));
        profile::timed("linear_forward", || linear_forward(gu, xn2, &p[lp.wgu.clone()], n, d, 2 * f));
        self.adapt(l, Fused::GateUp, gu, 2 * f, xn2, n, &mut ws.lora_t, &mut ws.lora_scratch);
        profile::timed("swiglu_forward", || swiglu_forward(h, gu, f));
        x_out.copy_from_slice(x_mid);
        profile::timed("matmul_residual", || {
            matmul(x_out, h, &p[lp.wdown.clone()], n, d, f, Stored::AsIs, Stored::Transposed, Output::Accumulate)
        });
        self.adapt(l, Fused::Down, x_out, d, h, n, &mut ws.lora_t, &mut ws.lora_scratch);
    }

    /// Full logits `[batch * seq_len, vocab]` (inference, parity checks).
    pub fn forward_logits(&self, ws: &mut Workspace, tokens: &[u32]) -> Result<Vec<f32>> {
        self.forward_hidden(ws, tokens)?;
        let (n, d, v) = (ws.tokens(), self.cfg.hidden_size, self.cfg.vocab_size);
        let mut logits = vec![0.0f32; n * v];
        profile::timed("linear_forward", || {
            linear_forward(&mut logits, &ws.xf, &self.params[self.layout.lm_head.clone()], n, d, v)
        });
        Ok(logits)
    }

    /// Mean cross-entropy of next-token prediction, without keeping logits or gradients.
    pub fn forward_loss(&self, ws: &mut Workspace, tokens: &[u32], targets: &[u32]) -> Result<f64> {
        self.forward_hidden(ws, tokens)?;
        self.check_targets(targets, ws.tokens())?;
        let (d, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let head = &self.params[self.layout.lm_head.clone()];
        profile::timed("head_cross_entropy_forward", || {
            head_cross_entropy_forward(&mut ws.row_loss, &ws.xf, head, targets, d, v, &mut ws.head_scratch)
        });
        Ok(mean_loss(&ws.row_loss, targets))
    }

    fn check_targets(&self, targets: &[u32], n: usize) -> Result<()> {
        ensure!(targets.len() == n, "expected {n} targets, got {}", targets.len());
        let v = self.cfg.vocab_size as u32;
        if let Some(t) = targets.iter().find(|&&t| t >= v && t != crate::kernels::cross_entropy::IGNORE_INDEX) {
            anyhow::bail!("target id {t} is outside the vocabulary (size {v})");
        }
        Ok(())
    }

    /// One micro-batch of training: forward, loss, and backward, accumulating into `grads` (a
    /// buffer in the parameter layout) the gradient of `grad_scale × Σ token losses`. Returns the
    /// micro-batch's mean loss. With `k` micro-batches of `n` tokens, `grad_scale = 1/(k n)` gives
    /// the gradient of the mean over all of them.
    pub fn forward_backward(
        &self,
        ws: &mut Workspace,
        grads: &mut [f32],
        tokens: &[u32],
        targets: &[u32],
        grad_scale: f32,
    ) -> Result<f64> {
        ensure!(grads.len() == self.trainable_len(), "gradient buffer does not match the model");
        self.check_targets(targets, ws.tokens())?;
        self.forward_hidden(ws, tokens)?;
        self.backward_from_hidden(ws, grads, tokens, targets, RowScale::Uniform(grad_scale));
        Ok(mean_loss(&ws.row_loss, targets))
    }

    /// Training with a weight on each token's loss that depends on the losses themselves (DPO: a
    /// pair's coefficient comes from its sequences' log-probabilities under the current weights).
    /// One forward; the per-token losses (`ws.row_loss`) are handed to `weights`, which returns
    /// each row's factor; the gradient of `Σ weight_r · loss_r` is accumulated into `grads`.
    pub fn forward_backward_weighted(
        &self,
        ws: &mut Workspace,
        grads: &mut [f32],
        tokens: &[u32],
        targets: &[u32],
        weights: impl FnOnce(&[f32]) -> Vec<f32>,
    ) -> Result<()> {
        ensure!(grads.len() == self.trainable_len(), "gradient buffer does not match the model");
        self.check_targets(targets, ws.tokens())?;
        self.forward_hidden(ws, tokens)?;
        let (d, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let head = &self.params[self.layout.lm_head.clone()];
        profile::timed("head_cross_entropy_forward", || {
            head_cross_entropy_forward(&mut ws.row_loss, &ws.xf, head, targets, d, v, &mut ws.head_scratch)
        });
        let w = weights(&ws.row_loss);
        ensure!(w.len() == targets.len(), "expected {} row weights, got {}", targets.len(), w.len());
        self.backward_from_hidden(ws, grads, tokens, targets, RowScale::PerRow(&w));
        Ok(())
    }

    /// Head + cross-entropy and the backward pass through the stack, after `forward_hidden`.
    fn backward_from_hidden(
        &self,
        ws: &mut Workspace,
        grads: &mut [f32],
        tokens: &[u32],
        targets: &[u32],
        scale: RowScale,
    ) {
        let cfg = &self.cfg;
        let n = ws.tokens();
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, qs) = (cfg.q_dim(), cfg.q_dim() + 2 * cfg.kv_dim());
        let p = &self.params;
        let lay = &self.layout;
        let shape = self.attn_shape(ws);
        let n_rot = cfg.num_attention_heads + cfg.num_key_value_heads;
        // LoRA: the weights are frozen; the norms' gradients go to a sink
        let frozen = self.adapters.is_some();

        // head + cross-entropy, fused: dxn = ∂L/∂xf
        head_cross_entropy_backward(
            &mut ws.row_loss,
            &mut ws.dxn,
            if frozen { None } else { Some(&mut grads[lay.lm_head.clone()]) },
            &ws.xf,
            &p[lay.lm_head.clone()],
            targets,
            d,
            cfg.vocab_size,
            scale,
            &mut ws.head_scratch,
        );
        let last = &ws.resid[cfg.num_hidden_layers * n * d..][..n * d];
        ws.dres.fill(0.0);
        profile::timed("rms_norm_backward", || {
            rms_norm_backward(
                &mut ws.dres,
                if frozen { &mut ws.norm_sink } else { &mut grads[lay.final_norm.clone()] },
                &ws.dxn,
                last,
                &ws.rstdf,
                &p[lay.final_norm.clone()],
                d,
            )
        });

        for (l, lp) in lay.layers.iter().enumerate().rev() {
            if ws.activations == Activations::RecomputePerLayer {
                self.layer_forward(ws, l);
            }
            let s = ws.slot(l);
            let x_in = &ws.resid[l * n * d..][..n * d];
            let xn1 = &ws.xn1[s * n * d..][..n * d];
            let qkv = &ws.qkv[s * n * qs..][..n * qs];
            let att = &ws.att[s * n * qd..][..n * qd];
            let x_mid = &ws.x_mid[s * n * d..][..n * d];
            let xn2 = &ws.xn2[s * n * d..][..n * d];
            let gu = &ws.gu[s * n * 2 * f..][..n * 2 * f];
            let h = &ws.h[s * n * f..][..n * f];
            let rstd1 = &ws.rstd1[s * n..][..n];
            let rstd2 = &ws.rstd2[s * n..][..n];
            let lse = &ws.lse[s * shape.batch * shape.n_heads * shape.seq_len..]
                [..shape.batch * shape.n_heads * shape.seq_len];

            // MLP: dres is ∂L/∂x_out here.
            let (lt, ls) = (&ws.lora_t, &mut ws.lora_scratch);
            self.linear_backward(grads, (l, Fused::Down, lp.wdown.clone()), &mut ws.dh, &ws.dres, h, (n, f, d), lt, ls);
            profile::timed("swiglu_backward", || swiglu_backward(&mut ws.dgu, &ws.dh, gu, f));
            let (lt, ls) = (&ws.lora_t, &mut ws.lora_scratch);
            self.linear_backward(
                grads,
                (l, Fused::GateUp, lp.wgu.clone()),
                &mut ws.dxn,
                &ws.dgu,
                xn2,
                (n, d, 2 * f),
                lt,
                ls,
            );
            profile::timed("rms_norm_backward", || {
                rms_norm_backward(
                    &mut ws.dres,
                    if frozen { &mut ws.norm_sink } else { &mut grads[lp.mlp_norm.clone()] },
                    &ws.dxn,
                    x_mid,
                    rstd2,
                    &p[lp.mlp_norm.clone()],
                    d,
                )
            });
            // Attention: dres is ∂L/∂x_mid here.
            let (lt, ls) = (&ws.lora_t, &mut ws.lora_scratch);
            self.linear_backward(grads, (l, Fused::O, lp.wo.clone()), &mut ws.datt, &ws.dres, att, (n, qd, d), lt, ls);
            profile::timed("attention_backward", || {
                attention_backward(&mut ws.dqkv, &ws.datt, att, qkv, lse, &mut ws.attn_scratch, shape)
            });
            profile::timed("rope_backward", || rope_backward(&mut ws.dqkv, qs, n_rot, ws.seq_len, 0, &self.rope));
            let (lt, ls) = (&ws.lora_t, &mut ws.lora_scratch);
            self.linear_backward(
                grads,
                (l, Fused::Qkv, lp.wqkv.clone()),
                &mut ws.dxn,
                &ws.dqkv,
                xn1,
                (n, d, qs),
                lt,
                ls,
            );
            profile::timed("rms_norm_backward", || {
                rms_norm_backward(
                    &mut ws.dres,
                    if frozen { &mut ws.norm_sink } else { &mut grads[lp.attn_norm.clone()] },
                    &ws.dxn,
                    x_in,
                    rstd1,
                    &p[lp.attn_norm.clone()],
                    d,
                )
            });
        }
        if !frozen {
            profile::timed("embedding_backward", || {
                embedding_backward(&mut grads[lay.embed.clone()], &ws.dres, tokens, d)
            });
        }
    }
}

/// Mean of the per-token losses over the targets that count, summed in f64 in a fixed order.
pub fn mean_loss(row_loss: &[f32], targets: &[u32]) -> f64 {
    let ignore = crate::kernels::cross_entropy::IGNORE_INDEX;
    let (mut s, mut c) = (0.0f64, 0usize);
    for (&l, &t) in row_loss.iter().zip(targets) {
        if t != ignore {
            s += l as f64;
            c += 1;
        }
    }
    if c == 0 {
        0.0
    } else {
        s / c as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::check;
    use crate::rng::Rng;

    fn small_cfg(heads: usize, kv: usize) -> LlamaConfig {
        LlamaConfig {
            vocab_size: 23,
            hidden_size: 12,
            intermediate_size: 20,
            num_hidden_layers: 2,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 16,
            bos_token_id: 1,
            eos_token_id: 2,
            extra_eos_token_ids: vec![],
        }
    }

    fn batch(cfg: &LlamaConfig, n: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
        let mut r = Rng::new(seed);
        let ids: Vec<u32> = (0..2 * n).map(|_| r.below(cfg.vocab_size as u64) as u32).collect();
        (ids[..n].to_vec(), ids[n..].to_vec())
    }

    #[test]
    fn whole_model_gradient_matches_finite_differences() {
        for (heads, kv) in [(3, 3), (2, 1), (4, 2)] {
            let cfg = small_cfg(heads, kv);
            let mut model = Llama::new_init(cfg.clone(), 5);
            // weights a little larger than the init, so that attention is not uniform (much larger makes
            // the loss too curved for finite differences at this step size)
            for v in model.params.iter_mut() {
                *v *= 1.5;
            }
            let (b, t) = (2, 5);
            let (tokens, targets) = batch(&cfg, b * t, 9);
            let mut ws = Workspace::new(&cfg, b, t);
            let mut grads = vec![0.0; model.layout.total];
            model.forward_backward(&mut ws, &mut grads, &tokens, &targets, 1.0 / (b * t) as f32).unwrap();
            let params = model.params.clone();
            check(&format!("model h{heads} kv{kv}"), &params, &grads, &mut |p| {
                model.params.copy_from_slice(p);
                model.forward_loss(&mut ws, &tokens, &targets).unwrap()
            });
        }
    }

    /// Recomputing each layer's forward in the backward gives the same bits as keeping every
    /// activation: losses and gradients, for a full model and for LoRA adapters.
    #[test]
    fn recomputed_activations_give_the_same_bits() {
        let cfg = small_cfg(4, 2);
        let (b, t) = (2, 7);
        let (tokens, targets) = batch(&cfg, b * t, 4);
        for lora in [false, true] {
            let mut model = Llama::new_init(cfg.clone(), 3);
            if lora {
                let mut a = crate::model::lora::Adapters::new(
                    &cfg,
                    &["self_attn.q_proj".into(), "mlp.down_proj".into()],
                    2,
                    4.0,
                    1,
                )
                .unwrap();
                a.weights.iter_mut().enumerate().for_each(|(i, w)| *w += (i % 5) as f32 * 0.01);
                model.adapters = Some(a);
            }
            let run = |activations| {
                let mut ws = Workspace::with_activations(&cfg, b, t, activations);
                let mut grads = vec![0.0; model.trainable_len()];
                let loss = model.forward_backward(&mut ws, &mut grads, &tokens, &targets, 0.5).unwrap();
                (loss.to_bits(), grads.iter().map(|g| g.to_bits()).collect::<Vec<_>>())
            };
            let (kept, recomputed) = (run(Activations::KeepAll), run(Activations::RecomputePerLayer));
            assert!(kept.1.iter().any(|&g| g != 0), "gradients were computed");
            assert_eq!(kept, recomputed, "lora {lora}");
        }
    }

    #[test]
    fn accumulated_micro_batches_equal_one_large_batch() {
        let cfg = small_cfg(4, 2);
        let model = Llama::new_init(cfg.clone(), 1);
        let (k, b, t) = (3, 2, 7);
        let (tokens, targets) = batch(&cfg, k * b * t, 4);
        let mut big = Workspace::new(&cfg, k * b, t);
        let mut g_big = vec![0.0; model.layout.total];
        let loss_big =
            model.forward_backward(&mut big, &mut g_big, &tokens, &targets, 1.0 / (k * b * t) as f32).unwrap();
        let mut small = Workspace::new(&cfg, b, t);
        let mut g_acc = vec![0.0; model.layout.total];
        let mut loss_acc = 0.0;
        for i in 0..k {
            let r = i * b * t..(i + 1) * b * t;
            loss_acc += model
                .forward_backward(&mut small, &mut g_acc, &tokens[r.clone()], &targets[r], 1.0 / (k * b * t) as f32)
                .unwrap()
                / k as f64;
        }
        assert!((loss_big - loss_acc).abs() < 1e-6, "{loss_big} vs {loss_acc}");
        let scale = g_big.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        for (a, b) in g_big.iter().zip(&g_acc) {
            assert!((a - b).abs() <= 1e-5 * scale, "{a} vs {b}");
        }
    }

    #[test]
    fn same_bits_on_any_thread_count() {
        let mut cfg = LlamaConfig::preset("tiny-10m").unwrap();
        cfg.vocab_size = 1000;
        let model = Llama::new_init(cfg.clone(), 2);
        let (b, t) = (4, 64);
        let (tokens, targets) = batch(&cfg, b * t, 3);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut ws = Workspace::new(&cfg, b, t);
                let mut g = vec![0.0; model.layout.total];
                let loss = model.forward_backward(&mut ws, &mut g, &tokens, &targets, 1.0 / (b * t) as f32).unwrap();
                (loss, g)
            })
        };
        let (l1, g1) = run(1);
        for threads in [2, 3] {
            let (l, g) = run(threads);
            assert_eq!(l.to_bits(), l1.to_bits(), "loss differs with {threads} threads");
            assert!(
                g.iter().zip(&g1).all(|(a, b)| a.to_bits() == b.to_bits()),
                "gradients differ with {threads} threads"
            );
        }
    }
}
