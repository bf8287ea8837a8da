//! Token embedding lookup and its backward (a scatter-add into the embedding's gradient).

use anyhow::{bail, Result};
use rayon::prelude::*;

pub fn embedding_forward(x: &mut [f32], tokens: &[u32], table: &[f32], d: usize) -> Result<()> {
    let vocab = table.len() / d;
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
        bail!("token id {t} is outside the vocabulary (size {vocab})");
    }
    x.par_chunks_mut(d).zip(tokens.par_iter()).for_each(|(row, &t)| {
        row.copy_from_slice(&table[t as usize * d..(t as usize + 1) * d]);
    });
    Ok(())
}

/// `dtable[token] += dx[row]`, rows in order (deterministic; cheap next to the GEMMs).
pub fn embedding_backward(dtable: &mut [f32], dx: &[f32], tokens: &[u32], d: usize) {
    for (row, &t) in dx.chunks_exact(d).zip(tokens) {
        super::axpy(&mut dtable[t as usize * d..(t as usize + 1) * d], 1.0, row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{check, probe_loss, randn};

    #[test]
    fn embedding_gradient_matches_finite_differences() {
        let (vocab, d) = (7, 5);
        let tokens = [3u32, 0, 3, 6, 1, 3];
        let table = randn(vocab * d, 1, 1.0);
        let probe = randn(tokens.len() * d, 2, 1.0);
        let fwd = |tab: &[f32]| {
            let mut x = vec![0.0; tokens.len() * d];
            embedding_forward(&mut x, &tokens, tab, d).unwrap();
            x
        };
        let mut dt = vec![0.0; table.len()];
        embedding_backward(&mut dt, &probe, &tokens, d);
        check("embedding", &table, &dt, &mut |t| probe_loss(&fwd(t), &probe));
        let mut x = vec![0.0; d];
        assert!(embedding_forward(&mut x, &[7], &table, d).unwrap_err().to_string().contains("token id 7"));
    }
}
