//! AVX-512 VNNI (`vpdpbusd`): sixteen rows at a time in the [`to_groups`] layout; rows
//! outside a group one at a time (K-quants two 32-weight sub-blocks per instruction).
use super::*;

/// `r[t][i] = row_i · act_t` for one group of [`GROUP`] Q8_0/Q4_0 rows in the
/// [`to_groups`] layout, lane `i` of every vector being row `i`. Per block: each row's
/// exact integer sum (`vpdpbusd` of 4 weight bytes a row with the token's 4 activations
/// broadcast; the weights made unsigned, Q4_0's by its offset of 8, Q8_0's by 128, and the
/// offset times the activations' sum taken off), then one fused multiply-add of the
/// group's sums by their scales into the even- or odd-block accumulator. The weights of a
/// block are unpacked once for all tokens.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline(never)] // kept out of `dot_groups`: inlined there, prefill ran slower
pub(in super::super) unsafe fn group<const T: usize, const PF: bool>(
    fmt: Format,
    g: *const u8,
    nb: usize,
    a: &QActs<T>,
    r: &mut [[f32; GROUP]; T],
) {
    let gb = GROUP * fmt.block_bytes();
    let zero = _mm512_setzero_si512();
    let m4 = _mm512_set1_epi8(0x0f);
    let bcast = |p: *const u8, i: usize| _mm512_set1_epi32((p as *const i32).add(i).read_unaligned());
    let mut acc = [[_mm512_setzero_ps(); 2]; T];
    // a macro, not a loop over `b % 2`: the accumulators must stay in registers
    macro_rules! block {
        ($b:expr, $h:literal) => {{
            let p = g.add($b * gb);
            // the lines of a later block (see `PREFETCH`), half before this block's loads
            // and half after its arithmetic: all nine of a Q8_0 block in one burst
            // streamed its matrices ~10% slower
            let (lines, first) = (gb.div_ceil(64), gb.div_ceil(128));
            let ahead = |k: usize| _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH + 64 * k) as *const i8);
            if PF {
                (0..first).for_each(ahead);
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
            let qp = p.add(2 * GROUP);
            // token t's exact sum, times the block's scales, into its accumulator
            macro_rules! fold {
                ($t:expr, $sum:expr) => {{
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(a.d[$t][$b]));
                    acc[$t][$h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps($sum), scale, acc[$t][$h]);
                }};
            }
            if fmt == Format::Q4_0 {
                // chunk c: values 4c..4c+4 (low nibbles) and 16+4c.. (high) of each row
                let mut lo = [zero; 4];
                let mut hi = [zero; 4];
                for c in 0..4 {
                    let v = _mm512_loadu_si512(qp.add(64 * c) as *const __m512i);
                    lo[c] = _mm512_and_si512(v, m4);
                    hi[c] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                }
                for t in 0..T {
                    let ap = a.q[t].as_ptr().add($b * QA) as *const u8;
                    // Σ(q − 8)·a = Σq·a − 8·Σa; two chains, added exactly
                    let mut s0 = _mm512_set1_epi32(-8 * a.s[t][$b]);
                    let mut s1 = zero;
                    for c in 0..4 {
                        s0 = _mm512_dpbusd_epi32(s0, lo[c], bcast(ap, c));
                        s1 = _mm512_dpbusd_epi32(s1, hi[c], bcast(ap, 4 + c));
                    }
                    fold!(t, _mm512_add_epi32(s0, s1));
                }
            } else {
                // chunk c: values 4c..4c+4 of each row; Σ(w + 128)·a − 128·Σa, w + 128 by
                // flipping the sign bit (once a block for all tokens)
                let mut wu = [zero; 8];
                let k128 = _mm512_set1_epi8(-128i8);
                // loaded in address order (the hardware prefetcher follows it)
                for (c, v) in wu.iter_mut().enumerate() {
                    *v = _mm512_xor_si512(_mm512_loadu_si512(qp.add(64 * c) as *const __m512i), k128);
                }
                for t in 0..T {
                    let ap = a.q[t].as_ptr().add($b * QA) as *const u8;
                    let (mut s0, mut s1) = (_mm512_set1_epi32(-128 * a.s[t][$b]), zero);
                    for c in 0..4 {
                        s0 = _mm512_dpbusd_epi32(s0, wu[c], bcast(ap, c));
                        s1 = _mm512_dpbusd_epi32(s1, wu[4 + c], bcast(ap, 4 + c));
                    }
                    fold!(t, _mm512_add_epi32(s0, s1));
                }
            }
            if PF {
                (first..lines).for_each(ahead);
            }
        }};
    }
    even_odd_blocks!(nb, block);
    for t in 0..T {
        _mm512_storeu_ps(r[t].as_mut_ptr(), _mm512_add_ps(acc[t][0], acc[t][1]));
    }
}

