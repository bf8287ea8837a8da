//! The engine against plain references: every request's tokens equal decoding it alone with its
//! prompt whole, whatever the batch, the step budget, the cached prefixes or the draft; sampled
//! speculative decoding keeps the target's distribution.

use super::engine::PREFILL_ALONE_TOKENS;
use super::*;
use crate::kernels::quant::Format;
use crate::model::{InferenceModel, ModelDtype, Workspace};

fn model(seed: u64, dtype: Format) -> InferenceModel {
    InferenceModel::from_llama(&crate::model::test_model(300, 96, seed, 3.0), ModelDtype::Uniform(dtype)).unwrap()
}

fn sampling(i: u32) -> SamplingOptions {
    SamplingOptions {
        temperature: if i.is_multiple_of(2) { 0.0 } else { 0.8 },
        top_k: 40,
        top_p: 0.95,
        seed: i as u64,
        repeat_penalty: if i.is_multiple_of(3) { 1.3 } else { 1.0 },
        repeat_last_n: 64,
        frequency_penalty: if i % 4 == 1 { 0.5 } else { 0.0 },
        presence_penalty: if i % 5 == 2 { 0.3 } else { 0.0 },
    }
}

fn requests(n: u32, shared: usize) -> Vec<Request> {
    let prefix: Vec<u32> = (0..shared as u32).map(|j| (j * 37 + 5) % 300).collect();
    (0..n)
        .map(|i| {
            let mut prompt = vec![1];
            prompt.extend(&prefix[..if i == 3 { shared / 3 } else { shared }]);
            prompt.extend((0..(2 + i * 3)).map(|j| (j * 31 + i * 7) % 300));
            Request::new(prompt, 5 + 3 * i as usize, sampling(i), vec![13])
        })
        .collect()
}

/// Runs `reqs` on an engine with `opts` (and `draft`), in order, `together` at a time.
fn run(
    m: &InferenceModel,
    draft: Option<&InferenceModel>,
    opts: EngineOptions,
    reqs: &[Request],
    together: usize,
) -> (Vec<Vec<u32>>, Vec<StepReport>) {
    let mut e = Engine::new(m, draft, opts).unwrap();
    let mut out = vec![];
    let mut steps = vec![];
    for batch in reqs.chunks(together) {
        let ids: Vec<SeqId> = batch.iter().map(|r| e.add(r.clone()).unwrap()).collect();
        let mut got: Vec<Vec<u32>> = vec![vec![]; ids.len()];
        let mut events = vec![];
        while !e.is_idle() {
            steps.push(e.step(&mut events).unwrap());
            for ev in events.drain(..) {
                match ev {
                    Event::Token { seq, id, .. } => got[ids.iter().position(|&s| s == seq).unwrap()].push(id),
                    Event::Failed { message, .. } => panic!("{message}"),
                    Event::Finished { .. } | Event::PromptLogprobs { .. } => {}
                }
            }
        }
        out.extend(got);
    }
    (out, steps)
}

/// Greedy tokens of one prompt.
fn one(m: &InferenceModel, prompt: &[u32], max_new: usize, eos: &[u32]) -> Vec<u32> {
    let req = Request::new(prompt.to_vec(), max_new, SamplingOptions::default(), eos.to_vec());
    let mut e = Engine::new(m, None, EngineOptions::for_model(m, 1, prompt.len() + max_new)).unwrap();
    e.generate_all(vec![req], &mut |_, _| Ok(())).unwrap().remove(0)
}

fn options(m: &InferenceModel, step_tokens: usize, reuse: PrefixReuse) -> EngineOptions {
    EngineOptions { step_tokens, prefix_reuse: reuse, ..EngineOptions::for_model(m, 4, 96) }
}

/// The reference: each request alone, its prompt prefilled whole, no cached prefix.
fn alone(m: &InferenceModel, reqs: &[Request]) -> Vec<Vec<u32>> {
    reqs.iter()
        .map(|r| run(m, None, options(m, 1000, PrefixReuse::Off), std::slice::from_ref(r), 1).0.remove(0))
        .collect()
}

