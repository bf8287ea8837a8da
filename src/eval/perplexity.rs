//! Perplexity of a text file or a prepared shard with a sliding window (the Hugging Face recipe):
//! windows of `window` tokens every `stride` tokens; each token is scored once, by the first
//! window that covers it with the most context.

use crate::kernels::cross_entropy::IGNORE_INDEX;
use crate::model::{Llama, Workspace};
use anyhow::{ensure, Result};

#[derive(Debug, serde::Serialize)]
pub struct Perplexity {
    pub tokens_scored: usize,
    pub nll: f64,
    pub perplexity: f64,
}

pub fn perplexity(model: &Llama, tokens: &[u32], window: usize, stride: usize) -> Result<Perplexity> {
    ensure!(tokens.len() >= 2, "need at least 2 tokens");
    ensure!(window >= 2 && stride >= 1 && stride <= window, "need 2 <= window, 1 <= stride <= window");
    let window = window.min(model.cfg.max_position_embeddings);
    let (mut sum, mut count) = (0.0f64, 0usize);
    let mut prev_end = 1; // token 0 is never predicted
    let mut begin = 0;
    let mut ws: Option<Workspace> = None;
    while prev_end < tokens.len() {
        let end = (begin + window).min(tokens.len());
        let inp = &tokens[begin..end - 1];
        // targets: token j+1 for position j, scored only if not scored by an earlier window
        let tgt: Vec<u32> = (begin + 1..end).map(|j| if j >= prev_end { tokens[j] } else { IGNORE_INDEX }).collect();
        if ws.as_ref().map(|w| w.seq_len != inp.len()).unwrap_or(true) {
            ws = Some(Workspace::new(&model.cfg, 1, inp.len()));
        }
        let w = ws.as_mut().unwrap();
        model.forward_loss(w, inp, &tgt)?;
        for (l, &t) in w.row_loss.iter().zip(&tgt) {
            if t != IGNORE_INDEX {
                sum += *l as f64;
                count += 1;
            }
        }
        prev_end = end;
        begin += stride;
    }
    let nll = sum / count as f64;
    Ok(Perplexity { tokens_scored: count, nll, perplexity: nll.exp() })
}
