//! bf16 weights: dot products in pairs of columns, as AVX-512 BF16's `vdpbf16ps` computes them,
//! on every CPU.
//!
//! The activations are rounded to bf16 once per matmul (ggml's `GGML_FP32_TO_BF16`, which llama.cpp
//! applies to the activations of bf16 weights; values below f32's normal range flushed to signed
//! zero, as the instruction reads them). The canonical order, per row and token: one chain over
//! the column pairs `(2p, 2p + 1)`, p = 0, 1, …, each pair adding its odd product and then its even
//! one: `acc = ftz(acc + w₂ₚ₊₁·x₂ₚ₊₁)`, `acc = ftz(acc + w₂ₚ·x₂ₚ)`, each add rounded to nearest even,
//! the products exact (two bf16 significands fit in an f32 one), inputs below the normal range read
//! as zero and sums below it flushed to zero — Intel's definition of `vdpbf16ps`, which AMD's Zen 5
//! matched on 32 million random lanes (every exponent included) where even-then-odd did not. (A
//! missing last column of an odd count is a zero pair.)
//!
//! So a CPU with AVX-512 BF16 runs 32 multiply-adds an instruction, twice f32's, with no weight
//! conversion. Elsewhere a fused multiply-add computes the same add of an exact product; the
//! flushes can only matter when some input lies outside `[2^-56, 2^63)` (or is 0): inside, every
//! product and partial sum is a multiple of 2^-126 and finite before rounding. So the AVX2 kernel
//! runs plain FMAs where weights and activations are all [`plain`] (checked once per matrix and per
//! packed tile), and otherwise the scalar chain with its flushes.

use super::{bf16_to_f32, f32_to_bf16};

/// ggml's f32 → bf16 rounding ([`f32_to_bf16`]: to nearest even, NaN quieted), with values below
/// the normal range flushed to a signed zero.
pub fn round_activation(x: f32) -> u16 {
    if x.to_bits() & 0x7f80_0000 == 0 {
        return ((x.to_bits() >> 16) & 0x8000) as u16;
    }
    f32_to_bf16(x)
}

/// Whether `v` is 0 or a finite value in `[2^-56, 2^63)` in magnitude, where the plain fused
/// multiply-adds equal the instruction's flushed arithmetic (module doc).
#[inline]
pub fn plain(v: u16) -> bool {
    let e = (v >> 7) & 0xff;
    v & 0x7fff == 0 || (71..=189).contains(&e)
}

#[inline]
fn value(v: u16) -> f32 {
    // inputs below the normal range read as (signed) zero
    bf16_to_f32(if v & 0x7f80 == 0 { v & 0x8000 } else { v })
}

#[inline]
fn ftz(x: f32) -> f32 {
    if x.to_bits() & 0x7f80_0000 == 0 {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

/// One row (`w`: little-endian bf16 bytes) · one token's rounded activations `x` (as many, or one
/// more: a zero after an odd count), in the canonical order.
pub fn chain(w: &[u8], x: &[u16]) -> f32 {
    let n = w.len() / 2;
    let at = |i: usize| if i < n { u16::from_le_bytes([w[2 * i], w[2 * i + 1]]) } else { 0 };
    let mut acc = 0.0f32;
    for p in 0..n.div_ceil(2) {
        let (i, j) = (2 * p + 1, 2 * p);
        let xi = x.get(i).copied().unwrap_or(0);
        acc = ftz(value(at(i)).mul_add(value(xi), acc));
        acc = ftz(value(at(j)).mul_add(value(x[j]), acc));
    }
    acc
}

/// Whether every bf16 value of `bytes` is [`plain`].
pub fn all_plain(bytes: &[u8]) -> bool {
    bytes.chunks_exact(2).all(|b| plain(u16::from_le_bytes([b[0], b[1]])))
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // kernels index per-token accumulator arrays by token
pub(super) mod x86 {
    use crate::kernels::isa::GROUP;
    use std::arch::x86_64::*;

    /// Whether this CPU has AVX-512 BF16 (and the rest of AVX-512 the kernel uses).
    pub fn has_bf16_dot() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512f"))
    }

    /// `res[i][t][r]` = row `r` of group `i` · token `t` for two groups of 16 bf16 rows in the
    /// pair layout (column pair after pair, each row's two values together: one 64-byte vector a
    /// pair) and the packed tile `xp` (`[pair][T]`, each a pair of rounded activations): `2T`
    /// accumulators, a broadcast pair per token, one `vdpbf16ps` per group and token.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn groups_512<const T: usize>(
        g0: *const u8,
        g1: *const u8,
        pairs: usize,
        xp: *const u32,
        res: &mut [[[f32; GROUP]; T]; 2],
    ) {
        let mut acc = [[_mm512_setzero_ps(); T]; 2];
        for p in 0..pairs {
            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(g0.add(64 * p) as *const __m512i));
            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(g1.add(64 * p) as *const __m512i));
            let x = xp.add(T * p);
            for t in 0..T {
                let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(*x.add(t) as i32));
                acc[0][t] = _mm512_dpbf16_ps(acc[0][t], w0, b);
                acc[1][t] = _mm512_dpbf16_ps(acc[1][t], w1, b);
            }
        }
        for i in 0..2 {
            for t in 0..T {
                _mm512_storeu_ps(res[i][t].as_mut_ptr(), acc[i][t]);
            }
        }
    }

    /// The same sums for one group with fused multiply-adds (AVX2), for [`super::plain`] weights
    /// and activations only: the odd column's product, then the even one's, into each lane (a
    /// half of the group's 16 rows a vector); `xp` the tile's activations as f32, `[pair][T]`, each
    /// pair (even, odd).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn group_256<const T: usize>(g: *const u8, pairs: usize, xp: *const f32, res: &mut [[f32; GROUP]; T]) {
        let hi16 = _mm256_set1_epi32(0xffff_0000u32 as i32);
        let mut acc = [[_mm256_setzero_ps(); 2]; T];
        for p in 0..pairs {
            // rows 0..8 and 8..16: each lane a row's (even, odd) values
            let v = [
                _mm256_loadu_si256(g.add(64 * p) as *const __m256i),
                _mm256_loadu_si256(g.add(64 * p + 32) as *const __m256i),
            ];
            let even = v.map(|v| _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
            let odd = v.map(|v| _mm256_castsi256_ps(_mm256_and_si256(v, hi16)));
            let x = xp.add(2 * T * p);
            for t in 0..T {
                let (xe, xo) = (_mm256_broadcast_ss(&*x.add(2 * t)), _mm256_broadcast_ss(&*x.add(2 * t + 1)));
                for h in 0..2 {
                    acc[t][h] = _mm256_fmadd_ps(odd[h], xo, acc[t][h]);
                    acc[t][h] = _mm256_fmadd_ps(even[h], xe, acc[t][h]);
                }
            }
        }
        for t in 0..T {
            _mm256_storeu_ps(res[t].as_mut_ptr(), acc[t][0]);
            _mm256_storeu_ps(res[t].as_mut_ptr().add(8), acc[t][1]);
        }
    }
}

