//! Causal grouped-query attention, flash style: keys are visited in tiles with an online softmax,
//! only the per-row log-sum-exp is kept for backward, and the backward pass recomputes the
//! probabilities instead of storing a T×T matrix. Query head `h` reads key/value head
//! `h / (n_heads / n_kv_heads)` in place (no materialised repeat of K/V), as transformers'
//! `repeat_kv` lays them out.
//!
//! Layout: the fused projection buffer `qkv[B*T, (n_heads + 2 n_kv) * head_dim]` holds per row the
//! query heads, then the key heads, then the value heads. The output is `[B*T, n_heads * head_dim]`.

use super::{axpy, dot, exp};
use crate::kernels::isa::Isa;
use crate::kernels::worker_pool::DisjointRows;
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
    // every row's tile checked once, so that nothing in the loop can panic: with a bounds check
    // inside, the accumulators (the caller's memory) were stored back at every element
    let rows = &kt[j0..];
    assert!(q.is_empty() || (q.len() - 1) * tp + KEY_TILE <= rows.len(), "attention: key tile out of bounds");
    let mut s = [0.0f32; KEY_TILE];
    for (e, &qe) in q.iter().enumerate() {
        // SAFETY: `e * tp + KEY_TILE <= rows.len()` by the assert above.
        let row = unsafe { &*(rows.as_ptr().add(e * tp) as *const [f32; KEY_TILE]) };
        for l in 0..KEY_TILE {
            s[l] += qe * row[l];
        }
    }
    s
}

/// [`score_tile`] for two queries at once, each with the bits it gets alone.
#[inline(always)]
fn score_tile2(q0: &[f32], q1: &[f32], kt: &[f32], tp: usize, j0: usize) -> ([f32; KEY_TILE], [f32; KEY_TILE]) {
    let rows = &kt[j0..];
    assert!(q0.len() == q1.len(), "attention: query lengths differ");
    assert!(q0.is_empty() || (q0.len() - 1) * tp + KEY_TILE <= rows.len(), "attention: key tile out of bounds");
    let (mut s0, mut s1) = ([0.0f32; KEY_TILE], [0.0f32; KEY_TILE]);
    for (e, (&a, &b)) in q0.iter().zip(q1).enumerate() {
        // SAFETY: `e * tp + KEY_TILE <= rows.len()` by the assert above.
        let row = unsafe { &*(rows.as_ptr().add(e * tp) as *const [f32; KEY_TILE]) };
        for l in 0..KEY_TILE {
            s0[l] += a * row[l];
            s1[l] += b * row[l];
        }
    }
    (s0, s1)
}

