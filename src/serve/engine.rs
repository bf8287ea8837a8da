//! The serving engine: one thread that owns the model and runs continuous batching. Requests
//! wait in a bounded queue; between decode steps the engine admits the next one (its prompt
//! prefilled alone, as `generate` does) when the batch has room and the KV-cache budget allows;
//! each step decodes one token of every running sequence in one pass over the weights, each row
//! computed independently ([`RowMode::BatchInvariant`]) — so a request's tokens are the same bits
//! whatever else shares the batch. A sequence whose receiver is gone (client disconnected, stop
//! string found) is dropped at the next step.
//!
//! Speculative decoding (a draft model with the same tokenizer): for a greedy request the draft
//! proposes k tokens, and the target runs them as one segment of k + 1 rows in the same pass as the
//! other sequences' single tokens. Every row is computed as it would be alone, so the target's
//! argmax at each row is exactly what plain decoding would have produced: the accepted prefix plus
//! the target's own next token are emitted, and the output is identical to decoding without a
//! draft — only faster when the draft agrees.

use crate::generate::{Sampler, SamplingOptions};
use crate::model::{InferenceModel, KvCache, RowMode, Segment};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// What the engine tells a request's handler.
#[derive(Debug)]
pub enum Event {
    /// A generated token (an end-of-sequence id included, last), with its log-probability under
    /// the model and the `top` most likely alternatives when asked for.
    Token {
        id: u32,
        logprob: Option<TokenLogprob>,
    },
    /// No more tokens: the sequence ended (EOS or its length).
    Done,
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

pub struct Job {
    /// BOS first.
    pub prompt: Vec<u32>,
    pub max_new: usize,
    pub sampling: SamplingOptions,
    /// How many top alternatives to report with each token (`None`: no log-probabilities).
    pub logprobs: Option<usize>,
    pub events: UnboundedSender<Event>,
    pub submitted: Instant,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    QueueFull(usize),
    /// Bytes of KV cache the request needs, and the budget.
    TooLarge(usize, usize),
    ShuttingDown,
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub max_batch: usize,
    /// Tokens the draft model proposes per step (with a draft).
    pub draft_tokens: usize,
    pub max_queue: usize,
    /// Bytes of KV cache all running sequences may hold together.
    pub kv_budget: usize,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub kv_bytes: AtomicUsize,
    pub requests_total: AtomicU64,
    pub rejected_total: AtomicU64,
    pub prompt_tokens_total: AtomicU64,
    pub generated_tokens_total: AtomicU64,
    pub ttft_micros_total: AtomicU64,
    pub ttft_count: AtomicU64,
    pub decode_steps_total: AtomicU64,
    pub draft_proposed_total: AtomicU64,
    /// Time in the draft model's proposals and in the model's decode passes.
    pub draft_micros_total: AtomicU64,
    pub decode_micros_total: AtomicU64,
    pub draft_accepted_total: AtomicU64,
    /// (when, tokens) of recent decode steps and prefills, for the tokens/s gauge.
    pub recent: Mutex<VecDeque<(Instant, usize)>>,
}

impl Metrics {
    fn produced(&self, n: usize) {
        self.generated_tokens_total.fetch_add(n as u64, Ordering::Relaxed);
        let mut r = self.recent.lock().unwrap();
        let now = Instant::now();
        r.push_back((now, n));
        while r.front().is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(10)) {
            r.pop_front();
        }
    }

    /// Generated tokens per second over the last 10 s.
    pub fn tokens_per_second(&self) -> f64 {
        let r = self.recent.lock().unwrap();
        let now = Instant::now();
        let n: usize = r.iter().filter(|(t, _)| now.duration_since(*t) <= Duration::from_secs(10)).map(|x| x.1).sum();
        n as f64 / 10.0
    }
}

struct Queue {
    jobs: VecDeque<Job>,
    shutdown: bool,
}

