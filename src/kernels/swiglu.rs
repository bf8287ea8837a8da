//! SwiGLU: `h = silu(g) ⊙ u`, where each row of the fused buffer `gu[rows, 2F]` holds the gate
//! projection `g` then the up projection `u` (one GEMM computes both).

use super::worker_pool::{self, DisjointRows};
use rayon::prelude::*;

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + super::exp(-x))
}

pub fn swiglu_forward(h: &mut [f32], gu: &[f32], ffn: usize) {
    h.par_chunks_mut(ffn).zip(gu.par_chunks(2 * ffn)).for_each(|(h, gu)| swiglu_row(h, gu));
}

/// [`swiglu_forward`] of the few rows of a decode step, on the [`worker_pool`] (awake after the matmul
/// before, where rayon's workers have to be woken; one row on the calling thread).
pub fn swiglu_forward_rows(h: &mut [f32], gu: &[f32], ffn: usize) {
    let rows = (h.len() / ffn.max(1)).min(gu.len() / (2 * ffn).max(1));
    let out = DisjointRows(h.as_mut_ptr());
    worker_pool::run(rows, &|r| {
        // SAFETY: row r < rows is written by task r only; in bounds of `h` by `rows`.
        let h = unsafe { std::slice::from_raw_parts_mut(out.get().add(r * ffn), ffn) };
        swiglu_row(h, &gu[r * 2 * ffn..][..2 * ffn]);
    });
}

/// `h = silu(g) ⊙ u` for one row, `gu = [g, u]`.
fn swiglu_row(h: &mut [f32], gu: &[f32]) {
    let (g, u) = gu.split_at(h.len());
    for ((o, &gi), &ui) in h.iter_mut().zip(g).zip(u) {
        *o = gi * sigmoid(gi) * ui;
    }
}

/// `dgu = ∂L/∂[g, u]` from `dh = ∂L/∂h`.
pub fn swiglu_backward(dgu: &mut [f32], dh: &[f32], gu: &[f32], ffn: usize) {
    dgu.par_chunks_mut(2 * ffn).zip(dh.par_chunks(ffn)).zip(gu.par_chunks(2 * ffn)).for_each(|((dgu, dh), gu)| {
        let (g, u) = gu.split_at(ffn);
        let (dg, du) = dgu.split_at_mut(ffn);
        for i in 0..ffn {
            let s = sigmoid(g[i]);
            let silu = g[i] * s;
            du[i] = dh[i] * silu;
            // silu'(g) = s (1 + g (1 − s))
            dg[i] = dh[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{check, probe_loss, randn};

    #[test]
    fn swiglu_gradient_matches_finite_differences() {
        let (rows, ffn) = (3, 11);
        let gu = randn(rows * 2 * ffn, 1, 2.0);
        let probe = randn(rows * ffn, 2, 1.0);
        let fwd = |gu: &[f32]| {
            let mut h = vec![0.0; rows * ffn];
            swiglu_forward(&mut h, gu, ffn);
            h
        };
        let h = fwd(&gu);
        for (i, &v) in h.iter().enumerate() {
            let (r, c) = (i / ffn, i % ffn);
            let (g, u) = (gu[r * 2 * ffn + c] as f64, gu[r * 2 * ffn + ffn + c] as f64);
            assert!((v as f64 - g / (1.0 + (-g).exp()) * u).abs() < 1e-5);
        }
        for rows in [1, 3] {
            let mut team_h = vec![f32::NAN; rows * ffn + 2];
            swiglu_forward_rows(&mut team_h, &gu[..rows * 2 * ffn], ffn);
            assert!(team_h[..rows * ffn].iter().zip(&h).all(|(a, b)| a.to_bits() == b.to_bits()), "{rows} rows");
            assert!(team_h[rows * ffn..].iter().all(|v| v.is_nan()), "{rows} rows: wrote past them");
        }
        let mut dgu = vec![0.0; gu.len()];
        swiglu_backward(&mut dgu, &probe, &gu, ffn);
        check("swiglu", &gu, &dgu, &mut |x| probe_loss(&fwd(x), &probe));
    }
}
