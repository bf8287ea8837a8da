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
use crate::kernels::worker_pool;

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
        worker_pool::for_each_mut(&mut items.collect::<Vec<T>>(), f);
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
mod scalar;

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
mod x86;

#[cfg(test)]
mod tests;
