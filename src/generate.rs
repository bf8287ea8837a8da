//! Text generation with the KV cache: greedy (`temperature 0`, deterministic), or sampling with
//! temperature, top-k and top-p from a seeded generator; stops at EOS or a length. Many sequences
//! decode together ([`generate_batch`]): each step runs one token of every live sequence through
//! one pass over the weights, and a sequence's tokens are the same bits as when it runs alone.
//! And the Zephyr chat template TinyLlama-Chat was tuned with.

use crate::model::{InferenceModel, KvCache, RowMode, Segment};
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

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if !self.opts.penalizes() {
            return self.sample_from(logits);
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
        let t = self.sample_from(&l);
        self.scratch = l;
        if p != 1.0 {
            self.history.push(t);
        }
        if fp != 0.0 || pp != 0.0 {
            *self.generated.entry(t).or_insert(0) += 1;
        }
        t
    }

    fn sample_from(&mut self, logits: &[f32]) -> u32 {
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
/// `on_token` with each as it comes; stops after any of `eos`. Returns the new tokens.
pub fn generate(
    model: &InferenceModel,
    prompt: &[u32],
    max_new: usize,
    eos: &[u32],
    sampler: &mut Sampler,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let req = Request { prompt: prompt.to_vec(), max_new, sampling: sampler.opts.clone() };
    let mut out = generate_batch(model, std::slice::from_ref(&req), eos, 1, &mut |_, t| on_token(t))?;
    Ok(out.pop().unwrap_or_default())
}

/// Generates after `prompt` as `tinyllama generate` does: the prompt prefilled in one pass, then
/// one token at a time, each decoded to text as soon as it is whole and handed to `on_text`;
/// stops at EOS, at one of the `stop_strings` (not shown) or after `max_new` tokens (fewer if the
/// context fills). Returns the text and the number of tokens generated.
pub fn generate_text(
    model: &InferenceModel,
    tok: &crate::tokenizer::Tokenizer,
    prompt: &[u32],
    sampler: &mut Sampler,
    max_new: usize,
    stop_strings: &[String],
    on_text: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<(String, usize)> {
    sampler.remember(prompt);
    let ctx = model.max_positions();
    ensure!(prompt.len() < ctx, "the prompt has {} tokens and fills the model's context ({ctx})", prompt.len());
    let max_new = max_new.min(ctx - prompt.len());
    let ends = end_ids(&model.cfg, tok);
    let mut text = TextStream::new(stop_strings.to_vec(), prompt.last().copied());
    let mut cache = KvCache::new(model, prompt.len() + max_new);
    let mut logits = model.next_token_logits(prompt, &mut cache, RowMode::MayUseGemm)?;
    let mut n = 0;
    while n < max_new {
        let t = sampler.sample(&logits);
        n += 1;
        if ends.contains(&t) {
            break;
        }
        on_text(&text.push(tok, t)?)?;
        if text.stopped {
            break;
        }
        if n < max_new {
            logits = model.next_token_logits(&[t], &mut cache, RowMode::BatchInvariant)?;
        }
    }
    on_text(&text.finish())?;
    Ok((text.text().to_string(), n))
}

/// Prompts from a file, one per line, or JSONL objects with a `"prompt"` string (blank lines
/// skipped); a bad line is named.
pub fn read_prompts(file: &std::path::Path) -> Result<Vec<String>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut prompts = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let p = if line.trim_start().starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}:{}: not valid JSON", file.display(), i + 1))?;
            v.get("prompt")
                .and_then(|p| p.as_str())
                .with_context(|| format!("{}:{}: no string field \"prompt\"", file.display(), i + 1))?
                .to_string()
        } else {
            line.to_string()
        };
        prompts.push(p);
    }
    ensure!(!prompts.is_empty(), "{}: no prompts", file.display());
    Ok(prompts)
}

/// The ids that end a generation: the tokenizer's EOS and every `eos_token_id` of the model's
/// config (which may be a list).
pub fn end_ids(cfg: &crate::config::LlamaConfig, tok: &crate::tokenizer::Tokenizer) -> Vec<u32> {
    let mut ids = vec![tok.eos_id];
    for e in cfg.eos_ids() {
        if !ids.contains(&e) {
            ids.push(e);
        }
    }
    ids
}

/// One sequence to generate.
#[derive(Clone, Debug)]
pub struct Request {
    /// Token ids, BOS first.
    pub prompt: Vec<u32>,
    pub max_new: usize,
    pub sampling: SamplingOptions,
}

