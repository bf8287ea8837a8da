//! f32 rows and f16/bf16 groups: the float formats' kernels.

use super::*;

/// A float format as a constant of the loops ([`F32`], [`F16`], [`BF16`]), so that each
/// format gets its own loop with no branch on the format inside.
const F32: u8 = 0;
const F16: u8 = 1;
const BF16: u8 = 2;

/// 8 weights as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8<const F: u8>(w: *const u8, i: usize) -> __m256 {
    match F {
        F32 => _mm256_loadu_ps(w.add(4 * i) as *const f32),
        F16 => _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * i) as *const __m128i)),
        _ => _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(w.add(2 * i) as *const __m128i)),
            16,
        )),
    }
}

/// Columns of one pass of [`float_rows`] (the tokens' activations of a chunk, 2 KiB a
/// token, stay in L1 while every row passes over them).
const CHUNK: usize = 512;

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn float<const T: usize>(isa: Isa, w: &[u8], x: &[&[f32]; T], r: &mut [f32; T]) {
    let mut out = [[0.0f32; GROUP]; T];
    float_rows::<T>(isa, w, 1, x, &mut out);
    for t in 0..T {
        r[t] = out[t][0];
    }
}

/// f32 rows: [`float_rows_512`] on AVX-512 for tiles of several tokens, else
/// [`float_rows_256`] (the same bits): at one token (decode, memory-bound) the 256-bit
/// loop measured a little faster, 5%.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn float_rows<const T: usize>(isa: Isa, w: &[u8], n: usize, x: &[&[f32]; T], r: &mut [[f32; GROUP]; T]) {
    if isa == Isa::Avx512Vnni && T > 1 {
        float_rows_512::<T>(w, n, x, r)
    } else {
        float_rows_256::<T>(w, n, x, r)
    }
}

/// 16 weights as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn load16<const F: u8>(w: *const u8, i: usize) -> __m512 {
    match F {
        F32 => _mm512_loadu_ps(w.add(4 * i) as *const f32),
        F16 => _mm512_cvtph_ps(_mm256_loadu_si256(w.add(2 * i) as *const __m256i)),
        _ => _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(w.add(2 * i) as *const __m256i)),
            16,
        )),
    }
}

/// The columns `c0..c1` (16 a step) of `R` rows (`R` weight pointers) into their
/// accumulators `acc[i][t]`: the rows share each load of a token's activations.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn pass_512<const T: usize, const R: usize, const F: u8>(
    wp: [*const u8; R],
    x: &[&[f32]; T],
    (c0, c1): (usize, usize),
    acc: &mut [[__m512; T]; R],
) {
    let mut a = *acc;
    let mut c = c0;
    while c < c1 {
        // a loop, not `array::from_fn`: std's function lacks this function's target
        // features, and in a build for plain x86-64 the closure was then called, not inlined
        let mut wv = [_mm512_setzero_ps(); R];
        for i in 0..R {
            wv[i] = load16::<F>(wp[i], c);
        }
        for t in 0..T {
            let xv = _mm512_loadu_ps(x[t].as_ptr().add(c));
            for i in 0..R {
                a[i][t] = _mm512_fmadd_ps(wv[i], xv, a[i][t]);
            }
        }
        c += 16;
    }
    *acc = a;
}

/// `res[i][t][r]` = row `r` of group `i` · token `t` of the packed tile `xp` (`[col][T]`)
/// for the first two groups of `groups` (the same group twice where it holds one), each
/// group `gb` bytes of f16/bf16 rows in the grouped layout: [`super::scalar::float_chain`]'s
/// chains, a vector lane per row.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn float_groups<const T: usize>(
    isa: Isa,
    fmt: Format,
    groups: &[u8],
    gb: usize,
    cols: usize,
    xp: &[f32],
    res: &mut [[[f32; GROUP]; T]; 2],
) {
    debug_assert!(groups.len() >= gb && gb >= GROUP * 2 * cols && xp.len() >= T * cols);
    let g0 = groups.as_ptr();
    let g1 = if groups.len() >= 2 * gb { g0.add(gb) } else { g0 };
    let xp = xp.as_ptr();
    match (isa, fmt) {
        (Isa::Avx512Vnni, Format::F16) => groups_512::<T, F16>(g0, g1, cols, xp, res),
        (Isa::Avx512Vnni, _) => groups_512::<T, BF16>(g0, g1, cols, xp, res),
        (_, Format::F16) => {
            group_256::<T, F16>(g0, cols, xp, &mut res[0]);
            group_256::<T, F16>(g1, cols, xp, &mut res[1]);
        }
        _ => {
            group_256::<T, BF16>(g0, cols, xp, &mut res[0]);
            group_256::<T, BF16>(g1, cols, xp, &mut res[1]);
        }
    }
}

/// [`float_groups`] on AVX-512: two groups' 16 rows a vector each, every token's
/// activation broadcast (`2T` accumulators).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn groups_512<const T: usize, const F: u8>(
    g0: *const u8,
    g1: *const u8,
    cols: usize,
    xp: *const f32,
    res: &mut [[[f32; GROUP]; T]; 2],
) {
    let mut acc = [[_mm512_setzero_ps(); T]; 2];
    for c in 0..cols {
        let (w0, w1) = (load16::<F>(g0, GROUP * c), load16::<F>(g1, GROUP * c));
        let p = xp.add(T * c);
        for t in 0..T {
            let b = _mm512_set1_ps(*p.add(t));
            acc[0][t] = _mm512_fmadd_ps(w0, b, acc[0][t]);
            acc[1][t] = _mm512_fmadd_ps(w1, b, acc[1][t]);
        }
    }
    for i in 0..2 {
        for t in 0..T {
            _mm512_storeu_ps(res[i][t].as_mut_ptr(), acc[i][t]);
        }
    }
}

