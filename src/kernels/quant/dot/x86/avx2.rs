//! AVX2 group kernels (with AVX-VNNI's `vpdpbusd` where present): each half of a group of
//! sixteen rows a pass.

use super::*;

/// 8 lanes of 4 consecutive `w·a` products: `|w|` times `a` signed by `w`, u8×i8 pairs to
/// i16 (no saturation: |a| ≤ 127), pairs of i16 to i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn lanes(w: __m256i, a: __m256i) -> __m256i {
    let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// The same for unsigned weights (0..63): no sign trick needed.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lanes_u(q: __m256i, a: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), _mm256_set1_epi16(1))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(in super::super) unsafe fn quant<const T: usize>(fmt: Format, w: &[u8], a: &QActs<T>, r: &mut [f32; T]) {
    let act = |t: usize, off: usize| _mm256_loadu_si256(a.q[t].as_ptr().add(off) as *const __m256i);
    match fmt {
        Format::Q8_0 | Format::Q4_0 => {
            let mut acc = [[0.0f32; 2]; T];
            let eight = _mm256_set1_epi8(8);
            for (b, blk) in w.chunks_exact(fmt.block_bytes()).enumerate() {
                let p = blk.as_ptr();
                let wb = if fmt == Format::Q8_0 {
                    _mm256_loadu_si256(p.add(2) as *const __m256i)
                } else {
                    _mm256_sub_epi8(nibbles16(p.add(2)), eight)
                };
                let dw = f16_at(p);
                for t in 0..T {
                    let sum = hsum_epi32(lanes(wb, act(t, b * QA)));
                    acc[t][b % 2] = (sum as f32).mul_add(dw * a.d[t][b], acc[t][b % 2]);
                }
            }
            for t in 0..T {
                r[t] = acc[t][0] + acc[t][1];
            }
        }
        Format::Q4K => {
            let m4 = _mm256_set1_epi8(0x0f);
            let (mut sum, mut mins) = ([0.0f32; T], [0.0f32; T]);
            for (sb, blk) in w.chunks_exact(144).enumerate() {
                let p = blk.as_ptr();
                let (d, dmin) = (f16_at(p), f16_at(p.add(2)));
                let sc = &blk[4..16];
                let mut isum = [_mm256_setzero_si256(); T];
                for c in 0..4 {
                    let v = _mm256_loadu_si256(p.add(16 + 32 * c) as *const __m256i);
                    let halves = [_mm256_and_si256(v, m4), _mm256_and_si256(_mm256_srli_epi16(v, 4), m4)];
                    for (h, q) in halves.into_iter().enumerate() {
                        let j = 2 * c + h;
                        let sv = _mm256_set1_epi32(scale_min_k4(j, sc).0 as i32);
                        for t in 0..T {
                            let l = _mm256_mullo_epi32(lanes_u(q, act(t, sb * 256 + 32 * j)), sv);
                            isum[t] = _mm256_add_epi32(isum[t], l);
                        }
                    }
                }
                for t in 0..T {
                    let m = q4k_mins(sc, &a.s[t][16 * sb..]);
                    sum[t] = (hsum_epi32(isum[t]) as f32).mul_add(d * a.d[t][sb], sum[t]);
                    mins[t] = (m as f32).mul_add(dmin * a.d[t][sb], mins[t]);
                }
            }
            for t in 0..T {
                r[t] = sum[t] - mins[t];
            }
        }
        Format::Q6K => {
            let mut sum = [0.0f32; T];
            for (sb, blk) in w.chunks_exact(210).enumerate() {
                let p = blk.as_ptr();
                let d = f16_at(p.add(208));
                let mut isum = [_mm256_setzero_si256(); T];
                for h in 0..2 {
                    for (g, q) in q6_groups(p, h).into_iter().enumerate() {
                        let k = 4 * h + g;
                        let (s0, s1) = (blk[192 + 2 * k] as i8 as i32, blk[193 + 2 * k] as i8 as i32);
                        let sv = _mm256_setr_epi32(s0, s0, s0, s0, s1, s1, s1, s1);
                        for t in 0..T {
                            let l = _mm256_mullo_epi32(lanes_u(q, act(t, sb * 256 + 32 * k)), sv);
                            isum[t] = _mm256_add_epi32(isum[t], l);
                        }
                    }
                }
                for t in 0..T {
                    let total = hsum_epi32(isum[t]) - q6_offset(blk, &a.s[t][16 * sb..]);
                    sum[t] = (total as f32).mul_add(d * a.d[t][sb], sum[t]);
                }
            }
            *r = sum;
        }
        _ => unreachable!("float formats take f32 activations"),
    }
}

