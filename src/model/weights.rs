//! Weights for inference in any [`Format`]: a [`WeightMatrix`] (`[rows, cols]`, row-major, ggml's
//! row bytes) and a [`Linear`] — matrices stacked by rows (fused q/k/v or gate/up, whose parts may
//! have different formats, as llama.cpp's Q4_K_M gives `attn_v` more bits than `attn_q`).
//!
//! `Linear::forward` has two modes. [`RowMode::BatchInvariant`] computes each output element with the
//! fixed-order kernels of [`dot`](crate::kernels::quant::dot), so a token's result does not depend
//! on the other tokens of the call (batched decoding, the server). [`RowMode::MayUseGemm`] lets an f32
//! matrix take the `gemm` crate (a prompt's prefill; evaluation, whose numbers stay those of the
//! training forward). Quantized formats run the same integer kernels in both.

use super::prefetch::PREFETCH_CHOICE;
use crate::kernels::matmul::{matmul, Output, Stored};
use crate::kernels::quant::bf16;
use crate::kernels::quant::dot::{
    bf16_dot, dot_float_groups, dot_float_rows, dot_groups, dot_row, float_tile, from_groups, groups_cols, to_groups,
    Activations, Isa, FLOAT_TILE, GROUP, MAX_TILE,
};
use crate::kernels::quant::Format;
use crate::kernels::worker_pool;
use anyhow::{ensure, Result};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowMode {
    /// Fixed-order kernels: a token's result does not depend on the tokens beside it in the batch
    /// (generation and serving, whose results must not change with what else runs).
    BatchInvariant,
    /// f32 matrices may go through `gemm` (a prompt, evaluation: the training forward's numbers).
    MayUseGemm,
}

/// Where a matrix's bytes live.
pub enum Storage {
    Bytes(Vec<u8>),
    /// Anonymous memory on 2 MiB pages where the kernel grants them: a decode step streams every
    /// weight once, and on 4 KiB pages the CPU's prefetchers stop at every page boundary.
    Pages(memmap2::MmapMut),
    /// f32 weights, possibly a range of a larger shared buffer (a training model's parameters).
    F32 {
        buf: Arc<Vec<f32>>,
        range: Range<usize>,
    },
    /// A range of a memory-mapped file (a GGUF tensor used in place).
    Mapped {
        map: Arc<memmap2::Mmap>,
        range: Range<usize>,
    },
}

pub struct WeightMatrix {
    pub format: Format,
    pub rows: usize,
    pub cols: usize,
    storage: Storage,
    /// Rows `0..rows / GROUP · GROUP` in the grouped layout the AVX-512 kernels read (see
    /// [`to_groups`]); the rest in ggml's.
    groups: bool,
    /// Grouped bf16 whose values are all `bf16::plain` (where the CPU lacks `vdpbf16ps`: fused
    /// multiply-adds then give its bits).
    plain_bf16: bool,
}

impl WeightMatrix {
    pub fn new(format: Format, rows: usize, cols: usize, storage: Storage) -> Result<Self> {
        let want = rows * format.row_bytes(cols)?;
        let m = WeightMatrix { format, rows, cols, storage, groups: false, plain_bf16: false };
        ensure!(m.bytes().len() == want, "{rows}×{cols} {format} needs {want} bytes, got {}", m.bytes().len());
        Ok(m)
    }

    /// Rearranges the rows into the layout this CPU's kernels read fastest, where that differs
    /// from ggml's (the same values), on large pages.
    pub fn for_matmul(mut self) -> Self {
        let isa = Isa::detect();
        let groups = !self.groups && groups_cols(isa, self.format, self.cols);
        if groups || matches!(self.storage, Storage::Bytes(_)) {
            let gb = (GROUP * self.row_bytes()).max(1);
            let full = self.rows / GROUP * gb;
            let fmt = self.format;
            let fill = |dst: &mut [u8], src: &[u8]| {
                let (dg, dt) = dst.split_at_mut(full);
                dg.par_chunks_mut(gb).zip(src[..full].par_chunks(gb)).for_each(|(d, s)| {
                    if groups {
                        d.copy_from_slice(&to_groups(fmt, s));
                    } else {
                        d.copy_from_slice(s);
                    }
                });
                dt.copy_from_slice(&src[full..]);
            };
            let storage = match page_buffer(self.bytes().len()) {
                Some(mut buf) => {
                    fill(&mut buf, self.bytes());
                    Some(Storage::Pages(buf))
                }
                None if groups => {
                    let mut v = vec![0u8; self.bytes().len()];
                    fill(&mut v, self.bytes());
                    Some(Storage::Bytes(v))
                }
                None => None,
            };
            if let Some(storage) = storage {
                if let Storage::Mapped { map, range } = &self.storage {
                    release_mapped(map, range.clone());
                }
                self.storage = storage;
                self.groups |= groups;
            }
        }
        if self.groups && self.format == Format::BF16 && !bf16_dot(isa) {
            self.plain_bf16 = bf16::all_plain(self.bytes());
        }
        self
    }

