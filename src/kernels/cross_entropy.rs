//! The output head fused with cross-entropy. Logits are made for a chunk of rows at a time, turned
//! into the loss and, in place, into their gradient, which is immediately pushed back through the
//! head; so the full `[B*T, vocab]` logits never exist (262 MB for the bench shape), only one
//! `[HEAD_CHUNK_ROWS, vocab]` block.

use super::exp;
use super::matmul::{linear_backward_input, linear_backward_weight, linear_forward};
use crate::profile::timed;
use rayon::prelude::*;

/// Target id that contributes neither loss nor gradient (padding).
pub const IGNORE_INDEX: u32 = u32::MAX;

/// Rows of logits alive at once.
pub const HEAD_CHUNK_ROWS: usize = 1024;

/// The factor on each row's loss in the objective whose gradient backward computes: one for all
/// rows (a mean), or one per row (DPO weighs each sequence's tokens by its pair's coefficient).
#[derive(Clone, Copy)]
pub enum RowScale<'a> {
    Uniform(f32),
    PerRow(&'a [f32]),
}

impl RowScale<'_> {
    fn at(&self, row: usize) -> f32 {
        match self {
            RowScale::Uniform(s) => *s,
            RowScale::PerRow(v) => v[row],
        }
    }

    fn from(&self, row: usize) -> Self {
        match self {
            RowScale::Uniform(s) => RowScale::Uniform(*s),
            RowScale::PerRow(v) => RowScale::PerRow(&v[row..]),
        }
    }
}

/// Per row: `loss = logsumexp(logits) − logits[target]`; the logits become
/// `scale · (softmax − onehot)` in place (one exponential per logit), `scale` the row's factor.
/// Ignored rows get zero loss and zero gradient.
pub fn cross_entropy_forward_backward(
    logits: &mut [f32],
    row_loss: &mut [f32],
    targets: &[u32],
    vocab: usize,
    scale: RowScale,
) {
    let rows = logits.par_chunks_mut(vocab).zip(row_loss.par_iter_mut()).zip(targets.par_iter()).enumerate();
    rows.for_each(|(r, ((l, loss), &t))| {
        let grad_scale = scale.at(r);
        if t == IGNORE_INDEX {
            *loss = 0.0;
            l.fill(0.0);
            return;
        }
        let target_logit = l[t as usize];
        let m = max(l);
        // l ← exp(l − m), summed with 16 accumulators
        let mut acc = [0.0f32; 16];
        let mut c = l.chunks_exact_mut(16);
        for ch in &mut c {
            for k in 0..16 {
                ch[k] = exp(ch[k] - m);
                acc[k] += ch[k];
            }
        }
        let mut sum = 0.0f32;
        for v in c.into_remainder() {
            *v = exp(*v - m);
            sum += *v;
        }
        sum += acc.iter().sum::<f32>();
        *loss = m + sum.ln() - target_logit;
        let k = grad_scale / sum;
        for v in l.iter_mut() {
            *v *= k;
        }
        l[t as usize] -= grad_scale;
    });
}

fn max(l: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let c = l.chunks_exact(16);
    let tail = c.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for ch in c {
        for k in 0..16 {
            acc[k] = acc[k].max(ch[k]);
        }
    }
    acc.iter().fold(tail, |a, &b| a.max(b))
}

/// Per-row loss only (the logits are left as they are).
pub fn cross_entropy_forward(logits: &[f32], row_loss: &mut [f32], targets: &[u32], vocab: usize) {
    logits.par_chunks(vocab).zip(row_loss.par_iter_mut()).zip(targets.par_iter()).for_each(|((l, loss), &t)| {
        *loss = if t == IGNORE_INDEX { 0.0 } else { log_sum_exp(l) - l[t as usize] };
    });
}

pub fn log_sum_exp(l: &[f32]) -> f32 {
    let m = max(l);
    let mut acc = [0.0f32; 16];
    let c = l.chunks_exact(16);
    let tail: f32 = c.remainder().iter().map(|&v| exp(v - m)).sum();
    for ch in c {
        for k in 0..16 {
            acc[k] += exp(ch[k] - m);
        }
    }
    m + (acc.iter().sum::<f32>() + tail).ln()
}