/// `acc += Σ_j coef[j] · row_j`, where row `j` is `acc.len()` floats at `data[first + j·stride..]`:
/// a probability-weighted sum of value rows (or of key rows, for dQ). The accumulator is held
/// 64 lanes at a time in registers while the rows stream past.
#[inline(always)]
fn accumulate_rows(acc: &mut [f32], coef: &[f32], data: &[f32], first: usize, stride: usize) {
    let hd = acc.len();
    // every row checked once, so that nothing in the loop below can panic (see `score_tile`)
    let rows = data.get(first..).unwrap_or_default();
    assert!(coef.is_empty() || (coef.len() - 1) * stride + hd <= rows.len(), "attention: rows out of bounds");
    let mut e0 = 0;
    while e0 + 64 <= hd {
        let mut a: [f32; 64] = acc[e0..e0 + 64].try_into().unwrap();
        for (j, &c) in coef.iter().enumerate() {
            // SAFETY: `j * stride + e0 + 64 <= rows.len()` by the assert above.
            let row = unsafe { &*(rows.as_ptr().add(j * stride + e0) as *const [f32; 64]) };
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

/// [`accumulate_rows`] into two accumulators over the same rows, each row read once for both
/// (`coef1` may be longer: its further rows are added after), each accumulator with the bits it
/// gets alone.
#[inline(always)]
fn accumulate_rows2(
    acc0: &mut [f32],
    acc1: &mut [f32],
    coef0: &[f32],
    coef1: &[f32],
    data: &[f32],
    first: usize,
    stride: usize,
) {
    let hd = acc0.len();
    assert!(acc1.len() == hd && coef0.len() <= coef1.len(), "attention: accumulators differ");
    // every row checked once, so that nothing in the loops below can panic (see `score_tile`)
    let rows = data.get(first..).unwrap_or_default();
    assert!(coef1.is_empty() || (coef1.len() - 1) * stride + hd <= rows.len(), "attention: rows out of bounds");
    let row_at = |j: usize, e0: usize| {
        // SAFETY: `j < coef1.len()`, so `j * stride + e0 + 64 <= rows.len()` by the assert above.
        unsafe { &*(rows.as_ptr().add(j * stride + e0) as *const [f32; 64]) }
    };
    let mut e0 = 0;
    while e0 + 64 <= hd {
        let mut a: [f32; 64] = acc0[e0..e0 + 64].try_into().unwrap();
        let mut b: [f32; 64] = acc1[e0..e0 + 64].try_into().unwrap();
        for (j, (&c0, &c1)) in coef0.iter().zip(coef1).enumerate() {
            let row = row_at(j, e0);
            for l in 0..64 {
                a[l] += c0 * row[l];
                b[l] += c1 * row[l];
            }
        }
        for (j, &c1) in coef1.iter().enumerate().skip(coef0.len()) {
            let row = row_at(j, e0);
            for l in 0..64 {
                b[l] += c1 * row[l];
            }
        }
        acc0[e0..e0 + 64].copy_from_slice(&a);
        acc1[e0..e0 + 64].copy_from_slice(&b);
        e0 += 64;
    }
    if e0 < hd {
        for (acc, coef) in [(acc0, coef0), (acc1, coef1)] {
            for (j, &c) in coef.iter().enumerate() {
                axpy(&mut acc[e0..], c, &data[first + j * stride + e0..][..hd - e0]);
            }
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
    let out_ptr = DisjointRows(out.as_mut_ptr());
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
            let mut q = [[0.0f32; MAX_HEAD_DIM]; 2];
            let mut acc = [[0.0f32; MAX_HEAD_DIM]; 2];
            for (hi, lse_row) in lse_g.chunks_mut(t_len).enumerate() {
                let h = g * rep + hi;
                // query rows two at a time, so that their scores' chains run side by side on
                // each key tile (a row's arithmetic is the same as alone)
                let mut i = 0;
                while i < t_len {
                    let rows = if i + 1 < t_len { 2 } else { 1 };
                    for (r, (q, acc)) in q[..rows].iter_mut().zip(&mut acc).enumerate() {
                        for (qv, &x) in q.iter_mut().zip(&qkv[(base + i + r) * qs + h * hd..][..hd]) {
                            *qv = x * scale;
                        }
                        acc[..hd].fill(0.0);
                    }
                    let mut ml = [(f32::NEG_INFINITY, 0.0f32); 2];
                    for j0 in (0..i + rows).step_by(KEY_TILE) {
                        // row i + 1 may reach one tile further than row i
                        let scores = if rows == 2 && j0 <= i {
                            let (a, b) = score_tile2(&q[0][..hd], &q[1][..hd], kt, tp, j0);
                            [Some(a), Some(b)]
                        } else {
                            let r = rows - 1;
                            let mut one = [None, None];
                            one[r] = Some(score_tile(&q[r][..hd], kt, tp, j0));
                            one
                        };
                        // each row's probabilities and how many keys of the tile it sees (0: none)
                        let mut probs = [[0.0f32; KEY_TILE]; 2];
                        let mut seen = [0usize; 2];
                        for (r, sc) in scores.into_iter().enumerate() {
                            let Some(mut sc) = sc else { continue };
                            let n = (i + r + 1 - j0).min(KEY_TILE);
                            let (m, l) = &mut ml[r];
                            sc[n..].fill(f32::NEG_INFINITY); // causal mask
                            let m_new = m.max(lane_max(&sc));
                            let corr = exp(*m - m_new);
                            for sv in sc.iter_mut() {
                                *sv = exp(*sv - m_new);
                            }
                            sc[n..].fill(0.0);
                            *l = *l * corr + lane_sum(&sc);
                            for a in acc[r][..hd].iter_mut() {
                                *a *= corr;
                            }
                            *m = m_new;
                            probs[r] = sc;
                            seen[r] = n;
                        }
                        // the value rows: both query rows' on each row where both have the tile
                        let first = (base + j0) * qs + vo;
                        if seen[0] > 0 && seen[1] > 0 {
                            let [acc0, acc1] = &mut acc;
                            let (p0, p1) = (&probs[0][..seen[0]], &probs[1][..seen[1]]);
                            accumulate_rows2(&mut acc0[..hd], &mut acc1[..hd], p0, p1, qkv, first, qs);
                        } else {
                            // one row has the tile (every tile has at least the later row)
                            let r = if seen[0] > 0 { 0 } else { 1 };
                            accumulate_rows(&mut acc[r][..hd], &probs[r][..seen[r]], qkv, first, qs);
                        }
                    }
                    for (r, &(m, l)) in ml[..rows].iter().enumerate() {
                        let inv = 1.0 / l;
                        // SAFETY: task (b, g) alone writes rows of batch b in the columns of group
                        // g's query heads.
                        let o = unsafe { out_ptr.at((base + i + r) * os + h * hd, hd) };
                        for (ov, a) in o.iter_mut().zip(acc[r][..hd].iter()) {
                            *ov = a * inv;
                        }
                        lse_row[i + r] = m + l.ln();
                    }
                    i += rows;
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
    let d_ptr = DisjointRows(dqkv.as_mut_ptr());
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
/// `p0..p0 + n` and its cached keys and values, positions `0..p0 + n` filled. Keys are in blocks of
/// [`KEY_LANES`] positions, each block transposed (`[n_kv][cap / KEY_LANES][hd][KEY_LANES]`: a tile
/// of keys is contiguous and one vector per element); values by position (`[n_kv][cap][hd]`).
/// `cap` is a multiple of [`KEY_LANES`].
pub struct CachedSeq<'a> {
    pub kv: KvSlices<'a>,
    pub cap: usize,
    pub n: usize,
    pub p0: usize,
}

/// Cached keys and values (laid out as in [`CachedSeq`]): f32, or IEEE half bits — llama.cpp's
/// default cache type, half the memory and half the reads. Half values are widened exactly to f32
/// a tile at a time, so attention over them has the bits of attention over an f32 cache holding
/// the same (rounded) values.
#[derive(Clone, Copy)]
pub enum KvSlices<'a> {
    F32 { k: &'a [f32], v: &'a [f32] },
    F16 { k: &'a [u16], v: &'a [u16] },
}

impl<'a> KvSlices<'a> {
    fn lens(&self) -> (usize, usize) {
        match self {
            KvSlices::F32 { k, v } => (k.len(), v.len()),
            KvSlices::F16 { k, v } => (k.len(), v.len()),
        }
    }

    /// Elements `start..start + len` of both (one key/value head's run).
    fn range(&self, start: usize, len: usize) -> KvSlices<'a> {
        match *self {
            KvSlices::F32 { k, v } => KvSlices::F32 { k: &k[start..][..len], v: &v[start..][..len] },
            KvSlices::F16 { k, v } => KvSlices::F16 { k: &k[start..][..len], v: &v[start..][..len] },
        }
    }

    /// Asks for the cache lines of elements `r` of both ahead of their use.
    fn prefetch(&self, isa: Isa, r: std::ops::Range<usize>) {
        match self {
            KvSlices::F32 { k, v } => {
                prefetch(isa, &k[r.clone()]);
                prefetch(isa, &v[r]);
            }
            KvSlices::F16 { k, v } => {
                prefetch(isa, &k[r.clone()]);
                prefetch(isa, &v[r]);
            }
        }
    }
}

/// Keys scored together, one a vector lane; a cache's capacity is a multiple of it.
pub const KEY_LANES: usize = 16;

/// Inference attention: `n` new queries (rows of `qkv`, `qkv_stride` apart, at positions
/// `p0..p0 + n`) against the cached keys and values of positions `0..=p0 + i` (laid out as in
/// [`CachedSeq`]). Writes `out[n, n_heads·hd]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_cached(
    out: &mut [f32],
    qkv: &[f32],
    qkv_stride: usize,
    kv: KvSlices,
    cap: usize,
    n: usize,
    p0: usize,
    n_heads: usize,
    n_kv_heads: usize,
    hd: usize,
) {
    let seq = CachedSeq { kv, cap, n, p0 };
    attention_cached_batch(out, qkv, qkv_stride, &[seq], n_heads, n_kv_heads, hd);
}

/// Query heads a task of [`attention_cached_batch`] takes at most, and the floats of their
/// accumulators (on the task's stack: 8 heads of 128, 4 of 512).
const MAX_TASK_HEADS: usize = 8;
const TASK_ACC: usize = 2048;

/// [`attention_cached`] of several sequences whose query rows follow each other in `qkv` and
/// `out`, as one parallel loop (a decode step of a batch: one loop a layer, not one a sequence).
/// A task takes one query row and some query heads of one key/value head, and visits the keys a
/// tile at a time, every head of the task on each tile while it is in L1 (GQA: the 8 query heads
/// of TinyLlama's 4 key/value heads read each key once from memory, not 8 times). Online softmax
/// per head; each head's arithmetic depends on its own query and cache only, never on how heads
/// are split into tasks or on the instruction set.
pub fn attention_cached_batch(
    out: &mut [f32],
    qkv: &[f32],
    qkv_stride: usize,
    seqs: &[CachedSeq],
    n_heads: usize,
    n_kv_heads: usize,
    hd: usize,
) {
    assert!(hd <= MAX_HEAD_DIM && MAX_HEAD_DIM <= TASK_ACC && n_kv_heads > 0 && n_heads.is_multiple_of(n_kv_heads));
    let rep = n_heads / n_kv_heads;
    // each query row: its sequence and position
    let rows: Vec<(usize, usize)> =
        seqs.iter().enumerate().flat_map(|(s, q)| (0..q.n).map(move |i| (s, q.p0 + i))).collect();
    assert!(out.len() >= rows.len() * n_heads * hd, "attention: output too small");
    for s in seqs {
        let need = n_kv_heads * s.cap * hd;
        assert!(s.cap % KEY_LANES == 0 && s.p0 + s.n <= s.cap, "attention: cache capacity");
        let (kl, vl) = s.kv.lens();
        assert!(kl >= need && vl >= need, "attention: cache too small");
    }
    // heads per task: a divisor of `rep`, at most MAX_TASK_HEADS, halved while there are too few
    // tasks for the threads (one token of a model with few key/value heads)
    let most = MAX_TASK_HEADS.min(TASK_ACC / hd.max(1)).max(1);
    let mut per = (1..=rep.min(most)).rev().find(|d| rep.is_multiple_of(*d)).unwrap_or(1);
    let threads = rayon::current_num_threads().max(1);
    while per % 2 == 0 && rows.len() * n_heads / per < 2 * threads {
        per /= 2;
    }
    let job =
        CachedJob { qkv, qkv_stride, seqs, rows: &rows, n_heads, rep, hd, per, out: DisjointRows(out.as_mut_ptr()) };
    let isa = Isa::detect();
    crate::kernels::worker_pool::run(rows.len() * n_heads / per, &|task| job.run(isa, task));
}

/// The shared arguments of one [`attention_cached_batch`] call.
struct CachedJob<'a> {
    qkv: &'a [f32],
    qkv_stride: usize,
    seqs: &'a [CachedSeq<'a>],
    rows: &'a [(usize, usize)],
    n_heads: usize,
    rep: usize,
    hd: usize,
    per: usize,
    out: DisjointRows<f32>,
}

impl CachedJob<'_> {
    /// One task, its loops compiled for the widest vectors the CPU has (the same lane-wise
    /// arithmetic on each: no fused multiply-adds, no reassociation).
    fn run(&self, isa: Isa, task: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            fn wide(j: &CachedJob, task: usize) {
                j.task(Isa::Avx512Vnni, task)
            }
            #[target_feature(enable = "avx2")]
            fn avx2(j: &CachedJob, task: usize) {
                j.task(Isa::Avx2, task)
            }
            // SAFETY: `Isa` values other than Scalar are only produced after the CPU was checked
            // (AVX-512 VNNI implies AVX-512F).
            match isa {
                Isa::Avx512Vnni => return unsafe { wide(self, task) },
                Isa::Avx2 | Isa::AvxVnni => return unsafe { avx2(self, task) },
                Isa::Scalar => {}
            }
        }
        self.task(Isa::Scalar, task)
    }

    #[inline(always)]
    fn task(&self, isa: Isa, task: usize) {
        let (hd, per, rep) = (self.hd, self.per, self.rep);
        let scale = 1.0 / (hd as f32).sqrt();
        let (row, h0) = (task / (self.n_heads / per), task % (self.n_heads / per) * per);
        let g = h0 / rep;
        let (seq, last) = self.rows[row];
        let s = &self.seqs[seq];
        let kv = s.kv.range(g * s.cap * hd, s.cap * hd);
        // half caches: the current tile widened (keys, then values)
        let mut wide = if let KvSlices::F16 { .. } = kv { WIDE.take() } else { vec![] };
        let mut acc = [0.0f32; TASK_ACC];
        let mut m = [f32::NEG_INFINITY; MAX_TASK_HEADS];
        let mut l = [0.0f32; MAX_TASK_HEADS];
        for j0 in (0..=last).step_by(KEY_TILE) {
            let nk = (last + 1 - j0).min(KEY_TILE);
            // the next tile's keys and values, a share with each head (the first head of a tile
            // would otherwise wait on memory for every line)
            let next = (last + 1).saturating_sub(j0 + KEY_TILE).min(KEY_TILE) * hd;
            let share = next.div_ceil(per);
            // the tile's keys (whole blocks of KEY_LANES) and values, from j0
            let (keys, values): (&[f32], &[f32]) = match kv {
                KvSlices::F32 { k, v } => (&k[j0 * hd..], &v[j0 * hd..]),
                KvSlices::F16 { k, v } => {
                    let (kn, vn) = (nk.next_multiple_of(KEY_LANES) * hd, nk * hd);
                    if wide.len() < kn + vn {
                        wide.resize(KEY_TILE * hd * 2, 0.0);
                    }
                    let (wk, wv) = wide.split_at_mut(kn);
                    widen_f16(isa, &k[j0 * hd..][..kn], wk);
                    widen_f16(isa, &v[j0 * hd..][..vn], &mut wv[..vn]);
                    (&wk[..], &wv[..vn])
                }
            };
            let mut sc = [[f32::NEG_INFINITY; KEY_TILE]; MAX_TASK_HEADS];
            let q = |i: usize| &self.qkv[row * self.qkv_stride + (h0 + i) * hd..][..hd];
            // the scores: four heads on each key vector where the vector units allow, else head
            // by head
            let mut i = 0;
            while i < per {
                let heads = if isa != Isa::Scalar && per - i >= 4 { 4 } else { 1 };
                for k0 in (0..nk).step_by(KEY_LANES) {
                    // a head's share before each key block, spread through the work (a tile
                    // followed by another is whole: four blocks for four heads)
                    let hs = i + k0 / KEY_LANES;
                    if hs < i + heads {
                        let at = (j0 + KEY_TILE) * hd;
                        let lines = at + (hs * share).min(next)..at + ((hs + 1) * share).min(next);
                        if !lines.is_empty() {
                            kv.prefetch(isa, lines);
                        }
                    }
                    let block = &keys[k0 * hd..][..KEY_LANES * hd];
                    let n = (nk - k0).min(KEY_LANES);
                    if heads == 4 {
                        let d = dot_keys_heads(isa, [q(i), q(i + 1), q(i + 2), q(i + 3)], block, scale);
                        for (sc, d) in sc[i..i + 4].iter_mut().zip(&d) {
                            sc[k0..k0 + n].copy_from_slice(&d[..n]);
                        }
                    } else {
                        sc[i][k0..k0 + n].copy_from_slice(&dot_keys(isa, q(i), block, scale)[..n]);
                    }
                }
                i += heads;
            }
            for (i, sc) in sc[..per].iter_mut().enumerate() {
                let m_new = m[i].max(lane_max(sc));
                let corr = exp(m[i] - m_new);
                for s in sc.iter_mut() {
                    *s = exp(*s - m_new);
                }
                sc[nk..].fill(0.0);
                l[i] = l[i] * corr + lane_sum(sc);
                for a in acc[i * hd..(i + 1) * hd].iter_mut() {
                    *a *= corr;
                }
                m[i] = m_new;
            }
            // the value rows once for four heads where the registers allow (independent chains
            // of additions), else head by head
            let mut i = 0;
            while i < per {
                if isa == Isa::Avx512Vnni && per - i >= 4 {
                    accumulate_rows_heads::<4>(&mut acc[i * hd..], &sc[i..], nk, values, 0, hd);
                    i += 4;
                } else {
                    accumulate_rows(&mut acc[i * hd..(i + 1) * hd], &sc[i][..nk], values, 0, hd);
                    i += 1;
                }
            }
        }
        if !wide.is_empty() {
            WIDE.set(wide);
        }
        // SAFETY: this task alone writes these per·hd elements (heads h0..h0 + per of its row),
        // in bounds by the assert in `attention_cached_batch`.
        let o = unsafe { self.out.at((row * self.n_heads + h0) * hd, per * hd) };
        for i in 0..per {
            for (ov, a) in o[i * hd..(i + 1) * hd].iter_mut().zip(&acc[i * hd..(i + 1) * hd]) {
                *ov = a / l[i];
            }
        }
    }
}