/// Batched, chunked and prefix-reusing runs give every request its tokens alone (greedy, seeded
/// sampling, penalties; f32 and Q4_0 weights); every step keeps to its budget, decode rows first.
#[test]
fn batches_chunks_and_prefixes_change_no_token() {
    for dtype in [Format::F32, Format::Q4_0] {
        let m = model(6, dtype);
        let reqs = requests(7, 20);
        let want = alone(&m, &reqs);
        assert!(want.iter().map(|t| t.len()).collect::<std::collections::BTreeSet<_>>().len() > 2);
        for (step_tokens, reuse, together) in
            [(1000, PrefixReuse::Off, 7), (1, PrefixReuse::Off, 4), (3, PrefixReuse::On, 7), (7, PrefixReuse::On, 1)]
        {
            let (got, steps) = run(&m, None, options(&m, step_tokens, reuse), &reqs, together);
            assert_eq!(got, want, "{dtype:?}, step tokens {step_tokens}, {reuse:?}, {together} together");
            for s in &steps {
                let budget = if s.decode_tokens > 0 { step_tokens } else { step_tokens.max(PREFILL_ALONE_TOKENS) };
                let prefill_floor = (step_tokens / 4).max(1);
                assert!(
                    s.prefill_tokens <= budget.saturating_sub(s.decode_tokens).max(prefill_floor),
                    "{s:?} over the budget {budget}"
                );
            }
        }
    }
}

/// A prompt that starts as a finished one did continues from its cache; the reuse is counted,
/// and a budget too small to keep prefixes evicts them without changing a token.
#[test]
fn prefixes_are_reused_and_evicted_within_the_budget() {
    let m = model(7, Format::Q8_0);
    let reqs = requests(6, 30);
    let want = alone(&m, &reqs);
    // one after another, so that each finds the ones before it cached
    let mut e = Engine::new(&m, None, options(&m, 16, PrefixReuse::On)).unwrap();
    let got: Vec<Vec<u32>> =
        reqs.iter().map(|r| e.generate_all(vec![r.clone()], &mut |_, _| Ok(())).unwrap().remove(0)).collect();
    assert_eq!(got, want);
    let hits = Metrics::get(&e.metrics.prefix_hits_total);
    assert!(hits == 5 && Metrics::get(&e.metrics.prefix_tokens_reused_total) >= 4 * 30, "{hits} hits");
    // room for one running sequence only: every prefix is evicted when the next one starts
    let one = e.kv_bytes(96);
    let tight = EngineOptions { kv_budget: one, max_batch: 1, ..options(&m, 16, PrefixReuse::On) };
    let mut e = Engine::new(&m, None, tight).unwrap();
    let got = e.generate_all(reqs.clone(), &mut |_, _| Ok(())).unwrap();
    assert_eq!(got, want);
    assert!(e.metrics.prefix_bytes.load(std::sync::atomic::Ordering::Relaxed) <= one);
}

/// Greedy speculative decoding emits exactly the tokens of decoding without a draft (penalties
/// too), with a close draft (the model in Q8_0) and a poor one (another model), any proposal
/// length; the close draft is mostly accepted.
#[test]
fn greedy_speculative_decoding_changes_no_token() {
    let m = model(8, Format::F32);
    let close = model(8, Format::Q8_0);
    let poor = model(9, Format::Q8_0);
    let reqs: Vec<Request> = requests(6, 12)
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            r.sampling.temperature = 0.0;
            r.max_new = 12 + i;
            r
        })
        .collect();
    let want = alone(&m, &reqs);
    for (draft, k) in [(&close, 1), (&close, 4), (&poor, 3)] {
        let mut o = options(&m, 8, PrefixReuse::On);
        o.draft = DraftOptions { max_tokens: k, p_min: 0.0 };
        let mut e = Engine::new(&m, Some(draft), o).unwrap();
        let got = e.generate_all(reqs.clone(), &mut |_, _| Ok(())).unwrap();
        assert_eq!(got, want, "draft tokens {k}");
        let (p, a) = (Metrics::get(&e.metrics.draft_proposed_total), Metrics::get(&e.metrics.draft_accepted_total));
        assert!(p > 0 && a <= p, "{a}/{p}");
        if std::ptr::eq(draft, &close) && k == 4 {
            assert!(a * 2 > p, "a close draft is mostly accepted: {a}/{p}");
        }
    }
}