/// `$name`: [`vnni::group`] on AVX2 for Q8_0 and Q4_0 (`$features`; `$vnni`: with AVX-VNNI).
/// The same layout, each half of the group (rows `8k..8k + 8`, the `k`-th 32 bytes of
/// every 64-byte piece) in its own pass, lane `i` being row `8k + i`. Per block, each
/// row's exact integer sum (4 weight bytes a row with the token's 4 activations
/// broadcast: `vpdpbusd` with AVX-VNNI, else `vpmaddubsw`, pairs to 32 bits by
/// `vpmaddwd`), then one fused multiply-add by the scales into the even- or odd-block
/// accumulator: the scalar order, the same bits.
macro_rules! q8_group {
    ($name:ident, $features:literal, $vnni:tt) => {
        #[target_feature(enable = $features)]
        #[inline(never)] // kept out of `dot_groups`: inlined there, prefill ran slower
        pub(in super::super) unsafe fn $name<const T: usize, const PF: bool>(
            fmt: Format,
            g: *const u8,
            nb: usize,
            a: &QActs<T>,
            r: &mut [[f32; GROUP]; T],
        ) {
            let gb = GROUP * fmt.block_bytes();
            let zero = _mm256_setzero_si256();
            let (m4, ones) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi16(1));
            let bcast = |p: *const i8, i: usize| _mm256_set1_epi32((p as *const i32).add(i).read_unaligned());
            for k in 0..2 {
                let mut acc = [[_mm256_setzero_ps(); 2]; T];
                // a macro, not a loop over `b % 2`: the accumulators must stay in registers
                macro_rules! block {
                    ($b:expr, $h:literal) => {{
                        let p = g.add($b * gb);
                        if PF && k == 0 {
                            // a later block's lines (see `PREFETCH`)
                            for q in 0..gb.div_ceil(64) {
                                _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH + 64 * q) as *const i8);
                            }
                        }
                        let dw = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * k) as *const __m128i));
                        let qp = p.add(2 * GROUP + 32 * k);
                        let mut sums = [zero; T];
                        if fmt == Format::Q4_0 {
                            // chunk c: values 4c..4c+4 (low nibbles) and 16+4c.. (high)
                            // of each row; Σ(q − 8)·a = Σq·a − 8·Σa. AVX-VNNI: two 32-bit
                            // chains from −8·Σa; AVX2: pairs summed in 16 bits (a block's
                            // stay below 8·2·15·127 < 2^15), then to 32 bits
                            let (mut s0, mut s1) = ([zero; T], [zero; T]);
                            if $vnni {
                                for t in 0..T {
                                    s0[t] = _mm256_set1_epi32(-8 * a.s[t][$b]);
                                }
                            }
                            for c in 0..4 {
                                let v = _mm256_loadu_si256(qp.add(64 * c) as *const __m256i);
                                let lo = _mm256_and_si256(v, m4);
                                let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                                for t in 0..T {
                                    let ap = a.q[t].as_ptr().add($b * QA);
                                    let (x0, x1) = (bcast(ap, c), bcast(ap, 4 + c));
                                    if $vnni {
                                        s0[t] = dpbusd!($vnni, s0[t], lo, x0);
                                        s1[t] = dpbusd!($vnni, s1[t], hi, x1);
                                    } else {
                                        let both = _mm256_add_epi16(
                                            _mm256_maddubs_epi16(lo, x0),
                                            _mm256_maddubs_epi16(hi, x1),
                                        );
                                        s0[t] = _mm256_add_epi16(s0[t], both);
                                    }
                                }
                            }
                            for t in 0..T {
                                sums[t] = if $vnni {
                                    _mm256_add_epi32(s0[t], s1[t])
                                } else {
                                    let s = _mm256_madd_epi16(s0[t], ones);
                                    _mm256_add_epi32(s, _mm256_set1_epi32(-8 * a.s[t][$b]))
                                };
                            }
                        } else {
                            // chunk c: values 4c..4c+4 of each row; |w| times a signed by w
                            for c in 0..8 {
                                let w = _mm256_loadu_si256(qp.add(64 * c) as *const __m256i);
                                let aw = _mm256_sign_epi8(w, w);
                                for t in 0..T {
                                    let ap = a.q[t].as_ptr().add($b * QA);
                                    let x = _mm256_sign_epi8(bcast(ap, c), w);
                                    sums[t] = if $vnni {
                                        dpbusd!($vnni, sums[t], aw, x)
                                    } else {
                                        _mm256_add_epi32(sums[t], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, x), ones))
                                    };
                                }
                            }
                        }
                        for t in 0..T {
                            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(a.d[t][$b]));
                            acc[t][$h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[t]), scale, acc[t][$h]);
                        }
                    }};
                }
                even_odd_blocks!(nb, block);
                for t in 0..T {
                    _mm256_storeu_ps(r[t].as_mut_ptr().add(8 * k), _mm256_add_ps(acc[t][0], acc[t][1]));
                }
            }
        }
    };
}

