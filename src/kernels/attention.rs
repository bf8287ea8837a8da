//! Causal grouped-query attention, flash style: keys are visited in tiles with an online softmax,
//! only the per-row log-sum-exp is kept for backward, and the backward pass recomputes the
//! probabilities instead of storing a T×T matrix. Query head `h` reads key/value head
//! `h / (n_heads / n_kv_heads)` in place (no materialised repeat of K/V), as transformers'
//! `repeat_kv` lays them out.
//!
//! Layout: the fused projection buffer `qkv[B*T, (n_heads + 2 n_kv) * head_dim]` holds per row the
//! query heads, then the key heads, then the value heads. The output is `[B*T, n_heads * head_dim]`.

use super::{axpy, dot, exp};
use crate::kernels::team::Disjoint;
use rayon::prelude::*;

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub batch: usize,
    pub seq_len: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    pub fn qkv_stride(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }
    pub fn out_stride(&self) -> usize {
        self.n_heads * self.head_dim
    }
    fn k_off(&self, g: usize) -> usize {
        (self.n_heads + g) * self.head_dim
    }
    fn v_off(&self, g: usize) -> usize {
        (self.n_heads + self.n_kv_heads + g) * self.head_dim
    }
    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

const KEY_TILE: usize = 64;
pub const MAX_HEAD_DIM: usize = 512;

/// Floats of scratch that [`attention_forward`] and [`attention_backward`] need: per
/// (batch, kv head) task, transposed K and V and the task's dK and dV.
pub fn attention_scratch_len(s: AttnShape) -> usize {
    s.batch * s.n_kv_heads * 4 * s.head_dim * padded(s.seq_len)
}

/// Keys are laid out transposed in rows of `padded(t_len)` floats, zero beyond `t_len`, so that a
/// whole key tile can always be read.
fn padded(t_len: usize) -> usize {
    t_len.div_ceil(KEY_TILE) * KEY_TILE
}

/// `dst[e * padded(t_len) + j] = src row j, column e` for the rows of one sequence: K or V of one
/// head, transposed so that scores against a tile of keys are one vectorised loop over keys.
fn transpose_head(dst: &mut [f32], qkv: &[f32], base: usize, stride: usize, off: usize, t_len: usize, hd: usize) {
    let tp = padded(t_len);
    dst[..hd * tp].fill(0.0);
    for j in 0..t_len {
        let row = &qkv[(base + j) * stride + off..][..hd];
        for (e, &v) in row.iter().enumerate() {
            dst[e * tp + j] = v;
        }
    }
}

/// `s[j] = Σ_e q[e] · kt[e][j0 + j]` for a whole tile of keys from `j0`; the tile's 64
/// accumulators stay in registers.
#[inline(always)]
fn score_tile(q: &[f32], kt: &[f32], tp: usize, j0: usize) -> [f32; KEY_TILE] {
    let mut s = [0.0f32; KEY_TILE];
    for (e, &qe) in q.iter().enumerate() {
        let row: &[f32; KEY_TILE] = kt[e * tp + j0..][..KEY_TILE].try_into().unwrap();
        for l in 0..KEY_TILE {
            s[l] += qe * row[l];
        }
    }
    s
}

/// `acc += Σ_j coef[j] · row_j`, where row `j` is `acc.len()` floats at `data[first + j·stride..]`:
/// a probability-weighted sum of value rows (or of key rows, for dQ). The accumulator is held
/// 64 lanes at a time in registers while the rows stream past.
#[inline(always)]
fn accumulate_rows(acc: &mut [f32], coef: &[f32], data: &[f32], first: usize, stride: usize) {
    let hd = acc.len();
    let mut e0 = 0;
    while e0 + 64 <= hd {
        let mut a: [f32; 64] = acc[e0..e0 + 64].try_into().unwrap();
        for (j, &c) in coef.iter().enumerate() {
            let row: &[f32; 64] = data[first + j * stride + e0..][..64].try_into().unwrap();
            for l in 0..64 {
                a[l] += c * row[l];
            }
        }
        acc[e0..e0 + 64].copy_from_slice(&a);
        e0 += 64;
    }
    if e0 < hd {
        for (j, &c) in coef.iter().enumerate() {
            axpy(&mut acc[e0..], c, &data[first + j * stride + e0..][..hd - e0]);
        }
    }
}

