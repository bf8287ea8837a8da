//! Dense matrix products on a well-kept GEMM crate (`gemm`, AVX-512 kernels chosen at run time).
//! Everything is row-major; weights are stored as Hugging Face stores them, `[out, in]`.

use gemm::Parallelism;

/// How an operand of [`matmul`] is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// `[rows, cols]` of the product's view, row-major.
    AsIs,
    /// Its transpose, row-major (a weight `[out, in]` used as `[in, out]`).
    Transposed,
}

/// Whether [`matmul`] replaces its output or adds to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Overwrite,
    Accumulate,
}

/// `c[m,n] = a·b` (or `c += a·b` with [`Output::Accumulate`]), where `a` is `[m,k]` (stored
/// `[k,m]` when [`Stored::Transposed`]) and `b` is `[k,n]` (likewise `[n,k]`).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    a_stored: Stored,
    b_stored: Stored,
    output: Output,
) {
    let (trans_a, trans_b) = (a_stored == Stored::Transposed, b_stored == Stored::Transposed);
    let accumulate = output == Output::Accumulate;
    assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n, "matmul: buffers too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // (row stride, column stride) of each operand as seen by the product.
    let (a_rs, a_cs) = if trans_a { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if trans_b { (1, k as isize) } else { (n as isize, 1) };
    let par = if (m * n * k) < 32 * 32 * 32 { Parallelism::None } else { Parallelism::Rayon(0) };
    // SAFETY: the strides above address exactly the m×k, k×n and m×n elements whose presence the
    // assert checks; `c` does not alias `a` or `b` (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// `y[rows, out] = x[rows, in] · wᵀ` for a weight `w[out, in]` (a bias-free `nn.Linear`).
pub fn linear_forward(y: &mut [f32], x: &[f32], w: &[f32], rows: usize, d_in: usize, d_out: usize) {
    matmul(y, x, w, rows, d_out, d_in, Stored::AsIs, Stored::Transposed, Output::Overwrite);
}

/// `dx[rows, in] = dy[rows, out] · w`.
pub fn linear_backward_input(dx: &mut [f32], dy: &[f32], w: &[f32], rows: usize, d_in: usize, d_out: usize) {
    matmul(dx, dy, w, rows, d_in, d_out, Stored::AsIs, Stored::AsIs, Output::Overwrite);
}

/// `dw[out, in] += dyᵀ · x` (weight gradients always accumulate, across micro-batches too).
pub fn linear_backward_weight(dw: &mut [f32], dy: &[f32], x: &[f32], rows: usize, d_in: usize, d_out: usize) {
    matmul(dw, dy, x, d_out, d_in, rows, Stored::Transposed, Stored::AsIs, Output::Accumulate);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Vec<f64> {
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    c[i * n + j] += av as f64 * bv as f64;
                }
            }
        }
        c
    }

    #[test]
    fn all_transpose_combinations_match_naive() {
        let mut r = Rng::new(1);
        let (m, n, k) = (37, 29, 53);
        let a: Vec<f32> = (0..m * k).map(|_| r.normal() as f32).collect();
        let b: Vec<f32> = (0..k * n).map(|_| r.normal() as f32).collect();
        for ta in [false, true] {
            for tb in [false, true] {
                let want = naive(&a, &b, m, n, k, ta, tb);
                let mut c = vec![1.0f32; m * n];
                let stored = |t: bool| if t { Stored::Transposed } else { Stored::AsIs };
                matmul(&mut c, &a, &b, m, n, k, stored(ta), stored(tb), Output::Accumulate);
                for (x, w) in c.iter().zip(&want) {
                    assert!((*x as f64 - (w + 1.0)).abs() < 1e-4, "ta={ta} tb={tb}: {x} vs {}", w + 1.0);
                }
                matmul(&mut c, &a, &b, m, n, k, stored(ta), stored(tb), Output::Overwrite);
                for (x, w) in c.iter().zip(&want) {
                    assert!((*x as f64 - w).abs() < 1e-4);
                }
            }
        }
    }
}
