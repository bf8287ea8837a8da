//! lm-evaluation-harness v0.4 scoring rules: a request's score is the summed log-probability of
//! its continuation tokens, where the tokens are `encode(context + continuation)` minus those of
//! `encode(context)` (trailing context spaces moved to the continuation), BOS prepended, inputs cut
//! from the left to the context window. `acc` takes the argmax score, `acc_norm` the argmax of
//! score / character length of the choice; standard errors are the sample standard deviation over
//! √n. Requests that share a context reuse its KV cache.

use super::tasks::{Item, Task};
use crate::kernels::argmax;
use crate::model::{InferenceModel, KvCache};
use crate::tokenizer::Tokenizer;
use anyhow::{ensure, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::io::Write;

/// lm-eval's `_encode_pair`, with BOS: (context tokens, continuation tokens).
pub fn encode_pair(tok: &Tokenizer, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end_matches(' ');
    let n_spaces = context.len() - trimmed.len();
    let (ctx, cont) = if n_spaces > 0 {
        (trimmed.to_string(), format!("{}{continuation}", &context[trimmed.len()..]))
    } else {
        (context.to_string(), continuation.to_string())
    };
    let with_bos = |s: &str| -> Result<Vec<u32>> { Ok(std::iter::once(tok.bos_id).chain(tok.encode(s)?).collect()) };
    let whole = with_bos(&format!("{ctx}{cont}"))?;
    let ctx_enc = with_bos(&ctx)?;
    let cont_enc = whole[ctx_enc.len().min(whole.len())..].to_vec();
    Ok((ctx_enc, cont_enc))
}

/// Cuts `context + continuation` from the left to `max_len + 1` tokens (lm-eval's window: the
/// model sees all but the last).
pub fn truncate_left(ctx: &[u32], cont: &[u32], max_len: usize) -> (Vec<u32>, Vec<u32>) {
    let total = ctx.len() + cont.len();
    if total <= max_len + 1 {
        return (ctx.to_vec(), cont.to_vec());
    }
    let cut = total - (max_len + 1);
    if cut < ctx.len() {
        (ctx[cut..].to_vec(), cont.to_vec())
    } else {
        // continuation alone overflows: keep its last max_len + 1 tokens, the first as context
        let c = &cont[cont.len() - (max_len + 1)..];
        (c[..1].to_vec(), c[1..].to_vec())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub task: String,
    pub doc_index: usize,
    pub choice_index: usize,
    pub loglikelihood: f64,
    pub is_greedy: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub file: String,
    pub n: usize,
    pub acc: f64,
    pub acc_stderr: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm_stderr: Option<f64>,
    pub seconds: f64,
    pub items_per_s: f64,
}

/// Mean and its standard error (sample standard deviation / √n), as lm-eval's `mean_stderr`.
pub fn mean_stderr(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// `acc` and `acc_norm` of one item from its choices' log-likelihoods (first maximum wins, as
/// numpy's argmax).
pub fn item_correct(item: &Item, scores: &[f64]) -> (bool, bool) {
    let norm: Vec<f64> = scores.iter().zip(&item.choices).map(|(s, c)| s / c.chars().count() as f64).collect();
    (argmax(scores) == item.gold, argmax(&norm) == item.gold)
}

/// Scores every request of `task`; `on_item` is called after each item (progress).
pub fn evaluate_task(
    model: &InferenceModel,
    tok: &Tokenizer,
    task: &Task,
    mut log: Option<&mut dyn Write>,
    on_item: &mut dyn FnMut(usize),
) -> Result<TaskResult> {
    ensure!(!task.items.is_empty(), "task `{}` has no items", task.name);
    let t0 = std::time::Instant::now();
    let max_len = model.cfg.max_position_embeddings;
    let (mut acc, mut acc_norm) = (vec![], vec![]);
    // Items in parallel, in fixed runs of RUN items that share one KV cache (choices of an item,
    // and the few-shot prefix of consecutive MMLU items, are computed once). The runs do not
    // depend on the thread count, so neither do the scores; results are logged in item order.
    const GROUP: usize = 64;
    const RUN: usize = 8;
    for (g, group) in task.items.chunks(GROUP).enumerate() {
        let scored: Vec<Result<Vec<(f64, bool)>>> = group
            .par_chunks(RUN)
            .map(|run| {
                let mut cache = KvCache::new(model, max_len);
                run.iter()
                    .map(|item| {
                        item.requests
                            .iter()
                            .map(|(ctx, cont)| {
                                let (ce, ke) = encode_pair(tok, ctx, cont)?;
                                let (ce, ke) = truncate_left(&ce, &ke, max_len);
                                if ke.is_empty() {
                                    Ok((0.0, true))
                                } else {
                                    model.loglikelihood(&ce, &ke, &mut cache)
                                }
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                    .collect::<Vec<_>>()
            })
            .flatten()
            .collect();
        for (j, (item, r)) in group.iter().zip(scored).enumerate() {
            let i = g * GROUP + j;
            let r = r?;
            if let Some(w) = log.as_deref_mut() {
                for (c, &(ll, greedy)) in r.iter().enumerate() {
                    let s = Sample {
                        task: task.name.clone(),
                        doc_index: i,
                        choice_index: c,
                        loglikelihood: ll,
                        is_greedy: greedy,
                    };
                    writeln!(w, "{}", serde_json::to_string(&s)?)?;
                }
            }
            let scores: Vec<f64> = r.iter().map(|x| x.0).collect();
            let (a, an) = item_correct(item, &scores);
            acc.push(a as u8 as f64);
            acc_norm.push(an as u8 as f64);
            on_item(i + 1);
        }
    }
    let (a, ae) = mean_stderr(&acc);
    let (an, ane) = mean_stderr(&acc_norm);
    let secs = t0.elapsed().as_secs_f64();
    Ok(TaskResult {
        task: task.name.clone(),
        file: task.file.display().to_string(),
        n: task.items.len(),
        acc: a,
        acc_stderr: ae,
        acc_norm: task.has_acc_norm.then_some(an),
        acc_norm_stderr: task.has_acc_norm.then_some(ane),
        seconds: secs,
        items_per_s: task.items.len() as f64 / secs,
    })
}
