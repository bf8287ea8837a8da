//! Decode's matrix-vector products allocate nothing per token: after a first call has sized the
//! activation buffers, `Linear::forward` of one token runs without a single heap allocation, for
//! every weight format and for stacked parts (q, k, v). Counted by a global allocator wrapper, in
//! a test binary of its own (one test: nothing else allocates while it counts).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use tinyllama::kernels::matmul::Output;
use tinyllama::kernels::quant::dot::Activations;
use tinyllama::kernels::quant::Format;
use tinyllama::model::weights::{Linear, RowMode, WeightMatrix};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, SeqCst);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, SeqCst);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn one_token_matmul_allocates_nothing() {
    let (cols, rows) = (512, 96);
    let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 1000.0).collect();
    let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut lins: Vec<(String, Linear)> = Format::ALL
        .into_iter()
        .map(|f| (format!("{f:?}"), Linear::single(WeightMatrix::quantize(&w, rows, cols, f).unwrap())))
        .collect();
    let part =
        |r0: usize, r1: usize, f: Format| WeightMatrix::quantize(&w[r0 * cols..r1 * cols], r1 - r0, cols, f).unwrap();
    let stacked = Linear::new(vec![part(0, 64, Format::Q4_0), part(64, 80, Format::Q4_0), part(80, 96, Format::Q8_0)]);
    lins.push(("q4_0 + q4_0 + q8_0".into(), stacked.unwrap()));
    let mut y = vec![0.0f32; rows];
    let mut acts = Activations::default();
    // first calls size the buffers and start the thread team (whose threads allocate as they
    // start, on their own time)
    for (_, lin) in &lins {
        lin.forward(&mut y, &x, 1, Output::Overwrite, RowMode::BatchInvariant, &mut acts);
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    for (name, lin) in &lins {
        let mut acts = Activations::default();
        lin.forward(&mut y, &x, 1, Output::Overwrite, RowMode::BatchInvariant, &mut acts);
        let before = ALLOCATIONS.load(SeqCst);
        for _ in 0..3 {
            lin.forward(&mut y, &x, 1, Output::Overwrite, RowMode::BatchInvariant, &mut acts);
            lin.forward(&mut y, &x, 1, Output::Accumulate, RowMode::BatchInvariant, &mut acts);
        }
        let n = ALLOCATIONS.load(SeqCst) - before;
        assert_eq!(n, 0, "{name}: {n} allocations in 6 one-token products");
    }
}
