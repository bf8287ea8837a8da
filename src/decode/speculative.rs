//! Speculative decoding: a draft model with the target's vocabulary proposes a few tokens for a
//! sequence, and the target checks them all in the rows of one pass (the weights are read once
//! for every row, so verifying k tokens costs little more than decoding one while decoding is
//! bound by memory).
//!
//! A greedy sequence keeps a proposal while the target's own choice agrees, so the output is
//! exactly that of decoding without a draft. A sampled sequence uses the speculative sampling rule
//! (Leviathan et al. 2023; Chen et al. 2023): proposal `x` drawn from the draft's distribution `q`
//! is kept with probability `min(1, p(x)/q(x))` under the target's `p`; at the first rejection the
//! token is drawn from `max(0, p − q)` normalised; so every token is distributed as the target's.
//! The draft stops proposing where its most likely token has less than `p_min` probability
//! (llama.cpp's `--draft-p-min`), and each sequence's next count follows how many were accepted.

use super::sampler::{Distribution, Sampler};
use super::sequence::Sequence;
use crate::model::{InferenceModel, RowMode, Segment};
use anyhow::Result;

#[derive(Clone, Debug)]
pub struct DraftOptions {
    /// Tokens proposed per step at most (`--draft-tokens`).
    pub max_tokens: usize,
    /// A proposal ends where the draft's most likely token is less likely than this.
    pub p_min: f32,
}

impl Default for DraftOptions {
    fn default() -> Self {
        DraftOptions { max_tokens: 5, p_min: 0.5 }
    }
}

/// One sequence's proposed tokens, with the distribution each was drawn from (sampled
/// sequences; empty for greedy ones).
#[derive(Default)]
pub(crate) struct Proposal {
    pub tokens: Vec<u32>,
    pub q: Vec<Distribution>,
}

/// Runs the draft over what its caches lack of `seqs`' cached tokens (plus, with `and_last`, each
/// one's newest token); returns the final hidden state of each sequence's last row.
fn catch_up(d: &InferenceModel, seqs: &mut [&mut Sequence], and_last: bool) -> Result<Vec<f32>> {
    let feeds: Vec<Vec<u32>> = seqs
        .iter()
        .map(|s| {
            let dc = &s.draft.as_ref().expect("a draft").cache;
            let mut t = s.cache.tokens[dc.len..].to_vec();
            if and_last {
                t.push(s.last);
            }
            t
        })
        .collect();
    let mut segs: Vec<Segment> = seqs
        .iter_mut()
        .zip(&feeds)
        .filter(|(_, t)| !t.is_empty())
        .map(|(s, t)| Segment { tokens: t, cache: &mut s.draft.as_mut().expect("a draft").cache })
        .collect();
    if segs.is_empty() {
        return Ok(vec![]);
    }
    let h = d.forward(&mut segs, RowMode::BatchInvariant)?;
    let dm = d.cfg.hidden_size;
    let mut lasts = Vec::with_capacity(seqs.len() * dm);
    let mut r = 0;
    for t in feeds.iter().filter(|t| !t.is_empty()) {
        r += t.len();
        lasts.extend_from_slice(&h[(r - 1) * dm..r * dm]);
    }
    Ok(lasts)
}

/// The draft follows a prefill: its caches take the tokens the target's hold.
pub(crate) fn follow_prefill(d: &InferenceModel, seqs: &mut [&mut Sequence]) -> Result<()> {
    catch_up(d, seqs, false).map(|_| ())
}