/// `rows_j += coef[j] · v` for the consecutive `v.len()`-float rows of `rows` (dK and dV of a tile
/// of keys from one query row); `v` is held 64 lanes at a time in registers.
#[inline(always)]
fn update_rows(rows: &mut [f32], coef: &[f32], v: &[f32]) {
    let hd = v.len();
    let mut e0 = 0;
    while e0 + 64 <= hd {
        let x: &[f32; 64] = v[e0..e0 + 64].try_into().unwrap();
        for (j, &c) in coef.iter().enumerate() {
            let row: &mut [f32; 64] = (&mut rows[j * hd + e0..][..64]).try_into().unwrap();
            for l in 0..64 {
                row[l] += c * x[l];
            }
        }
        e0 += 64;
    }
    if e0 < hd {
        for (j, &c) in coef.iter().enumerate() {
            axpy(&mut rows[j * hd + e0..][..hd - e0], c, &v[e0..]);
        }
    }
}

/// Maximum of a tile, with 16 independent lanes (a serial fold would wait on each `max`).
#[inline(always)]
fn lane_max(x: &[f32; KEY_TILE]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 16];
    for c in x.chunks_exact(16) {
        for l in 0..16 {
            m[l] = m[l].max(c[l]);
        }
    }
    m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// Sum of a tile, with 16 independent lanes.
#[inline(always)]
fn lane_sum(x: &[f32; KEY_TILE]) -> f32 {
    let mut s = [0.0f32; 16];
    for c in x.chunks_exact(16) {
        for l in 0..16 {
            s[l] += c[l];
        }
    }
    s.iter().sum()
}

/// Forward: `out = softmax(q kᵀ / sqrt(h) + causal mask) v` per head; `lse[b, head, t]` keeps the
/// log-sum-exp of each query row's scores for the backward pass.
pub fn attention_forward(out: &mut [f32], lse: &mut [f32], qkv: &[f32], scratch: &mut [f32], s: AttnShape) {
    let (t_len, hd) = (s.seq_len, s.head_dim);
    assert!(hd <= MAX_HEAD_DIM, "head_dim {hd} above {MAX_HEAD_DIM}");
    assert!(qkv.len() >= s.batch * t_len * s.qkv_stride() && out.len() >= s.batch * t_len * s.out_stride());
    assert!(lse.len() >= s.batch * s.n_heads * t_len && scratch.len() >= attention_scratch_len(s));
    let (qs, os) = (s.qkv_stride(), s.out_stride());
    let rep = s.n_heads / s.n_kv_heads;
    let scale = s.scale();
    let out_ptr = Disjoint(out.as_mut_ptr());
    let per_task = attention_scratch_len(s) / (s.batch * s.n_kv_heads);
    // One task per (batch, kv head): K is transposed once for the query heads that share it.
    lse[..s.batch * s.n_heads * t_len]
        .par_chunks_mut(rep * t_len)
        .zip(scratch.par_chunks_mut(per_task))
        .enumerate()
        .for_each(|(task, (lse_g, scr))| {
            let (b, g) = (task / s.n_kv_heads, task % s.n_kv_heads);
            let base = b * t_len;
            let tp = padded(t_len);
            let kt = &mut scr[..hd * tp];
            transpose_head(kt, qkv, base, qs, s.k_off(g), t_len, hd);
            let vo = s.v_off(g);
            let mut acc = [0.0f32; MAX_HEAD_DIM];
            let mut q = [0.0f32; MAX_HEAD_DIM];
            for (hi, lse_row) in lse_g.chunks_mut(t_len).enumerate() {
                let h = g * rep + hi;
                for i in 0..t_len {
                    let q = &mut q[..hd];
                    for (qv, &x) in q.iter_mut().zip(&qkv[(base + i) * qs + h * hd..][..hd]) {
                        *qv = x * scale;
                    }
                    let acc = &mut acc[..hd];
                    acc.fill(0.0);
                    let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
                    for j0 in (0..=i).step_by(KEY_TILE) {
                        let n = (i + 1 - j0).min(KEY_TILE);
                        let mut sc = score_tile(q, kt, tp, j0);
                        sc[n..].fill(f32::NEG_INFINITY); // causal mask
                        let m_new = m.max(lane_max(&sc));
                        let corr = exp(m - m_new);
                        for sv in sc.iter_mut() {
                            *sv = exp(*sv - m_new);
                        }
                        sc[n..].fill(0.0);
                        l = l * corr + lane_sum(&sc);
                        for a in acc.iter_mut() {
                            *a *= corr;
                        }
                        accumulate_rows(acc, &sc[..n], qkv, (base + j0) * qs + vo, qs);
                        m = m_new;
                    }
                    let inv = 1.0 / l;
                    // SAFETY: task (b, g) alone writes rows of batch b in the columns of group g's
                    // query heads.
                    let o = unsafe { out_ptr.at((base + i) * os + h * hd, hd) };
                    for (ov, a) in o.iter_mut().zip(acc.iter()) {
                        *ov = a * inv;
                    }
                    lse_row[i] = m + l.ln();
                }
            }
        });
}