/// Sampled speculative decoding keeps the target's distribution: over many seeds, the first three
/// tokens' joint frequencies match the target's exact probabilities (chi-square), although the
/// draft (another model) proposes from a distribution far from them and is often rejected.
#[test]
fn speculative_sampling_keeps_the_target_distribution() {
    let m = model(10, Format::F32);
    // the same weights at another scale: the same likely tokens, in other proportions
    let d = InferenceModel::from_llama(&crate::model::test_model(300, 96, 10, 2.0), ModelDtype::Uniform(Format::F32))
        .unwrap();
    let prompt = vec![1u32, 40, 77, 123];
    let opts = SamplingOptions { temperature: 1.0, top_k: 4, ..Default::default() };
    // the exact joint distribution of the first three tokens, under the target and under the
    // draft (the second and third come from a step that verifies the draft's proposal)
    let joint = |mm: &InferenceModel| -> std::collections::HashMap<Vec<u32>, f64> {
        let mut s = Sampler::new(opts.clone());
        let mut out = std::collections::HashMap::new();
        let mut c = crate::model::KvCache::new(mm, 8);
        let l = mm.next_token_logits(&prompt, &mut c, crate::model::RowMode::BatchInvariant).unwrap();
        let mut frontier = vec![(vec![], 1.0f64, c, l)];
        while let Some((seq, p, c, l)) = frontier.pop() {
            let d = s.distribution(&l);
            for (&t, &pt) in d.ids.iter().zip(&d.probs) {
                let mut next = seq.clone();
                next.push(t);
                if next.len() == 3 {
                    out.insert(next, p * pt);
                } else {
                    let mut c2 = crate::model::KvCache::with_prefix(&c, c.len, 8);
                    let l2 = mm.next_token_logits(&[t], &mut c2, crate::model::RowMode::BatchInvariant).unwrap();
                    frontier.push((next, p * pt, c2, l2));
                }
            }
        }
        out
    };
    let (p, q) = (joint(&m), joint(&d));
    let tv: f64 = p.iter().map(|(k, &x)| (x - q.get(k).copied().unwrap_or(0.0)).abs()).sum::<f64>() / 2.0
        + q.iter().filter(|(k, _)| !p.contains_key(*k)).map(|(_, &x)| x / 2.0).sum::<f64>();
    eprintln!("total variation {tv:.3}");
    assert!(tv > 0.3, "the draft must be far from the target for the test to mean something: {tv}");
    let n = 4000;
    let reqs: Vec<Request> =
        (0..n).map(|i| Request::new(prompt.clone(), 3, SamplingOptions { seed: i, ..opts.clone() }, vec![])).collect();
    let mut o = EngineOptions::for_model(&m, 64, 8);
    o.draft = DraftOptions { max_tokens: 1, p_min: 0.0 };
    let mut e = Engine::new(&m, Some(&d), o).unwrap();
    let got = e.generate_all(reqs, &mut |_, _| Ok(())).unwrap();
    let (prop, acc) = (Metrics::get(&e.metrics.draft_proposed_total), Metrics::get(&e.metrics.draft_accepted_total));
    assert!(prop == n && acc > 0 && acc < prop * 9 / 10, "accepted {acc} of {prop}");
    let mut counts = std::collections::HashMap::new();
    for g in &got {
        *counts.entry(g.clone()).or_insert(0usize) += 1;
    }
    assert!(counts.keys().all(|k| p.contains_key(k)), "a pair the target cannot produce");
    // chi-square over the cells expecting at least 5, the rest pooled
    let (mut chi2, mut cells, mut rest_e, mut rest_o) = (0.0, 0, 0.0, 0.0);
    for (k, &pk) in &p {
        let (e, o) = (pk * n as f64, *counts.get(k).unwrap_or(&0) as f64);
        if e >= 5.0 {
            chi2 += (o - e).powi(2) / e;
            cells += 1;
        } else {
            (rest_e, rest_o) = (rest_e + e, rest_o + o);
        }
    }
    if rest_e > 0.0 {
        chi2 += (rest_o - rest_e).powi(2) / rest_e;
        cells += 1;
    }
    // the 0.999 quantile of chi-square with k - 1 degrees of freedom, Wilson–Hilferty
    let k = (cells - 1) as f64;
    let crit = k * (1.0 - 2.0 / (9.0 * k) + 3.09 * (2.0 / (9.0 * k)).sqrt()).powi(3);
    assert!(chi2 < crit, "chi-square {chi2:.1} over {cells} cells, critical {crit:.1}");
}