/// `vpdpbusd` (unsigned × signed bytes, 4 a lane, added to `acc`) where `$vnni`; the
/// AVX2-only kernel never reaches it (its `$vnni` branches are constant false).
macro_rules! dpbusd {
    (true, $acc:expr, $u:expr, $s:expr) => {
        _mm256_dpbusd_avx_epi32($acc, $u, $s)
    };
    (false, $acc:expr, $u:expr, $s:expr) => {{
        let _ = ($u, $s);
        $acc
    }};
}

q8_group!(group, "avx2,fma,f16c", false);
q8_group!(group_vnni, "avx2,fma,f16c,avxvnni", true);

/// `$name`: [`vnni::group_q4k`] on AVX2 (`$features`; `$vnni`: with AVX-VNNI), each half of
/// the group (rows `8k..8k + 8`) in its own pass; per super-block and row (lane), each
/// sub-block's exact `Σ q·a` (`vpdpbusd` with AVX-VNNI, else `vpmaddubsw` with pairs
/// summed in 16 bits: 8·2·15·127 < 2^15), times its 6-bit scale; the mins times the
/// activations' sums; then the two fused multiply-adds of the scalar order.
macro_rules! q4k_group {
    ($name:ident, $features:literal, $vnni:tt) => {
        #[target_feature(enable = $features)]
        #[inline(never)] // kept out of `dot_groups`: inlined there, prefill ran slower
        pub(in super::super) unsafe fn $name<const T: usize, const PF: bool>(
            g: *const u8,
            nsb: usize,
            a: &QActs<T>,
            r: &mut [[f32; GROUP]; T],
        ) {
            let zero = _mm256_setzero_si256();
            let (m4, m63, m30) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(63), _mm256_set1_epi8(0x30));
            let ones = _mm256_set1_epi16(1);
            let bcast = |p: *const i8, i: usize| _mm256_set1_epi32((p as *const i32).add(i).read_unaligned());
            let load = |p: *const u8| _mm256_loadu_si256(p as *const __m256i);
            for k in 0..2 {
                let (mut sum, mut mins) = ([_mm256_setzero_ps(); T], [_mm256_setzero_ps(); T]);
                // the 16 rows' scales (sub-blocks 0..8), then mins, as bytes
                let mut sm = [0u8; 256];
                for sb in 0..nsb {
                    let p = g.add(sb * GROUP * 144);
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * k) as *const __m128i));
                    let dmin = _mm256_cvtph_ps(_mm_loadu_si128(p.add(32 + 16 * k) as *const __m128i));
                    // packed bytes 0..4, 4..8 and 8..12 of the 16 rows, 32 bytes at a time
                    for h in 0..2 {
                        let (q0, q4, q8) =
                            (load(p.add(64 + 32 * h)), load(p.add(128 + 32 * h)), load(p.add(192 + 32 * h)));
                        let sp = sm.as_mut_ptr().add(32 * h) as *mut __m256i;
                        let hi2 = |v: __m256i| _mm256_and_si256(_mm256_srli_epi16(v, 2), m30);
                        sp.write_unaligned(_mm256_and_si256(q0, m63));
                        sp.add(2).write_unaligned(_mm256_or_si256(_mm256_and_si256(q8, m4), hi2(q0)));
                        sp.add(4).write_unaligned(_mm256_and_si256(q4, m63));
                        let q8h = _mm256_and_si256(_mm256_srli_epi16(q8, 4), m4);
                        sp.add(6).write_unaligned(_mm256_or_si256(q8h, hi2(q4)));
                    }
                    // scale or min j of the half's 8 rows, one per lane
                    let lanes = |j: usize| {
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(sm.as_ptr().add(16 * j + 8 * k) as *const __m128i))
                    };
                    let qp = p.add(256 + 32 * k);
                    let mut isum = [zero; T];
                    for c in 0..4 {
                        if PF && k == 0 {
                            // a later super-block's lines (see `PREFETCH`); the second
                            // half's pass finds this one's in cache
                            for q in 0..9 {
                                _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH + 576 * c + 64 * q) as *const i8);
                            }
                        }
                        // quad q of chunk c: values 4q.. of sub-block 2c (low nibbles), of 2c+1 (high)
                        let (mut x0, mut x1) = ([zero; T], [zero; T]);
                        for q in 0..8 {
                            let v = load(qp.add(64 * (8 * c + q)));
                            let lo = _mm256_and_si256(v, m4);
                            let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                            for t in 0..T {
                                let ap = a.q[t].as_ptr().add(sb * 256 + 64 * c);
                                let (a0, a1) = (bcast(ap, q), bcast(ap, 8 + q));
                                if $vnni {
                                    x0[t] = dpbusd!($vnni, x0[t], lo, a0);
                                    x1[t] = dpbusd!($vnni, x1[t], hi, a1);
                                } else {
                                    x0[t] = _mm256_add_epi16(x0[t], _mm256_maddubs_epi16(lo, a0));
                                    x1[t] = _mm256_add_epi16(x1[t], _mm256_maddubs_epi16(hi, a1));
                                }
                            }
                        }
                        let (s0, s1) = (lanes(2 * c), lanes(2 * c + 1));
                        for t in 0..T {
                            let (y0, y1) = if $vnni {
                                (x0[t], x1[t])
                            } else {
                                (_mm256_madd_epi16(x0[t], ones), _mm256_madd_epi16(x1[t], ones))
                            };
                            let scaled = _mm256_add_epi32(_mm256_mullo_epi32(y0, s0), _mm256_mullo_epi32(y1, s1));
                            isum[t] = _mm256_add_epi32(isum[t], scaled);
                        }
                    }
                    let mut msum = [zero; T];
                    for j in 0..8 {
                        let m = lanes(8 + j);
                        for t in 0..T {
                            let bs = &a.s[t][16 * sb + 2 * j..];
                            msum[t] =
                                _mm256_add_epi32(msum[t], _mm256_mullo_epi32(m, _mm256_set1_epi32(bs[0] + bs[1])));
                        }
                    }
                    for t in 0..T {
                        let ad = _mm256_set1_ps(a.d[t][sb]);
                        sum[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, ad), sum[t]);
                        mins[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum[t]), _mm256_mul_ps(dmin, ad), mins[t]);
                    }
                }
                for t in 0..T {
                    _mm256_storeu_ps(r[t].as_mut_ptr().add(8 * k), _mm256_sub_ps(sum[t], mins[t]));
                }
            }
        }
    };
}