/// Backward (FlashAttention-2 order): writes `dqkv` (query, key and value gradients, before the
/// rotary backward) from `dout`, recomputing the probabilities from `qkv` and `lse`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    out: &[f32],
    qkv: &[f32],
    lse: &[f32],
    scratch: &mut [f32],
    s: AttnShape,
) {
    let (t_len, hd) = (s.seq_len, s.head_dim);
    assert!(dqkv.len() >= s.batch * t_len * s.qkv_stride());
    assert!(scratch.len() >= attention_scratch_len(s));
    let (qs, os) = (s.qkv_stride(), s.out_stride());
    let rep = s.n_heads / s.n_kv_heads;
    let scale = s.scale();
    let d_ptr = Disjoint(dqkv.as_mut_ptr());
    let per_task = attention_scratch_len(s) / (s.batch * s.n_kv_heads);
    // One task per (batch, kv head): the query heads that share a kv head accumulate into the
    // same dK/dV, so they run in order inside one task.
    scratch.par_chunks_mut(per_task).take(s.batch * s.n_kv_heads).enumerate().for_each(|(task, scr)| {
        let (b, g) = (task / s.n_kv_heads, task % s.n_kv_heads);
        let base = b * t_len;
        let tp = padded(t_len);
        let (kt, rest) = scr.split_at_mut(hd * tp);
        let (vt, rest) = rest.split_at_mut(hd * tp);
        let (dk, rest) = rest.split_at_mut(hd * t_len);
        let dv = &mut rest[..hd * t_len];
        transpose_head(kt, qkv, base, qs, s.k_off(g), t_len, hd);
        transpose_head(vt, qkv, base, qs, s.v_off(g), t_len, hd);
        dk.fill(0.0);
        dv.fill(0.0);
        let ko = s.k_off(g);
        for h in g * rep..(g + 1) * rep {
            let lse_h = &lse[(b * s.n_heads + h) * t_len..][..t_len];
            for i in 0..t_len {
                let q = &qkv[(base + i) * qs + h * hd..][..hd];
                let d_o = &dout[(base + i) * os + h * hd..][..hd];
                let di = dot(d_o, &out[(base + i) * os + h * hd..][..hd]);
                let lse_i = lse_h[i];
                // SAFETY: task (b, g) alone writes rows of batch b in the columns of group g.
                let dq = unsafe { d_ptr.at((base + i) * qs + h * hd, hd) };
                dq.fill(0.0);
                for j0 in (0..=i).step_by(KEY_TILE) {
                    let n = (i + 1 - j0).min(KEY_TILE);
                    let mut p = score_tile(q, kt, tp, j0); // q·k_j
                    let mut ds = score_tile(d_o, vt, tp, j0); // dO·v_j
                    for (pj, dsj) in p.iter_mut().zip(ds.iter_mut()) {
                        *pj = exp(*pj * scale - lse_i);
                        *dsj = *pj * (*dsj - di) * scale; // ∂L/∂(q·k), with the score's scale
                    }
                    update_rows(&mut dv[j0 * hd..(j0 + n) * hd], &p[..n], d_o);
                    update_rows(&mut dk[j0 * hd..(j0 + n) * hd], &ds[..n], q);
                    accumulate_rows(dq, &ds[..n], qkv, (base + j0) * qs + ko, qs);
                }
            }
        }
        for j in 0..t_len {
            // SAFETY: as above; these are the key and value columns of group g.
            let row = unsafe { d_ptr.at((base + j) * qs, qs) };
            row[ko..ko + hd].copy_from_slice(&dk[j * hd..][..hd]);
            row[s.v_off(g)..s.v_off(g) + hd].copy_from_slice(&dv[j * hd..][..hd]);
        }
    });
}

