//! Dot products of weight rows (any [`Format`]) with activations, for 1 to [`MAX_TILE`] tokens
//! at once, so that one read of a weight row serves every token of a decode batch.
//!
//! Quantized weights meet activations quantized once per matmul to 8 bits, as llama.cpp does it
//! (so that both engines compute the same quantities): ggml's `quantize_row_q8_0` (blocks of 32,
//! f16 scale) for Q8_0 and Q4_0 weights, `quantize_row_q8_K` (blocks of 256, f32 scale, sums of
//! 16) for the K-quants; the products are integers. f32 and f16 weights meet f32 activations, bf16
//! weights activations rounded to bf16 (as llama.cpp rounds them; [`bf16`]).
//!
//! Every instruction set computes the same bits, by one canonical order:
//! - Q8_0, Q4_0: the 32 products of block `b` are summed exactly (an integer); the sum, as f32, is
//!   added with a fused multiply-add by the block's scale `d_w·d_a` into one of two f32
//!   accumulators — even blocks into the first, odd blocks into the second, block after block —
//!   and the result is their sum. (Two chains, not one, so that a block need not wait for the
//!   previous one.)
//! - Q4_K, Q6_K: each 256-weight super-block's integer sum (sub-block scales included) is exact;
//!   it is added, as f32, with one fused multiply-add by `d·d_a`; Q4_K's mins likewise (their
//!   exact sum with the activations' sums, by `dmin·d_a`) into a second accumulator, subtracted
//!   at the end.
//! - f32: one chain of 16 lanes per row and token, lane `l` the fused multiply-adds of
//!   columns `16k + l`, `k` = 0, 1, … (the columns up to a multiple of 16); then lanes `l` and
//!   `l + 8` added, the columns left 8 at a time into those 8 lanes, the 8 lanes summed pairwise
//!   (`hsum8`), and the last columns one by one. (One chain a pair: on AVX-512 a tile of four rows
//!   and six tokens keeps its 24 accumulators in registers, where two chains a pair, measured,
//!   ran 20% slower.)
//! - f16: one fused multiply-add after the other, column by column, from 0 — a chain per row and
//!   token with no lanes to combine, so that sixteen rows stored column by column
//!   ([`to_groups`]) run as the sixteen lanes of a vector, each column's activation broadcast to
//!   them: the outer product BLAS kernels compute, which reads a vector of weights and an
//!   activation per 12 or 2 multiply-adds (the f16 matrices of a layer 1.2–1.6× faster than with
//!   the f32 order's tiles, BENCHMARKS.md).
//!   f32 keeps its order because its prompts take the `gemm` crate in ggml's row layout, which a
//!   training model's shared parameters must keep.
//! - bf16: one chain per row and token over column pairs, as `vdpbf16ps` adds them ([`bf16`]).
//!
//! On AVX-512 and AVX2 every format but f32 runs sixteen rows together in the [`to_groups`]
//! layout, one row per lane (AVX2: each half of the sixteen a pass), as llama.cpp's repacked x86
//! kernels do.
//!
//! AVX-512 VNNI (`vpdpbusd`), AVX2 (`vpmaddubsw` + `vpmaddwd`) and the scalar path all produce the
//! exact integers, so a result depends neither on the CPU, nor on the thread count, nor on how
//! many tokens share the tile.

#![allow(clippy::needless_range_loop)] // kernels index several per-token arrays by one token index

use super::{bf16, f16_to_f32, scale_min_k4, Format};
pub use crate::kernels::isa::{Isa, GROUP};
use crate::kernels::team;

/// Most tokens that share one pass over a weight row.
pub const MAX_TILE: usize = 4;
/// Most tokens that share one pass over float weights: twelve over grouped f16 rows on AVX-512,
/// and bf16 with AVX-512 BF16 ([`float_tile`]).
pub const FLOAT_TILE: usize = 12;

/// Tokens a tile of float rows of `fmt` takes on `isa`: grouped f16 rows ([`dot_float_groups`])
/// twelve on AVX-512, where two groups' accumulators for twelve tokens take 24 of the 32 registers,
/// six on AVX2 (12 of 16); grouped bf16 rows twelve with AVX-512 BF16, else four (8 accumulators
/// and a pair's four weight vectors); f32 rows ([`dot_float_rows`]) six on AVX-512 (four rows'
/// accumulators), else [`MAX_TILE`].
pub fn float_tile(isa: Isa, fmt: Format) -> usize {
    match (isa, uses_groups(isa, fmt), fmt) {
        (_, true, Format::BF16) if bf16_dot(isa) => FLOAT_TILE,
        (_, true, Format::BF16) => 4,
        (Isa::Avx512Vnni, true, _) => FLOAT_TILE,
        (Isa::Avx512Vnni, false, _) | (Isa::Avx2 | Isa::AvxVnni, true, _) => 6,
        _ => MAX_TILE,
    }
}

/// Whether `isa` runs bf16 pairs on AVX-512 BF16's `vdpbf16ps` (detected on this CPU).
pub fn bf16_dot(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    return isa == Isa::Avx512Vnni && bf16::x86::has_bf16_dot();
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// Activation block length.
pub const QA: usize = 32;

/// How activations are prepared for a weight format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ActKind {
    /// f32 as given (f32, f16 weights).
    #[default]
    F32,
    /// Rounded to bf16 (bf16 weights: [`bf16`]).
    Bf16,
    /// Blocks of 32, f16 scale, with each block's sum (Q8_0, Q4_0 weights).
    Q8_0,
    /// Blocks of 256, f32 scale, with sums of 16 (Q4_K, Q6_K weights).
    Q8K,
}

impl ActKind {
    pub fn for_format(fmt: Format) -> ActKind {
        match fmt {
            Format::F32 | Format::F16 => ActKind::F32,
            Format::BF16 => ActKind::Bf16,
            Format::Q8_0 | Format::Q4_0 => ActKind::Q8_0,
            Format::Q4K | Format::Q6K => ActKind::Q8K,
        }
    }

    /// Activations per scale.
    pub fn block(self) -> usize {
        match self {
            ActKind::F32 | ActKind::Bf16 => 1,
            ActKind::Q8_0 => QA,
            ActKind::Q8K => 256,
        }
    }

    /// Activations per stored sum.
    fn sum_block(self) -> usize {
        match self {
            ActKind::Q8K => 16,
            _ => QA,
        }
    }
}

/// Activations of `n` tokens prepared for one matmul: f32 as given for f32/f16/bf16 weights, or
/// 8-bit blocks (value `d·q`) with their sums for quantized weights.
#[derive(Default)]
pub struct Activations {
    pub n: usize,
    pub cols: usize,
    pub kind: ActKind,
    /// Float kind: token `t`'s activations at `f[t * f_stride..][..cols]`.
    pub f: Vec<f32>,
    /// A cache line more than a row: rows of 2^k floats would otherwise all fall in the same L1
    /// sets, where a tile's tokens and the weight rows beside them can overflow the ways.
    pub f_stride: usize,
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub sum: Vec<i32>,
    /// Float kind, for grouped f16/bf16 weights ([`dot_float_groups`]): the tokens in tiles of
    /// `packed_tile` (the last one shorter), tile `j` at `packed[j · packed_tile · cols..]`
    /// column-major (`[col][token]`), so that a column's activations of every token of the tile
    /// lie together. `packed_tile` is 0 where not prepared.
    pub packed: Vec<f32>,
    pub packed_tile: usize,
    /// Bf16 kind: token `t`'s rounded activations at `h[t · cols'..][..cols]`, `cols'` the column
    /// count rounded up to even (a zero after an odd count), and the packed tiles as `packed` is
    /// packed (`[pair][token]`): for `vdpbf16ps` in `pairs`, a pair of rounded activations a `u32`
    /// (the even column in the low half), else in `packed`, each pair as two f32 (even, odd); with
    /// whether each tile's values are all [`bf16::plain`].
    pub h: Vec<u16>,
    pub pairs: Vec<u32>,
    pub plain_tiles: Vec<bool>,
    /// `0..n`, the token indices the matmuls tile (kept, so that a decode step allocates nothing).
    pub toks: Vec<usize>,
}