/// [`float_groups`] of one group on AVX2: its 16 rows as two vectors of 8.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_256<const T: usize, const F: u8>(
    g: *const u8,
    cols: usize,
    xp: *const f32,
    res: &mut [[f32; GROUP]; T],
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    for c in 0..cols {
        let (lo, hi) = (load8::<F>(g, GROUP * c), load8::<F>(g, GROUP * c + 8));
        let p = xp.add(T * c);
        for t in 0..T {
            let b = _mm256_broadcast_ss(&*p.add(t));
            acc[t][0] = _mm256_fmadd_ps(lo, b, acc[t][0]);
            acc[t][1] = _mm256_fmadd_ps(hi, b, acc[t][1]);
        }
    }
    for t in 0..T {
        _mm256_storeu_ps(res[t].as_mut_ptr(), acc[t][0]);
        _mm256_storeu_ps(res[t].as_mut_ptr().add(8), acc[t][1]);
    }
}

/// Rows of one pass of [`pass_512`] (with six tokens, 24 accumulators of the 32 registers).
const ROWS_512: usize = 4;

/// [`float_rows_256`] on AVX-512: each pair's chain in one 512-bit register, four rows at
/// a time (24 accumulators with six tokens; the same bits; a quarter of the loads of
/// activations a multiply-add).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn float_rows_512<const T: usize>(w: &[u8], n: usize, x: &[&[f32]; T], r: &mut [[f32; GROUP]; T]) {
    let cols = x[0].len();
    let rb = w.len() / n.max(1);
    let main = cols / 16 * 16;
    // acc[row][t]
    let mut acc = [[_mm512_setzero_ps(); T]; GROUP];
    let wp = |i: usize| w.as_ptr().add(i * rb);
    let mut c0 = 0;
    while c0 < main {
        let c1 = (c0 + CHUNK).min(main);
        for g in (0..n).step_by(ROWS_512) {
            let m = ROWS_512.min(n - g);
            // `m` rows: each arm's conversion to `[_; m]` cannot fail
            let rows = &mut acc[g..g + m];
            let span = (c0, c1);
            match m {
                4 => pass_512::<T, 4, F32>([wp(g), wp(g + 1), wp(g + 2), wp(g + 3)], x, span, rows.try_into().unwrap()),
                3 => pass_512::<T, 3, F32>([wp(g), wp(g + 1), wp(g + 2)], x, span, rows.try_into().unwrap()),
                2 => pass_512::<T, 2, F32>([wp(g), wp(g + 1)], x, span, rows.try_into().unwrap()),
                _ => pass_512::<T, 1, F32>([wp(g)], x, span, rows.try_into().unwrap()),
            }
        }
        c0 = c1;
    }
    // lanes l and l + 8 added: the canonical 8 lanes
    let halves = |v: __m512| {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        _mm256_add_ps(_mm512_castps512_ps256(v), hi)
    };
    for i in 0..n {
        let row = &w[i * rb..(i + 1) * rb];
        for t in 0..T {
            r[t][i] = float_tail(row, x[t], main, halves(acc[i][t]));
        }
    }
}

/// [`float`] of `n` (≤ [`GROUP`]) consecutive rows (`w`: their bytes, concatenated):
/// `r[t][i] = row_i · x_t`, in the canonical order (each pair's 16-lane chain as two 8-lane
/// halves). The accumulators are kept in memory between chunks of [`CHUNK`] columns, and
/// every row passes over a chunk before the next.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_rows_256<const T: usize>(w: &[u8], n: usize, x: &[&[f32]; T], r: &mut [[f32; GROUP]; T]) {
    let cols = x[0].len();
    let rb = w.len() / n.max(1);
    let main = cols / 16 * 16;
    // acc[row][t]: the chain's lanes 0..8 and 8..16
    let mut acc = [[[_mm256_setzero_ps(); 2]; T]; GROUP];
    let mut c0 = 0;
    while c0 < main {
        let c1 = (c0 + CHUNK).min(main);
        for (i, acc) in acc.iter_mut().enumerate().take(n) {
            let wp = w.as_ptr().add(i * rb);
            let mut a = *acc;
            let mut c = c0;
            while c < c1 {
                for k in 0..2 {
                    let wv = load8::<F32>(wp, c + 8 * k);
                    for t in 0..T {
                        a[t][k] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[t].as_ptr().add(c + 8 * k)), a[t][k]);
                    }
                }
                c += 16;
            }
            *acc = a;
        }
        c0 = c1;
    }
    for (i, acc) in acc.iter().enumerate().take(n) {
        let row = &w[i * rb..(i + 1) * rb];
        for t in 0..T {
            r[t][i] = float_tail(row, x[t], main, _mm256_add_ps(acc[t][0], acc[t][1]));
        }
    }
}

/// The end of a row's canonical order: from the combined accumulator `s` (columns
/// `..main`), the columns left 8 at a time into it, its lanes summed, then the last ones.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_tail(row: &[u8], x: &[f32], main: usize, mut s: __m256) -> f32 {
    let cols = x.len();
    let mut j = main;
    while j + 8 <= cols {
        s = _mm256_fmadd_ps(load8::<F32>(row.as_ptr(), j), _mm256_loadu_ps(x.as_ptr().add(j)), s);
        j += 8;
    }
    let mut v = hsum8(s);
    for j in j..cols {
        let wj = f32::from_le_bytes([row[4 * j], row[4 * j + 1], row[4 * j + 2], row[4 * j + 3]]);
        v = wj.mul_add(x[j], v);
    }
    v
}