/// One sequence's part of [`attention_cached_batch`]: its `n` new queries at positions
/// `p0..p0 + n` and its cached keys and values (`[pos, n_kv·hd]`, positions `0..p0 + n` filled).
pub struct CachedSeq<'a> {
    pub k_cache: &'a [f32],
    pub v_cache: &'a [f32],
    pub n: usize,
    pub p0: usize,
}

/// Inference attention: `n` new queries (rows of `qkv`, `qkv_stride` apart, at positions
/// `p0..p0 + n`) against the cached keys and values of positions `0..=p0 + i` (`[pos, n_kv·hd]`).
/// Writes `out[n, n_heads·hd]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_cached(
    out: &mut [f32],
    qkv: &[f32],
    qkv_stride: usize,
    k_cache: &[f32],
    v_cache: &[f32],
    n: usize,
    p0: usize,
    n_heads: usize,
    n_kv_heads: usize,
    hd: usize,
) {
    let seq = CachedSeq { k_cache, v_cache, n, p0 };
    attention_cached_batch(out, qkv, qkv_stride, &[seq], n_heads, n_kv_heads, hd);
}

/// [`attention_cached`] of several sequences whose query rows follow each other in `qkv` and
/// `out`, as one parallel loop (a decode step of a batch: one loop a layer, not one a sequence).
/// One task per (query, head); online softmax over key tiles; each task's arithmetic depends on
/// its own query and cache only.
pub fn attention_cached_batch(
    out: &mut [f32],
    qkv: &[f32],
    qkv_stride: usize,
    seqs: &[CachedSeq],
    n_heads: usize,
    n_kv_heads: usize,
    hd: usize,
) {
    assert!(hd <= MAX_HEAD_DIM);
    let kvd = n_kv_heads * hd;
    let rep = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    // each query row: its sequence and position
    let rows: Vec<(usize, usize)> =
        seqs.iter().enumerate().flat_map(|(s, q)| (0..q.n).map(move |i| (s, q.p0 + i))).collect();
    assert!(out.len() >= rows.len() * n_heads * hd, "attention: output too small");
    let out_ptr = Disjoint(out.as_mut_ptr());
    crate::kernels::team::run(rows.len() * n_heads, &|task| {
        let (row, h) = (task / n_heads, task % n_heads);
        let (seq, last) = rows[row];
        let (k_cache, v_cache) = (seqs[seq].k_cache, seqs[seq].v_cache);
        // SAFETY: task `task` alone writes these hd elements, in bounds by the assert above.
        let o = unsafe { out_ptr.at(task * hd, hd) };
        let g = h / rep;
        let q = &qkv[row * qkv_stride + h * hd..][..hd];
        let mut acc = [0.0f32; MAX_HEAD_DIM];
        let acc = &mut acc[..hd];
        let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
        for j0 in (0..=last).step_by(KEY_TILE) {
            let nk = (last + 1 - j0).min(KEY_TILE);
            let mut sc = [f32::NEG_INFINITY; KEY_TILE];
            for (jj, s) in sc[..nk].iter_mut().enumerate() {
                *s = dot(q, &k_cache[(j0 + jj) * kvd + g * hd..][..hd]) * scale;
            }
            let m_new = m.max(lane_max(&sc));
            let corr = exp(m - m_new);
            for s in sc.iter_mut() {
                *s = exp(*s - m_new);
            }
            sc[nk..].fill(0.0);
            l = l * corr + lane_sum(&sc);
            for a in acc.iter_mut() {
                *a *= corr;
            }
            accumulate_rows(acc, &sc[..nk], v_cache, j0 * kvd + g * hd, kvd);
            m = m_new;
        }
        for (ov, a) in o.iter_mut().zip(acc.iter()) {
            *ov = a / l;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{check, probe_loss, randn};

    /// Plain softmax attention, in f64, with an explicit repeat of K/V.
    fn reference(qkv: &[f32], s: AttnShape) -> Vec<f64> {
        let (t, hd, qs) = (s.seq_len, s.head_dim, s.qkv_stride());
        let rep = s.n_heads / s.n_kv_heads;
        let mut out = vec![0.0f64; s.batch * t * s.out_stride()];
        for b in 0..s.batch {
            for h in 0..s.n_heads {
                for i in 0..t {
                    let q = &qkv[(b * t + i) * qs + h * hd..][..hd];
                    let sc: Vec<f64> = (0..=i)
                        .map(|j| {
                            let k = &qkv[(b * t + j) * qs + s.k_off(h / rep)..][..hd];
                            q.iter().zip(k).map(|(a, c)| *a as f64 * *c as f64).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                    for (j, x) in sc.iter().enumerate() {
                        let v = &qkv[(b * t + j) * qs + s.v_off(h / rep)..][..hd];
                        for e in 0..hd {
                            out[(b * t + i) * s.out_stride() + h * hd + e] += (x - m).exp() / z * v[e] as f64;
                        }
                    }
                }
            }
        }
        out
    }

    fn shapes() -> Vec<AttnShape> {
        // GQA ratios 1, 2, 4 and multi-query; odd lengths; one sequence longer than a key tile.
        vec![
            AttnShape { batch: 2, seq_len: 5, n_heads: 2, n_kv_heads: 2, head_dim: 4 },
            AttnShape { batch: 1, seq_len: 7, n_heads: 4, n_kv_heads: 2, head_dim: 6 },
            AttnShape { batch: 2, seq_len: 3, n_heads: 4, n_kv_heads: 1, head_dim: 8 },
            AttnShape { batch: 1, seq_len: 9, n_heads: 8, n_kv_heads: 2, head_dim: 2 },
            AttnShape { batch: 1, seq_len: 70, n_heads: 2, n_kv_heads: 1, head_dim: 4 },
        ]
    }

    fn forward(qkv: &[f32], s: AttnShape) -> (Vec<f32>, Vec<f32>) {
        let mut out = vec![0.0; s.batch * s.seq_len * s.out_stride()];
        let mut lse = vec![0.0; s.batch * s.n_heads * s.seq_len];
        let mut scratch = vec![f32::NAN; attention_scratch_len(s)];
        attention_forward(&mut out, &mut lse, qkv, &mut scratch, s);
        (out, lse)
    }

    #[test]
    fn attention_forward_matches_plain_softmax() {
        for s in shapes() {
            let qkv = randn(s.batch * s.seq_len * s.qkv_stride(), 1, 1.5);
            let (out, _) = forward(&qkv, s);
            for (a, b) in out.iter().zip(reference(&qkv, s)) {
                assert!((*a as f64 - b).abs() < 1e-5, "{s:?}: {a} vs {b}");
            }
        }
    }

    /// Prefill of p0 positions then n more, through the cache, equals one causal pass.
    #[test]
    fn cached_attention_equals_full_attention() {
        let s = AttnShape { batch: 1, seq_len: 70, n_heads: 4, n_kv_heads: 2, head_dim: 8 };
        let qkv = randn(s.seq_len * s.qkv_stride(), 5, 1.0);
        let (full, _) = forward(&qkv, s);
        let kvd = s.n_kv_heads * s.head_dim;
        let qs = s.qkv_stride();
        let mut kc = vec![0.0; s.seq_len * kvd];
        let mut vc = vec![0.0; s.seq_len * kvd];
        for r in 0..s.seq_len {
            kc[r * kvd..][..kvd].copy_from_slice(&qkv[r * qs + s.k_off(0)..][..kvd]);
            vc[r * kvd..][..kvd].copy_from_slice(&qkv[r * qs + s.v_off(0)..][..kvd]);
        }
        for (p0, n) in [(0, 70), (65, 5), (69, 1)] {
            let mut out = vec![0.0; n * s.out_stride()];
            attention_cached(&mut out, &qkv[p0 * qs..], qs, &kc, &vc, n, p0, 4, 2, 8);
            for (a, b) in out.iter().zip(&full[p0 * s.out_stride()..]) {
                assert!((a - b).abs() < 1e-5, "p0 {p0}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn attention_gradients_match_finite_differences() {
        for s in shapes() {
            let qkv = randn(s.batch * s.seq_len * s.qkv_stride(), 2, 1.0);
            let probe = randn(s.batch * s.seq_len * s.out_stride(), 3, 1.0);
            let (out, lse) = forward(&qkv, s);
            let mut dqkv = vec![f32::NAN; qkv.len()];
            let mut scratch = vec![f32::NAN; attention_scratch_len(s)];
            attention_backward(&mut dqkv, &probe, &out, &qkv, &lse, &mut scratch, s);
            check(&format!("attention {s:?}"), &qkv, &dqkv, &mut |x| probe_loss(&forward(x, s).0, &probe));
        }
    }
}