pub struct Engine {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    pub metrics: Arc<Metrics>,
    opts: EngineOptions,
    kv_per_position: usize,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Running {
    job: Job,
    cache: KvCache,
    sampler: Sampler,
    /// The newest token: emitted, not yet in the cache.
    last: u32,
    left: usize,
    /// Greedy requests with a draft model: the draft's cache, and tokens the target has cached
    /// but the draft has not (`draft.len + pending.len() == cache.len`).
    draft: Option<(KvCache, Vec<u32>)>,
}

impl Engine {
    pub fn start(
        model: Arc<InferenceModel>,
        draft: Option<Arc<InferenceModel>>,
        eos: Vec<u32>,
        opts: EngineOptions,
    ) -> anyhow::Result<Arc<Engine>> {
        let queue = Arc::new((Mutex::new(Queue { jobs: VecDeque::new(), shutdown: false }), Condvar::new()));
        let metrics = Arc::new(Metrics::default());
        let kv_per_position = KvCache::bytes_per_position(&model);
        let engine = Arc::new(Engine {
            queue: queue.clone(),
            metrics: metrics.clone(),
            opts: opts.clone(),
            kv_per_position,
            thread: Mutex::new(None),
        });
        let t = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || run(&model, draft.as_deref(), &eos, &opts, &queue, &metrics, kv_per_position))
            .map_err(|e| anyhow::anyhow!("cannot start the engine thread: {e}"))?;
        *engine.thread.lock().unwrap() = Some(t);
        Ok(engine)
    }

    /// Bytes of KV cache a sequence of `positions` holds.
    pub fn kv_bytes(&self, positions: usize) -> usize {
        KvCache::capacity(positions) * self.kv_per_position
    }

    pub fn submit(&self, job: Job) -> Result<(), Refusal> {
        let need = self.kv_bytes(job.prompt.len() + job.max_new);
        if need > self.opts.kv_budget {
            return Err(Refusal::TooLarge(need, self.opts.kv_budget));
        }
        let (lock, cv) = &*self.queue;
        let mut q = lock.lock().unwrap();
        if q.shutdown {
            return Err(Refusal::ShuttingDown);
        }
        if q.jobs.len() >= self.opts.max_queue {
            self.metrics.rejected_total.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::QueueFull(self.opts.max_queue));
        }
        self.metrics.requests_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.prompt_tokens_total.fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
        q.jobs.push_back(job);
        self.metrics.waiting.store(q.jobs.len(), Ordering::Relaxed);
        cv.notify_one();
        Ok(())
    }

    /// Finishes what is queued and running, then stops the engine thread.
    pub fn shutdown(&self) {
        let (lock, cv) = &*self.queue;
        lock.lock().unwrap().shutdown = true;
        cv.notify_all();
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }
}

/// Log-probability of `id` and the `top` most likely tokens, from one row of logits.
fn logprobs(row: &[f32], id: u32, top: usize) -> TokenLogprob {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    let lp = |i: usize| (row[i] as f64 - lse) as f32;
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &x) in row.iter().enumerate() {
            if best.len() < top || x > row[best[best.len() - 1].0 as usize] {
                let at = best.iter().position(|&(j, _)| x > row[j as usize]).unwrap_or(best.len());
                best.insert(at, (i as u32, 0.0));
                best.truncate(top);
            }
        }
    }
    TokenLogprob { logprob: lp(id as usize), top: best.into_iter().map(|(i, _)| (i, lp(i as usize))).collect() }
}