/// [`GROUP`](crate::kernels::isa::GROUP) bf16 rows of `cols` (even) columns (ggml's layout, concatenated)
/// in the pair layout: for each column pair, each row's two values (4 bytes) in row order.
pub fn to_pairs(rows: &[u8], group: usize) -> Vec<u8> {
    let rb = rows.len() / group;
    let mut out = vec![0u8; rows.len()];
    for (r, row) in rows.chunks_exact(rb).enumerate() {
        for (p, v) in row.chunks_exact(4).enumerate() {
            out[4 * (group * p + r)..][..4].copy_from_slice(v);
        }
    }
    out
}

/// The inverse of [`to_pairs`].
pub fn from_pairs(g: &[u8], group: usize) -> Vec<u8> {
    let rb = g.len() / group;
    let mut out = vec![0u8; g.len()];
    for (r, row) in out.chunks_exact_mut(rb).enumerate() {
        for (p, v) in row.chunks_exact_mut(4).enumerate() {
            v.copy_from_slice(&g[4 * (group * p + r)..][..4]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// ggml's rounding (`ggml_compute_fp32_to_bf16`), written from its definition, with the flush.
    #[test]
    fn activations_round_as_ggml_does() {
        let mut r = Rng::new(3);
        let mut xs: Vec<f32> = (0..100_000).map(|_| f32::from_bits(r.next_u64() as u32)).collect();
        xs.extend([0.0, -0.0, 1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-40, -1e-40, f32::MIN_POSITIVE]);
        // ties: the bit below bf16's last one set, nothing under it
        xs.extend([f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000)]);
        for x in xs {
            let u = x.to_bits();
            let want = if x.is_nan() {
                ((u >> 16) | 64) as u16
            } else if x != 0.0 && x.abs() < f32::MIN_POSITIVE {
                ((u >> 31) << 15) as u16
            } else {
                // round half to even through f64 (exact): the nearest bf16
                let lo = f32::from_bits(u & 0xffff_0000) as f64;
                // the next bf16 away from zero (past the largest finite one: 2^128, infinity)
                let step = f32::from_bits(u & 0x7f80_0000) as f64 / 128.0;
                let hi = lo + step.copysign(lo);
                let (dl, dh) = ((x as f64 - lo).abs(), (hi - x as f64).abs());
                let pick_hi = dh < dl || (dh == dl && (u >> 16) & 1 == 1);
                if x.is_infinite() {
                    (u >> 16) as u16
                } else if pick_hi {
                    ((u >> 16) + 1) as u16
                } else {
                    (u >> 16) as u16
                }
            };
            assert_eq!(round_activation(x), want, "{x:e} ({u:#x})");
        }
    }

    #[test]
    fn pair_layout_round_trips() {
        let rows: Vec<u8> = (0..16 * 40).map(|i| (i * 7 % 251) as u8).collect();
        let g = to_pairs(&rows, 16);
        assert_eq!(from_pairs(&g, 16), rows);
        // pair p of row r at 4 (16 p + r)
        assert_eq!(g[4 * (16 * 3 + 5)..][..4], rows[5 * 40 + 12..][..4]);
    }
}
