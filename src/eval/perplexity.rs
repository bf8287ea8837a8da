//! Perplexity of a text file or a prepared shard with a sliding window: `stride` new tokens are
//! scored at a time, each with up to `window` tokens of context before it, so every token after
//! the first is scored exactly once (stride = window: disjoint windows; smaller strides: more
//! context per token, more compute).

use crate::kernels::cross_entropy::IGNORE_INDEX;
use crate::model::{InferenceModel, KvCache, RowMode};
use anyhow::{ensure, Result};

#[derive(Debug, serde::Serialize)]
pub struct Perplexity {
    pub tokens_scored: usize,
    pub nll: f64,
    pub perplexity: f64,
}

pub fn perplexity(model: &InferenceModel, tokens: &[u32], window: usize, stride: usize) -> Result<Perplexity> {
    ensure!(tokens.len() >= 2, "need at least 2 tokens");
    ensure!(window >= 2 && stride >= 1 && stride <= window, "need 2 ≤ window, 1 ≤ stride ≤ window");
    let ctx = model.cfg.max_position_embeddings;
    // a wider window would score positions the model was never trained on
    ensure!(window <= ctx, "window {window} exceeds the model's context ({ctx}): use a window of at most {ctx}");
    let (mut sum, mut count) = (0.0f64, 0usize);
    let mut next = 1; // the next token to score (token 0 has nothing before it)
    while next < tokens.len() {
        // score tokens next..end, reading up to `window` tokens before each
        let end = (next + stride).min(tokens.len());
        let start = (end - 1).saturating_sub(window);
        let inp = &tokens[start..end - 1];
        let tgt: Vec<u32> = (start + 1..end).map(|j| if j >= next { tokens[j] } else { IGNORE_INDEX }).collect();
        let mut cache = KvCache::new(model, inp.len());
        let hidden = model.forward_cached_hidden(inp, &mut cache, RowMode::MayUseGemm)?;
        for (l, &t) in model.row_losses(&hidden, &tgt).iter().zip(&tgt) {
            if t != IGNORE_INDEX {
                sum += *l as f64;
                count += 1;
            }
        }
        next = end;
    }
    let nll = sum / count as f64;
    Ok(Perplexity { tokens_scored: count, nll, perplexity: nll.exp() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_scores_every_token_once() {
        let llama = crate::model::test_model(200, 32, 2, 1.0);
        let model =
            InferenceModel::from_llama(&llama, crate::model::ModelDtype::Uniform(crate::kernels::quant::Format::F32))
                .unwrap();
        let cfg = model.cfg.clone();
        let mut r = crate::rng::Rng::new(1);
        let toks: Vec<u32> = (0..70).map(|_| r.below(200) as u32).collect();
        // one window over everything: the plain mean next-token loss
        let short = &toks[..30];
        let p = perplexity(&model, short, 32, 32).unwrap();
        let mut ws = crate::model::Workspace::new(&cfg, 1, 29);
        let want = llama.forward_loss(&mut ws, &short[..29], &short[1..]).unwrap();
        assert_eq!(p.tokens_scored, 29);
        assert!((p.nll - want).abs() < 1e-9, "{} vs {want}", p.nll);
        // sliding windows: each of the 69 predictable tokens once, with no less context than
        // a non-overlapping split would give
        let slide = perplexity(&model, &toks, 32, 8).unwrap();
        let disjoint = perplexity(&model, &toks, 32, 32).unwrap();
        assert_eq!((slide.tokens_scored, disjoint.tokens_scored), (69, 69));
        assert!(slide.nll.is_finite() && (slide.nll - disjoint.nll).abs() < 0.5);
        // each token j of chunk [next, end) is scored from the window tokens[end − 1 − 32 .. j]:
        // recompute every such loss with the training forward, token by token
        let v = cfg.vocab_size;
        let (mut sum, mut n, mut next) = (0.0f64, 0usize, 1usize);
        while next < toks.len() {
            let end = (next + 8).min(toks.len());
            let start = (end - 1).saturating_sub(32);
            for j in next..end {
                let ctx = &toks[start..j];
                let mut ws = crate::model::Workspace::new(&cfg, 1, ctx.len());
                let logits = llama.forward_logits(&mut ws, ctx).unwrap();
                let row = &logits[(ctx.len() - 1) * v..ctx.len() * v];
                let m = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
                let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
                sum += lse - row[toks[j] as usize] as f64;
                n += 1;
            }
            next = end;
        }
        assert_eq!(n, 69);
        assert!((slide.nll - sum / n as f64).abs() < 1e-5, "{} vs {}", slide.nll, sum / n as f64);
        let err = perplexity(&model, &toks, 33, 8).unwrap_err().to_string();
        assert!(err.contains("exceeds the model's context (32)"), "{err}");
    }
}