    /// Quantizes `[rows, cols]` f32 weights to `format` (in parallel over rows, the same bits).
    pub fn quantize(x: &[f32], rows: usize, cols: usize, format: Format) -> Result<Self> {
        let rb = format.row_bytes(cols)?;
        let mut bytes = vec![0u8; rows * rb];
        bytes.par_chunks_mut(rb).zip(x.par_chunks(cols)).for_each(|(b, r)| format.quantize_row(r, b));
        Self::new(format, rows, cols, Storage::Bytes(bytes))
    }

    pub fn from_f32(buf: Arc<Vec<f32>>, range: Range<usize>, rows: usize, cols: usize) -> Result<Self> {
        Self::new(Format::F32, rows, cols, Storage::F32 { buf, range })
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Bytes(b) => b,
            Storage::Pages(m) => m,
            Storage::F32 { buf, range } => {
                let s = &buf[range.clone()];
                // SAFETY: any f32 slice is a valid byte slice of 4× the length.
                unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, s.len() * 4) }
            }
            Storage::Mapped { map, range } => &map[range.clone()],
        }
    }

    /// The weights as f32, when stored so and aligned (for the `gemm` path).
    pub fn f32s(&self) -> Option<&[f32]> {
        if self.format != Format::F32 {
            return None;
        }
        match &self.storage {
            Storage::F32 { buf, range } => Some(&buf[range.clone()]),
            _ => {
                let b = self.bytes();
                // SAFETY: alignment checked; f32 has no invalid bit patterns.
                (b.as_ptr() as usize)
                    .is_multiple_of(4)
                    .then(|| unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f32, b.len() / 4) })
            }
        }
    }

    pub fn row_bytes(&self) -> usize {
        self.bytes().len() / self.rows.max(1)
    }

    /// Row `r` as f32 (embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        if self.groups && r < self.rows / GROUP * GROUP {
            let g = r / GROUP;
            let rows = from_groups(self.format, &self.bytes()[g * GROUP * rb..(g + 1) * GROUP * rb]);
            self.format.dequantize_row(&rows[(r % GROUP) * rb..][..rb], out);
        } else {
            self.format.dequantize_row(&self.bytes()[r * rb..(r + 1) * rb], out);
        }
    }

    /// Bytes a matmul reads (the weights' size in memory).
    pub fn size_bytes(&self) -> usize {
        self.bytes().len()
    }
}

/// Drops the resident pages of a mapped file range that was copied elsewhere, so that they do not
/// count twice in memory (they are read back from the file if ever touched again).
pub fn release_mapped(map: &memmap2::Mmap, range: Range<usize>) {
    const PAGE: usize = 4096;
    let start = range.start.div_ceil(PAGE) * PAGE;
    let end = range.end / PAGE * PAGE;
    if end > start {
        // SAFETY: a read-only file mapping: dropped pages are re-read from the file on access.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
    }
}

/// A zeroed anonymous buffer of `len` bytes, asking for transparent huge pages (Linux
/// `MADV_HUGEPAGE`; elsewhere, or where refused, ordinary pages).
/// `None` where the system refuses the mapping (the caller keeps ordinary heap memory).
pub fn page_buffer(len: usize) -> Option<memmap2::MmapMut> {
    let m = memmap2::MmapOptions::new().len(len.max(1)).map_anon().ok()?;
    #[cfg(target_os = "linux")]
    let _ = m.advise(memmap2::Advice::HugePage);
    Some(m)
}

/// Matrices stacked by rows: `y[:, off_p..off_p + rows_p] = x · W_pᵀ`.
pub struct Linear {
    pub rows: usize,
    pub cols: usize,
    pub parts: Vec<WeightMatrix>,
}