/// Greedy decoding through the engine equals recomputing the whole sequence at every step.
#[test]
fn cached_generation_equals_full_recompute() {
    let llama = crate::model::test_model(300, 64, 4, 4.0);
    let m = InferenceModel::from_llama(&llama, ModelDtype::Uniform(Format::F32)).unwrap();
    let prompt = vec![1u32, 17, 200, 5, 99];
    let got = one(&m, &prompt, 20, &[]);
    let mut seq = prompt.clone();
    for &t in &got {
        let mut ws = Workspace::new(&m.cfg, 1, seq.len());
        let logits = llama.forward_logits(&mut ws, &seq).unwrap();
        let want = crate::kernels::argmax(&logits[(seq.len() - 1) * m.cfg.vocab_size..]) as u32;
        assert_eq!(t, want, "after {} tokens", seq.len());
        seq.push(t);
    }
    assert!(got.iter().collect::<std::collections::BTreeSet<_>>().len() > 2, "degenerate test: {got:?}");
}

/// A config's `eos_token_id` list ends generation at any of its ids, not only the first.
#[test]
fn every_eos_id_stops_generation() {
    let m = model(4, Format::F32);
    let prompt = [1u32, 17, 200, 5];
    let free = one(&m, &prompt, 6, &[]);
    let mut cfg = m.cfg.clone();
    cfg.extra_eos_token_ids = vec![free[2], 2];
    let tok = crate::tokenizer::Tokenizer::llama2();
    let stops = end_ids(&cfg, &tok);
    assert_eq!(stops, [2, free[2]], "the tokenizer's EOS first, no repeats");
    let stopped = one(&m, &prompt, 6, &stops);
    let first = free.iter().position(|t| stops.contains(t)).unwrap();
    assert_eq!(stopped, free[..=first]);
}

/// Bad options and requests are refused with what is wrong; the engine goes on serving.
#[test]
fn bad_options_and_requests_are_named() {
    let m = model(5, Format::Q8_0);
    let other =
        InferenceModel::from_llama(&crate::model::test_model(200, 96, 5, 3.0), ModelDtype::Uniform(Format::Q8_0))
            .unwrap();
    let err = |r: Result<Engine, anyhow::Error>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err(Engine::new(&m, None, options(&m, 0, PrefixReuse::On))).contains("--step-tokens"));
    assert!(err(Engine::new(&m, Some(&other), options(&m, 8, PrefixReuse::On))).contains("vocabulary"));
    let mut o = options(&m, 8, PrefixReuse::On);
    o.draft.max_tokens = 0;
    assert!(err(Engine::new(&m, Some(&m), o)).contains("--draft-tokens"));
    let mut e = Engine::new(&m, None, options(&m, 8, PrefixReuse::On)).unwrap();
    let bad = |e: &mut Engine, prompt: Vec<u32>, max_new| {
        e.add(Request::new(prompt, max_new, SamplingOptions::default(), vec![])).unwrap_err().to_string()
    };
    assert!(bad(&mut e, vec![], 4).contains("empty"));
    assert!(bad(&mut e, vec![1, 300], 4).contains("token id 300"));
    assert!(bad(&mut e, vec![1; 96], 4).contains("fills the model's context"));
    let small = EngineOptions { kv_budget: 1000, ..options(&m, 8, PrefixReuse::On) };
    assert!(bad(&mut Engine::new(&m, None, small).unwrap(), vec![1, 2], 4).contains("KV cache"));
    let got = e.generate_all(requests(2, 4), &mut |_, _| Ok(())).unwrap();
    assert_eq!(got, alone(&m, &requests(2, 4)));
}