/// [`accumulate_rows`] for `H` heads at once over the same rows (`hd` floats, consecutive from
/// `first`): `acc[h·hd..(h + 1)·hd] += Σ_j coef[h][j] · row_j` for `j < nk`, each row read once for
/// all heads; per element the operations of [`accumulate_rows`] on each head alone.
#[inline(always)]
fn accumulate_rows_heads<const H: usize>(
    acc: &mut [f32],
    coef: &[[f32; KEY_TILE]],
    nk: usize,
    data: &[f32],
    first: usize,
    hd: usize,
) {
    let mut e0 = 0;
    while e0 + 64 <= hd {
        let mut a = [[0.0f32; 64]; H];
        for (h, a) in a.iter_mut().enumerate() {
            a.copy_from_slice(&acc[h * hd + e0..][..64]);
        }
        for j in 0..nk {
            let row: &[f32; 64] = data[first + j * hd + e0..][..64].try_into().unwrap();
            for (a, coef) in a.iter_mut().zip(coef) {
                let c = coef[j];
                for l in 0..64 {
                    a[l] += c * row[l];
                }
            }
        }
        for (h, a) in a.iter().enumerate() {
            acc[h * hd + e0..][..64].copy_from_slice(a);
        }
        e0 += 64;
    }
    if e0 < hd {
        for (h, coef) in coef[..H].iter().enumerate() {
            for (j, &c) in coef[..nk].iter().enumerate() {
                axpy(&mut acc[h * hd + e0..(h + 1) * hd], c, &data[first + j * hd + e0..][..hd - e0]);
            }
        }
    }
}