impl Linear {
    pub fn new(parts: Vec<WeightMatrix>) -> Result<Self> {
        ensure!(!parts.is_empty(), "a linear layer needs a matrix");
        let parts: Vec<WeightMatrix> = parts.into_iter().map(WeightMatrix::for_matmul).collect();
        let cols = parts[0].cols;
        ensure!(parts.iter().all(|p| p.cols == cols), "stacked matrices must have the same number of columns");
        Ok(Linear { rows: parts.iter().map(|p| p.rows).sum(), cols, parts })
    }

    pub fn single(m: WeightMatrix) -> Self {
        let m = m.for_matmul();
        Linear { rows: m.rows, cols: m.cols, parts: vec![m] }
    }

    pub fn size_bytes(&self) -> usize {
        self.parts.iter().map(|p| p.size_bytes()).sum()
    }

    /// `y[n, rows] (+)= x[n, cols] · Wᵀ`.
    pub fn forward(&self, y: &mut [f32], x: &[f32], n: usize, output: Output, mode: RowMode, acts: &mut Activations) {
        assert!(x.len() >= n * self.cols && y.len() >= n * self.rows, "linear: buffers too small");
        if n == 0 {
            return;
        }
        if mode == RowMode::MayUseGemm && self.parts.len() == 1 {
            if let Some(w) = self.parts[0].f32s() {
                matmul(y, x, w, n, self.rows, self.cols, Stored::AsIs, Stored::Transposed, output);
                return;
            }
        }
        let isa = Isa::detect();
        let (mut i, mut off) = (0, 0);
        while i < self.parts.len() {
            if !acts.prepared_for(n, self.cols, self.parts[i].format) {
                acts.prepare(x, n, self.cols, self.parts[i].format);
            }
            // the parts that read the same activations (q, k and v; gate and up) in one worker-pool job
            let same = self.parts[i..].iter().take_while(|p| acts.prepared_for(n, self.cols, p.format)).count();
            let parts = &self.parts[i..i + same];
            matmul_rows(isa, parts, acts, y, self.rows, off, output);
            off += parts.iter().map(|p| p.rows).sum::<usize>();
            i += same;
        }
        acts.n = 0; // the next call prepares its own input
    }
}

/// Bytes of weights per cache block of [`matmul_rows`] (a block stays in the core's L2 while every
/// tile of tokens passes over it).
const BLOCK_BYTES: usize = 96 << 10;

