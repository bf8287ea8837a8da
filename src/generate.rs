//! Text generation with the KV cache: greedy (`temperature 0`, deterministic), or sampling with
//! temperature, top-k and top-p from a seeded generator; stops at EOS or a length. And the Zephyr
//! chat template TinyLlama-Chat was tuned with.

use crate::model::{KvCache, Llama};
use crate::rng::Rng;
use anyhow::{ensure, Result};

#[derive(Clone, Debug)]
pub struct SamplingOptions {
    /// 0: greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

pub struct Sampler {
    opts: SamplingOptions,
    rng: Rng,
}

impl Sampler {
    pub fn new(opts: SamplingOptions) -> Self {
        let rng = Rng::new(opts.seed);
        Sampler { opts, rng }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let argmax = || crate::kernels::argmax(logits) as u32;
        if self.opts.temperature <= 0.0 {
            return argmax();
        }
        let t = self.opts.temperature;
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l / t)).collect();
        // most likely first; ties by id so the order is total
        cand.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal).then(a.0.cmp(&b.0)));
        if self.opts.top_k > 0 {
            cand.truncate(self.opts.top_k);
        }
        let m = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - m) as f64).exp()).collect();
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
        if self.opts.top_p < 1.0 {
            let (mut acc, mut keep) = (0.0, probs.len());
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.opts.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let z: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= z);
        }
        let u = self.rng.uniform();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if u < acc {
                return cand[i].0;
            }
        }
        cand[probs.len() - 1].0
    }
}

/// Generates up to `max_new` tokens after `prompt` (which should start with BOS), calling
/// `on_token` with each as it comes; stops after `eos`. Returns the new tokens.
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    max_new: usize,
    eos: Option<u32>,
    sampler: &mut Sampler,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    ensure!(!prompt.is_empty(), "empty prompt");
    let ctx = model.cfg.max_position_embeddings;
    ensure!(prompt.len() < ctx, "prompt of {} tokens fills the context ({ctx})", prompt.len());
    let max_new = max_new.min(ctx - prompt.len());
    let mut cache = KvCache::new(model, prompt.len() + max_new);
    let mut logits = model.next_token_logits(prompt, &mut cache)?;
    let mut out = vec![];
    for i in 0..max_new {
        let t = sampler.sample(&logits);
        out.push(t);
        on_token(t)?;
        if Some(t) == eos || i + 1 == max_new {
            break;
        }
        logits = model.next_token_logits(&[t], &mut cache)?;
    }
    Ok(out)
}

/// The Zephyr template of TinyLlama-1.1B-Chat: `<|system|>\n…</s>\n<|user|>\n…</s>\n<|assistant|>\n`.
pub fn zephyr_prompt(system: Option<&str>, turns: &[(String, Option<String>)]) -> String {
    let mut s = String::new();
    if let Some(sys) = system {
        s += &format!("<|system|>\n{sys}</s>\n");
    }
    for (user, assistant) in turns {
        s += &format!("<|user|>\n{user}</s>\n<|assistant|>\n");
        if let Some(a) = assistant {
            s += &format!("{a}</s>\n");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Workspace;

    /// Greedy generation through the cache equals recomputing the whole sequence at every step.
    #[test]
    fn cached_generation_equals_full_recompute() {
        let model = crate::model::test_model(300, 64, 4, 4.0);
        let cfg = model.cfg.clone();
        let prompt = vec![1u32, 17, 200, 5, 99];
        let mut sampler = Sampler::new(SamplingOptions::default());
        let got = generate(&model, &prompt, 20, None, &mut sampler, &mut |_| Ok(())).unwrap();
        let mut seq = prompt.clone();
        for &t in &got {
            let mut ws = Workspace::new(&cfg, 1, seq.len());
            let logits = model.forward_logits(&mut ws, &seq).unwrap();
            let last = &logits[(seq.len() - 1) * cfg.vocab_size..];
            let want = crate::kernels::argmax(last) as u32;
            assert_eq!(t, want, "after {} tokens", seq.len());
            seq.push(t);
        }
        assert!(got.iter().collect::<std::collections::BTreeSet<_>>().len() > 2, "degenerate test: {got:?}");
    }

    #[test]
    fn sampling_is_seeded_and_respects_top_k() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let draw = |seed, k| {
            let mut s = Sampler::new(SamplingOptions { temperature: 1.0, top_k: k, top_p: 1.0, seed });
            (0..200).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3, 0), draw(3, 0));
        assert_ne!(draw(3, 0), draw(4, 0));
        let mut order: Vec<usize> = (0..50).collect();
        order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap());
        let top3: Vec<u32> = order[..3].iter().map(|&i| i as u32).collect();
        assert!(draw(5, 3).iter().all(|t| top3.contains(t)));
        let mut p = Sampler::new(SamplingOptions { temperature: 1.0, top_k: 0, top_p: 1e-6, seed: 1 });
        assert_eq!(p.sample(&logits), order[0] as u32, "top-p this small keeps only the argmax");
    }

    #[test]
    fn zephyr_template() {
        let p = zephyr_prompt(Some("You are a pirate."), &[("Hi".into(), Some("Arr.".into())), ("Why?".into(), None)]);
        assert_eq!(p, "<|system|>\nYou are a pirate.</s>\n<|user|>\nHi</s>\n<|assistant|>\nArr.</s>\n<|user|>\nWhy?</s>\n<|assistant|>\n");
    }
}
