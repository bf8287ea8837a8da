//! f16 → f32 widening and the query · key-tile dot products in AVX-512 and AVX2 registers.

use super::KEY_LANES;
use std::arch::x86_64::*;

/// The first multiple of 16 of `src` widened into `dst`; returns how many.
///
/// # Safety
/// AVX-512F; `src.len() == dst.len()`.
#[target_feature(enable = "avx512f")]
pub unsafe fn widen_f16_avx512(src: &[u16], dst: &mut [f32]) -> usize {
    let n = src.len() / 16 * 16;
    for i in (0..n).step_by(16) {
        let h = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
        _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
    }
    n
}

/// [`widen_f16_avx512`] 8 at a time.
///
/// # Safety
/// AVX2 and F16C; `src.len() == dst.len()`.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn widen_f16_avx2(src: &[u16], dst: &mut [f32]) -> usize {
    let n = src.len() / 8 * 8;
    for i in (0..n).step_by(8) {
        let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
    }
    n
}

/// The lanes of [`super::dot_keys_heads`] from key `off` on, one vector of keys wide: the
/// same code for 16 lanes (AVX-512) and for each half of 8 (AVX2), given its intrinsics.
macro_rules! dot_keys_lanes {
    ($qs:ident, $kt:ident, $scale:ident, $out:ident, $off:expr,
     $load:ident, $set1:ident, $zero:ident, $add:ident, $mul:ident, $store:ident) => {{
        let hd = $qs.first().map_or(0, |q| q.len());
        let full = hd / 16 * 16;
        let k = |e: usize| $load($kt.as_ptr().add(e * KEY_LANES + $off));
        let q = |h: usize, e: usize| $set1(*$qs[h].get_unchecked(e));
        let mut sum = [$set1(-0.0); H];
        for l in 0..16 {
            let mut a = [$zero(); H];
            for c in (0..full).step_by(16) {
                let kv = k(c + l);
                for (h, a) in a.iter_mut().enumerate() {
                    *a = $add(*a, $mul(q(h, c + l), kv));
                }
            }
            for (s, a) in sum.iter_mut().zip(a) {
                *s = $add(*s, a);
            }
        }
        let mut tail = [$set1(-0.0); H];
        for e in full..hd {
            let kv = k(e);
            for (h, t) in tail.iter_mut().enumerate() {
                *t = $add(*t, $mul(q(h, e), kv));
            }
        }
        for h in 0..H {
            $store($out[h].as_mut_ptr().add($off), $mul($add(sum[h], tail[h]), $set1($scale)));
        }
    }};
}

/// # Safety
/// AVX-512F; every query `hd` long, `kt.len() >= hd * KEY_LANES`.
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_keys_heads_avx512<const H: usize>(qs: [&[f32]; H], kt: &[f32], scale: f32) -> [[f32; KEY_LANES]; H] {
    let mut out = [[0.0f32; KEY_LANES]; H];
    dot_keys_lanes!(
        qs,
        kt,
        scale,
        out,
        0,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_setzero_ps,
        _mm512_add_ps,
        _mm512_mul_ps,
        _mm512_storeu_ps
    );
    out
}

/// [`dot_keys_heads_avx512`] in two halves of 8 keys.
///
/// # Safety
/// AVX2; every query `hd` long, `kt.len() >= hd * KEY_LANES`.
#[target_feature(enable = "avx2")]
pub unsafe fn dot_keys_heads_avx2<const H: usize>(qs: [&[f32]; H], kt: &[f32], scale: f32) -> [[f32; KEY_LANES]; H] {
    let mut out = [[0.0f32; KEY_LANES]; H];
    for half in 0..2 {
        dot_keys_lanes!(
            qs,
            kt,
            scale,
            out,
            8 * half,
            _mm256_loadu_ps,
            _mm256_set1_ps,
            _mm256_setzero_ps,
            _mm256_add_ps,
            _mm256_mul_ps,
            _mm256_storeu_ps
        );
    }
    out
}
