//! Rotary position embedding, rotate-half layout (Hugging Face / TinyLlama convention): for each
//! head, element `i < h/2` pairs with `i + h/2`:
//! `out_i = x_i cos − x_{i+h/2} sin`, `out_{i+h/2} = x_{i+h/2} cos + x_i sin`.

use rayon::prelude::*;

/// cos/sin per position and frequency, `[max_pos, head_dim/2]`, computed in f32 exactly as
/// transformers does (`inv_freq = 1/θ^(2i/h)`, angle = position × inv_freq in f32).
pub struct RopeTable {
    pub half: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(head_dim: usize, theta: f32, max_pos: usize) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half).map(|i| 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for &f in &inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        RopeTable { half, cos, sin }
    }

    pub fn max_pos(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }
}

/// Rotates, in place, the first `n_heads` heads of every row of `x` (rows `stride` floats apart;
/// in our fused QKV buffer that is the query heads followed by the key heads). Row `r` sits at
/// position `pos0 + r % seq_len`.
pub fn rope_forward(x: &mut [f32], stride: usize, n_heads: usize, seq_len: usize, pos0: usize, table: &RopeTable) {
    apply(x, stride, n_heads, seq_len, pos0, table, 1.0);
}

/// Backward of [`rope_forward`], in place on the gradient: the transpose of a rotation is the
/// rotation by the opposite angle.
pub fn rope_backward(dx: &mut [f32], stride: usize, n_heads: usize, seq_len: usize, pos0: usize, table: &RopeTable) {
    apply(dx, stride, n_heads, seq_len, pos0, table, -1.0);
}

fn apply(x: &mut [f32], stride: usize, n_heads: usize, seq_len: usize, pos0: usize, t: &RopeTable, sign: f32) {
    let h = t.half;
    assert!(pos0 + seq_len <= t.max_pos(), "rope: position {} beyond the table ({})", pos0 + seq_len, t.max_pos());
    x.par_chunks_mut(stride).enumerate().for_each(|(r, row)| {
        let p = pos0 + r % seq_len;
        let cos = &t.cos[p * h..(p + 1) * h];
        let sin = &t.sin[p * h..(p + 1) * h];
        for head in row[..n_heads * 2 * h].chunks_exact_mut(2 * h) {
            let (a, b) = head.split_at_mut(h);
            for i in 0..h {
                let (c, s) = (cos[i], sign * sin[i]);
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * c - x2 * s;
                b[i] = x2 * c + x1 * s;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{check, probe_loss, randn};

    #[test]
    fn rope_gradient_matches_finite_differences() {
        let (rows, heads, hd, stride, t) = (6, 3, 8, 3 * 8 + 5, 3);
        let table = RopeTable::new(hd, 10000.0, 16);
        let x = randn(rows * stride, 1, 1.0);
        let probe = randn(rows * stride, 2, 1.0);
        let mut dx = probe.clone();
        rope_backward(&mut dx, stride, heads, t, 2, &table);
        check("rope dx", &x, &dx, &mut |xp| {
            let mut y = xp.to_vec();
            rope_forward(&mut y, stride, heads, t, 2, &table);
            probe_loss(&y, &probe)
        });
    }

    #[test]
    fn rope_matches_rotate_half_definition() {
        // q·cos + rotate_half(q)·sin with rotate_half(x) = cat(−x2, x1), as transformers writes it.
        let (hd, theta) = (6usize, 500.0f64);
        let table = RopeTable::new(hd, theta as f32, 8);
        let x = randn(4 * hd, 3, 1.0);
        let mut y = x.clone();
        rope_forward(&mut y, hd, 1, 4, 0, &table);
        for p in 0..4 {
            let q = &x[p * hd..(p + 1) * hd];
            for i in 0..hd {
                let f = 1.0 / theta.powf((2 * (i % (hd / 2))) as f64 / hd as f64);
                let a = p as f64 * f;
                let rot = if i < hd / 2 { -(q[i + hd / 2] as f64) } else { q[i - hd / 2] as f64 };
                let want = q[i] as f64 * a.cos() + rot * a.sin();
                assert!((y[p * hd + i] as f64 - want).abs() < 1e-5, "p{p} i{i}");
            }
        }
    }
}