impl Activations {
    /// Token `t`'s activations (float kind).
    pub fn row(&self, t: usize) -> &[f32] {
        &self.f[t * self.f_stride..][..self.cols]
    }

    /// Token `t`'s activations rounded to bf16 (Bf16 kind).
    pub fn bf16_row(&self, t: usize) -> &[u16] {
        let hs = self.cols.next_multiple_of(2);
        &self.h[t * hs..][..hs]
    }

    /// Whether these are `n` tokens of `cols` prepared for `fmt` weights on this CPU.
    pub fn prepared_for(&self, n: usize, cols: usize, fmt: Format) -> bool {
        let packed = self.packed_tile > 0 || !packs(Isa::detect(), fmt, cols);
        self.n == n && self.cols == cols && self.kind == ActKind::for_format(fmt) && packed
    }

    /// Prepares `x` (`[n, cols]`) for weights of format `fmt`, reusing the buffers.
    pub fn prepare(&mut self, x: &[f32], n: usize, cols: usize, fmt: Format) {
        self.prepare_isa(Isa::detect(), x, n, cols, fmt)
    }

    /// [`prepare`](Self::prepare) for the kernels of `isa`.
    pub fn prepare_isa(&mut self, isa: Isa, x: &[f32], n: usize, cols: usize, fmt: Format) {
        self.n = n;
        self.cols = cols;
        self.kind = ActKind::for_format(fmt);
        self.packed_tile = 0;
        self.toks.clear();
        self.toks.extend(0..n);
        let x = &x[..n * cols];
        let packing = packs(isa, fmt, cols);
        let tile = if packing { float_tile(isa, fmt) } else { MAX_TILE };
        self.packed_tile = if packing { tile } else { 0 };
        if self.kind == ActKind::F32 {
            let fs = cols + 16;
            self.f_stride = fs;
            self.f.resize(n * fs, 0.0);
            self.packed.resize(if packing { n * cols } else { 0 }, 0.0);
            let mut packed = self.packed.chunks_mut(tile * cols);
            let work = x
                .chunks(tile * cols)
                .zip(self.f.chunks_mut(tile * fs))
                .map(|(x, f)| (x, f, packed.next().unwrap_or(&mut [])));
            per_tile(work, n * cols, &|_, (x, f, p): &mut (&[f32], &mut [f32], &mut [f32])| {
                let len = x.len() / cols;
                for (t, x) in x.chunks_exact(cols).enumerate() {
                    f[t * fs..][..cols].copy_from_slice(x);
                    if !p.is_empty() {
                        x.iter().enumerate().for_each(|(c, &v)| p[c * len + t] = v);
                    }
                }
            });
            return;
        }
        if self.kind == ActKind::Bf16 {
            let (hs, np) = (cols.next_multiple_of(2), cols / 2);
            if hs != cols {
                self.h.clear(); // the zero after an odd count
            }
            self.h.resize(n * hs, 0);
            // `vdpbf16ps` broadcasts a pair as one u32; the FMA kernel each value as an f32
            let hardware = bf16_dot(isa);
            self.pairs.resize(if packing && hardware { n * np } else { 0 }, 0);
            self.packed.resize(if packing && !hardware { n * cols } else { 0 }, 0.0);
            self.plain_tiles.clear();
            self.plain_tiles.resize(n.div_ceil(tile), true);
            let mut pairs = self.pairs.chunks_mut(tile * np);
            let mut floats = self.packed.chunks_mut(tile * cols);
            let work = x.chunks(tile * cols).zip(self.h.chunks_mut(tile * hs)).zip(self.plain_tiles.iter_mut()).map(
                |((x, h), plain)| (x, h, pairs.next().unwrap_or(&mut []), floats.next().unwrap_or(&mut []), plain),
            );
            type Tile<'a> = (&'a [f32], &'a mut [u16], &'a mut [u32], &'a mut [f32], &'a mut bool);
            per_tile(work, n * cols, &|_, (x, h, p, f, plain): &mut Tile| {
                let len = x.len() / cols;
                for (t, x) in x.chunks_exact(cols).enumerate() {
                    let h = &mut h[t * hs..][..cols];
                    h.iter_mut().zip(x).for_each(|(h, &x)| *h = bf16::round_activation(x));
                    **plain &= h.iter().all(|&v| bf16::plain(v));
                    // (packed only for an even count; into one of the two)
                    let (to_pairs, to_floats) = (!p.is_empty(), !f.is_empty());
                    for (j, v) in h.chunks_exact(2).enumerate() {
                        let at = j * len + t;
                        if to_pairs {
                            p[at] = v[0] as u32 | (v[1] as u32) << 16;
                        }
                        if to_floats {
                            f[2 * at] = f32::from_bits((v[0] as u32) << 16);
                            f[2 * at + 1] = f32::from_bits((v[1] as u32) << 16);
                        }
                    }
                }
            });
            return;
        }
        let (bl, sl) = (self.kind.block(), self.kind.sum_block());
        debug_assert_eq!(cols % bl, 0);
        self.q.resize(n * cols, 0);
        self.d.resize(n * cols / bl, 0.0);
        self.sum.resize(n * cols / sl, 0);
        let kind = self.kind;
        let rows = x
            .chunks_exact(cols)
            .zip(self.q.chunks_exact_mut(cols))
            .zip(self.d.chunks_exact_mut(cols / bl))
            .zip(self.sum.chunks_exact_mut(cols / sl))
            .map(|(((x, q), d), s)| (x, q, d, s));
        let quantize = |_: usize, (x, q, d, sum): &mut (&[f32], &mut [i8], &mut [f32], &mut [i32])| {
            for ((xs, qs), d) in x.chunks_exact(bl).zip(q.chunks_exact_mut(bl)).zip(d.iter_mut()) {
                *d = match kind {
                    ActKind::Q8_0 => quantize_q8_0(xs, qs),
                    _ => quantize_q8_k(xs, qs),
                };
            }
            for (s, qs) in sum.iter_mut().zip(q.chunks_exact(sl)) {
                *s = qs.iter().map(|&v| v as i32).sum();
            }
        };
        // tokens in parallel where there are enough of them to pay for the hand-off (a decode
        // batch's 16 × 2048 values take 8 µs on one core, longer on two)
        per_tile(rows, n * cols, &quantize);
    }
}

/// Values of a batch's activations from which [`Activations::prepare`] quantizes tokens in
/// parallel.
const PARALLEL_VALUES: usize = 1 << 17;

/// `f(i, &mut item_i)` for every tile's work, in parallel for a batch of `values` of at least
/// [`PARALLEL_VALUES`] (each item is its own tokens: the same bits either way); a smaller batch
/// (a decode step) on the calling thread, without collecting the items (no allocation).
fn per_tile<T: Send>(items: impl Iterator<Item = T>, values: usize, f: &(dyn Fn(usize, &mut T) + Sync)) {
    if values >= PARALLEL_VALUES {
        team::for_each_mut(&mut items.collect::<Vec<T>>(), f);
    } else {
        items.enumerate().for_each(|(i, mut it)| f(i, &mut it));
    }
}

