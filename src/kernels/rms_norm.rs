//! RMSNorm (Llama): `y = w ⊙ x / sqrt(mean(x²) + ε)`, computed in f32 as transformers does.

use super::worker_pool::{self, DisjointRows};
use rayon::prelude::*;

/// Normalises each of the `rows` rows of `x[rows, d]` into `y`, keeping `1/rms` per row in `rstd`
/// for the backward pass.
pub fn rms_norm_forward(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], d: usize, eps: f32) {
    y.par_chunks_mut(d).zip(rstd.par_iter_mut()).zip(x.par_chunks(d)).for_each(|((y, r), x)| {
        let ms = super::dot(x, x) / d as f32;
        let s = 1.0 / (ms + eps).sqrt();
        *r = s;
        for ((yo, &xi), &wi) in y.iter_mut().zip(x).zip(w) {
            *yo = wi * (xi * s);
        }
    });
}

/// [`rms_norm_forward`] as ggml computes it (llama.cpp's `rms_norm`, then the weight): the sum of
/// squares in f64, in order. Inference on quantized or GGUF weights uses it, so that activations
/// that sit exactly between two 8-bit levels (common after a Q4_0 embedding, whose values are small
/// multiples of one scale) round the way llama.cpp rounds them.
///
/// A row's in-order sum is one chain of dependent additions (~1.7 µs for 2048 values), so a task
/// takes [`GGML_ROWS`] rows and runs their chains side by side; the tasks go to the [`worker_pool`], whose
/// threads are awake after the matmul before (a decode step's one row stays on the calling thread).
pub fn rms_norm_forward_ggml(y: &mut [f32], x: &[f32], w: &[f32], d: usize, eps: f32) {
    let n = (x.len() / d.max(1)).min(y.len() / d.max(1));
    let out = DisjointRows(y.as_mut_ptr());
    worker_pool::run(n.div_ceil(GGML_ROWS), &|c| {
        let first = c * GGML_ROWS;
        let mut sums = [0.0f64; GGML_ROWS];
        if n == 1 {
            sums[0] = x[..d].iter().fold(0.0, |s, &v| s + (v * v) as f64);
        } else {
            // a short last task repeats its last row in the lanes it lacks (their sums unused)
            let rows: [&[f32]; GGML_ROWS] = std::array::from_fn(|k| &x[(first + k).min(n - 1) * d..][..d]);
            ggml_sums(&rows, &mut sums);
        }
        for (k, &sum) in sums.iter().enumerate().take((n - first).min(GGML_ROWS)) {
            let mean = (sum / d as f64) as f32;
            let s = 1.0 / (mean + eps).sqrt();
            let x = &x[(first + k) * d..][..d];
            // SAFETY: row first + k < n is written by this task only; in bounds of `y` by `n`.
            let y = unsafe { std::slice::from_raw_parts_mut(out.get().add((first + k) * d), d) };
            for ((yo, &xi), &wi) in y.iter_mut().zip(x).zip(w) {
                *yo = (xi * s) * wi;
            }
        }
    });
}

/// `sums[k] += Σ (rows[k][i]²) as f64`, `i` in order, for each of [`GGML_ROWS`] equally long
/// rows: the squares of a chunk of every row stored column by column, so that the eight chains'
/// additions are one vector operation a column (5× one row's chain, for eight rows).
fn ggml_sums(rows: &[&[f32]; GGML_ROWS], sums: &mut [f64; GGML_ROWS]) {
    const CHUNK: usize = 16;
    let d = rows[0].len();
    let main = d / CHUNK * CHUNK;
    let mut sq = [[0.0f64; GGML_ROWS]; CHUNK];
    for i0 in (0..main).step_by(CHUNK) {
        for (k, r) in rows.iter().enumerate() {
            for (col, &v) in sq.iter_mut().zip(&r[i0..i0 + CHUNK]) {
                col[k] = (v * v) as f64;
            }
        }
        for col in &sq {
            for (s, &v) in sums.iter_mut().zip(col) {
                *s += v;
            }
        }
    }
    for i in main..d {
        for (s, r) in sums.iter_mut().zip(rows) {
            *s += (r[i] * r[i]) as f64;
        }
    }
}

/// Rows whose sums one task of [`rms_norm_forward_ggml`] runs side by side.
const GGML_ROWS: usize = 8;

