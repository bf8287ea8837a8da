//! Choosing the next token from a row of logits: greedy (`temperature 0`, deterministic), or
//! sampling with temperature, top-k and top-p from a seeded generator, after llama.cpp's
//! repetition penalty and OpenAI's frequency and presence penalties. [`Sampler::distribution`]
//! exposes the distribution a token is drawn from, which speculative sampling needs.

use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct SamplingOptions {
    /// 0: greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    pub top_p: f32,
    pub seed: u64,
    /// llama.cpp's repetition penalty over the last `repeat_last_n` tokens (prompt included): a
    /// positive logit divided by it, a negative one multiplied (1: off).
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    /// OpenAI's penalties over the tokens generated so far (0: off): a token's logit minus
    /// `frequency_penalty` × its count and `presence_penalty` once it has appeared.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
        }
    }
}

impl SamplingOptions {
    /// Whether any penalty changes the logits (then the draft of speculative decoding, which
    /// proposes by plain argmax, does not follow).
    pub fn penalizes(&self) -> bool {
        self.repeat_penalty != 1.0 || self.frequency_penalty != 0.0 || self.presence_penalty != 0.0
    }
}

pub struct Sampler {
    pub opts: SamplingOptions,
    rng: Rng,
    /// Recent tokens, for the repetition penalty.
    history: Vec<u32>,
    /// How often each token was generated, for the frequency and presence penalties.
    generated: std::collections::HashMap<u32, u32>,
    scratch: Vec<f32>,
}

impl Sampler {
    pub fn new(opts: SamplingOptions) -> Self {
        let rng = Rng::new(opts.seed);
        Sampler { opts, rng, history: vec![], generated: Default::default(), scratch: vec![] }
    }

    /// Tokens already in the context (the prompt), which the repetition penalty counts.
    pub fn remember(&mut self, tokens: &[u32]) {
        if self.opts.repeat_penalty != 1.0 {
            self.history.extend_from_slice(tokens);
        }
    }

    /// The next token: drawn from [`distribution`](Self::distribution) (the argmax when greedy),
    /// and remembered by the penalties.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let t = match self.opts.temperature <= 0.0 {
            true => crate::kernels::argmax(&self.penalized(logits)) as u32,
            false => {
                let d = self.distribution(logits);
                self.draw(&d)
            }
        };
        self.accept(t);
        t
    }

    /// Counts `t` as generated (for the penalties), as [`sample`](Self::sample) does with the
    /// tokens it chooses.
    pub fn accept(&mut self, t: u32) {
        if self.opts.repeat_penalty != 1.0 {
            self.history.push(t);
        }
        if self.opts.frequency_penalty != 0.0 || self.opts.presence_penalty != 0.0 {
            *self.generated.entry(t).or_insert(0) += 1;
        }
    }

    /// A uniform draw in [0, 1) from this sampler's generator.
    pub fn uniform(&mut self) -> f64 {
        self.rng.uniform()
    }

    /// The logits after the penalties (the logits themselves when none applies).
    fn penalized<'a>(&mut self, logits: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        if !self.opts.penalizes() {
            return std::borrow::Cow::Borrowed(logits);
        }
        let mut l = std::mem::take(&mut self.scratch);
        l.clear();
        l.extend_from_slice(logits);
        let v = l.len();
        let p = self.opts.repeat_penalty;
        if p != 1.0 {
            let recent = &self.history[self.history.len().saturating_sub(self.opts.repeat_last_n)..];
            let mut seen = std::collections::HashSet::new();
            for &t in recent.iter().filter(|&&t| (t as usize) < v) {
                if seen.insert(t) {
                    let x = &mut l[t as usize];
                    *x = if *x <= 0.0 { *x * p } else { *x / p };
                }
            }
        }
        let (fp, pp) = (self.opts.frequency_penalty, self.opts.presence_penalty);
        for (&t, &count) in self.generated.iter().filter(|(&t, _)| (t as usize) < v) {
            l[t as usize] -= fp * count as f32 + pp;
        }
        std::borrow::Cow::Owned(l)
    }

    /// The distribution the next token is drawn from (temperature > 0): the penalized logits over
    /// the temperature, softmax, top-k, then top-p; candidates most likely first (ties by id).
    pub fn distribution(&mut self, logits: &[f32]) -> Distribution {
        let l = self.penalized(logits);
        let t = self.opts.temperature.max(f32::MIN_POSITIVE);
        let mut cand: Vec<(u32, f32)> = l.iter().enumerate().map(|(i, &x)| (i as u32, x / t)).collect();
        if let std::borrow::Cow::Owned(buf) = l {
            self.scratch = buf;
        }
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
        cand.truncate(probs.len());
        Distribution { ids: cand.into_iter().map(|c| c.0).collect(), probs }
    }

    /// A token drawn from `d` with this sampler's generator.
    pub fn draw(&mut self, d: &Distribution) -> u32 {
        let u = self.rng.uniform();
        let mut acc = 0.0;
        for (&id, p) in d.ids.iter().zip(&d.probs) {
            acc += p;
            if u < acc {
                return id;
            }
        }
        d.ids[d.ids.len() - 1]
    }
}