/// Generates every request, at most `max_batch` sequences decoding together; a finished sequence
/// leaves the batch and the next waiting one is prefilled in its place. `on_token(i, t)` sees each
/// new token of request `i` as it comes. A prompt is prefilled alone, and each decode step
/// computes every sequence's row independently, so a request's tokens do not depend on the others.
pub fn generate_batch(
    model: &InferenceModel,
    reqs: &[Request],
    eos: &[u32],
    max_batch: usize,
    on_token: &mut dyn FnMut(usize, u32) -> Result<()>,
) -> Result<Vec<Vec<u32>>> {
    generate_batch_with_prefix(model, None, reqs, eos, max_batch, on_token)
}

/// [`generate_batch`] where the prompts share a prefix already in `prefix` (few-shot examples
/// computed once): each request copies the cached positions its prompt agrees with (all but its
/// last prompt token at most) and prefills only the rest.
pub fn generate_batch_with_prefix(
    model: &InferenceModel,
    prefix: Option<&KvCache>,
    reqs: &[Request],
    eos: &[u32],
    max_batch: usize,
    on_token: &mut dyn FnMut(usize, u32) -> Result<()>,
) -> Result<Vec<Vec<u32>>> {
    let ctx = model.max_positions();
    for (i, r) in reqs.iter().enumerate() {
        ensure!(!r.prompt.is_empty(), "prompt {i} is empty");
        ensure!(r.prompt.len() < ctx, "prompt {i} has {} tokens and fills the context ({ctx})", r.prompt.len());
    }
    struct Live {
        i: usize,
        cache: KvCache,
        sampler: Sampler,
        last: u32,
        left: usize,
    }
    let mut out: Vec<Vec<u32>> = vec![vec![]; reqs.len()];
    let mut live: Vec<Live> = vec![];
    let mut next = 0;
    let v = model.cfg.vocab_size;
    loop {
        // admit waiting requests: prefill alone, sample the first token
        while live.len() < max_batch.max(1) && next < reqs.len() {
            let r = &reqs[next];
            let max_new = r.max_new.min(ctx - r.prompt.len());
            let i = next;
            next += 1;
            if max_new == 0 {
                continue;
            }
            let max_len = r.prompt.len() + max_new;
            let mut cache = match prefix {
                Some(p) => {
                    let common = p.tokens.iter().zip(&r.prompt).take_while(|(a, b)| a == b).count();
                    KvCache::with_prefix(p, common.min(r.prompt.len() - 1), max_len)
                }
                None => KvCache::new(model, max_len),
            };
            let logits = model.next_token_logits(&r.prompt[cache.len..], &mut cache, RowMode::MayUseGemm)?;
            let mut sampler = Sampler::new(r.sampling.clone());
            sampler.remember(&r.prompt);
            let t = sampler.sample(&logits);
            out[i].push(t);
            on_token(i, t)?;
            if !eos.contains(&t) && max_new > 1 {
                live.push(Live { i, cache, sampler, last: t, left: max_new - 1 });
            }
        }
        if live.is_empty() {
            break;
        }
        // one decode step of every live sequence
        let toks: Vec<[u32; 1]> = live.iter().map(|s| [s.last]).collect();
        let mut segs: Vec<Segment> =
            live.iter_mut().zip(&toks).map(|(s, t)| Segment { tokens: t, cache: &mut s.cache }).collect();
        let hidden = model.forward(&mut segs, RowMode::BatchInvariant)?;
        let logits = model.head_logits(&hidden, RowMode::BatchInvariant);
        for (k, s) in live.iter_mut().enumerate() {
            let t = s.sampler.sample(&logits[k * v..(k + 1) * v]);
            out[s.i].push(t);
            on_token(s.i, t)?;
            s.last = t;
            s.left -= 1;
            if eos.contains(&t) {
                s.left = 0;
            }
        }
        live.retain(|s| s.left > 0);
    }
    Ok(out)
}

/// Generated tokens turned into text as it may be shown: decoded whole each time (so characters
/// split across tokens appear whole), held back while it ends in an incomplete character or in
/// what may be the start of a stop string, and cut before the first stop string.
pub struct TextStream {
    /// The token before the first generated one: decoding after it keeps a leading space.
    after: Option<u32>,
    stop_strings: Vec<String>,
    ids: Vec<u32>,
    text: String,
    shown: usize,
    /// A stop string was found (the text ends before it).
    pub stopped: bool,
}