/// Backward of [`rms_norm_forward`]: `dx += ∂L/∂x` (the residual stream's gradient is accumulated
/// in place) and `dw += ∂L/∂w`.
pub fn rms_norm_backward(dx: &mut [f32], dw: &mut [f32], dy: &[f32], x: &[f32], rstd: &[f32], w: &[f32], d: usize) {
    dx.par_chunks_mut(d).zip(dy.par_chunks(d)).zip(x.par_chunks(d)).zip(rstd.par_iter()).for_each(
        |(((dx, dy), x), &s)| {
            // dx = s · (g − x̂ · mean(g ⊙ x̂)), with g = dy ⊙ w and x̂ = x · s
            let mut gx = 0.0f32;
            for ((&dyi, &wi), &xi) in dy.iter().zip(w).zip(x) {
                gx += dyi * wi * xi;
            }
            let c = gx * s * s / d as f32;
            for (((dxo, &dyi), &wi), &xi) in dx.iter_mut().zip(dy).zip(w).zip(x) {
                *dxo += s * (dyi * wi - xi * c);
            }
        },
    );
    // dw: columns in parallel, rows summed in order (deterministic for any thread count).
    const COLS: usize = 64;
    dw.par_chunks_mut(COLS).enumerate().for_each(|(cb, dw)| {
        let c0 = cb * COLS;
        let mut acc = [0.0f32; COLS];
        let acc = &mut acc[..dw.len()];
        for (r, &s) in rstd.iter().enumerate() {
            let off = r * d + c0;
            for ((a, &dyi), &xi) in acc.iter_mut().zip(&dy[off..off + dw.len()]).zip(&x[off..off + dw.len()]) {
                *a += dyi * xi * s;
            }
        }
        for (o, a) in dw.iter_mut().zip(acc.iter()) {
            *o += a;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{check, probe_loss, randn};

    #[test]
    fn rms_norm_gradients_match_finite_differences() {
        for (rows, d) in [(3, 7), (5, 33), (2, 130)] {
            let eps = 1e-5;
            let x = randn(rows * d, 1, 1.0);
            let w: Vec<f32> = randn(d, 2, 0.3).iter().map(|v| 1.0 + v).collect();
            let probe = randn(rows * d, 3, 1.0);
            let fwd = |x: &[f32], w: &[f32]| {
                let mut y = vec![0.0; rows * d];
                let mut r = vec![0.0; rows];
                rms_norm_forward(&mut y, &mut r, x, w, d, eps);
                (y, r)
            };
            let (_, rstd) = fwd(&x, &w);
            let mut dx = vec![0.0; rows * d];
            let mut dw = vec![0.0; d];
            rms_norm_backward(&mut dx, &mut dw, &probe, &x, &rstd, &w, d);
            check("rms_norm dx", &x, &dx, &mut |xp| probe_loss(&fwd(xp, &w).0, &probe));
            check("rms_norm dw", &w, &dw, &mut |wp| probe_loss(&fwd(&x, wp).0, &probe));
        }
    }

    #[test]
    fn ggml_rms_norm_is_ggmls_loop_for_any_row_count() {
        // ggml-cpu's `rms_norm`: `sum += (ggml_float)(x[i] * x[i])` in order, `scale = 1.0f /
        // sqrtf(mean + eps)`, `y = x * scale`; llama.cpp then multiplies by the weight
        let d = 2048;
        for rows in [1, 2, 7, 8, 9, 16, 17] {
            let x: Vec<f32> = randn(rows * d, 6 + rows as u64, 3.0).iter().map(|v| v * v * v).collect();
            let w = randn(d, 7, 1.0);
            let mut y = vec![f32::NAN; rows * d + 3];
            rms_norm_forward_ggml(&mut y, &x, &w, d, 1e-5);
            for (r, xs) in x.chunks(d).enumerate() {
                let mut sum = 0.0f64;
                for &v in xs {
                    sum += (v * v) as f64;
                }
                let scale = 1.0f32 / ((sum / d as f64) as f32 + 1e-5).sqrt();
                for i in 0..d {
                    assert_eq!(y[r * d + i].to_bits(), ((xs[i] * scale) * w[i]).to_bits(), "{rows} rows: row {r}, {i}");
                }
            }
            assert!(y[rows * d..].iter().all(|v| v.is_nan()), "{rows} rows: wrote past the rows");
        }
    }

    #[test]
    fn rms_norm_matches_definition() {
        let d = 10;
        let x = randn(2 * d, 4, 2.0);
        let w = randn(d, 5, 1.0);
        let mut y = vec![0.0; 2 * d];
        let mut r = vec![0.0; 2];
        rms_norm_forward(&mut y, &mut r, &x, &w, d, 1e-5);
        for row in 0..2 {
            let xs = &x[row * d..(row + 1) * d];
            let ms: f64 = xs.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d as f64;
            for i in 0..d {
                let want = w[i] as f64 * xs[i] as f64 / (ms + 1e-5).sqrt();
                assert!((y[row * d + i] as f64 - want).abs() < 1e-5 * want.abs().max(1.0));
            }
        }
    }
}