q4k_group!(group_q4k, "avx2,fma,f16c", false);
q4k_group!(group_q4k_vnni, "avx2,fma,f16c,avxvnni", true);

/// `$name`: [`vnni::group_q6k`] on AVX2 (`$features`; `$vnni`: with AVX-VNNI), each half of
/// the group (rows `8k..8k + 8`) in its own pass: per super-block and row (lane), each
/// 16-value sub-block's exact `Σ (q − 32)·a` (`vpdpbusd` with AVX-VNNI, else `vpmaddubsw`
/// with two products summed in 16 bits: 2·2·63·127 < 2^15), times its scale, then one
/// fused multiply-add as in the scalar order.
macro_rules! q6k_group {
    ($name:ident, $features:literal, $vnni:tt) => {
        #[target_feature(enable = $features)]
        #[inline(never)] // kept out of `dot_groups`: inlined there, prefill ran slower
        pub(in super::super) unsafe fn $name<const T: usize, const PF: bool>(
            g: *const u8,
            nsb: usize,
            a: &QActs<T>,
            r: &mut [[f32; GROUP]; T],
        ) {
            let ones = _mm256_set1_epi16(1);
            let bcast = |p: *const i8, i: usize| _mm256_set1_epi32((p as *const i32).add(i).read_unaligned());
            let load = |p: *const u8| _mm256_loadu_si256(p as *const __m256i);
            for k in 0..2 {
                let mut sum = [_mm256_setzero_ps(); T];
                for sb in 0..nsb {
                    let p = g.add(sb * GROUP * 210);
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * k) as *const __m128i));
                    let (scales, quads) = (p.add(32 + 8 * k), p.add(288 + 32 * k));
                    let mut isum = [_mm256_setzero_si256(); T];
                    for h in 0..2 {
                        for half in 0..2 {
                            if PF && k == 0 {
                                // a later super-block's lines, a quarter a pass (see `PREFETCH`)
                                for q in 0..14 {
                                    let line = p.wrapping_add(PREFETCH + 896 * (2 * h + half) + 64 * q);
                                    _mm_prefetch::<_MM_HINT_T1>(line as *const i8);
                                }
                            }
                            for j in 0..4 {
                                // quads 4·half.. of the 32 values of group j: values 128h + 32j + 4i..
                                // a loop, not `array::from_fn` (see `pass_512`)
                                let mut v = [_mm256_setzero_si256(); 4];
                                for (i, v) in v.iter_mut().enumerate() {
                                    let q = quads.add(192 * (8 * h + 4 * half + i));
                                    *v = q6_value(j, load(q), load(q.add(64)), load(q.add(128)));
                                }
                                let s = 8 * h + 2 * j + half;
                                let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(scales.add(16 * s) as *const __m128i));
                                for t in 0..T {
                                    let ap = a.q[t].as_ptr().add(sb * 256 + 16 * s);
                                    let pair = |i: usize| {
                                        let p16 = _mm256_add_epi16(
                                            _mm256_maddubs_epi16(v[i], bcast(ap, i)),
                                            _mm256_maddubs_epi16(v[i + 1], bcast(ap, i + 1)),
                                        );
                                        _mm256_madd_epi16(p16, ones)
                                    };
                                    let init = _mm256_set1_epi32(-32 * a.s[t][16 * sb + s]);
                                    let x = if $vnni {
                                        (0..4).fold(init, |x, i| dpbusd!($vnni, x, v[i], bcast(ap, i)))
                                    } else {
                                        _mm256_add_epi32(_mm256_add_epi32(init, pair(0)), pair(2))
                                    };
                                    isum[t] = _mm256_add_epi32(isum[t], _mm256_mullo_epi32(x, sc));
                                }
                            }
                        }
                    }
                    for t in 0..T {
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(a.d[t][sb]));
                        sum[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), scale, sum[t]);
                    }
                }
                for t in 0..T {
                    _mm256_storeu_ps(r[t].as_mut_ptr().add(8 * k), sum[t]);
                }
            }
        }
    };
}

q6k_group!(group_q6k, "avx2,fma,f16c", false);
q6k_group!(group_q6k_vnni, "avx2,fma,f16c,avxvnni", true);