/// A sampling distribution over a few candidate tokens: `probs[i]` of `ids[i]`, summing to 1.
#[derive(Clone, Debug, Default)]
pub struct Distribution {
    pub ids: Vec<u32>,
    pub probs: Vec<f64>,
}

impl Distribution {
    /// The probability of `id` (0 outside the candidates).
    pub fn prob(&self, id: u32) -> f64 {
        self.ids.iter().position(|&i| i == id).map(|i| self.probs[i]).unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_seeded_and_respects_top_k() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let draw = |seed, k| {
            let mut s = Sampler::new(SamplingOptions { temperature: 1.0, top_k: k, seed, ..Default::default() });
            (0..200).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3, 0), draw(3, 0));
        assert_ne!(draw(3, 0), draw(4, 0));
        let mut order: Vec<usize> = (0..50).collect();
        order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap());
        let top3: Vec<u32> = order[..3].iter().map(|&i| i as u32).collect();
        assert!(draw(5, 3).iter().all(|t| top3.contains(t)));
        let mut p = Sampler::new(SamplingOptions { temperature: 1.0, top_p: 1e-6, seed: 1, ..Default::default() });
        assert_eq!(p.sample(&logits), order[0] as u32, "top-p this small keeps only the argmax");
    }

    /// llama.cpp's rule: a repeated token's positive logit divided by the penalty, a negative one
    /// multiplied; only the last `repeat_last_n` tokens (prompt included) count.
    #[test]
    fn repetition_penalty_as_llama_cpp_applies_it() {
        let greedy = |penalty: f32, last_n: usize| {
            let mut s =
                Sampler::new(SamplingOptions { repeat_penalty: penalty, repeat_last_n: last_n, ..Default::default() });
            s.remember(&[1, 0]);
            s.sample(&[2.0, -1.0, 1.5, 0.9])
        };
        assert_eq!(greedy(1.0, 64), 0); // off
        assert_eq!(greedy(2.0, 64), 2); // 2.0 / 2 = 1.0 < 1.5
        assert_eq!(greedy(2.0, 1), 2); // token 0 is the last one: still penalized
        let mut s = Sampler::new(SamplingOptions { repeat_penalty: 2.0, repeat_last_n: 1, ..Default::default() });
        s.remember(&[0, 1]); // only token 1 (logit -1 → -2) in the window
        assert_eq!(s.sample(&[2.0, -1.0, 1.5, 0.9]), 0);
        // and the chosen token joins the window: 2.0 → 1.0 the next time
        assert_eq!(s.sample(&[2.0, -1.0, 1.5, 0.9]), 2);
    }

    /// OpenAI's definition: a logit minus frequency_penalty × the token's count in the output so
    /// far, minus presence_penalty once it occurred; the prompt does not count.
    #[test]
    fn frequency_and_presence_penalties_as_openai_defines_them() {
        let logits = [2.0f32, 1.9, 0.0];
        let run = |frequency_penalty: f32, presence_penalty: f32| -> Vec<u32> {
            let mut s = Sampler::new(SamplingOptions { frequency_penalty, presence_penalty, ..Default::default() });
            s.remember(&[0, 0, 0]);
            (0..5).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(run(0.0, 0.0), [0, 0, 0, 0, 0]);
        // 0 (2.0 → 1.5), 1 (1.9 → 1.4), 0 (1.5 → 1.0), 1 (1.4 → 0.9), 0
        assert_eq!(run(0.5, 0.0), [0, 1, 0, 1, 0]);
        // 0 (2.0 → 1.85 once), 1 (1.9 → 1.75), then 0 for good
        assert_eq!(run(0.0, 0.15), [0, 1, 0, 0, 0]);
        // a negative penalty favours what was said
        assert_eq!(run(-1.0, 0.0), [0, 0, 0, 0, 0]);
    }
}