/// Proposals for `seqs` (decoding, each with a draft), computed together one position at a time.
pub(crate) fn propose(d: &InferenceModel, seqs: &mut [&mut Sequence], opts: &DraftOptions) -> Result<Vec<Proposal>> {
    let ctx = d.max_positions();
    let want: Vec<usize> = seqs
        .iter()
        .map(|s| {
            let k = s.draft.as_ref().map_or(0, |dr| dr.k);
            k.min(s.left().saturating_sub(1)).min(ctx.saturating_sub(s.cache.len + 2))
        })
        .collect();
    let mut props: Vec<Proposal> = (0..seqs.len()).map(|_| Proposal::default()).collect();
    let mut going: Vec<bool> = want.iter().map(|&w| w > 0).collect();
    let v = d.cfg.vocab_size;
    for j in 0.. {
        let idx: Vec<usize> = (0..seqs.len()).filter(|&i| going[i]).collect();
        if idx.is_empty() {
            break;
        }
        let lasts = if j == 0 {
            let mut sub: Vec<&mut Sequence> =
                seqs.iter_mut().enumerate().filter(|(i, _)| going[*i]).map(|(_, s)| &mut **s).collect();
            catch_up(d, &mut sub, true)?
        } else {
            let feeds: Vec<[u32; 1]> = idx.iter().map(|&i| [props[i].tokens[j - 1]]).collect();
            let mut segs: Vec<Segment> = seqs
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| going[*i])
                .zip(&feeds)
                .map(|((_, s), t)| Segment { tokens: t, cache: &mut s.draft.as_mut().expect("a draft").cache })
                .collect();
            d.forward(&mut segs, RowMode::BatchInvariant)?
        };
        let logits = d.head_logits(&lasts, RowMode::BatchInvariant);
        for (n, &i) in idx.iter().enumerate() {
            let row = &logits[n * v..(n + 1) * v];
            let s = &mut *seqs[i];
            let drafted = match s.sampler.opts.temperature <= 0.0 {
                true => {
                    let x = crate::kernels::argmax(row);
                    let z: f64 = row.iter().map(|&l| ((l - row[x]) as f64).exp()).sum();
                    (1.0 / z >= opts.p_min as f64).then_some((x as u32, None))
                }
                false => {
                    let dr = s.draft.as_mut().expect("a draft");
                    let q = dr.sampler.distribution(row);
                    (q.probs[0] >= opts.p_min as f64).then(|| (dr.sampler.draw(&q), Some(q)))
                }
            };
            match drafted {
                Some((x, q)) => {
                    props[i].tokens.push(x);
                    props[i].q.extend(q);
                    going[i] = props[i].tokens.len() < want[i];
                }
                None => going[i] = false,
            }
        }
    }
    Ok(props)
}

/// The target's verdict on a proposal, row by row: `Some(t)` to emit `t` and go on, with whether
/// it was the proposal itself.
pub(crate) fn verify_row(sampler: &mut Sampler, row: &[f32], prop: &Proposal, r: usize) -> (u32, bool) {
    if r >= prop.tokens.len() {
        return (sampler.sample(row), false);
    }
    let x = prop.tokens[r];
    if sampler.opts.temperature <= 0.0 {
        let t = sampler.sample(row);
        return (t, t == x);
    }
    let p = sampler.distribution(row);
    let q = &prop.q[r];
    let (px, qx) = (p.prob(x), q.prob(x));
    if sampler.uniform() * qx < px {
        sampler.accept(x);
        return (x, true);
    }
    // rejected: the rest of the target's mass, max(0, p − q)
    let mut residual = Distribution { ids: vec![], probs: vec![] };
    for (&id, &pi) in p.ids.iter().zip(&p.probs) {
        let m = (pi - q.prob(id)).max(0.0);
        if m > 0.0 {
            residual.ids.push(id);
            residual.probs.push(m);
        }
    }
    let z: f64 = residual.probs.iter().sum();
    let t = if z > 0.0 {
        residual.probs.iter_mut().for_each(|m| *m /= z);
        sampler.draw(&residual)
    } else {
        sampler.draw(&p)
    };
    sampler.accept(t);
    (t, false)
}

/// The next proposal length after `accepted` of `proposed` were kept.
pub(crate) fn next_k(k: usize, proposed: usize, accepted: usize, max: usize) -> usize {
    if proposed == 0 {
        return k.max(1);
    }
    match accepted == proposed {
        true => (k + 1).min(max),
        false => (accepted + 1).max(k.div_ceil(2)).min(max),
    }
}