thread_local! {
    /// A task's widened tile of a half cache (kept by each thread: a decode step allocates nothing).
    static WIDE: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `dst[i] = src[i]` as f32 (exact: every half is an f32), on any instruction set the same bits.
pub fn widen_f16(isa: Isa, src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `Isa` values other than Scalar are only produced after the CPU was checked (AVX2
    // comes with F16C there); the lengths are equal.
    let done = unsafe {
        match isa {
            Isa::Avx512Vnni => x86::widen_f16_avx512(src, dst),
            Isa::Avx2 | Isa::AvxVnni => x86::widen_f16_avx2(src, dst),
            Isa::Scalar => 0,
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = isa;
        0
    };
    for (d, &h) in dst[done..].iter_mut().zip(&src[done..]) {
        *d = crate::kernels::quant::f16_to_f32(h);
    }
}

/// Asks for the cache lines of `x` ahead of their use.
#[inline(always)]
fn prefetch<T>(isa: Isa, x: &[T]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        for i in (0..x.len()).step_by(64 / std::mem::size_of::<T>().max(1)) {
            // SAFETY: a prefetch of an address inside `x` (SSE, part of x86-64).
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(x[i..].as_ptr() as *const i8)
            };
        }
    }
    let _ = (isa, x);
}

/// `dot(q, key_j)` for the [`KEY_LANES`] keys of a transposed key block (`kt[e·KEY_LANES + j]`),
/// one key a lane, with the bits of [`dot`]: accumulator `l` sums elements `l, l + 16, …` in order
/// (multiply, then add), the 16 accumulators are then added in order, then the tail's products;
/// each dot then times `scale` (in the registers that hold it).
#[inline(always)]
fn dot_keys(isa: Isa, q: &[f32], kt: &[f32], scale: f32) -> [f32; KEY_LANES] {
    dot_keys_heads(isa, [q], kt, scale)[0]
}

/// [`dot_keys`] of `H` queries against one key block, each with its bits alone: chunk element `l`
/// of every query is taken for all of them while the key vectors it meets are in registers (a
/// query's accumulator `l` is complete before `l + 1` starts, so its additions into the sum keep
/// their order), which loads each key vector once for the `H` heads rather than once a head.
#[inline(always)]
fn dot_keys_heads<const H: usize>(isa: Isa, qs: [&[f32]; H], kt: &[f32], scale: f32) -> [[f32; KEY_LANES]; H] {
    let hd = qs.first().map_or(0, |q| q.len());
    assert!(qs.iter().all(|q| q.len() == hd) && kt.len() >= hd * KEY_LANES);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `Isa` values other than Scalar are only produced after the CPU was checked; the
    // lengths are checked above.
    unsafe {
        match isa {
            Isa::Avx512Vnni => return x86::dot_keys_heads_avx512(qs, kt, scale),
            Isa::Avx2 | Isa::AvxVnni => return x86::dot_keys_heads_avx2(qs, kt, scale),
            Isa::Scalar => {}
        }
    }
    let _ = isa;
    qs.map(|q| dot_keys_scalar(q, kt, scale))
}

/// [`dot_keys`] in plain Rust, one query (the order the vector kernels reproduce).
fn dot_keys_scalar(q: &[f32], kt: &[f32], scale: f32) -> [f32; KEY_LANES] {
    let full = q.len() / 16 * 16;
    let mut a = [[0.0f32; KEY_LANES]; 16];
    for (qc, kc) in q[..full].chunks_exact(16).zip(kt.chunks_exact(16 * KEY_LANES)) {
        for l in 0..16 {
            for j in 0..KEY_LANES {
                a[l][j] += qc[l] * kc[l * KEY_LANES + j];
            }
        }
    }
    // `Sum` for f32 starts from -0.0
    let mut sum = [-0.0f32; KEY_LANES];
    for al in &a {
        for j in 0..KEY_LANES {
            sum[j] += al[j];
        }
    }
    let mut tail = [-0.0f32; KEY_LANES];
    for (e, &qe) in q.iter().enumerate().skip(full) {
        for j in 0..KEY_LANES {
            tail[j] += qe * kt[e * KEY_LANES + j];
        }
    }
    std::array::from_fn(|j| (sum[j] + tail[j]) * scale)
}

/// [`dot_keys`] in 512- and 256-bit registers (the compiler, left alone, vectorises it across the
/// 16 accumulators with gathers).
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;