/// `y[t, off + r] (+)= W[r] · act_t` for every row `r` of the stacked `parts` (one under the other
/// from column `off` of `y`) and every token. The parts' rows together are split over the threads
/// in a few tasks per thread, largest first (one job for all: a job's start and its last task
/// cost as much as a small part such as k or v). Each task walks its rows in cache blocks of about [`BLOCK_BYTES`]; every tile of
/// [`MAX_TILE`] tokens ([`float_tile`] for float rows) passes over a block, all its groups of
/// [`GROUP`] rows in one call where the matrix is grouped, so that one read of the weights serves all
/// tokens.
fn matmul_rows(
    isa: Isa,
    parts: &[WeightMatrix],
    acts: &Activations,
    y: &mut [f32],
    ld: usize,
    off: usize,
    output: Output,
) {
    let n = acts.n;
    let out = worker_pool::DisjointRows(y.as_mut_ptr());
    // a few tasks per thread, claimed as threads come free (the machines are shared and noisy)
    let tasks = 4 * rayon::current_num_threads().max(1);
    let total: usize = parts.iter().map(|p| p.rows).sum();
    // grouped float rows run two groups a kernel call (one alone costs as much as two)
    let step = |w: &WeightMatrix| if !w.format.is_quantized() && w.groups { 2 * GROUP } else { GROUP };
    let toks = &acts.toks[..n];
    // y[t, r..r + vals.len()] (+)= vals
    let put = |t: usize, r: usize, vals: &[f32]| {
        // SAFETY: these outputs of token t are written by one task only; in bounds by the assert
        // in `Linear::forward`.
        let y = unsafe { std::slice::from_raw_parts_mut(out.get().add(t * ld + r), vals.len()) };
        match output {
            Output::Accumulate => y.iter_mut().zip(vals).for_each(|(y, v)| *y += v),
            Output::Overwrite => y.copy_from_slice(vals),
        }
    };
    // one token: prefetch or not as measured on this machine (`super::prefetch`), timing the job for it
    // (a job whose parts differ in format, Q4_K_M's Q4_K q/k with a Q6_K v, counts under its first)
    let (fmt, matrix) = (parts[0].format, parts[0].bytes().as_ptr() as usize);
    let one_token = n == 1 && fmt.is_quantized();
    let choice = || PREFETCH_CHOICE.lock().unwrap_or_else(|e| e.into_inner());
    let prefetch = !one_token || choice().choose(fmt, matrix);
    // rows lo..hi of part w, written from column base of y
    let rows_of = |w: &WeightMatrix, base: usize, lo: usize, hi: usize| {
        let (rb, bytes) = (w.row_bytes(), w.bytes());
        let grouped = if w.groups { w.rows / GROUP * GROUP } else { 0 };
        let float = !w.format.is_quantized();
        let block = (BLOCK_BYTES / rb.max(1)).max(1).next_multiple_of(step(w));
        // float rows take more tokens a pass where the registers allow (a tile of one f32 token
        // goes row by row)
        let tile_len = if float { float_tile(isa, w.format) } else { MAX_TILE };
        let put = |t: usize, r: usize, vals: &[f32]| put(t, base + r, vals);
        let mut res = [[0.0f32; GROUP]; FLOAT_TILE];
        for r0 in (lo..hi).step_by(block) {
            let r1 = (r0 + block).min(hi);
            for (pass, tile) in toks.chunks(tile_len).enumerate() {
                let mut r = r0;
                while r < r1 {
                    if r < grouped {
                        // every group of the block at once (r and g1 are multiples of GROUP)
                        let g1 = r1.min(grouped);
                        let mut out = |i: usize, res: &[[f32; GROUP]]| {
                            for (k, &t) in tile.iter().enumerate() {
                                put(t, r + i * GROUP, &res[k]);
                            }
                        };
                        let groups = &bytes[r * rb..g1 * rb];
                        if float {
                            dot_float_groups(isa, w.format, groups, acts, tile, w.plain_bf16, &mut out);
                        } else {
                            // the first pass brings the block from memory (prefetching ahead,
                            // at one token where that measured faster)
                            dot_groups(isa, w.format, groups, acts, tile, pass == 0 && prefetch, &mut out);
                        }
                        r = g1;
                    } else if float && (tile.len() > 1 || w.format != Format::F32) {
                        // rows together, so that the tile's activations stay in L1 (one token's
                        // fit anyway, and its rows are then read one after the other)
                        let m = GROUP.min(r1 - r);
                        dot_float_rows(isa, w.format, &bytes[r * rb..(r + m) * rb], m, acts, tile, &mut res);
                        for (k, &t) in tile.iter().enumerate() {
                            put(t, r, &res[k][..m]);
                        }
                        r += m;
                    } else {
                        dot_row(isa, w.format, &bytes[r * rb..(r + 1) * rb], acts, tile, &mut res[0]);
                        for (k, &t) in tile.iter().enumerate() {
                            put(t, r, &res[0][k..k + 1]);
                        }
                        r += 1;
                    }
                }
            }
        }
    };
    // task c takes the stacked rows [bound(c), bound(c + 1)), the tasks' sizes falling as
    // tasks, tasks − 1, …, 1 (guided scheduling): the last ones are small, so that the threads
    // finish a job together
    let bound = |c: usize| total * (c * tasks - c * c.saturating_sub(1) / 2) / (tasks * (tasks + 1) / 2);
    let began = one_token.then(Instant::now);
    worker_pool::run(tasks, &|c| {
        let mut start = 0;
        for w in parts {
            // the task's rows of this part, its bounds rounded up to whole steps of the part (so
            // that consecutive tasks meet and groups stay whole)
            let local = |g: usize| g.saturating_sub(start).next_multiple_of(step(w)).min(w.rows);
            let (lo, hi) = (local(bound(c)), local(bound(c + 1)));
            if lo < hi {
                rows_of(w, off + start, lo, hi);
            }
            start += w.rows;
        }
    });
    if let Some(began) = began {
        let bytes = parts.iter().map(|p| p.bytes().len()).sum();
        choice().record(fmt, matrix, prefetch, began.elapsed().as_secs_f64(), bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Stacked parts split into guided tasks over their rows together: every output is its row's
    /// product as the scalar kernel computes it alone (ggml's row layout, activations prepared
    /// for the scalar path), written once in its place, on any thread count; parts whose row
    /// counts are not whole groups, of formats sharing activations (one job) or not.
    #[test]
    fn every_row_once_in_its_place() {
        let (cols, n) = (256, 5);
        let parts = [(37, Format::Q8_0), (64, Format::Q4_0), (45, Format::Q6K), (16, Format::F16), (3, Format::Q4K)];
        let mut r = Rng::new(9);
        let ws: Vec<Vec<f32>> =
            parts.iter().map(|&(rows, _)| (0..rows * cols).map(|_| r.normal() as f32 * 0.1).collect()).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| r.normal() as f32).collect();
        let lin = Linear::new(
            parts.iter().zip(&ws).map(|(&(rows, f), w)| WeightMatrix::quantize(w, rows, cols, f).unwrap()).collect(),
        )
        .unwrap();
        let mut want = vec![0.0f32; n * lin.rows];
        let mut acts = Activations::default();
        let mut off = 0;
        for (&(rows, f), w) in parts.iter().zip(&ws) {
            acts.prepare_isa(Isa::Scalar, &x, n, cols, f);
            for i in 0..rows {
                let row = WeightMatrix::quantize(&w[i * cols..(i + 1) * cols], 1, cols, f).unwrap();
                let mut out = [0.0f32; MAX_TILE];
                for t in 0..n {
                    dot_row(Isa::Scalar, f, row.bytes(), &acts, &[t], &mut out);
                    want[t * lin.rows + off + i] = out[0];
                }
            }
            off += rows;
        }
        for threads in [1, 2, 3, 7] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut y = vec![f32::NAN; n * lin.rows];
            let mut acts = Activations::default();
            pool.install(|| lin.forward(&mut y, &x, n, Output::Overwrite, RowMode::BatchInvariant, &mut acts));
            let same = y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{threads} threads");
            pool.install(|| lin.forward(&mut y, &x, n, Output::Accumulate, RowMode::BatchInvariant, &mut acts));
            assert!(y.iter().zip(&want).all(|(a, b)| *a == 2.0 * b), "{threads} threads, accumulating");
        }
    }

    /// BatchInvariant rows: each token's output equals the token computed alone, bit for bit, for
    /// every format and for stacked parts of different formats.
    #[test]
    fn a_tokens_result_does_not_depend_on_the_batch() {
        let (rows, cols, n) = (70, 512, 9);
        let mut r = Rng::new(5);
        let w: Vec<f32> = (0..rows * cols).map(|_| r.normal() as f32 * 0.1).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| r.normal() as f32).collect();
        let mut lins: Vec<Linear> = Format::ALL
            .into_iter()
            .map(|f| Linear::single(WeightMatrix::quantize(&w, rows, cols, f).unwrap()))
            .collect();
        lins.push(
            Linear::new(vec![
                WeightMatrix::quantize(&w[..30 * cols], 30, cols, Format::Q4K).unwrap(),
                WeightMatrix::quantize(&w[30 * cols..], 40, cols, Format::Q6K).unwrap(),
            ])
            .unwrap(),
        );
        let mut acts = Activations::default();
        for lin in &lins {
            let mut all = vec![0.0f32; n * rows];
            lin.forward(&mut all, &x, n, Output::Overwrite, RowMode::BatchInvariant, &mut acts);
            for t in 0..n {
                let mut one = vec![0.0f32; rows];
                lin.forward(&mut one, &x[t * cols..], 1, Output::Overwrite, RowMode::BatchInvariant, &mut acts);
                assert!(
                    one.iter().zip(&all[t * rows..]).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{:?}: token {t}",
                    lin.parts.iter().map(|p| p.format).collect::<Vec<_>>()
                );
            }
            // the same bits on any thread count (rows are split differently)
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut other = vec![0.0f32; n * rows];
                pool.install(|| lin.forward(&mut other, &x, n, Output::Overwrite, RowMode::BatchInvariant, &mut acts));
                assert!(other.iter().zip(&all).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads");
            }
            // and accumulate adds
            let mut acc = all.clone();
            lin.forward(&mut acc, &x, n, Output::Accumulate, RowMode::BatchInvariant, &mut acts);
            assert!(acc.iter().zip(&all).all(|(a, b)| *a == 2.0 * b));
        }
    }
}