/// The prompt's log-probabilities (`echo`) are the same bits whether the prompt continued a cached
/// prefix or was computed whole, and equal a log-softmax of a full forward's rows.
#[test]
fn prompt_logprobs_reuse_prefixes_without_changing_them() {
    let m = model(12, Format::Q8_0);
    let shared: Vec<u32> = (0..30u32).map(|j| (j * 37 + 5) % 300).collect();
    let reqs: Vec<Request> = (0..4u32)
        .map(|i| {
            let prompt = [vec![1], shared.clone(), (0..(3 + i)).map(|j| (j * 13 + i) % 300).collect()].concat();
            let mut r = Request::new(prompt, if i % 2 == 0 { 0 } else { 2 }, SamplingOptions::default(), vec![]);
            r.prompt_logprobs = Some(2);
            r
        })
        .collect();
    let run = |reuse: PrefixReuse| {
        let mut e = Engine::new(&m, None, options(&m, 8, reuse)).unwrap();
        let mut got = vec![];
        for r in &reqs {
            e.add(r.clone()).unwrap();
            e.run(&mut |_, ev| {
                if let Event::PromptLogprobs { logprobs, .. } = ev {
                    got.push(logprobs);
                }
                Ok(())
            })
            .unwrap();
        }
        (got, Metrics::get(&e.metrics.prefix_tokens_reused_total))
    };
    let ((with, reused), (without, _)) = (run(PrefixReuse::On), run(PrefixReuse::Off));
    assert!(reused >= 3 * 29, "reused {reused}");
    assert_eq!(with.len(), 4);
    for (r, (a, b)) in reqs.iter().zip(with.iter().zip(&without)) {
        assert_eq!(a.len(), r.prompt.len());
        assert!(a[0].is_none());
        for (x, y) in a.iter().zip(b).skip(1) {
            let (x, y) = (x.as_ref().unwrap(), y.as_ref().unwrap());
            assert_eq!((x.logprob.to_bits(), &x.top), (y.logprob.to_bits(), &y.top));
            assert_eq!(x.top.len(), 2);
        }
    }
    // against a log-softmax of the rows of one whole forward
    let p = &reqs[3].prompt;
    let mut cache = crate::model::KvCache::new(&m, p.len());
    let h = m.forward_cached_hidden(p, &mut cache, crate::model::RowMode::BatchInvariant).unwrap();
    let logits = m.head_logits(&h, crate::model::RowMode::BatchInvariant);
    let v = m.cfg.vocab_size;
    for i in 1..p.len() {
        let want = logprobs::logprobs(&logits[(i - 1) * v..i * v], p[i], 2);
        assert_eq!(with[3][i].as_ref().unwrap().logprob.to_bits(), want.logprob.to_bits(), "token {i}");
    }
}

/// Prompts advance while decode rows (with their draft tokens) fill the step budget: a prompt
/// queued behind busy sequences gets its first token long before they finish.
#[test]
fn prompts_advance_when_decode_rows_fill_the_budget() {
    let m = model(13, Format::Q8_0);
    // a draft that rarely agrees: the busy sequences take about a step per token
    let draft = model(14, Format::Q8_0);
    let mut o = options(&m, 4, PrefixReuse::Off);
    o.draft = DraftOptions { max_tokens: 4, p_min: 0.0 };
    let mut e = Engine::new(&m, Some(&draft), o).unwrap();
    let busy: Vec<SeqId> = (0..3u32)
        .map(|i| e.add(Request::new(vec![1, 5 + i, 9], 60, SamplingOptions::default(), vec![])).unwrap())
        .collect();
    let mut events = vec![];
    for _ in 0..3 {
        e.step(&mut events).unwrap();
    }
    let late = e
        .add(Request::new((0..16).map(|j| (j * 7 + 3) % 300).collect(), 4, SamplingOptions::default(), vec![]))
        .unwrap();
    let mut first_token_at = None;
    let mut busy_done = 0;
    let mut step = 0;
    while !e.is_idle() {
        step += 1;
        e.step(&mut events).unwrap();
        for ev in events.drain(..) {
            match ev {
                Event::Token { seq, .. } if seq == late && first_token_at.is_none() => first_token_at = Some(step),
                Event::Finished { seq, .. } if busy.contains(&seq) => busy_done += 1,
                _ => {}
            }
        }
        if first_token_at.is_some() {
            break;
        }
    }
    assert_eq!(busy_done, 0, "the busy sequences finished first");
    assert!(first_token_at.is_some_and(|s| s <= 20), "{first_token_at:?}");
}