#[allow(clippy::too_many_arguments)]
fn run(
    model: &InferenceModel,
    draft: Option<&InferenceModel>,
    eos: &[u32],
    opts: &EngineOptions,
    queue: &(Mutex<Queue>, Condvar),
    metrics: &Metrics,
    kv_per_position: usize,
) {
    let v = model.cfg.vocab_size;
    let mut live: Vec<Running> = vec![];
    let mut kv_used = 0usize;
    let draft_per_position = draft.map(KvCache::bytes_per_position).unwrap_or(0);
    let seq_bytes = |r: &Running| {
        let positions = KvCache::capacity(r.cache.max_len);
        positions * kv_per_position + r.draft.as_ref().map(|_| positions * draft_per_position).unwrap_or(0)
    };
    loop {
        // admit the next waiting request when it fits (one prefill between decode steps, so that
        // running streams keep flowing)
        let job = {
            let (lock, cv) = queue;
            let mut q = lock.lock().unwrap();
            while live.is_empty() && q.jobs.is_empty() && !q.shutdown {
                q = cv.wait(q).unwrap();
            }
            if live.is_empty() && q.jobs.is_empty() && q.shutdown {
                return;
            }
            let fits = q.jobs.front().is_some_and(|j| {
                live.len() < opts.max_batch.max(1)
                    && kv_used + KvCache::capacity(j.prompt.len() + j.max_new) * kv_per_position <= opts.kv_budget
            });
            let job = if fits { q.jobs.pop_front() } else { None };
            metrics.waiting.store(q.jobs.len(), Ordering::Relaxed);
            job
        };
        if let Some(job) = job.filter(|j| !j.events.is_closed()) {
            let mut cache = KvCache::new(model, job.prompt.len() + job.max_new);
            match model.next_token_logits(&job.prompt, &mut cache, RowMode::MayUseGemm) {
                Err(e) => {
                    let _ = job.events.send(Event::Failed(format!("{e:#}")));
                }
                Ok(logits) => {
                    // the draft follows greedy requests only (sampled ones decode normally)
                    let plain_greedy = job.sampling.temperature <= 0.0 && !job.sampling.penalizes();
                    let draft_cache = match draft.filter(|_| plain_greedy) {
                        Some(d) => {
                            let mut c = KvCache::new(d, job.prompt.len() + job.max_new);
                            d.forward_cached_hidden(&job.prompt, &mut c, RowMode::MayUseGemm).ok().map(|_| (c, vec![]))
                        }
                        None => None,
                    };
                    let mut sampler = Sampler::new(job.sampling.clone());
                    sampler.remember(&job.prompt);
                    let t = sampler.sample(&logits);
                    let lp = job.logprobs.map(|k| logprobs(&logits, t, k));
                    let ttft = job.submitted.elapsed().as_micros() as u64;
                    metrics.ttft_micros_total.fetch_add(ttft, Ordering::Relaxed);
                    metrics.ttft_count.fetch_add(1, Ordering::Relaxed);
                    metrics.produced(1);
                    let sent = job.events.send(Event::Token { id: t, logprob: lp }).is_ok();
                    if sent && !eos.contains(&t) && job.max_new > 1 {
                        let r = Running { job, cache, sampler, last: t, left: 0, draft: draft_cache };
                        let left = r.job.max_new - 1;
                        kv_used += seq_bytes(&r);
                        live.push(Running { left, ..r });
                    } else {
                        let _ = job.events.send(Event::Done);
                    }
                }
            }
        }
        // drop the sequences nobody listens to any more
        live.retain(|r| {
            let keep = !r.job.events.is_closed();
            if !keep {
                kv_used -= seq_bytes(r);
            }
            keep
        });
        metrics.running.store(live.len(), Ordering::Relaxed);
        metrics.kv_bytes.store(kv_used, Ordering::Relaxed);
        if live.is_empty() {
            continue;
        }
        // the draft's proposals for the speculative sequences
        let tp = Instant::now();
        let proposals = match draft {
            Some(d) => propose(d, &mut live, opts.draft_tokens),
            None => vec![vec![]; live.len()],
        };
        let tp = tp.elapsed();
        let tv = Instant::now();
        // one pass of the target: each sequence's last token, and its proposals after it
        let segs_tokens: Vec<Vec<u32>> = live
            .iter()
            .zip(&proposals)
            .map(|(s, p)| std::iter::once(s.last).chain(p.iter().copied()).collect())
            .collect();
        let mut segs: Vec<Segment> =
            live.iter_mut().zip(&segs_tokens).map(|(s, t)| Segment { tokens: t, cache: &mut s.cache }).collect();
        let step =
            model.forward(&mut segs, RowMode::BatchInvariant).map(|h| model.head_logits(&h, RowMode::BatchInvariant));
        let logits = match step {
            Ok(l) => l,
            Err(e) => {
                for r in live.drain(..) {
                    let _ = r.job.events.send(Event::Failed(format!("{e:#}")));
                }
                kv_used = 0;
                continue;
            }
        };
        metrics.decode_steps_total.fetch_add(1, Ordering::Relaxed);
        metrics.draft_micros_total.fetch_add(tp.as_micros() as u64, Ordering::Relaxed);
        metrics.decode_micros_total.fetch_add(tv.elapsed().as_micros() as u64, Ordering::Relaxed);
        let mut row0 = 0;
        let mut produced = 0;
        for (s, prop) in live.iter_mut().zip(&proposals) {
            let rows = prop.len() + 1;
            let base = s.cache.len - rows; // positions of this step's segment
            let mut accepted = 0;
            for r in 0..rows {
                let row = &logits[(row0 + r) * v..(row0 + r + 1) * v];
                let t = s.sampler.sample(row);
                let lp = s.job.logprobs.map(|n| logprobs(row, t, n));
                produced += 1;
                s.last = t;
                s.left -= 1;
                if s.job.events.send(Event::Token { id: t, logprob: lp }).is_err() || eos.contains(&t) {
                    s.left = 0;
                }
                // go on while the target agrees with the draft
                if s.left == 0 || r == prop.len() || prop[r] != t {
                    break;
                }
                accepted += 1;
            }
            row0 += rows;
            if !prop.is_empty() {
                metrics.draft_proposed_total.fetch_add(prop.len() as u64, Ordering::Relaxed);
                metrics.draft_accepted_total.fetch_add(accepted as u64, Ordering::Relaxed);
                // keep the cached positions up to the last accepted proposal
                let keep = base + 1 + accepted;
                s.cache.truncate(keep);
                if let Some((dc, pending)) = &mut s.draft {
                    // the draft cached everything but the last proposal
                    if dc.len >= keep {
                        dc.truncate(keep);
                    } else {
                        pending.push(prop[prop.len() - 1]);
                    }
                }
            }
        }
        metrics.produced(produced);
        live.retain(|r| {
            if r.left == 0 {
                let _ = r.job.events.send(Event::Done);
                kv_used -= seq_bytes(r);
            }
            r.left > 0
        });
        metrics.running.store(live.len(), Ordering::Relaxed);
        metrics.kv_bytes.store(kv_used, Ordering::Relaxed);
    }
}