/// ggml-cpu's x86 `quantize_row_q8_0` of one block (the activations llama.cpp's matmuls see:
/// multiplier 127/amax, ties rounded to even — unlike the weights' reference quantizer, which
/// divides by the f32 scale and rounds ties away from zero); returns the scale as stored (f16).
fn quantize_q8_0(xs: &[f32], qs: &mut [i8]) -> f32 {
    // fixed lengths, so that the compiler vectorizes every step
    let (Ok(xs), Ok(qs)) = (<&[f32; QA]>::try_from(xs), <&mut [i8; QA]>::try_from(qs)) else {
        unreachable!("Q8_0 activation blocks are {QA} long")
    };
    let amax = abs_max(xs);
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for l in 0..QA {
        // round half to even by the 1.5·2²³ trick (exact for |x| ≤ 2²²; here |x| ≤ 127): the
        // integer is the sum's low mantissa bits — `round_ties_even` (a library call per value in
        // a build without SSE4.1), with no saturating float-to-int conversion (which the compiler
        // does not vectorize); NaN gives 0, as `as i8` did
        let x = xs[l] * id;
        let i = ((x + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000;
        qs[l] = if x.is_nan() { 0 } else { i as i8 };
    }
    f16_to_f32(super::f32_to_f16(amax / 127.0))
}

/// The largest `|x|` (0 for none; NaNs ignored, as `f32::max` does), in 16 lanes halved to
/// one: max is exact in any order, and a serial fold waits on each comparison. A comparison
/// with NaN is false, which ignores NaNs without `f32::max`'s handling (not vectorized).
fn abs_max(xs: &[f32]) -> f32 {
    let max = |a: f32, b: f32| if b > a { b } else { a };
    let mut m = [0.0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(0.0f32, |m, v| max(m, v.abs()));
    for c in chunks {
        for l in 0..16 {
            m[l] = max(m[l], c[l].abs());
        }
    }
    for l in 0..8 {
        m[l] = max(m[l], m[l + 8]);
    }
    for l in 0..4 {
        m[l] = max(m[l], m[l + 4]);
    }
    max(tail, max(max(m[0], m[2]), max(m[1], m[3])))
}

/// ggml's `quantize_row_q8_K_ref` of one block of 256; returns the scale (f32).
fn quantize_q8_k(xs: &[f32], qs: &mut [i8]) -> f32 {
    // ggml keeps the first value of the largest magnitude (a later -x does not replace x)
    let amax = abs_max(xs);
    if amax == 0.0 {
        qs.fill(0);
        return 0.0;
    }
    let max = xs.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
    let iscale = -127.0 / max;
    for l in 0..qs.len().min(xs.len()) {
        qs[l] = super::nearest_int(iscale * xs[l]).min(127) as i8;
    }
    1.0 / iscale
}

/// Whether `isa` reads `fmt` matrices in groups of [`GROUP`] rows ([`to_groups`]) rather than in
/// ggml's row layout: every format but f32 on AVX2 and AVX-512.
pub fn uses_groups(isa: Isa, fmt: Format) -> bool {
    isa != Isa::Scalar && fmt != Format::F32
}

/// Whether `isa` reads `fmt` matrices of `cols` columns grouped: as [`uses_groups`], bf16 only with
/// an even column count (its groups hold column pairs).
pub fn groups_cols(isa: Isa, fmt: Format, cols: usize) -> bool {
    uses_groups(isa, fmt) && (fmt != Format::BF16 || cols.is_multiple_of(2))
}

/// Whether activations for grouped float weights are packed in tiles.
fn packs(isa: Isa, fmt: Format, cols: usize) -> bool {
    !fmt.is_quantized() && groups_cols(isa, fmt, cols)
}

/// The pieces of one block of `fmt` in the order the grouped layout stores them, each as
/// `(offset in ggml's block, length)`: the order in which the kernels read them, so that a group
/// is read front to back (the hardware prefetcher follows it).
fn group_chunks(fmt: Format) -> Vec<(usize, usize)> {
    let quads = |off: usize, n: usize| (0..n).map(move |q| (off + 4 * q, 4));
    match fmt {
        Format::Q8_0 => [(0, 2)].into_iter().chain(quads(2, 8)).collect(),
        Format::Q4_0 => [(0, 2)].into_iter().chain(quads(2, 4)).collect(),
        // d, dmin, the 12 bytes of packed 6-bit scales and mins, the quants
        Format::Q4K => [(0, 2), (2, 2)].into_iter().chain((4..16).map(|i| (i, 1))).chain(quads(16, 32)).collect(),
        // d, the 16 scales, then per quad of values 4k.. of a 128-value half h: the low 4 bits
        // of the values 128h + 4k.. and of 128h + 32 + 4k.. (their high nibbles are the values
        // 64 further on), and the high 2 bits of all four
        Format::Q6K => {
            let quad = |h: usize, k: usize| [(64 * h + 4 * k, 4), (64 * h + 32 + 4 * k, 4), (128 + 32 * h + 4 * k, 4)];
            let values = (0..2).flat_map(|h| (0..8).flat_map(move |k| quad(h, k)));
            [(208, 2)].into_iter().chain((192..208).map(|i| (i, 1))).chain(values).collect()
        }
        // column by column: the 16 rows' values of a column in one vector
        Format::F16 => vec![(0, 2)],
        // (bf16: column pairs, `bf16::to_pairs`)
        Format::F32 | Format::BF16 => Vec::new(),
    }
}

/// [`GROUP`] rows (ggml's layout, concatenated) interleaved for the vector kernels (not
/// re-quantized: the same bytes rearranged, the same size; f16/bf16: column by column, the 16
/// rows' values of a column together). Block by block, piece by piece
/// ([`group_chunks`]): the piece of every row of the group in row order. So the 16
/// rows' f16 scales lie together, and one 64-byte load gives 4 quant bytes of each row (Q8_0: 4
/// values; Q4_0: values `4c..4c+4` in the low nibbles and `16+4c..` in the high), one row per
/// 32-bit lane.
pub fn to_groups(fmt: Format, rows: &[u8]) -> Vec<u8> {
    let (bb, rb) = (fmt.block_bytes(), rows.len() / GROUP);
    if fmt == Format::BF16 {
        return bf16::to_pairs(rows, GROUP);
    }
    if fmt == Format::F16 {
        // the same as the loop below, a value at a time (a 1.1B model's f16 loads in a second)
        let mut out = vec![0u8; rows.len()];
        for (r, row) in rows.chunks_exact(rb).enumerate() {
            for (c, v) in row.chunks_exact(2).enumerate() {
                out[2 * (GROUP * c + r)..][..2].copy_from_slice(v);
            }
        }
        return out;
    }
    let mut out = Vec::with_capacity(rows.len());
    let chunks = group_chunks(fmt);
    for b in 0..rb / bb {
        for &(off, len) in &chunks {
            (0..GROUP).for_each(|r| out.extend_from_slice(&rows[r * rb + b * bb + off..][..len]));
        }
    }
    out
}

/// The inverse of [`to_groups`]: the group's rows in ggml's layout, concatenated.
pub fn from_groups(fmt: Format, group: &[u8]) -> Vec<u8> {
    if fmt == Format::BF16 {
        return bf16::from_pairs(group, GROUP);
    }
    let (bb, rb) = (fmt.block_bytes(), group.len() / GROUP);
    let mut out = vec![0u8; group.len()];
    let mut at = 0;
    let chunks = group_chunks(fmt);
    for b in 0..rb / bb {
        for &(off, len) in &chunks {
            for r in 0..GROUP {
                out[r * rb + b * bb + off..][..len].copy_from_slice(&group[at..at + len]);
                at += len;
            }
        }
    }
    out
}

/// `out[t] = w_row · act_t` for the tokens `toks` (at most [`MAX_TILE`]); `w_row` in ggml's layout.
pub fn dot_row(isa: Isa, fmt: Format, w: &[u8], acts: &Activations, toks: &[usize], out: &mut [f32]) {
    debug_assert!(toks.len() <= MAX_TILE && out.len() >= toks.len());
    match toks.len() {
        1 => dot_tile::<1>(isa, fmt, w, acts, toks, out),
        2 => dot_tile::<2>(isa, fmt, w, acts, toks, out),
        3 => dot_tile::<3>(isa, fmt, w, acts, toks, out),
        4 => dot_tile::<4>(isa, fmt, w, acts, toks, out),
        _ => {}
    }
}

fn dot_tile<const T: usize>(isa: Isa, fmt: Format, w: &[u8], acts: &Activations, toks: &[usize], out: &mut [f32]) {
    let mut r = [0.0f32; T];
    if fmt.is_quantized() {
        let a = QActs::<T>::of(fmt, acts, toks);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa` values other than Scalar are only produced after the CPU was checked.
            Isa::Avx512Vnni => unsafe { x86::vnni::quant::<T>(fmt, w, &a, &mut r) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::AvxVnni => unsafe { x86::avx2::quant::<T>(fmt, w, &a, &mut r) },
            _ => scalar::quant::<T>(fmt, w, &a, &mut r),
        }
    } else {
        let x: [&[f32]; T] = std::array::from_fn(|t| if fmt == Format::BF16 { &[][..] } else { acts.row(toks[t]) });
        match isa {
            _ if fmt == Format::BF16 => (0..T).for_each(|t| r[t] = bf16::chain(w, acts.bf16_row(toks[t]))),
            _ if fmt == Format::F16 => (0..T).for_each(|t| r[t] = scalar::float_chain(w, x[t])),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni | Isa::Avx2 | Isa::AvxVnni => unsafe { x86::float::<T>(isa, w, &x, &mut r) },
            _ => scalar::float::<T>(w, &x, &mut r),
        }
    }
    out[..T].copy_from_slice(&r);
}

/// `out(i, res)` for each group `i` of `groups` (consecutive groups of [`GROUP`] rows in the
/// [`to_groups`] layout, where [`uses_groups`]), `res[k][r]` = row `r` of the group · act
/// `toks[k]` for the tokens `toks` (at most [`MAX_TILE`]): the same bits as [`dot_row`] on each
/// row. The tile's activations are looked up once for all the groups. With `prefetch`, the
/// kernels ask for the lines `PREFETCH` bytes (9 KiB) ahead of their reads: for the pass that
/// brings the weights from memory (their loop is too short between loads for the hardware
/// prefetcher alone); later passes over the same rows find them in cache.
pub fn dot_groups(
    isa: Isa,
    fmt: Format,
    groups: &[u8],
    acts: &Activations,
    toks: &[usize],
    prefetch: bool,
    out: &mut impl FnMut(usize, &[[f32; GROUP]]),
) {
    let gb = GROUP * fmt.row_bytes(acts.cols).unwrap_or(0);
    let fits = toks.len() <= MAX_TILE && gb > 0 && groups.len().is_multiple_of(gb);
    assert!(uses_groups(isa, fmt) && fmt.is_quantized() && fits);
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! run {
            ($t:literal, $pf:literal) => {{
                let a = QActs::<$t>::of(fmt, acts, toks);
                let nb = acts.cols / fmt.block_len();
                for (i, group) in groups.chunks_exact(gb).enumerate() {
                    let mut res = [[0.0f32; GROUP]; $t];
                    // SAFETY: `uses_groups` holds only for AVX-512 VNNI or AVX2 (± AVX-VNNI), detected on this
                    // CPU; the group's length is checked above and the activations' in `QActs::of`.
                    unsafe {
                        let g = group.as_ptr();
                        match (isa, fmt) {
                            (Isa::Avx2, Format::Q4K) => x86::avx2::group_q4k::<$t, $pf>(g, nb, &a, &mut res),
                            (Isa::Avx2, Format::Q6K) => x86::avx2::group_q6k::<$t, $pf>(g, nb, &a, &mut res),
                            (Isa::AvxVnni, Format::Q4K) => x86::avx2::group_q4k_vnni::<$t, $pf>(g, nb, &a, &mut res),
                            (Isa::AvxVnni, Format::Q6K) => x86::avx2::group_q6k_vnni::<$t, $pf>(g, nb, &a, &mut res),
                            (Isa::Avx2, _) => x86::avx2::group::<$t, $pf>(fmt, g, nb, &a, &mut res),
                            (Isa::AvxVnni, _) => x86::avx2::group_vnni::<$t, $pf>(fmt, g, nb, &a, &mut res),
                            (_, Format::Q4K) => x86::vnni::group_q4k::<$t, $pf>(g, nb, &a, &mut res),
                            (_, Format::Q6K) => x86::vnni::group_q6k::<$t, $pf>(g, nb, &a, &mut res),
                            _ => x86::vnni::group::<$t, $pf>(fmt, g, nb, &a, &mut res),
                        }
                    };
                    out(i, &res);
                }
            }};
        }
        // the prefetch a constant of the kernels: a branch on it made the other passes slower
        match (toks.len(), prefetch) {
            (1, true) => run!(1, true),
            (1, false) => run!(1, false),
            (2, true) => run!(2, true),
            (2, false) => run!(2, false),
            (3, true) => run!(3, true),
            (3, false) => run!(3, false),
            (4, true) => run!(4, true),
            (4, false) => run!(4, false),
            _ => {}
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (out, prefetch);
}

/// `out[k][i] = row_i · act_{toks[k]}` for `n` (≤ [`GROUP`]) consecutive float rows in ggml's
/// layout (`rows`: their bytes, concatenated) and the tokens `toks` (at most [`float_tile`]): the
/// same bits as [`dot_row`] on each row. f32: the columns taken a chunk at a time for all rows, so
/// that the tokens' activations are read from L1 rather than once a row from L2. f16/bf16 (rows of
/// a group that is not full, or any on the scalar path): the plain chains.
pub fn dot_float_rows(
    isa: Isa,
    fmt: Format,
    rows: &[u8],
    n: usize,
    acts: &Activations,
    toks: &[usize],
    out: &mut [[f32; GROUP]],
) {
    assert!(!fmt.is_quantized() && n <= GROUP && toks.len() <= float_tile(isa, fmt).min(out.len()));
    let rb = rows.len() / n.max(1);
    if fmt != Format::F32 {
        // the rows of a group that is not full (grouped f16/bf16 rows take `dot_float_groups`)
        for (k, &t) in toks.iter().enumerate() {
            for (i, row) in rows.chunks_exact(rb).take(n).enumerate() {
                out[k][i] = match fmt {
                    Format::BF16 => bf16::chain(row, acts.bf16_row(t)),
                    _ => scalar::float_chain(row, acts.row(t)),
                };
            }
        }
        return;
    }
    macro_rules! run {
        ($t:literal) => {{
            let x: [&[f32]; $t] = std::array::from_fn(|t| acts.row(toks[t]));
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512Vnni | Isa::Avx2 | Isa::AvxVnni => {
                    let mut res = [[0.0f32; GROUP]; $t];
                    // SAFETY: `Isa` values other than Scalar are only produced after the CPU was checked.
                    unsafe { x86::float_rows::<$t>(isa, &rows[..n * rb], n, &x, &mut res) };
                    out[..$t].copy_from_slice(&res);
                }
                _ => {
                    for i in 0..n {
                        let mut r = [0.0f32; $t];
                        scalar::float::<$t>(&rows[i * rb..(i + 1) * rb], &x, &mut r);
                        (0..$t).for_each(|k| out[k][i] = r[k]);
                    }
                }
            }
        }};
    }
    match toks.len() {
        1 => run!(1),
        2 => run!(2),
        3 => run!(3),
        4 => run!(4),
        5 => run!(5),
        6 => run!(6),
        _ => {}
    }
}

/// `$run!(T)` with the tile length `$n` (1 to [`FLOAT_TILE`]) as a constant.
#[cfg(target_arch = "x86_64")]
macro_rules! for_tile_len {
    ($n:expr, $run:ident) => {
        match $n {
            1 => $run!(1),
            2 => $run!(2),
            3 => $run!(3),
            4 => $run!(4),
            5 => $run!(5),
            6 => $run!(6),
            7 => $run!(7),
            8 => $run!(8),
            9 => $run!(9),
            10 => $run!(10),
            11 => $run!(11),
            12 => $run!(12),
            _ => {}
        }
    };
}

/// `out(i, res)` for each group `i` of `groups` (consecutive groups of [`GROUP`] f16/bf16 rows in
/// the [`to_groups`] layout: column after column — bf16: column pair after pair — the group's 16
/// values of a column together), `res[k][r]` = row `r` of the group · act `toks[k]`: one chain per
/// row and token, in the format's canonical order, as [`dot_row`] computes it (`plain_weights`:
/// the group's bf16 values are all [`bf16::plain`]). `toks` is one tile of the activations'
/// packing ([`Activations::packed`]). The 16 rows of a column are one vector, and a token's
/// activation of the column is broadcast to it (the outer product BLAS kernels compute): two
/// groups and twelve tokens take 24 vector registers on AVX-512, and every load of weights or
/// activations serves 12 or 2 multiply-adds.
pub fn dot_float_groups(
    isa: Isa,
    fmt: Format,
    groups: &[u8],
    acts: &Activations,
    toks: &[usize],
    plain_weights: bool,
    out: &mut impl FnMut(usize, &[[f32; GROUP]]),
) {
    let (cols, t0, tile) = (acts.cols, toks[0], acts.packed_tile);
    let gb = GROUP * fmt.row_bytes(cols).unwrap_or(0);
    let whole_tile = tile > 0 && t0.is_multiple_of(tile) && toks.len() == tile.min(acts.n - t0);
    let fits =
        whole_tile && toks.iter().enumerate().all(|(k, &t)| t == t0 + k) && groups.len().is_multiple_of(gb.max(1));
    assert!(packs(isa, fmt, cols) && gb > 0 && fits, "float groups: not a packed tile");
    if fmt == Format::BF16 {
        return bf16_groups(isa, groups, gb, acts, toks, plain_weights, out);
    }
    let xp = &acts.packed[t0 * cols..][..toks.len() * cols];
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! run {
            ($t:literal) => {{
                let mut res = [[[0.0f32; GROUP]; $t]; 2];
                for (i, two) in groups.chunks(2 * gb).enumerate() {
                    // SAFETY: `uses_groups` holds only for AVX-512 VNNI or AVX2 (± AVX-VNNI), detected on this
                    // CPU; the groups' and the tile's lengths are checked above.
                    unsafe { x86::float_groups::<$t>(isa, fmt, two, gb, cols, xp, &mut res) };
                    out(2 * i, &res[0]);
                    if two.len() == 2 * gb {
                        out(2 * i + 1, &res[1]);
                    }
                }
            }};
        }
        for_tile_len!(toks.len(), run);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (out, xp);
}

/// [`dot_float_groups`] of bf16 groups (pair layout, [`bf16`]): `vdpbf16ps` where the CPU has it,
/// else fused multiply-adds where the weights (`plain_weights`) and the tile's activations are
/// [`bf16::plain`], else the scalar chain with its flushes.
fn bf16_groups(
    isa: Isa,
    groups: &[u8],
    gb: usize,
    acts: &Activations,
    toks: &[usize],
    plain_weights: bool,
    out: &mut impl FnMut(usize, &[[f32; GROUP]]),
) {
    let (np, t0) = (acts.cols / 2, toks[0]);
    let hardware = bf16_dot(isa);
    let xp = if hardware { &acts.pairs[t0 * np..][..toks.len() * np] } else { &[][..] };
    let xf = if hardware { &[][..] } else { &acts.packed[t0 * 2 * np..][..toks.len() * 2 * np] };
    let plain = plain_weights && acts.plain_tiles[t0 / acts.packed_tile];
    #[cfg(target_arch = "x86_64")]
    if hardware || plain {
        macro_rules! run {
            ($t:literal) => {{
                let mut res = [[[0.0f32; GROUP]; $t]; 2];
                for (i, two) in groups.chunks(2 * gb).enumerate() {
                    let g0 = two.as_ptr();
                    let g1 = if two.len() == 2 * gb { g0.wrapping_add(gb) } else { g0 };
                    // SAFETY: `bf16_dot` holds only where AVX-512 BF16 was detected, and `packs`
                    // only on AVX2 or AVX-512 (with AVX2); each group is `gb` = 16 rows of `np`
                    // pairs (64 bytes a pair), the tile `$t · np` pairs (checked above).
                    unsafe {
                        if hardware {
                            bf16::x86::groups_512::<$t>(g0, g1, np, xp.as_ptr(), &mut res);
                        } else {
                            bf16::x86::group_256::<$t>(g0, np, xf.as_ptr(), &mut res[0]);
                            bf16::x86::group_256::<$t>(g1, np, xf.as_ptr(), &mut res[1]);
                        }
                    }
                    out(2 * i, &res[0]);
                    if two.len() == 2 * gb {
                        out(2 * i + 1, &res[1]);
                    }
                }
            }};
        }
        for_tile_len!(toks.len(), run);
        return;
    }
    let _ = (hardware, plain, xp, xf);
    let rb = gb / GROUP;
    let mut res = [[0.0f32; GROUP]; FLOAT_TILE];
    for (i, g) in groups.chunks_exact(gb).enumerate() {
        let rows = bf16::from_pairs(g, GROUP);
        for (k, &t) in toks.iter().enumerate() {
            for (r, row) in rows.chunks_exact(rb).enumerate() {
                res[k][r] = bf16::chain(row, acts.bf16_row(t));
            }
        }
        out(i, &res[..toks.len()]);
    }
}

/// Quantized activations of the tokens of one tile.
struct QActs<'a, const T: usize> {
    q: [&'a [i8]; T],
    d: [&'a [f32]; T],
    s: [&'a [i32]; T],
}

impl<'a, const T: usize> QActs<'a, T> {
    /// The tokens `toks` of `acts`, prepared for `fmt` (a quantized format).
    fn of(fmt: Format, acts: &'a Activations, toks: &[usize]) -> Self {
        assert_eq!(acts.kind, ActKind::for_format(fmt), "activations prepared for another format");
        let cols = acts.cols;
        let (nb, ns) = (cols / acts.kind.block(), cols / acts.kind.sum_block());
        let q = std::array::from_fn(|t| &acts.q[toks[t] * cols..][..cols]);
        let d = std::array::from_fn(|t| &acts.d[toks[t] * nb..][..nb]);
        let s = std::array::from_fn(|t| &acts.sum[toks[t] * ns..][..ns]);
        QActs { q, d, s }
    }
}

#[inline]
fn f16le(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// The fixed reduction tree of 8 lanes (as the SIMD code does it: halves, then pairs).
#[inline]
fn hsum8(v: [f32; 8]) -> f32 {
    let t = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    let u = [t[0] + t[2], t[1] + t[3]];
    u[0] + u[1]
}

/// The canonical order written plainly (and the fallback for CPUs without AVX2).
mod scalar {
    use super::*;

    fn idot(w: &[i8], a: &[i8]) -> i32 {
        w.iter().zip(a).map(|(&x, &y)| x as i32 * y as i32).sum()
    }

    pub(super) fn quant<const T: usize>(fmt: Format, w: &[u8], a: &QActs<T>, r: &mut [f32; T]) {
        let mut wb = [0i8; 32];
        match fmt {
            Format::Q8_0 | Format::Q4_0 => {
                let mut acc = [[0.0f32; 2]; T];
                for (b, blk) in w.chunks_exact(fmt.block_bytes()).enumerate() {
                    let dw = f16le(blk, 0);
                    if fmt == Format::Q8_0 {
                        wb.iter_mut().zip(&blk[2..34]).for_each(|(o, &q)| *o = q as i8);
                    } else {
                        for j in 0..16 {
                            wb[j] = (blk[2 + j] & 0xf) as i8 - 8;
                            wb[16 + j] = (blk[2 + j] >> 4) as i8 - 8;
                        }
                    }
                    for t in 0..T {
                        let sum = idot(&wb, &a.q[t][b * QA..][..QA]);
                        acc[t][b % 2] = (sum as f32).mul_add(dw * a.d[t][b], acc[t][b % 2]);
                    }
                }
                for t in 0..T {
                    r[t] = acc[t][0] + acc[t][1];
                }
            }
            Format::Q4K => {
                let (mut sum, mut mins) = ([0.0f32; T], [0.0f32; T]);
                for (sb, blk) in w.chunks_exact(144).enumerate() {
                    let (d, dmin) = (f16le(blk, 0), f16le(blk, 2));
                    let (sc, qs) = (&blk[4..16], &blk[16..144]);
                    let (mut isum, mut msum) = ([0i32; T], [0i32; T]);
                    for j in 0..8 {
                        let (s, m) = scale_min_k4(j, sc);
                        let c = &qs[32 * (j / 2)..][..32];
                        for i in 0..32 {
                            wb[i] = if j % 2 == 0 { c[i] & 0xf } else { c[i] >> 4 } as i8;
                        }
                        for t in 0..T {
                            isum[t] += s as i32 * idot(&wb, &a.q[t][sb * 256 + 32 * j..][..32]);
                            msum[t] += m as i32 * (a.s[t][16 * sb + 2 * j] + a.s[t][16 * sb + 2 * j + 1]);
                        }
                    }
                    for t in 0..T {
                        sum[t] = (isum[t] as f32).mul_add(d * a.d[t][sb], sum[t]);
                        mins[t] = (msum[t] as f32).mul_add(dmin * a.d[t][sb], mins[t]);
                    }
                }
                for t in 0..T {
                    r[t] = sum[t] - mins[t];
                }
            }
            Format::Q6K => {
                let mut sum = [0.0f32; T];
                for (sb, blk) in w.chunks_exact(210).enumerate() {
                    let d = f16le(blk, 208);
                    let mut isum = [0i32; T];
                    for k in 0..8 {
                        let (h, g) = (k / 4, k % 4);
                        let ql = &blk[64 * h..];
                        let qh = &blk[128 + 32 * h..];
                        for l in 0..32 {
                            let byte = ql[l + 32 * (g % 2)];
                            let lo = if g < 2 { byte & 0xf } else { byte >> 4 };
                            let hi = (qh[l] >> (2 * g)) & 3;
                            wb[l] = (lo | (hi << 4)) as i8 - 32;
                        }
                        for (half, wq) in wb.chunks_exact(16).enumerate() {
                            let sc = blk[192 + 2 * k + half] as i8 as i32;
                            for t in 0..T {
                                isum[t] += sc * idot(wq, &a.q[t][sb * 256 + 32 * k + 16 * half..][..16]);
                            }
                        }
                    }
                    for t in 0..T {
                        sum[t] = (isum[t] as f32).mul_add(d * a.d[t][sb], sum[t]);
                    }
                }
                *r = sum;
            }
            _ => unreachable!("float formats take f32 activations"),
        }
    }

    /// f16: one fused multiply-add after the other, column by column.
    pub(super) fn float_chain(w: &[u8], x: &[f32]) -> f32 {
        let value = |v: &[u8]| f16_to_f32(u16::from_le_bytes([v[0], v[1]]));
        w.chunks_exact(2).zip(x).fold(0.0f32, |acc, (v, &x)| value(v).mul_add(x, acc))
    }

    /// f32: the 16-lane chain of the canonical order.
    pub(super) fn float<const T: usize>(w: &[u8], x: &[&[f32]; T], r: &mut [f32; T]) {
        let cols = x[0].len();
        let wv = |i: usize| f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]);
        for t in 0..T {
            let mut acc = [0.0f32; 16];
            let main = cols / 16 * 16;
            for c in (0..main).step_by(16) {
                for (l, v) in acc.iter_mut().enumerate() {
                    *v = wv(c + l).mul_add(x[t][c + l], *v);
                }
            }
            let mut c: [f32; 8] = std::array::from_fn(|l| acc[l] + acc[l + 8]);
            let mut i = main;
            while i + 8 <= cols {
                for (l, v) in c.iter_mut().enumerate() {
                    *v = wv(i + l).mul_add(x[t][i + l], *v);
                }
                i += 8;
            }
            let mut s = hsum8(c);
            for j in i..cols {
                s = wv(j).mul_add(x[t][j], s);
            }
            r[t] = s;
        }
    }
}

/// `$block!(b, 0)` for the even blocks `b` of `0..$nb` and `$block!(b, 1)` for the odd ones, in
/// order: the two accumulators of the Q8_0/Q4_0 canonical order, unrolled by two so that they stay
/// in registers.
#[cfg(target_arch = "x86_64")]
macro_rules! even_odd_blocks {
    ($nb:expr, $block:ident) => {{
        let mut b = 0;
        while b + 1 < $nb {
            $block!(b, 0);
            $block!(b + 1, 1);
            b += 2;
        }
        if b < $nb {
            $block!(b, 0);
        }
    }};
}

#[cfg(target_arch = "x86_64")]
mod x86 {
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

    pub mod avx2 {
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
                                                _mm256_add_epi32(
                                                    sums[t],
                                                    _mm256_madd_epi16(_mm256_maddubs_epi16(aw, x), ones),
                                                )
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
                                        _mm_prefetch::<_MM_HINT_T1>(
                                            p.wrapping_add(PREFETCH + 576 * c + 64 * q) as *const i8
                                        );
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
                                    let scaled =
                                        _mm256_add_epi32(_mm256_mullo_epi32(y0, s0), _mm256_mullo_epi32(y1, s1));
                                    isum[t] = _mm256_add_epi32(isum[t], scaled);
                                }
                            }
                            let mut msum = [zero; T];
                            for j in 0..8 {
                                let m = lanes(8 + j);
                                for t in 0..T {
                                    let bs = &a.s[t][16 * sb + 2 * j..];
                                    msum[t] = _mm256_add_epi32(
                                        msum[t],
                                        _mm256_mullo_epi32(m, _mm256_set1_epi32(bs[0] + bs[1])),
                                    );
                                }
                            }
                            for t in 0..T {
                                let ad = _mm256_set1_ps(a.d[t][sb]);
                                sum[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, ad), sum[t]);
                                mins[t] =
                                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum[t]), _mm256_mul_ps(dmin, ad), mins[t]);
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
                                        let sc =
                                            _mm256_cvtepi8_epi32(_mm_loadl_epi64(scales.add(16 * s) as *const __m128i));
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
    }

    pub mod vnni {
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
                                let sc =
                                    _mm512_cvtepi8_epi32(_mm_loadu_si128(scales.add(16 * sub[j]) as *const __m128i));
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
                                    let two = _mm_cvtsi32_si128(
                                        (p.add(192 + 2 * k + 2 * i) as *const i16).read_unaligned() as i32,
                                    );
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
    }

    pub use self::float_impl::{float, float_groups, float_rows};
    mod float_impl {
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
        pub unsafe fn float_rows<const T: usize>(
            isa: Isa,
            w: &[u8],
            n: usize,
            x: &[&[f32]; T],
            r: &mut [[f32; GROUP]; T],
        ) {
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
                        4 => pass_512::<T, 4, F32>(
                            [wp(g), wp(g + 1), wp(g + 2), wp(g + 3)],
                            x,
                            span,
                            rows.try_into().unwrap(),
                        ),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn row(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.normal() as f32).collect()
    }

    /// Every instruction set gives the same bits, for every tile size, one row at a time or in a
    /// group of rows (quantized: interleaved; float: chunk by chunk of columns), and a token's
    /// result does not depend on the tokens beside it in the tile.
    #[test]
    fn same_bits_on_every_instruction_set_and_tile() {
        for cols in [512usize, 2 * super::super::QK_K, 96, 40, 1064] {
            // tokens: more than a tile of twelve (grouped float rows)
            const NT: usize = 14;
            let x: Vec<f32> = (0..NT as u64).flat_map(|t| row(cols, 10 + t)).collect();
            for fmt in Format::ALL {
                if cols % fmt.block_len() != 0 {
                    continue;
                }
                let rb = fmt.row_bytes(cols).unwrap();
                // two groups of rows
                let mut wb = vec![0u8; 2 * GROUP * rb];
                for (r, b) in wb.chunks_exact_mut(rb).enumerate() {
                    fmt.quantize_row(&row(cols, 3 + r as u64), b);
                }
                let mut acts = Activations::default();
                acts.prepare(&x, NT, cols, fmt);
                let mut want = [[0.0f32; NT]; 2 * GROUP];
                for (r, b) in wb.chunks_exact(rb).enumerate() {
                    for t in 0..NT {
                        dot_row(Isa::Scalar, fmt, b, &acts, &[t], &mut want[r][t..]);
                    }
                }
                for isa in Isa::all_supported() {
                    let grouped = uses_groups(isa, fmt)
                        .then(|| wb.chunks_exact(GROUP * rb).flat_map(|g| to_groups(fmt, g)).collect::<Vec<u8>>());
                    if let Some(g) = &grouped {
                        for (g, w) in g.chunks_exact(GROUP * rb).zip(wb.chunks_exact(GROUP * rb)) {
                            assert_eq!(from_groups(fmt, g), w, "grouped layout round trip");
                        }
                    }
                    let float_tiles = [vec![0usize, 1, 2, 3, 4, 5], vec![8, 1, 5, 0, 2, 7], vec![6, 2, 4, 8, 1]];
                    for tile in [vec![0usize, 1, 2, 3], vec![4, 2], vec![3, 0, 4], vec![1]].into_iter().chain(
                        float_tiles.into_iter().filter(|t| !fmt.is_quantized() && t.len() <= float_tile(isa, fmt)),
                    ) {
                        for (r, b) in wb.chunks_exact(rb).enumerate().filter(|_| tile.len() <= MAX_TILE) {
                            let mut out = [0.0f32; 4];
                            dot_row(isa, fmt, b, &acts, &tile, &mut out);
                            for (k, &t) in tile.iter().enumerate() {
                                let msg = format!("{fmt} {isa:?} cols {cols} row {r} token {t}");
                                assert_eq!(out[k].to_bits(), want[r][t].to_bits(), "{msg}");
                            }
                        }
                        for n in [GROUP, 5] {
                            if fmt.is_quantized() {
                                break;
                            }
                            let mut out = [[0.0f32; GROUP]; FLOAT_TILE];
                            dot_float_rows(isa, fmt, &wb[..n * rb], n, &acts, &tile, &mut out);
                            for (k, &t) in tile.iter().enumerate() {
                                for r in 0..n {
                                    let msg = format!("{fmt} {isa:?} {n} rows, cols {cols} row {r} token {t}");
                                    assert_eq!(out[k][r].to_bits(), want[r][t].to_bits(), "{msg}");
                                }
                            }
                        }
                        if let Some(g) = grouped.as_ref().filter(|_| tile.len() <= MAX_TILE && fmt.is_quantized()) {
                            let mut seen = 0;
                            // prefetching or not, the same bits
                            let prefetch = tile.len() % 2 == 1;
                            dot_groups(isa, fmt, g, &acts, &tile, prefetch, &mut |i, out| {
                                seen += 1;
                                for (k, &t) in tile.iter().enumerate() {
                                    for r in 0..GROUP {
                                        let msg = format!("{fmt} {isa:?} group {i}, cols {cols} row {r} token {t}");
                                        let want = want[i * GROUP + r][t];
                                        assert_eq!(out[k][r].to_bits(), want.to_bits(), "{msg}");
                                    }
                                }
                            });
                            assert_eq!(seen, g.len() / (GROUP * rb), "{fmt} {isa:?}: every group");
                        }
                    }
                    // grouped float rows: every tile length of the packing, each group of one
                    // group, two and three (a pair, then one alone)
                    if let Some(g) = grouped.as_ref().filter(|_| !fmt.is_quantized()) {
                        let gb = GROUP * rb;
                        let three: Vec<u8> = g.iter().chain(&g[..gb]).copied().collect();
                        for n in 1..=NT {
                            let mut acts = Activations::default();
                            acts.prepare_isa(isa, &x, n, cols, fmt);
                            let toks: Vec<usize> = (0..n).collect();
                            for tile in toks.chunks(float_tile(isa, fmt)) {
                                for groups in [&g[..gb], &g[..], &three[..]] {
                                    let mut seen = 0;
                                    let plain = fmt != Format::BF16 || bf16::all_plain(groups);
                                    dot_float_groups(isa, fmt, groups, &acts, tile, plain, &mut |i, out| {
                                        seen += 1;
                                        for (k, &t) in tile.iter().enumerate() {
                                            for r in 0..GROUP {
                                                let msg = format!("{fmt} {isa:?} {n} tokens, group {i}, cols {cols} row {r} token {t}");
                                                let want = want[(i % 2) * GROUP + r][t];
                                                assert_eq!(out[k][r].to_bits(), want.to_bits(), "{msg}");
                                            }
                                        }
                                    });
                                    assert_eq!(seen, groups.len() / gb, "{fmt} {isa:?}: every group");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// bf16 groups give the canonical chain's bits on every instruction set (AVX-512 BF16's
    /// `vdpbf16ps` where the CPU has it, fused multiply-adds or the flushing scalar chain
    /// elsewhere): values of every exponent — zeros, numbers below f32's normal range, products
    /// that overflow — and values at the edges of the plain range.
    #[test]
    fn bf16_groups_equal_the_chain_on_any_values() {
        let cols = 96;
        let mut r = Rng::new(11);
        // a bf16 of a random sign and mantissa, biased exponent in `e`
        let mut value = |e: std::ops::RangeInclusive<u32>| {
            let bits = r.next_u64();
            let exp = e.start() + (bits >> 20) as u32 % (e.end() - e.start() + 1);
            ((bits & 0x8000) as u32 | exp << 7 | (bits >> 8) as u32 & 0x7f) as u16
        };
        // (weights' exponents, activations' exponents): anything finite; the plain range's edges;
        // products below the normal range (the sums' flush); weights below it (read as zero)
        let cases = [
            (0..=254, 0..=254),
            (71..=189, 71..=189),
            (71..=80, 71..=75),
            (180..=189, 180..=189),
            (50..=66, 50..=66),
            (0..=2, 120..=135),
        ];
        for (we, xe) in cases {
            let w: Vec<u8> = (0..2 * GROUP * cols).flat_map(|_| value(we.clone()).to_le_bytes()).collect();
            let x: Vec<f32> = (0..9 * cols).map(|_| f32::from_bits((value(xe.clone()) as u32) << 16)).collect();
            let g = to_groups(Format::BF16, &w[..GROUP * 2 * cols])
                .into_iter()
                .chain(to_groups(Format::BF16, &w[GROUP * 2 * cols..]))
                .collect::<Vec<u8>>();
            let plain = bf16::all_plain(&w);
            for isa in Isa::all_supported() {
                let mut acts = Activations::default();
                acts.prepare_isa(isa, &x, 9, cols, Format::BF16);
                let toks: Vec<usize> = (0..9).collect();
                for tile in toks.chunks(float_tile(isa, Format::BF16)) {
                    let check = |i: usize, out: &[[f32; GROUP]]| {
                        for (k, &t) in tile.iter().enumerate() {
                            for row in 0..GROUP {
                                let r = i * GROUP + row;
                                let want = bf16::chain(&w[r * 2 * cols..][..2 * cols], acts.bf16_row(t));
                                let got = out[k][row];
                                let msg =
                                    format!("{isa:?} exponents {we:?}/{xe:?} row {r} token {t}: {got:e} vs {want:e}");
                                assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{msg}");
                            }
                        }
                    };
                    if uses_groups(isa, Format::BF16) {
                        dot_float_groups(isa, Format::BF16, &g, &acts, tile, plain, &mut |i, out| check(i, out));
                    }
                    let mut out = [[0.0f32; GROUP]; FLOAT_TILE];
                    dot_float_rows(isa, Format::BF16, &w[..GROUP * 2 * cols], GROUP, &acts, tile, &mut out);
                    check(0, &out);
                }
            }
        }
    }

    /// A batch large enough to be quantized in parallel gives each token the bits it gets alone
    /// (one token is quantized on the calling thread).
    #[test]
    fn parallel_activation_quantizing_equals_one_token_at_a_time() {
        let (n, cols) = (72, 2048);
        assert!(n * cols >= PARALLEL_VALUES);
        let x: Vec<f32> = (0..n).flat_map(|t| row(cols, 50 + t as u64)).collect();
        for fmt in [Format::Q4_0, Format::Q8_0, Format::Q4K] {
            let mut all = Activations::default();
            all.prepare(&x, n, cols, fmt);
            let (nb, ns) = (cols / all.kind.block(), cols / all.kind.sum_block());
            for t in 0..n {
                let mut one = Activations::default();
                one.prepare(&x[t * cols..(t + 1) * cols], 1, cols, fmt);
                assert_eq!(one.q, all.q[t * cols..(t + 1) * cols], "{fmt} token {t}");
                let bits = |v: &[f32]| v.iter().map(|d| d.to_bits()).collect::<Vec<u32>>();
                assert_eq!(bits(&one.d), bits(&all.d[t * nb..(t + 1) * nb]), "{fmt} token {t}");
                assert_eq!(one.sum, all.sum[t * ns..(t + 1) * ns], "{fmt} token {t}");
            }
        }
    }

    /// The activation quantizer rounds as `round_ties_even` does, ties and all.
    #[test]
    fn activation_rounding_is_ties_to_even() {
        let mut xs = row(4096, 7);
        // blocks whose largest value is 127 (multiplier 1), the rest every tie ±0.5 … ±126.5
        let ties: Vec<f32> = (-127..127).map(|i| i as f32 + 0.5).collect();
        for c in ties.chunks(31) {
            xs.push(127.0);
            xs.extend_from_slice(c);
            xs.extend(std::iter::repeat_n(0.0, 31 - c.len()));
        }
        // NaNs ignored by the scale and quantized to 0, infinities, a block of NaNs, one of zeros
        let odd = |f: &dyn Fn(usize) -> f32| (0..32).map(f).collect::<Vec<f32>>();
        xs.extend(odd(&|i| if i % 5 == 2 { f32::NAN } else { i as f32 - 9.5 }));
        xs.extend(odd(&|i| if i == 7 { f32::NEG_INFINITY } else { i as f32 }));
        xs.extend(odd(&|_| f32::NAN));
        xs.extend(odd(&|_| 0.0));
        for block in xs.chunks(32) {
            let mut q = [0i8; 32];
            let d = quantize_q8_0(block, &mut q[..block.len()]);
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let want_d = f16_to_f32(super::super::f32_to_f16(amax / 127.0));
            assert_eq!(d.to_bits(), want_d.to_bits(), "scale of {block:?}");
            for (v, &q) in block.iter().zip(&q) {
                assert_eq!(q, (v * id).round_ties_even() as i8, "{v} (scale {d})");
            }
        }
    }

    /// The integer products equal the dot product of the dequantized weights with the dequantized
    /// activations, up to f32 rounding.
    #[test]
    fn dot_equals_dequantized_product() {
        let cols = 2 * super::super::QK_K;
        let x = row(cols, 1);
        let w = row(cols, 2);
        for fmt in Format::ALL {
            let mut wb = vec![0u8; fmt.row_bytes(cols).unwrap()];
            fmt.quantize_row(&w, &mut wb);
            let mut wd = vec![0.0f32; cols];
            fmt.dequantize_row(&wb, &mut wd);
            let mut acts = Activations::default();
            acts.prepare(&x, 1, cols, fmt);
            let xd: Vec<f64> = if fmt.is_quantized() {
                (0..cols).map(|i| acts.q[i] as f64 * acts.d[i / acts.kind.block()] as f64).collect()
            } else if fmt == Format::BF16 {
                // the activations as rounded for bf16 weights
                acts.bf16_row(0)[..cols].iter().map(|&h| super::super::bf16_to_f32(h) as f64).collect()
            } else {
                x.iter().map(|&v| v as f64).collect()
            };
            let want: f64 = wd.iter().zip(&xd).map(|(a, b)| *a as f64 * b).sum();
            let mut out = [0.0f32];
            let isa = Isa::detect();
            dot_row(isa, fmt, &wb, &acts, &[0], &mut out);
            let scale: f64 = wd.iter().zip(&xd).map(|(a, b)| (*a as f64 * b).abs()).sum();
            assert!((out[0] as f64 - want).abs() <= 1e-5 * scale, "{fmt}: {} vs {want}", out[0]);
        }
    }
}
