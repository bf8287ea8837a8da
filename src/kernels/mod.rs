//! CPU kernels, f32. Each layer's forward and hand-written backward live side by side in one file,
//! with a finite-difference test beside them (llm.c style).
//!
//! The boundary is deliberately narrow: every kernel takes plain slices and sizes and owns no
//! state, so a CUDA implementation can sit beside this module with the same signatures.
//! Rows are tokens (`B*T` of them), row-major; work is split over rows with rayon, and every
//! reduction runs in a fixed order so that results do not depend on the number of threads.

pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod isa;
pub mod matmul;
pub mod quant;
pub mod rms_norm;
pub mod rope;
pub mod swiglu;
pub mod worker_pool;

/// Dot product with 16 independent accumulators, so that it vectorises.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (xa, xb) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += xa[l] * xb[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `e^x` in f32 to within about 2 ulp (Cody–Waite reduction and the Cephes polynomial), written
/// branch-free so that loops over it vectorise; libm's scalar `expf` was a tenth of a training
/// step (softmax over the vocabulary, attention, SiLU). Inputs are clamped to [-87.3, 88.3]:
/// below that it returns ~1e-38 instead of 0, which no sum here can tell apart.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the constants as Cephes publishes them
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 × 2^23: adding it rounds to an integer
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    // 2^n from the bits of t, whose low mantissa bits hold n (a float-to-int cast would not
    // vectorise: Rust's saturating `as` is done lane by lane)
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    e * two_n
}

/// Index of the first largest value (numpy's `argmax`; the greedy token of a logits row).
pub fn argmax<T: PartialOrd + Copy>(v: &[T]) -> usize {
    v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}

/// `y += alpha * x`.
#[inline]
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (a, b) in y.iter_mut().zip(x) {
        *a += alpha * b;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((super::exp(x) as f64) - want).abs() / want;
            worst = worst.max(rel);
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert!(super::exp(f32::NEG_INFINITY) < 1e-37);
        assert_eq!(super::exp(0.0), 1.0);
    }
}

#[cfg(test)]
pub(crate) mod gradcheck {
    //! Central finite differences of a scalar function of f32 inputs, evaluated in f64.
    use crate::rng::Rng;

    pub fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.normal() as f32 * scale).collect()
    }

    /// Checks `analytic` against the numerical gradient of `f` at `x` (every coordinate when there
    /// are few, else a seeded sample of them). Errors are measured against the largest gradient.
    pub fn check(name: &str, x: &[f32], analytic: &[f32], f: &mut dyn FnMut(&[f32]) -> f64) {
        assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
        let scale = analytic.iter().fold(1e-3f32, |m, g| m.max(g.abs())) as f64;
        let idx: Vec<usize> = if x.len() <= 400 {
            (0..x.len()).collect()
        } else {
            let mut r = Rng::new(99);
            (0..400).map(|_| r.below(x.len() as u64) as usize).collect()
        };
        let mut xp = x.to_vec();
        let mut worst = 0.0f64;
        for &i in &idx {
            let h = 1e-2f32 * x[i].abs().max(0.1);
            xp[i] = x[i] + h;
            let fp = f(&xp);
            xp[i] = x[i] - h;
            let fm = f(&xp);
            xp[i] = x[i];
            let hx = ((x[i] + h) as f64) - ((x[i] - h) as f64);
            let num = (fp - fm) / hx;
            let err = (num - analytic[i] as f64).abs() / scale;
            worst = worst.max(err);
            assert!(err < 5e-3, "{name}[{i}]: numerical {num} vs analytic {} (scale {scale})", analytic[i]);
        }
        eprintln!("{name}: worst relative error {worst:.2e} over {} coordinates", idx.len());
    }

    /// `sum(out * probe)` in f64: a scalar loss whose gradient with respect to `out` is `probe`.
    pub fn probe_loss(out: &[f32], probe: &[f32]) -> f64 {
        out.iter().zip(probe).map(|(a, b)| *a as f64 * *b as f64).sum()
    }
}