/// 4 bytes at `p + 4i`, broadcast to every 32-bit lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn bcast4(p: *const u8, i: usize) -> __m512i {
    _mm512_set1_epi32((p as *const i32).add(i).read_unaligned())
}

/// [`q6_value`](super::q6_value) in 512 bits: group `j` of the six-bit values from the
/// low-nibble bytes `l0`/`l1` and the high-bit bytes `hb`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q6_value(j: usize, l0: __m512i, l1: __m512i, hb: __m512i) -> __m512i {
    let (m4, m30) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
    let low = |x: __m512i| _mm512_and_si512(x, m4);
    let high = |x: __m512i| _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
    match j {
        0 => _mm512_or_si512(low(l0), _mm512_and_si512(_mm512_slli_epi16(hb, 4), m30)),
        1 => _mm512_or_si512(low(l1), _mm512_and_si512(_mm512_slli_epi16(hb, 2), m30)),
        2 => _mm512_or_si512(high(l0), _mm512_and_si512(hb, m30)),
        _ => _mm512_or_si512(high(l1), _mm512_and_si512(_mm512_srli_epi16(hb, 2), m30)),
    }
}

/// 64 bytes at `p`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn load64(p: *const u8) -> __m512i {
    _mm512_loadu_si512(p as *const __m512i)
}

/// The [`group`] kernel for Q4_K: per super-block and row (lane), each sub-block's exact
/// integer sum `Σ q·a` (`vpdpbusd`, 4 values a row with 4 broadcast activations), times
/// its 6-bit scale; the mins times the activations' sums; then the two fused multiply-adds
/// of the scalar order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline(never)] // kept out of `dot_groups`: inlined there, prefill ran slower
pub(in super::super) unsafe fn group_q4k<const T: usize, const PF: bool>(
    g: *const u8,
    nsb: usize,
    a: &QActs<T>,
    r: &mut [[f32; GROUP]; T],
) {
    let zero = _mm512_setzero_si512();
    let (m4, m63, m30) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(63), _mm512_set1_epi8(0x30));
    let (mut sum, mut mins) = ([_mm512_setzero_ps(); T], [_mm512_setzero_ps(); T]);
    // the 16 rows' scales (sub-blocks 0..8), then mins, as bytes
    let mut sm = [0u8; 256];
    for sb in 0..nsb {
        let p = g.add(sb * GROUP * 144);
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32) as *const __m256i));
        // packed bytes 0..4, 4..8 and 8..12 of the 16 rows; `scale_min_k4` in lanes
        let (q0, q4, q8) = (load64(p.add(64)), load64(p.add(128)), load64(p.add(192)));
        let sp = sm.as_mut_ptr() as *mut __m512i;
        sp.write_unaligned(_mm512_and_si512(q0, m63));
        let hi2 = |v: __m512i| _mm512_and_si512(_mm512_srli_epi16(v, 2), m30);
        sp.add(1).write_unaligned(_mm512_or_si512(_mm512_and_si512(q8, m4), hi2(q0)));
        sp.add(2).write_unaligned(_mm512_and_si512(q4, m63));
        let q8h = _mm512_and_si512(_mm512_srli_epi16(q8, 4), m4);
        sp.add(3).write_unaligned(_mm512_or_si512(q8h, hi2(q4)));
        let lanes = |j: usize| _mm512_cvtepu8_epi32(_mm_loadu_si128(sm.as_ptr().add(16 * j) as *const __m128i));
        let qp = p.add(256);
        let mut isum = [zero; T];
        for c in 0..4 {
            if PF {
                // the lines PREFETCH bytes on (a later super-block of the group, or the
                // next group's)
                for k in 0..9 {
                    let line = p.wrapping_add(PREFETCH + 576 * c + 64 * k) as *const i8;
                    _mm_prefetch::<_MM_HINT_T1>(line);
                }
            }
            // x[h][t]: token t's sums of sub-block 2c + h/2 (low nibbles, then high) over
            // the even (h even) or odd quads; each quad unpacked once serves every token
            // while in registers (the indices constant, so that they stay there whatever
            // the compiler unrolls)
            let mut x = [[zero; T]; 4];
            for k in (0..8).step_by(2) {
                // quads k, k + 1 of chunk c: values 4k.. of sub-block 2c (low nibbles),
                // of 2c+1 (high)
                let (ve, vo) = (load64(qp.add(64 * (8 * c + k))), load64(qp.add(64 * (8 * c + k + 1))));
                let (le, lo) = (_mm512_and_si512(ve, m4), _mm512_and_si512(vo, m4));
                let he = _mm512_and_si512(_mm512_srli_epi16(ve, 4), m4);
                let ho = _mm512_and_si512(_mm512_srli_epi16(vo, 4), m4);
                for t in 0..T {
                    let ap = a.q[t].as_ptr().add(sb * 256 + 64 * c) as *const u8;
                    x[0][t] = _mm512_dpbusd_epi32(x[0][t], le, bcast4(ap, k));
                    x[1][t] = _mm512_dpbusd_epi32(x[1][t], lo, bcast4(ap, k + 1));
                    x[2][t] = _mm512_dpbusd_epi32(x[2][t], he, bcast4(ap, 8 + k));
                    x[3][t] = _mm512_dpbusd_epi32(x[3][t], ho, bcast4(ap, 9 + k));
                }
            }
            let (s0, s1) = (lanes(2 * c), lanes(2 * c + 1));
            for t in 0..T {
                let (x0, x1) = (_mm512_add_epi32(x[0][t], x[1][t]), _mm512_add_epi32(x[2][t], x[3][t]));
                let scaled = _mm512_add_epi32(_mm512_mullo_epi32(x0, s0), _mm512_mullo_epi32(x1, s1));
                isum[t] = _mm512_add_epi32(isum[t], scaled);
            }
        }
        let mut msum = [zero; T];
        for j in 0..8 {
            let m = lanes(8 + j);
            for t in 0..T {
                let bs = &a.s[t][16 * sb + 2 * j..];
                msum[t] = _mm512_add_epi32(msum[t], _mm512_mullo_epi32(m, _mm512_set1_epi32(bs[0] + bs[1])));
            }
        }
        for t in 0..T {
            let ad = _mm512_set1_ps(a.d[t][sb]);
            sum[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(d, ad), sum[t]);
            mins[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(msum[t]), _mm512_mul_ps(dmin, ad), mins[t]);
        }
    }
    for t in 0..T {
        _mm512_storeu_ps(r[t].as_mut_ptr(), _mm512_sub_ps(sum[t], mins[t]));
    }
}