/// Greedy proposals of the draft model for every sequence that has a draft cache: up to `k`
/// tokens each (fewer near its token budget), computed together one position at a time.
fn propose(d: &InferenceModel, live: &mut [Running], k: usize) -> Vec<Vec<u32>> {
    let v = d.cfg.vocab_size;
    // within the token budget, and within the draft's own context
    let ctx = d.max_positions();
    let want: Vec<usize> = live
        .iter()
        .map(|s| match s.draft.is_some() {
            true => k.min(s.left.saturating_sub(1)).min(ctx.saturating_sub(s.cache.len + 2)),
            false => 0,
        })
        .collect();
    let mut props: Vec<Vec<u32>> = vec![vec![]; live.len()];
    for j in 0..want.iter().copied().max().unwrap_or(0) {
        // the first round feeds what the draft has not seen (pending + the last token)
        let feeds: Vec<(usize, Vec<u32>)> = live
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| want[*i] > j)
            .map(|(i, s)| {
                let (_, pending) = s.draft.as_mut().expect("a draft");
                let toks = if j == 0 {
                    std::mem::take(pending).into_iter().chain(std::iter::once(s.last)).collect()
                } else {
                    vec![props[i][j - 1]]
                };
                (i, toks)
            })
            .collect();
        let idx: Vec<usize> = feeds.iter().map(|f| f.0).collect();
        let mut segs: Vec<Segment> = live
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| want[*i] > j)
            .zip(&feeds)
            .map(|((_, s), (_, t))| Segment { tokens: t, cache: &mut s.draft.as_mut().expect("a draft").0 })
            .collect();
        let Ok(h) = d.forward(&mut segs, RowMode::BatchInvariant) else {
            // cannot happen within the checks above; if it does, these sequences go on without a draft
            live.iter_mut().for_each(|s| s.draft = None);
            return vec![vec![]; live.len()];
        };
        // the last row of each segment predicts its next token
        let dm = d.cfg.hidden_size;
        let mut lasts = Vec::with_capacity(idx.len() * dm);
        let mut r = 0;
        for (_, t) in &feeds {
            r += t.len();
            lasts.extend_from_slice(&h[(r - 1) * dm..r * dm]);
        }
        let logits = d.head_logits(&lasts, RowMode::BatchInvariant);
        for (n, &i) in idx.iter().enumerate() {
            props[i].push(crate::kernels::argmax(&logits[n * v..(n + 1) * v]) as u32);
        }
    }
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_top_tokens_in_order() {
        let row = [1.0f32, 3.0, 2.0, -1.0, 3.0];
        let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
        let lp = logprobs(&row, 2, 3);
        assert!((lp.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        let ids: Vec<u32> = lp.top.iter().map(|x| x.0).collect();
        assert_eq!(ids, [1, 4, 2]); // ties keep the lower id first
        assert!((lp.top[0].1 as f64 - (3.0 - z.ln())).abs() < 1e-6);
        assert!(logprobs(&row, 0, 0).top.is_empty());
    }
}
