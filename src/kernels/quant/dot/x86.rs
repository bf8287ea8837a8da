//! The x86 kernels: AVX2 (and AVX-VNNI) and AVX-512 VNNI group kernels, float rows and groups.

use super::*;
use std::arch::x86_64::*;

/// Bytes ahead of its reads that a group kernel prefetches in the pass that brings a block of
/// weights from memory (`PF`): its loop leaves too few loads in flight for the hardware
/// prefetcher alone. At one token (decode), AVX-512 Q4_K measured 52–57 → 65–88 tokens/s with
/// it, Q4_0 +5%, Q6_K +3–5%, Q8_0 +12% (median of 11 rounds); for the first tile of a batch,
/// 16 tokens of a 2048-column matrix streamed from memory ran 25–60% faster (every format),
/// 4 tokens 1.6–2.6× (AVX2 alike), and many tokens (prefill) the same. Every group kernel
/// prefetches into L2 (`_MM_HINT_T1`): into L1, on machines whose memory streamed ~30 GB/s,
/// decode waited on memory (Q6_K 0.5–0.6 of the bandwidth, 0.9 with T1; Q8_0 +2–8%, AVX2
/// Q4_0 +16%, 16 Q4_0 sequences +15%). At one
/// token another machine ran Q4_0 and Q4_K faster without it: decode measures both
/// (`model::prefetch`).
pub(super) const PREFETCH: usize = 9216;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum8(v: __m256) -> f32 {
    let t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let u = _mm_add_ps(t, _mm_movehl_ps(t, t));
    _mm_cvtss_f32(_mm_add_ss(u, _mm_shuffle_ps(u, u, 1)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let t = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let u = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0b01_00_11_10));
    _mm_cvtsi128_si32(_mm_add_epi32(u, _mm_shuffle_epi32(u, 0b10_11_00_01)))
}

/// f16 at `p` as f32 (F16C).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((p as *const u16).read_unaligned() as i32)))
}

/// 16 bytes of Q4 nibbles as 32 values (low nibbles first).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles16(p: *const u8) -> __m256i {
    let v = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0x0f);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m))
}

/// Group `j` (0..4) of a Q6_K 128-weight half's six-bit values (0..63), from its low-nibble
/// bytes `l0` (groups 0 and 2) and `l1` (1 and 3) and its high-bit bytes `hb` (two bits for
/// each group): the one place the layout is unpacked in 256 bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_value(j: usize, l0: __m256i, l1: __m256i, hb: __m256i) -> __m256i {
    let (m4, m30) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
    let low = |x: __m256i| _mm256_and_si256(x, m4);
    let high = |x: __m256i| _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
    match j {
        0 => _mm256_or_si256(low(l0), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30)),
        1 => _mm256_or_si256(low(l1), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30)),
        2 => _mm256_or_si256(high(l0), _mm256_and_si256(hb, m30)),
        _ => _mm256_or_si256(high(l1), _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30)),
    }
}

/// The 4 groups of 32 six-bit Q6_K values (0..63) of one 128-weight half of a super-block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_groups(blk: *const u8, h: usize) -> [__m256i; 4] {
    let ql0 = _mm256_loadu_si256(blk.add(64 * h) as *const __m256i);
    let ql1 = _mm256_loadu_si256(blk.add(64 * h + 32) as *const __m256i);
    let qh = _mm256_loadu_si256(blk.add(128 + 32 * h) as *const __m256i);
    [0, 1, 2, 3].map(|j| q6_value(j, ql0, ql1, qh))
}

/// `32·Σ_j sc_j·bsum_j` of a Q6_K super-block: the `−32` offset of its values, applied in integers.
#[inline]
fn q6_offset(blk: &[u8], bsums: &[i32]) -> i32 {
    (0..16).map(|j| blk[192 + j] as i8 as i32 * bsums[j]).sum::<i32>() * 32
}

fn q4k_mins(sc: &[u8], bsums: &[i32]) -> i32 {
    (0..8).map(|j| scale_min_k4(j, sc).1 as i32 * (bsums[2 * j] + bsums[2 * j + 1])).sum()
}

pub mod avx2;

pub mod vnni;

pub use self::float_impl::{float, float_groups, float_rows};
mod float_impl;
