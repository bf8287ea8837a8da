//! AdamW with PyTorch's semantics (`torch.optim.AdamW`, single-tensor path): decoupled weight
//! decay applied to every parameter (as TinyLlama does), bias correction, and each update written
//! in the same order of f32 operations as torch, so that trajectories agree closely.
//! Global-norm gradient clipping as `torch.nn.utils.clip_grad_norm_`.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// TinyLlama's: β = (0.9, 0.95), ε = 1e-8, weight decay 0.1.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    /// First and second moments, in the parameter layout.
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Updates taken so far.
    pub step: u64,
}

const CHUNK: usize = 1 << 14;

impl AdamW {
    pub fn new(n_params: usize, cfg: AdamWConfig) -> Self {
        AdamW { cfg, m: vec![0.0; n_params], v: vec![0.0; n_params], step: 0 }
    }

    /// One update of `params` from `grads` at learning rate `lr`.
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f64) {
        assert_eq!(params.len(), grads.len());
        assert_eq!(params.len(), self.m.len());
        self.step += 1;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        // torch turns each Python-float scalar into f32 at the kernel
        let decay = (1.0 - lr * c.weight_decay) as f32;
        let w1 = (1.0 - c.beta1) as f32;
        let b2 = c.beta2 as f32;
        let w2 = (1.0 - c.beta2) as f32;
        let bc2_sqrt = bc2_sqrt as f32;
        let eps = c.eps as f32;
        let neg_step = (-(lr / bc1)) as f32;
        params
            .par_chunks_mut(CHUNK)
            .zip(grads.par_chunks(CHUNK))
            .zip(self.m.par_chunks_mut(CHUNK))
            .zip(self.v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                for i in 0..p.len() {
                    let gi = g[i];
                    p[i] *= decay;
                    m[i] += w1 * (gi - m[i]); // lerp, weight < 0.5 branch
                    v[i] = v[i] * b2 + w2 * gi * gi;
                    let denom = v[i].sqrt() / bc2_sqrt + eps;
                    p[i] += neg_step * m[i] / denom;
                }
            });
    }
}

/// Sum of squares of the gradient, in f64 over fixed-size chunks in a fixed order (the same bits
/// for any thread count).
pub fn grad_sum_squares(grads: &[f32]) -> f64 {
    let partial: Vec<f64> =
        grads.par_chunks(CHUNK).map(|c| c.iter().map(|&g| g as f64 * g as f64).sum::<f64>()).collect();
    partial.iter().sum::<f64>()
}

/// L2 norm of the whole gradient.
pub fn global_grad_norm(grads: &[f32]) -> f64 {
    grad_sum_squares(grads).sqrt()
}

/// Scales `grads` so that their global norm is at most `max_norm`; returns the norm before
/// clipping. Like torch, the factor is `max_norm / (norm + 1e-6)`, capped at 1.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f64) -> f64 {
    let norm = global_grad_norm(grads);
    clip_to_norm(grads, max_norm, norm);
    norm
}

/// The scaling of [`clip_grad_norm`] given the norm, which may be that of a larger whole (a
/// data-parallel rank clips its shard by the norm of every rank's gradient).
pub fn clip_to_norm(grads: &mut [f32], max_norm: f64, norm: f64) {
    let coef = (max_norm / (norm + 1e-6)).min(1.0) as f32;
    if coef < 1.0 {
        grads.par_iter_mut().for_each(|g| *g *= coef);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three AdamW steps on one weight, against the textbook update computed by hand in f64
    /// (decoupled decay p ← p(1 − lr·wd), then p ← p − lr·m̂/(√v̂ + ε)).
    #[test]
    fn adamw_matches_the_update_by_hand() {
        let mut opt = AdamW::new(1, AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 });
        let mut p = [1.0f32];
        // step 1: m̂ = g, v̂ = g², so the step is lr·sign(g): 1·0.99 − 0.1·0.5/(0.5 + 1e-8)
        let want = [0.890000002, 0.8542630578558273, 0.7808459348967066];
        for (g, w) in [0.5f32, -0.25, 1.0].iter().zip(want) {
            opt.update(&mut p, &[*g], 0.1);
            assert!((p[0] as f64 - w).abs() < 1e-6, "{} vs {w}", p[0]);
        }
        assert_eq!(opt.step, 3);
    }

    /// Global-norm clipping: a (3, 4) gradient has norm 5 and is scaled by 1/(5 + 1e-6) to
    /// norm 1; a gradient already inside the norm is left alone.
    #[test]
    fn clipping_by_hand() {
        let mut g = [3.0f32, 4.0];
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        let c = 1.0 / (5.0 + 1e-6);
        assert_eq!(g, [(3.0 * c) as f32, (4.0 * c) as f32]);
        let mut small = [0.3f32, 0.4];
        let n = clip_grad_norm(&mut small, 1.0);
        assert!((n - 0.5).abs() < 1e-7);
        assert_eq!(small, [0.3, 0.4]);
    }
}