/// Output head + cross-entropy, forward and backward together, for training: fills `row_loss`,
/// writes `dxf = ∂L/∂xf` and accumulates `dw += ∂L/∂w` (none for a frozen head), where
/// `L = Σ scale_r · row_loss_r`.
/// `scratch` needs `HEAD_CHUNK_ROWS * vocab` floats.
#[allow(clippy::too_many_arguments)]
pub fn head_cross_entropy_backward(
    row_loss: &mut [f32],
    dxf: &mut [f32],
    mut dw: Option<&mut [f32]>,
    xf: &[f32],
    w: &[f32],
    targets: &[u32],
    d: usize,
    vocab: usize,
    scale: RowScale,
    scratch: &mut [f32],
) {
    let rows = targets.len();
    for r0 in (0..rows).step_by(HEAD_CHUNK_ROWS) {
        let n = HEAD_CHUNK_ROWS.min(rows - r0);
        let logits = &mut scratch[..n * vocab];
        let x = &xf[r0 * d..(r0 + n) * d];
        timed("head_linear_forward", || linear_forward(logits, x, w, n, d, vocab));
        timed("cross_entropy_forward_backward", || {
            cross_entropy_forward_backward(
                logits,
                &mut row_loss[r0..r0 + n],
                &targets[r0..r0 + n],
                vocab,
                scale.from(r0),
            )
        });
        timed("head_linear_backward_input", || {
            linear_backward_input(&mut dxf[r0 * d..(r0 + n) * d], logits, w, n, d, vocab)
        });
        if let Some(dw) = dw.as_deref_mut() {
            timed("head_linear_backward_weight", || linear_backward_weight(dw, logits, x, n, d, vocab));
        }
    }
}

/// Output head + cross-entropy, loss only (evaluation): fills `row_loss`.
pub fn head_cross_entropy_forward(
    row_loss: &mut [f32],
    xf: &[f32],
    w: &[f32],
    targets: &[u32],
    d: usize,
    vocab: usize,
    scratch: &mut [f32],
) {
    let rows = targets.len();
    for r0 in (0..rows).step_by(HEAD_CHUNK_ROWS) {
        let n = HEAD_CHUNK_ROWS.min(rows - r0);
        let logits = &mut scratch[..n * vocab];
        linear_forward(logits, &xf[r0 * d..(r0 + n) * d], w, n, d, vocab);
        cross_entropy_forward(logits, &mut row_loss[r0..r0 + n], &targets[r0..r0 + n], vocab);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{check, randn};

    #[test]
    fn head_cross_entropy_gradients_match_finite_differences() {
        // more rows than one chunk, so that chunk boundaries are crossed; a uniform scale (a mean)
        // and one factor per row, of either sign (DPO's weights)
        let (rows, d, vocab) = (HEAD_CHUNK_ROWS + 3, 6, 13);
        let xf = randn(rows * d, 1, 1.0);
        let w = randn(vocab * d, 2, 1.0);
        let mut targets: Vec<u32> = (0..rows).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
        targets[5] = IGNORE_INDEX;
        let per_row: Vec<f32> = (0..rows).map(|r| ((r % 5) as f32 - 2.0) / rows as f32).collect();
        for scale in [RowScale::Uniform(1.0 / (rows - 1) as f32), RowScale::PerRow(&per_row)] {
            let objective =
                |rl: &[f32]| rl.iter().enumerate().map(|(r, &v)| v as f64 * scale.at(r) as f64).sum::<f64>();
            let loss = |xf: &[f32], w: &[f32]| {
                let mut rl = vec![0.0; rows];
                let mut s = vec![0.0; HEAD_CHUNK_ROWS * vocab];
                head_cross_entropy_forward(&mut rl, xf, w, &targets, d, vocab, &mut s);
                objective(&rl)
            };
            let mut rl = vec![0.0; rows];
            let mut dxf = vec![f32::NAN; rows * d];
            let mut dw = vec![0.0; vocab * d];
            let mut s = vec![0.0; HEAD_CHUNK_ROWS * vocab];
            head_cross_entropy_backward(&mut rl, &mut dxf, Some(&mut dw), &xf, &w, &targets, d, vocab, scale, &mut s);
            assert!((objective(&rl) - loss(&xf, &w)).abs() < 1e-6);
            check("head+ce dxf", &xf, &dxf, &mut |x| loss(x, &w));
            check("head+ce dw", &w, &dw, &mut |wp| loss(&xf, wp));
        }
    }

    #[test]
    fn cross_entropy_matches_log_softmax() {
        let vocab = 40;
        let logits = randn(2 * vocab, 5, 3.0);
        let mut rl = vec![0.0; 2];
        cross_entropy_forward(&logits, &mut rl, &[4, 39], vocab);
        for (r, &t) in [4usize, 39].iter().enumerate() {
            let l = &logits[r * vocab..(r + 1) * vocab];
            let z: f64 = l.iter().map(|&v| (v as f64).exp()).sum();
            let want = z.ln() - l[t] as f64;
            assert!((rl[r] as f64 - want).abs() < 1e-5);
        }
    }
}
