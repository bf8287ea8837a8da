//! `bench generate`: prefill, decode and batched decode through the decode engine, as `generate`
//! and `serve` run them; the cost of a pass that verifies draft tokens against a one-token decode
//! step; speculative decoding with a draft model; the read bandwidth measured in the same run.

use super::{peak_rss_bytes, read_bandwidth, stream_bandwidth, PROBE_MIN_BYTES};
use crate::decode::{DraftOptions, Engine, EngineOptions, Event, Metrics, PrefixReuse, Request, SamplingOptions};
use crate::model::{InferenceModel, KvCache, RowMode};
use crate::rng::Rng;
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug)]
pub struct GenerateSetup {
    pub prompt_len: usize,
    pub new_tokens: usize,
    /// Sequences decoded together in the batched measurement (1: skip it).
    pub batch: usize,
    /// Repetitions (medians are reported).
    pub runs: usize,
    pub step_tokens: usize,
    /// With a draft model.
    pub draft: DraftOptions,
}

#[derive(Debug, Serialize)]
pub struct GenerateBench {
    pub preset: String,
    /// Weight formats, e.g. `q4_0 ×155, f32 …`.
    pub dtype: String,
    pub params: usize,
    pub threads: usize,
    /// The instruction set the kernels ran on.
    pub isa: String,
    pub prompt_len: usize,
    pub new_tokens: usize,
    pub step_tokens: usize,
    /// Median over runs of prompt tokens / prefill time, through the engine (chunks of
    /// `step_tokens`, each row computed as alone).
    pub prefill_tokens_per_s: f64,
    /// The same prompt in one pass of evaluation's forward (f32: the training GEMM and attention).
    pub prefill_eval_tokens_per_s: f64,
    /// Median over runs of generated tokens / decode time (greedy, one sequence).
    pub decode_tokens_per_s: f64,
    /// Sequences decoded together in the batched measurement.
    pub batch: usize,
    /// Median over runs of tokens of all sequences / decode time, `batch` sequences together.
    pub batched_decode_tokens_per_s: f64,
    /// Time of a pass over 5 rows of one sequence (a token and 4 draft tokens to verify) ÷ that of
    /// a one-token decode pass, medians of alternating rounds.
    pub verify_5_rows_cost: f64,
    /// With a draft: its formats, greedy decode tokens/s with it (median, alternating with the
    /// plain runs), that ÷ `decode_tokens_per_s`, and accepted ÷ proposed draft tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft_decode_tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft_speedup: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft_acceptance: Option<f64>,
    /// Bytes of weights one decode step reads.
    pub weight_bytes_per_token: usize,
    /// Read bandwidth of this process on all threads, measured in the same run: median over the
    /// decode runs of the better of a probe just before and one just after the run, each
    /// streaming the model's matrices ([`stream_bandwidth`]; models under [`PROBE_MIN_BYTES`]:
    /// a 512 MiB buffer before the model was loaded, [`read_bandwidth`]).
    pub read_bandwidth_bytes_per_s: f64,
    /// Median over the decode runs of tokens/s × bytes per token ÷ that run's read bandwidth.
    pub bandwidth_fraction: f64,
    pub weight_bytes: usize,
    /// The KV caches of the measurements: f16 or f32 elements (`--kv-cache`).
    pub kv_cache_type: String,
    pub kv_cache_bytes: usize,
    pub peak_rss_bytes: u64,
    /// Whether one-token decode prefetches, per weight format, as measured during the decode runs
    /// and in force at their end (`model::prefetch`).
    pub decode_prefetch: std::collections::BTreeMap<String, bool>,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// Greedy runs of `prompts` on `engine` to `new_tokens` each: the seconds until every prompt has
/// its first token, then (after `between`) the seconds of the rest, and the tokens of the rest.
fn timed_run(
    engine: &mut Engine,
    prompts: &[Vec<u32>],
    new_tokens: usize,
    between: &mut dyn FnMut(),
) -> Result<(f64, f64, usize)> {
    let greedy = SamplingOptions::default();
    for p in prompts {
        engine.add(Request::new(p.clone(), new_tokens + 1, greedy.clone(), vec![]))?;
    }
    let mut events = vec![];
    let mut started = std::collections::HashSet::new();
    let t = Instant::now();
    while started.len() < prompts.len() {
        engine.step(&mut events)?;
        for e in events.drain(..) {
            if let Event::Token { seq, .. } = e {
                started.insert(seq);
            }
        }
    }
    let prefill = t.elapsed().as_secs_f64();
    between();
    let (t, mut tokens) = (Instant::now(), 0);
    while !engine.is_idle() {
        engine.step(&mut events)?;
        tokens += events.drain(..).filter(|e| matches!(e, Event::Token { .. })).count();
    }
    Ok((prefill, t.elapsed().as_secs_f64(), tokens))
}

/// The time of one pass over `rows` rows of a sequence that holds `prompt`: medians of `runs`
/// alternating passes of 1 and `rows` rows.
fn verify_cost(model: &InferenceModel, prompt: &[u32], rows: usize, runs: usize) -> Result<f64> {
    let mut cache = KvCache::new(model, prompt.len() + rows);
    model.forward_cached_hidden(prompt, &mut cache, RowMode::BatchInvariant)?;
    let (mut one, mut many) = (vec![], vec![]);
    for _ in 0..runs.max(3) {
        for (n, out) in [(1, &mut one), (rows, &mut many)] {
            cache.truncate(prompt.len());
            let t = Instant::now();
            let h = model.forward_cached_hidden(&prompt[..n], &mut cache, RowMode::BatchInvariant)?;
            std::hint::black_box(model.head_logits(&h, RowMode::BatchInvariant));
            out.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(median(&mut many) / median(&mut one))
}

/// Prefill, decode and batched-decode speed of `model` (random weights: speed does not depend on
/// them), and with `draft`, speculative decoding's. `bandwidth`: from [`read_bandwidth`],
/// measured by the caller before the model was loaded (so that its buffer and the model are not
/// in memory together and peak RSS is the model's), needed only for models under
/// [`PROBE_MIN_BYTES`] (larger ones are probed by reading their own matrices).
pub fn generate_bench(
    name: &str,
    model: &InferenceModel,
    draft: Option<&InferenceModel>,
    setup: &GenerateSetup,
    bandwidth: Option<f64>,
) -> Result<GenerateBench> {
    let cfg = model.cfg.clone();
    let s = setup;
    let fits = s.prompt_len.min(cfg.max_position_embeddings.saturating_sub(s.new_tokens + 2)).max(1);
    if fits != s.prompt_len {
        eprintln!(
            "note: --prompt-len {} with --new-tokens {} does not fit the model's context of {}: measuring a {fits}-token prompt",
            s.prompt_len, s.new_tokens, cfg.max_position_embeddings
        );
    }
    let prompt_len = fits;
    let mut r = Rng::new(3);
    let prompts: Vec<Vec<u32>> =
        (0..s.batch.max(1)).map(|_| (0..prompt_len).map(|_| r.below(cfg.vocab_size as u64) as u32).collect()).collect();
    let max_len = prompt_len + s.new_tokens + 2;
    let opts = EngineOptions {
        step_tokens: s.step_tokens,
        prefix_reuse: PrefixReuse::Off,
        draft: s.draft.clone(),
        ..EngineOptions::for_model(model, s.batch.max(1), max_len)
    };
    // weights far larger than the caches are their own bandwidth probe, read just before and just
    // after each decode measurement (the machine's bandwidth drifts within a run); smaller ones
    // take the caller's probe
    let weights = model.matmul_weights();
    let fixed = (model.matmul_bytes() < PROBE_MIN_BYTES).then(|| bandwidth.unwrap_or_else(read_bandwidth));
    let probe = || fixed.unwrap_or_else(|| stream_bandwidth(&weights, 3));
    let per_token = model.matmul_bytes();
    let (mut pre, mut pre_eval, mut dec, mut bw, mut fraction) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut spec, mut proposed, mut accepted) = (vec![], 0, 0);
    let mut plain = Engine::new(model, None, opts.clone())?;
    let mut drafted = draft.map(|d| Engine::new(model, Some(d), opts.clone())).transpose()?;
    for _ in 0..s.runs.max(1) {
        let mut before = 0.0;
        let (prefill, secs, n) = timed_run(&mut plain, &prompts[..1], s.new_tokens, &mut || before = probe())?;
        pre.push(prompt_len as f64 / prefill);
        let tokens_per_s = n as f64 / secs;
        let limit = f64::max(before, probe());
        dec.push(tokens_per_s);
        bw.push(limit);
        fraction.push(tokens_per_s * per_token as f64 / limit);
        let mut cache = KvCache::new(model, prompt_len);
        let t = Instant::now();
        model.next_token_logits(&prompts[0], &mut cache, RowMode::MayUseGemm)?;
        pre_eval.push(prompt_len as f64 / t.elapsed().as_secs_f64());
        if let Some(e) = drafted.as_mut() {
            let (_, secs, n) = timed_run(e, &prompts[..1], s.new_tokens, &mut || {})?;
            spec.push(n as f64 / secs);
            proposed = Metrics::get(&e.metrics.draft_proposed_total);
            accepted = Metrics::get(&e.metrics.draft_accepted_total);
        }
    }
    let mut bdec = vec![];
    if s.batch > 1 {
        for _ in 0..s.runs.max(1) {
            let (_, secs, n) = timed_run(&mut plain, &prompts, s.new_tokens, &mut || {})?;
            bdec.push(n as f64 / secs);
        }
    }
    let verify = verify_cost(model, &prompts[0], 5, 2 * s.runs.max(3))?;
    let decode = median(&mut dec);
    let draft_tps = draft.map(|_| median(&mut spec));
    Ok(GenerateBench {
        preset: name.to_string(),
        dtype: model.format_summary(),
        params: cfg.num_params(),
        threads: rayon::current_num_threads(),
        isa: crate::kernels::isa::Isa::detect().name().to_string(),
        prompt_len,
        new_tokens: s.new_tokens,
        step_tokens: s.step_tokens,
        prefill_tokens_per_s: median(&mut pre),
        prefill_eval_tokens_per_s: median(&mut pre_eval),
        decode_tokens_per_s: decode,
        batch: s.batch,
        batched_decode_tokens_per_s: median(&mut bdec),
        verify_5_rows_cost: verify,
        draft: draft.map(|d| d.format_summary()),
        draft_decode_tokens_per_s: draft_tps,
        draft_speedup: draft_tps.map(|t| t / decode),
        draft_acceptance: draft.map(|_| accepted as f64 / (proposed as f64).max(1.0)),
        weight_bytes_per_token: per_token,
        read_bandwidth_bytes_per_s: median(&mut bw),
        bandwidth_fraction: median(&mut fraction),
        weight_bytes: model.weight_bytes(),
        kv_cache_type: if model.half_kv_cache() { "f16" } else { "f32" }.to_string(),
        kv_cache_bytes: KvCache::bytes_for(model, max_len) * (1 + s.batch),
        peak_rss_bytes: peak_rss_bytes(),
        decode_prefetch: crate::model::prefetch::PREFETCH_CHOICE.lock().unwrap_or_else(|e| e.into_inner()).decisions(),
    })
}

impl std::fmt::Display for GenerateBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self;
        let mib = |b: f64| b / (1u64 << 20) as f64;
        writeln!(f, "{} [{}], {} threads, {}", r.preset, r.dtype, r.threads, r.isa)?;
        writeln!(
            f,
            "prefill        {:.1} tokens/s ({}-token prompt, {} tokens a step; {:.1} in evaluation's one pass)",
            r.prefill_tokens_per_s, r.prompt_len, r.step_tokens, r.prefill_eval_tokens_per_s
        )?;
        // weights that fit in the caches are not read from memory each token
        let cached =
            if r.weight_bytes_per_token < PROBE_MIN_BYTES { ", which the caches may partly serve" } else { "" };
        writeln!(
            f,
            "decode         {:.2} tokens/s ({:.0} MB of weights a token{cached}: {:.0}% of the {:.1} GB/s read bandwidth)",
            r.decode_tokens_per_s,
            r.weight_bytes_per_token as f64 / 1e6,
            100.0 * r.bandwidth_fraction,
            r.read_bandwidth_bytes_per_s / 1e9
        )?;
        if r.batch > 1 {
            writeln!(
                f,
                "batched decode {:.1} tokens/s ({} sequences, {:.1}× one)",
                r.batched_decode_tokens_per_s,
                r.batch,
                r.batched_decode_tokens_per_s / r.decode_tokens_per_s
            )?;
        }
        writeln!(f, "verify         a pass over 5 rows costs {:.2}× a one-token step", r.verify_5_rows_cost)?;
        if let (Some(d), Some(t), Some(x), Some(a)) =
            (&r.draft, r.draft_decode_tokens_per_s, r.draft_speedup, r.draft_acceptance)
        {
            writeln!(f, "speculative    {t:.2} tokens/s ({x:.2}× decode; draft [{d}], {:.0}% accepted)", 100.0 * a)?;
        }
        if !r.decode_prefetch.is_empty() {
            let ways: Vec<String> =
                r.decode_prefetch.iter().map(|(fmt, &on)| format!("{fmt} {}", if on { "on" } else { "off" })).collect();
            writeln!(f, "prefetch       {} (one-token decode, the faster way as measured)", ways.join(", "))?;
        }
        write!(
            f,
            "peak RSS       {:.0} MiB (weights {:.0} MiB + {} KV caches {:.0} MiB)",
            mib(r.peak_rss_bytes as f64),
            mib(r.weight_bytes as f64),
            r.kv_cache_type,
            mib(r.kv_cache_bytes as f64)
        )
    }
}