/// The [`group`] kernel for Q6_K: per super-block and row (lane), each 16-value
/// sub-block's exact `Σ (q − 32)·a` (the offset as the accumulator's start, `−32·Σa`),
/// times its scale, then one fused multiply-add as in the scalar order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline(never)] // kept out of `dot_groups`: inlined there, prefill ran slower
pub(in super::super) unsafe fn group_q6k<const T: usize, const PF: bool>(
    g: *const u8,
    nsb: usize,
    a: &QActs<T>,
    r: &mut [[f32; GROUP]; T],
) {
    let zero = _mm512_setzero_si512();
    let mut sum = [_mm512_setzero_ps(); T];
    for sb in 0..nsb {
        let p = g.add(sb * GROUP * 210);
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        let (scales, quads) = (p.add(32), p.add(288));
        let mut isum = [zero; T];
        for h in 0..2 {
            for half in 0..2 {
                if PF {
                    // the next super-blocks' lines, a quarter a pass (see `PREFETCH`)
                    for k in 0..14 {
                        let line = p.wrapping_add(PREFETCH + 896 * (2 * h + half) + 64 * k) as *const i8;
                        _mm_prefetch::<_MM_HINT_T1>(line);
                    }
                }
                // Two passes over the quarter's quads, groups 2·pass, 2·pass + 1.
                // x[j][t]: sub-block 8h + 2(2·pass + j) + half of token t, its chain started
                // at the offset; a quad's unpacked vectors serve every token while in
                // registers (the quarter's 16 unpacked first went through the stack: 4
                // tokens 12–15% slower, one 5%). Eight chains
                // a pass for 4 tokens, not sixteen: they fit in the registers whatever the
                // compiler's tuning (a generic x86-64 build spilled them, prefill −45%).
                for pass in 0..2 {
                    let sub = [8 * h + 4 * pass + half, 8 * h + 4 * pass + 2 + half];
                    let mut x = [[zero; T]; 2];
                    for j in 0..2 {
                        for t in 0..T {
                            x[j][t] = _mm512_set1_epi32(-32 * a.s[t][16 * sb + sub[j]]);
                        }
                    }
                    for i in 0..4 {
                        // quad k = 4·half + i of the 32 values of group j: values
                        // 128h + 32j + 4k..
                        let q = quads.add(192 * (8 * h + 4 * half + i));
                        let (l0, l1, hb) = (load64(q), load64(q.add(64)), load64(q.add(128)));
                        // constant groups in each arm (one branch a quad, as the compiler keeps it)
                        let (v0, v1) = if pass == 0 {
                            (q6_value(0, l0, l1, hb), q6_value(1, l0, l1, hb))
                        } else {
                            (q6_value(2, l0, l1, hb), q6_value(3, l0, l1, hb))
                        };
                        for t in 0..T {
                            let ap = a.q[t].as_ptr().add(sb * 256) as *const u8;
                            x[0][t] = _mm512_dpbusd_epi32(x[0][t], v0, bcast4(ap.add(16 * sub[0]), i));
                            x[1][t] = _mm512_dpbusd_epi32(x[1][t], v1, bcast4(ap.add(16 * sub[1]), i));
                        }
                    }
                    for j in 0..2 {
                        let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(scales.add(16 * sub[j]) as *const __m128i));
                        for t in 0..T {
                            isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(x[j][t], sc));
                        }
                    }
                }
            }
        }
        for t in 0..T {
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(a.d[t][sb]));
            sum[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), scale, sum[t]);
        }
    }
    for t in 0..T {
        _mm512_storeu_ps(r[t].as_mut_ptr(), sum[t]);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(in super::super) unsafe fn quant<const T: usize>(fmt: Format, w: &[u8], a: &QActs<T>, r: &mut [f32; T]) {
    let act = |t: usize, off: usize| _mm512_loadu_si512(a.q[t].as_ptr().add(off) as *const __m512i);
    match fmt {
        // rows outside a group, in ggml's layout
        Format::Q8_0 | Format::Q4_0 => super::avx2::quant::<T>(fmt, w, a, r),
        Format::Q4K => {
            let m4 = _mm256_set1_epi8(0x0f);
            let zero = _mm512_setzero_si512();
            let (mut sum, mut mins) = ([0.0f32; T], [0.0f32; T]);
            for (sb, blk) in w.chunks_exact(144).enumerate() {
                let p = blk.as_ptr();
                let (d, dmin) = (f16_at(p), f16_at(p.add(2)));
                let sc = &blk[4..16];
                let sm: [(u8, u8); 8] = std::array::from_fn(|j| scale_min_k4(j, sc));
                let mut isum = [zero; T];
                for c in 0..4 {
                    let v = _mm256_loadu_si256(p.add(16 + 32 * c) as *const __m256i);
                    let (lo, hi) = (_mm256_and_si256(v, m4), _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
                    let q = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                    // u8×i8 pairs to i16, then pairs of i16 times the sub-block scale to i32
                    let sv = _mm512_inserti64x4(
                        _mm512_set1_epi16(sm[2 * c].0 as i16),
                        _mm256_set1_epi16(sm[2 * c + 1].0 as i16),
                        1,
                    );
                    for t in 0..T {
                        let p16 = _mm512_maddubs_epi16(q, act(t, sb * 256 + 64 * c));
                        isum[t] = _mm512_add_epi32(isum[t], _mm512_madd_epi16(p16, sv));
                    }
                }
                for t in 0..T {
                    let bs = &a.s[t][16 * sb..16 * sb + 16];
                    let m: i32 = (0..8).map(|j| sm[j].1 as i32 * (bs[2 * j] + bs[2 * j + 1])).sum();
                    sum[t] = (_mm512_reduce_add_epi32(isum[t]) as f32).mul_add(d * a.d[t][sb], sum[t]);
                    mins[t] = (m as f32).mul_add(dmin * a.d[t][sb], mins[t]);
                }
            }
            for t in 0..T {
                r[t] = sum[t] - mins[t];
            }
        }
        Format::Q6K => {
            let zero = _mm512_setzero_si512();
            // the i16 scale of each pair of values, for two 32-value groups (4 scales)
            let spread = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
            let mut sum = [0.0f32; T];
            for (sb, blk) in w.chunks_exact(210).enumerate() {
                let p = blk.as_ptr();
                let d = f16_at(p.add(208));
                let mut isum = [zero; T];
                for h in 0..2 {
                    let g = q6_groups(p, h);
                    for pair in 0..2 {
                        let k = 4 * h + 2 * pair;
                        let q = _mm512_inserti64x4(_mm512_castsi256_si512(g[2 * pair]), g[2 * pair + 1], 1);
                        // scales sc[2k..2k+4], each over 16 values = 8 i16 pairs
                        let sc = |i: usize| {
                            let two =
                                _mm_cvtsi32_si128((p.add(192 + 2 * k + 2 * i) as *const i16).read_unaligned() as i32);
                            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(two, spread))
                        };
                        let sv = _mm512_inserti64x4(_mm512_castsi256_si512(sc(0)), sc(1), 1);
                        for t in 0..T {
                            let p16 = _mm512_maddubs_epi16(q, act(t, sb * 256 + 32 * k));
                            isum[t] = _mm512_add_epi32(isum[t], _mm512_madd_epi16(p16, sv));
                        }
                    }
                }
                for t in 0..T {
                    let total = _mm512_reduce_add_epi32(isum[t]) - q6_offset(blk, &a.s[t][16 * sb..]);
                    sum[t] = (total as f32).mul_add(d * a.d[t][sb], sum[t]);
                }
            }
            *r = sum;
        }
        _ => unreachable!("float formats take f32 activations"),
    }
}