impl TextStream {
    pub fn new(stop_strings: Vec<String>, after: Option<u32>) -> Self {
        TextStream { after, stop_strings, ids: vec![], text: String::new(), shown: 0, stopped: false }
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// All the text so far (up to a stop string).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Adds a generated (non-special) token; returns the text that can be shown now.
    pub fn push(&mut self, tok: &crate::tokenizer::Tokenizer, id: u32) -> Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        self.ids.push(id);
        self.text = match self.after {
            Some(a) => tok.decode_after(a, &self.ids)?,
            None => tok.decode(&self.ids)?,
        };
        if let Some(cut) = self.stop_strings.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            self.text.truncate(cut);
            self.stopped = true;
            return Ok(self.finish());
        }
        let mut end = self.text.trim_end_matches('\u{fffd}').len();
        for s in &self.stop_strings {
            // the longest tail of the text that begins a stop string waits
            if let Some(k) = (1..s.len()).rev().find(|&k| s.is_char_boundary(k) && self.text[..end].ends_with(&s[..k]))
            {
                end -= k;
            }
        }
        Ok(self.take_until(end))
    }

    /// What is left to show when generation ends.
    pub fn finish(&mut self) -> String {
        self.take_until(self.text.len())
    }

    fn take_until(&mut self, end: usize) -> String {
        if end <= self.shown || !self.text.is_char_boundary(end) || !self.text.is_char_boundary(self.shown) {
            return String::new();
        }
        let out = self.text[self.shown..end].to_string();
        self.shown = end;
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prompts_from_lines_or_jsonl() {
        let d = std::env::temp_dir().join(format!("tinyllama-prompts-{}", std::process::id()));
        std::fs::write(&d, "Once upon\n\n{\"prompt\": \"a {b}\"}\n").unwrap();
        assert_eq!(read_prompts(&d).unwrap(), ["Once upon", "a {b}"]);
        std::fs::write(&d, "ok\n{\"text\": 1}\n").unwrap();
        let e = read_prompts(&d).unwrap_err().to_string();
        assert!(e.contains(":2: no string field \"prompt\""), "{e}");
        std::fs::write(&d, "\n").unwrap();
        assert!(read_prompts(&d).unwrap_err().to_string().contains("no prompts"));
        std::fs::remove_file(d).unwrap();
    }

    use super::*;
    use crate::kernels::quant::Format;
    use crate::model::{ModelDtype, Workspace};

    fn f32(llama: &crate::model::Llama) -> InferenceModel {
        InferenceModel::from_llama(llama, ModelDtype::Uniform(Format::F32)).unwrap()
    }

    /// Batched generation gives every request the tokens it gets alone (greedy and seeded
    /// sampling, quantized weights, sequences of different lengths finishing at different steps).
    #[test]
    fn batched_generation_equals_each_request_alone() {
        let llama = crate::model::test_model(300, 64, 6, 3.0);
        for dtype in [ModelDtype::Uniform(Format::F32), ModelDtype::Uniform(Format::Q4_0)] {
            let model = InferenceModel::from_llama(&llama, dtype).unwrap();
            let reqs: Vec<Request> = (0..7u32)
                .map(|i| Request {
                    prompt: (0..(2 + i * 3)).map(|j| (j * 31 + i * 7) % 300).collect(),
                    max_new: 5 + 3 * i as usize,
                    sampling: SamplingOptions {
                        temperature: if i % 2 == 0 { 0.0 } else { 0.8 },
                        top_k: 40,
                        top_p: 0.95,
                        seed: i as u64,
                        repeat_penalty: if i % 3 == 0 { 1.3 } else { 1.0 },
                        repeat_last_n: 64,
                        frequency_penalty: if i % 4 == 1 { 0.5 } else { 0.0 },
                        presence_penalty: if i % 5 == 2 { 0.3 } else { 0.0 },
                    },
                })
                .collect();
            let eos = [13u32];
            let together = generate_batch(&model, &reqs, &eos, 4, &mut |_, _| Ok(())).unwrap();
            for (r, got) in reqs.iter().zip(&together) {
                let alone = generate_batch(&model, std::slice::from_ref(r), &eos, 1, &mut |_, _| Ok(())).unwrap();
                assert_eq!(&alone[0], got, "{dtype:?}");
            }
            assert!(together.iter().map(|t| t.len()).collect::<std::collections::BTreeSet<_>>().len() > 2);
        }
    }

    /// Continuing a shared prefix from its cache gives the tokens of prefilling each prompt whole
    /// (prompts that share all, part or none of the prefix).
    #[test]
    fn shared_prefix_generation_equals_whole_prompts() {
        let llama = crate::model::test_model(300, 64, 6, 3.0);
        for dtype in [ModelDtype::Uniform(Format::Q8_0), ModelDtype::Uniform(Format::F32)] {
            let model = InferenceModel::from_llama(&llama, dtype).unwrap();
            let prefix: Vec<u32> = (0..20u32).map(|j| (j * 37 + 5) % 300).collect();
            let reqs: Vec<Request> = (0..5u32)
                .map(|i| {
                    let keep = [20, 20, 7, 0, 20][i as usize];
                    let mut prompt: Vec<u32> = vec![1];
                    prompt.extend(&prefix[..keep]);
                    prompt.extend((0..(1 + i * 2)).map(|j| (j * 11 + i * 3 + 2) % 300));
                    Request { prompt, max_new: 8, sampling: SamplingOptions::default() }
                })
                .collect();
            let mut cache = KvCache::new(&model, 21);
            let whole_prefix: Vec<u32> = std::iter::once(1).chain(prefix.iter().copied()).collect();
            model.forward_cached_hidden(&whole_prefix, &mut cache, RowMode::MayUseGemm).unwrap();
            let shared = generate_batch_with_prefix(&model, Some(&cache), &reqs, &[], 3, &mut |_, _| Ok(())).unwrap();
            let plain = generate_batch(&model, &reqs, &[], 3, &mut |_, _| Ok(())).unwrap();
            assert_eq!(shared, plain, "{dtype:?}");
        }
    }

    /// Greedy generation through the cache equals recomputing the whole sequence at every step.
    #[test]
    fn cached_generation_equals_full_recompute() {
        let llama = crate::model::test_model(300, 64, 4, 4.0);
        let model = f32(&llama);
        let cfg = model.cfg.clone();
        let prompt = vec![1u32, 17, 200, 5, 99];
        let mut sampler = Sampler::new(SamplingOptions::default());
        let got = generate(&model, &prompt, 20, &[], &mut sampler, &mut |_| Ok(())).unwrap();
        let mut seq = prompt.clone();
        for &t in &got {
            let mut ws = Workspace::new(&cfg, 1, seq.len());
            let logits = llama.forward_logits(&mut ws, &seq).unwrap();
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

    /// A config's `eos_token_id` list ends generation at any of its ids, not only the first.
    #[test]
    fn every_eos_id_stops_generation() {
        let llama = crate::model::test_model(300, 64, 4, 4.0);
        let model = f32(&llama);
        let prompt = [1u32, 17, 200, 5];
        let mut s = Sampler::new(SamplingOptions::default());
        let free = generate(&model, &prompt, 6, &[], &mut s, &mut |_| Ok(())).unwrap();
        let mut cfg = model.cfg.clone();
        cfg.extra_eos_token_ids = vec![free[2], 2];
        let tok = crate::tokenizer::Tokenizer::llama2();
        let stops = end_ids(&cfg, &tok);
        assert_eq!(stops, [2, free[2]], "the tokenizer's EOS first, no repeats");
        let mut s = Sampler::new(SamplingOptions::default());
        let stopped = generate(&model, &prompt, 6, &stops, &mut s, &mut |_| Ok(())).unwrap();
        let first = free.iter().position(|t| stops.contains(t)).unwrap();
        assert_eq!(stopped, free[..=first]);
    }

    /// Stop strings cut the text and are never shown, also when they arrive split over tokens;
    /// the streamed pieces add up to the text.
    #[test]
    fn text_stream_holds_back_possible_stop_strings() {
        let tok = crate::tokenizer::Tokenizer::llama2();
        let ids = tok.encode("Hello world. Bye now").unwrap();
        let mut ts = TextStream::new(vec![". B".into()], None);
        let mut shown = String::new();
        for &id in &ids {
            shown += &ts.push(&tok, id).unwrap();
            assert!(!shown.contains('.') || ts.stopped, "{shown:?} shown before the stop string was decided");
        }
        shown += &ts.finish();
        assert!(ts.stopped);
        assert_eq!((shown.as_str(), ts.text()), ("Hello world", "Hello world"));
        // no stop: everything, in pieces that add up (a leading space kept after the prompt)
        let mut ts = TextStream::new(vec![], Some(ids[0]));
        let mut shown = String::new();
        for &id in &ids[1..] {
            shown += &ts.push(&tok, id).unwrap();
        }
        shown += &ts.finish();
        assert_eq!(shown, " world. Bye now");
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
