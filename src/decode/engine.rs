//! The engine: sequences wait, are admitted while the batch has room and the KV budget allows
//! (cached prefixes evicted least recently used to make room), and advance together one step at a
//! time. A step is one forward pass of the model over the weights: every decoding sequence's
//! newest token (plus the draft tokens it must verify) first, then prefill chunks of admitted
//! prompts, in order, until the step's token budget is spent. Each row is computed as it would
//! be alone ([`RowMode::BatchInvariant`]), and a prompt's cached keys and values do not depend on
//! how it was cut into chunks or which cached prefix it continued, so a sequence's tokens are the
//! same bits whatever shares its steps and whatever the budget.

use super::logprobs::logprobs;
use super::metrics::Metrics;
use super::prefix_cache::PrefixCache;
use super::sampler::Sampler;
use super::sequence::{DraftState, Event, Finish, Request, SeqId, Sequence, PROMPT_TOP_MAX};
use super::speculative::{self, DraftOptions, Proposal};
use crate::model::{InferenceModel, KvCache, RowMode, Segment};
use anyhow::{bail, ensure, Result};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Whether finished sequences' caches are kept for prompts that start with the same tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixReuse {
    On,
    Off,
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Sequences running together at most.
    pub max_batch: usize,
    /// Rows a step computes (decode rows first, prefill chunks fill the rest; `--step-tokens`).
    pub step_tokens: usize,
    /// Bytes of KV cache that running sequences and cached prefixes hold together.
    pub kv_budget: usize,
    pub prefix_reuse: PrefixReuse,
    pub draft: DraftOptions,
}

/// Rows a step computes by default: with 8 streams decoding while 1,000-token prompts arrive, the
/// streams' p99 gap between tokens stays near 5× their median (BENCHMARKS.md).
pub const DEFAULT_STEP_TOKENS: usize = 32;

/// Rows of a step that no decoding sequence waits on (prompts alone): prefill in large chunks,
/// each reading the weights once.
pub const PREFILL_ALONE_TOKENS: usize = 512;

impl EngineOptions {
    /// `max_batch` sequences of `max_len` positions, and as much again for cached prefixes.
    pub fn for_model(model: &InferenceModel, max_batch: usize, max_len: usize) -> Self {
        EngineOptions {
            max_batch: max_batch.max(1),
            step_tokens: DEFAULT_STEP_TOKENS,
            kv_budget: (max_batch.max(1) + 1) * KvCache::bytes_for(model, max_len),
            prefix_reuse: PrefixReuse::On,
            draft: DraftOptions::default(),
        }
    }
}

pub struct Engine<'m> {
    model: &'m InferenceModel,
    draft: Option<&'m InferenceModel>,
    opts: EngineOptions,
    next_id: SeqId,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    prefixes: PrefixCache,
    /// KV bytes of the running sequences.
    kv_running: usize,
    pub metrics: Arc<Metrics>,
}

/// What one step did.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepReport {
    pub prefill_tokens: usize,
    pub decode_tokens: usize,
}

impl<'m> Engine<'m> {
    /// An engine over `model`, with `draft` proposing tokens for speculative decoding. A draft
    /// must share the model's vocabulary (the caller checks the tokenizers agree).
    pub fn new(model: &'m InferenceModel, draft: Option<&'m InferenceModel>, opts: EngineOptions) -> Result<Self> {
        ensure!(opts.step_tokens >= 1, "--step-tokens must be at least 1");
        ensure!(opts.max_batch >= 1, "--max-batch must be at least 1");
        if let Some(d) = draft {
            ensure!(opts.draft.max_tokens >= 1, "--draft-tokens must be at least 1");
            ensure!(
                d.cfg.vocab_size == model.cfg.vocab_size,
                "the draft model's vocabulary has {} tokens, the model's {}: speculative decoding needs the same vocabulary",
                d.cfg.vocab_size,
                model.cfg.vocab_size
            );
        }
        Ok(Engine {
            model,
            draft,
            opts,
            next_id: 1,
            waiting: VecDeque::new(),
            running: vec![],
            prefixes: PrefixCache::default(),
            kv_running: 0,
            metrics: Arc::new(Metrics::default()),
        })
    }

    /// Shares counters with another owner (the server's `/metrics`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Positions a sequence may reach: the model's context (and the draft's).
    pub fn context(&self) -> usize {
        self.model.max_positions()
    }

    /// KV bytes a position costs (the draft's included).
    fn bytes_per_position(&self) -> usize {
        KvCache::bytes_per_position(self.model) + self.draft.map_or(0, KvCache::bytes_per_position)
    }

    /// KV bytes of a sequence of `max_len` positions.
    pub fn kv_bytes(&self, max_len: usize) -> usize {
        KvCache::capacity(max_len) * self.bytes_per_position()
    }

    /// The tokens `req` will generate at most: its `max_new` within the context.
    pub fn max_new_within_context(&self, req: &Request) -> usize {
        max_new_within(req, self.context())
    }

    /// Checks a request before it queues: see [`check_request`].
    pub fn check(&self, req: &Request) -> Result<()> {
        check_request(self.model, self.draft, &self.opts, req)
    }

    /// Queues a request; its events name the returned id.
    pub fn add(&mut self, req: Request) -> Result<SeqId> {
        self.check(&req)?;
        let id = self.next_id;
        self.next_id += 1;
        let max_new = self.max_new_within_context(&req);
        Metrics::add(&self.metrics.requests_total, 1);
        Metrics::add(&self.metrics.prompt_tokens_total, req.prompt.len());
        let mut sampler = Sampler::new(req.sampling.clone());
        sampler.remember(&req.prompt);
        let empty = KvCache::empty(0, 0, 0, 0, false);
        self.waiting.push_back(Sequence {
            id,
            req,
            max_new,
            cache: empty,
            sampler,
            last: 0,
            generated: 0,
            reused: 0,
            prompt_lp: None,
            draft: None,
            finished: None,
            last_token_at: None,
        });
        self.publish_sizes();
        Ok(id)
    }

    /// Ends a sequence now (its cache kept for reuse); a `Finished` event follows at once.
    pub fn cancel(&mut self, id: SeqId, events: &mut Vec<Event>) {
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            let s = self.waiting.remove(i).expect("present");
            events.push(Event::Finished { seq: s.id, reason: Finish::Cancelled, reused: 0 });
        } else if let Some(s) = self.running.iter_mut().find(|s| s.id == id) {
            s.finished.get_or_insert(Finish::Cancelled);
            self.retire(events);
        }
        self.publish_sizes();
    }

    /// Sequences waiting or running.
    pub fn pending(&self) -> usize {
        self.waiting.len() + self.running.len()
    }

    pub fn is_idle(&self) -> bool {
        self.pending() == 0
    }

    /// Forgets every cached prefix.
    pub fn clear_prefixes(&mut self) {
        self.prefixes.clear();
        self.publish_sizes();
    }

    fn publish_sizes(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics.waiting.store(self.waiting.len(), Relaxed);
        self.metrics.running.store(self.running.len(), Relaxed);
        self.metrics.kv_bytes.store(self.kv_running, Relaxed);
        self.metrics.prefix_bytes.store(self.prefixes.bytes(), Relaxed);
    }

    /// Admits waiting sequences, in order, while the batch has room and their caches fit (cached
    /// prefixes evicted to make room).
    fn admit(&mut self) {
        while self.running.len() < self.opts.max_batch {
            let Some(front) = self.waiting.front() else { break };
            let max_len = front.req.prompt.len() + front.max_new;
            let need = self.kv_bytes(max_len);
            while self.kv_running + self.prefixes.bytes() + need > self.opts.kv_budget && self.prefixes.evict_oldest() {
            }
            if self.kv_running + self.prefixes.bytes() + need > self.opts.kv_budget {
                break;
            }
            let mut s = self.waiting.pop_front().expect("present");
            let wants_lp = s.req.prompt_logprobs.is_some();
            let start = self.prefixes.start(&s.req.prompt, max_len, self.model, self.draft, wants_lp);
            Metrics::add(&self.metrics.prefix_lookups_total, 1);
            if start.reused > 0 {
                Metrics::add(&self.metrics.prefix_hits_total, 1);
                Metrics::add(&self.metrics.prefix_tokens_reused_total, start.reused);
            }
            s.cache = start.cache;
            s.reused = start.reused;
            s.prompt_lp = start.prompt_lp;
            // the draft follows where its context holds the whole sequence
            let draft_fits = self.draft.is_some_and(|d| max_len <= d.max_positions());
            s.draft = start.draft.filter(|_| draft_fits).map(|cache| {
                let mut o = s.req.sampling.clone();
                (o.repeat_penalty, o.frequency_penalty, o.presence_penalty) = (1.0, 0.0, 0.0);
                o.seed = o.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
                DraftState { cache, sampler: Sampler::new(o), k: self.opts.draft.max_tokens }
            });
            self.kv_running += need;
            self.running.push(s);
        }
    }

    /// One step: admit, propose, one pass of the model over every row, then sample, verify and
    /// retire. Events of the step are appended to `events`.
    pub fn step(&mut self, events: &mut Vec<Event>) -> Result<StepReport> {
        self.admit();
        self.publish_sizes();
        if self.running.is_empty() {
            return Ok(StepReport::default());
        }
        let t0 = Instant::now();
        let proposals = match self.propose() {
            Ok(p) => p,
            Err(e) => return self.fail_all(e, events),
        };
        let t_draft = t0.elapsed();
        // the rows of this step: decode rows first, then prefill chunks within the budget (a
        // larger one when nothing decodes: no stream waits on this step)
        let decoding = self.running.iter().any(|s| s.decoding());
        let mut budget = match decoding {
            true => self.opts.step_tokens,
            false => self.opts.step_tokens.max(PREFILL_ALONE_TOKENS),
        };
        let mut feeds: Vec<Vec<u32>> = vec![];
        for (s, p) in self.running.iter().zip(&proposals) {
            let f: Vec<u32> = match s.decoding() {
                true => std::iter::once(s.last).chain(p.tokens.iter().copied()).collect(),
                false => vec![],
            };
            budget = budget.saturating_sub(f.len());
            feeds.push(f);
        }
        let decode_rows: usize = feeds.iter().map(Vec::len).sum();
        // prompts always advance: when decode rows (many sequences, each with its draft tokens)
        // fill the budget, a quarter of it still goes to prefill
        budget = budget.max(self.opts.step_tokens / 4).max(1);
        for (s, f) in self.running.iter().zip(feeds.iter_mut()) {
            if !s.decoding() && s.to_prefill() > 0 {
                let n = s.to_prefill().min(budget);
                f.extend_from_slice(&s.req.prompt[s.cache.len..s.cache.len + n]);
                budget -= n;
            }
        }
        let prefill_rows: usize = feeds.iter().map(Vec::len).sum::<usize>() - decode_rows;
        let logits = match self.forward(&feeds) {
            Ok(l) => l,
            Err(e) => return self.fail_all(e, events),
        };
        if let Err(e) = self.draft_follows_prefill(&feeds) {
            return self.fail_all(e, events);
        }
        self.take_rows(&feeds, &proposals, &logits, events);
        self.retire(events);
        let m = &self.metrics;
        use std::sync::atomic::Ordering::Relaxed;
        Metrics::add(&m.steps_total, 1);
        Metrics::add(&m.step_prefill_tokens_total, prefill_rows);
        Metrics::add(&m.step_decode_tokens_total, decode_rows);
        m.last_step_prefill_tokens.store(prefill_rows, Relaxed);
        m.last_step_decode_tokens.store(decode_rows, Relaxed);
        Metrics::add(&m.draft_micros_total, t_draft.as_micros() as usize);
        Metrics::add(&m.step_micros_total, (t0.elapsed() - t_draft).as_micros() as usize);
        self.publish_sizes();
        Ok(StepReport { prefill_tokens: prefill_rows, decode_tokens: decode_rows })
    }

    /// Steps until every sequence has finished, handing each step's events to `on_event`.
    pub fn run(&mut self, on_event: &mut dyn FnMut(&mut Self, Event) -> Result<()>) -> Result<()> {
        let mut events = vec![];
        while !self.is_idle() {
            self.step(&mut events)?;
            for e in events.drain(..) {
                on_event(self, e)?;
            }
        }
        Ok(())
    }

    /// Runs `reqs` to the end, all queued at once; returns each one's tokens, in order.
    /// `on_token(i, t)` sees each new token of request `i` as it comes.
    pub fn generate_all(
        &mut self,
        reqs: Vec<Request>,
        on_token: &mut dyn FnMut(usize, u32) -> Result<()>,
    ) -> Result<Vec<Vec<u32>>> {
        let mut index = std::collections::HashMap::new();
        for (i, r) in reqs.into_iter().enumerate() {
            let id = self.add(r).map_err(|e| e.context(format!("prompt {i}")))?;
            index.insert(id, i);
        }
        let mut out: Vec<Vec<u32>> = vec![vec![]; index.len()];
        self.run(&mut |_, ev| match ev {
            Event::Token { seq, id, .. } => {
                let i = index[&seq];
                out[i].push(id);
                on_token(i, id)
            }
            Event::Failed { message, .. } => bail!("{message}"),
            Event::Finished { .. } | Event::PromptLogprobs { .. } => Ok(()),
        })?;
        Ok(out)
    }

    /// The draft's proposals for the decoding sequences that have a draft.
    fn propose(&mut self) -> Result<Vec<Proposal>> {
        let mut props: Vec<Proposal> = (0..self.running.len()).map(|_| Proposal::default()).collect();
        let Some(d) = self.draft else { return Ok(props) };
        let (idx, mut seqs): (Vec<usize>, Vec<&mut Sequence>) =
            self.running.iter_mut().enumerate().filter(|(_, s)| s.decoding() && s.draft.is_some()).unzip();
        if seqs.is_empty() {
            return Ok(props);
        }
        for (i, p) in idx.into_iter().zip(speculative::propose(d, &mut seqs, &self.opts.draft)?) {
            props[i] = p;
        }
        Ok(props)
    }

    /// One pass of the model over `feeds` (a row list per running sequence); the logits of the
    /// rows that choose a token: every decode row, and the last row of a prompt whose prefill
    /// ends here. `[rows, vocab]` in that order.
    fn forward(&mut self, feeds: &[Vec<u32>]) -> Result<Vec<f32>> {
        let mut segs: Vec<Segment> = self
            .running
            .iter_mut()
            .zip(feeds)
            .filter(|(_, f)| !f.is_empty())
            .map(|(s, f)| Segment { tokens: f, cache: &mut s.cache })
            .collect();
        let hidden = self.model.forward(&mut segs, RowMode::BatchInvariant)?;
        let d = self.model.cfg.hidden_size;
        let mut rows = vec![];
        let mut r0 = 0;
        for (s, f) in self.running.iter().zip(feeds) {
            let want = logit_rows(s, f.len());
            rows.extend_from_slice(&hidden[(r0 + want.start) * d..(r0 + want.end) * d]);
            r0 += f.len();
        }
        Ok(self.model.head_logits(&rows, RowMode::BatchInvariant))
    }

    /// The draft's caches take the prompt tokens the target's took in this step.
    fn draft_follows_prefill(&mut self, feeds: &[Vec<u32>]) -> Result<()> {
        let Some(d) = self.draft else { return Ok(()) };
        let mut seqs: Vec<&mut Sequence> = self
            .running
            .iter_mut()
            .zip(feeds)
            .filter(|(s, f)| s.generated == 0 && !f.is_empty() && s.draft.is_some())
            .map(|(s, _)| s)
            .collect();
        speculative::follow_prefill(d, &mut seqs)
    }

    /// Chooses tokens from the step's logits: a finished prompt's first token, each decoding
    /// sequence's next ones (its proposals verified in order), with their events.
    fn take_rows(&mut self, feeds: &[Vec<u32>], proposals: &[Proposal], logits: &[f32], events: &mut Vec<Event>) {
        let v = self.model.cfg.vocab_size;
        let max_draft = self.opts.draft.max_tokens;
        let mut row0 = 0;
        let mut produced = 0;
        for ((s, f), prop) in self.running.iter_mut().zip(feeds).zip(proposals) {
            if s.generated == 0 {
                let want = logit_rows(s, f.len());
                let rows = &logits[row0 * v..(row0 + want.len()) * v];
                row0 += want.len();
                if let Some(lp) = s.prompt_lp.as_mut() {
                    // row of position p scores the prompt's token p + 1
                    let p0 = s.cache.len - f.len();
                    for (j, row) in rows.chunks_exact(v).enumerate() {
                        if let Some(&next) = s.req.prompt.get(p0 + j + 1) {
                            lp.push(Some(logprobs(row, next, PROMPT_TOP_MAX)));
                        }
                    }
                }
                if f.is_empty() || s.to_prefill() > 0 {
                    continue;
                }
                if let (Some(lp), Some(top)) = (&s.prompt_lp, s.req.prompt_logprobs) {
                    let logprobs = lp.iter().map(|x| {
                        x.clone().map(|mut t| {
                            t.top.truncate(top);
                            t
                        })
                    });
                    events.push(Event::PromptLogprobs { seq: s.id, logprobs: logprobs.collect() });
                }
                if s.max_new == 0 {
                    s.finished = Some(Finish::Length);
                    continue;
                }
                let row = &rows[rows.len() - v..];
                let t = s.sampler.sample(row);
                let ttft = s.req.submitted.elapsed().as_micros() as usize;
                Metrics::add(&self.metrics.ttft_micros_total, ttft);
                Metrics::add(&self.metrics.ttft_count, 1);
                emit(s, t, row, events, &self.metrics);
                produced += 1;
                continue;
            }
            if f.is_empty() {
                continue;
            }
            let base = s.cache.len - f.len();
            let mut accepted = 0;
            for r in 0..f.len() {
                let row = &logits[(row0 + r) * v..(row0 + r + 1) * v];
                let (t, agreed) = speculative::verify_row(&mut s.sampler, row, prop, r);
                emit(s, t, row, events, &self.metrics);
                produced += 1;
                if s.finished.is_some() || !agreed {
                    break;
                }
                accepted += 1;
            }
            row0 += f.len();
            // keep the positions up to the last accepted proposal; the token after it is `last`
            s.cache.truncate(base + 1 + accepted);
            if let Some(dr) = &mut s.draft {
                let keep = dr.cache.len.min(s.cache.len);
                dr.cache.truncate(keep);
                dr.k = speculative::next_k(dr.k, prop.tokens.len(), accepted, max_draft);
            }
            if !prop.tokens.is_empty() {
                Metrics::add(&self.metrics.draft_proposed_total, prop.tokens.len());
                Metrics::add(&self.metrics.draft_accepted_total, accepted);
            }
        }
        self.metrics.produced(produced);
    }

    /// Sequences that finished leave: their events, their caches to the prefix cache.
    fn retire(&mut self, events: &mut Vec<Event>) {
        let per_position = self.bytes_per_position();
        let mut i = 0;
        while i < self.running.len() {
            let Some(reason) = self.running[i].finished else {
                i += 1;
                continue;
            };
            let s = self.running.remove(i);
            self.kv_running -= self.kv_bytes(s.req.prompt.len() + s.max_new);
            events.push(Event::Finished { seq: s.id, reason, reused: s.reused });
            if self.opts.prefix_reuse == PrefixReuse::On {
                self.prefixes.insert(s.cache, s.draft.map(|d| d.cache), s.prompt_lp.unwrap_or_default(), per_position);
                while self.kv_running + self.prefixes.bytes() > self.opts.kv_budget && self.prefixes.evict_oldest() {}
            }
        }
    }

    /// A failed pass fails every running sequence (each request checked on entry, so this is a
    /// fault of the machine, not of one request); waiting ones go on.
    fn fail_all(&mut self, e: anyhow::Error, events: &mut Vec<Event>) -> Result<StepReport> {
        for s in self.running.drain(..) {
            events.push(Event::Failed { seq: s.id, message: format!("{e:#}") });
        }
        self.kv_running = 0;
        self.publish_sizes();
        Ok(StepReport::default())
    }
}

/// Which of the `fed` rows a sequence ran in this step need logits (relative to its first): every
/// decode row; while prefilling, every row when the prompt's log-probabilities are wanted, else
/// the prompt's last row when it ends here and tokens are to follow.
fn logit_rows(s: &Sequence, fed: usize) -> std::ops::Range<usize> {
    if s.generated > 0 || (fed > 0 && s.prompt_lp.is_some()) {
        return 0..fed;
    }
    match fed > 0 && s.to_prefill() == 0 && s.max_new > 0 {
        true => fed - 1..fed,
        false => 0..0,
    }
}

/// `req.max_new` within a context of `ctx` positions.
fn max_new_within(req: &Request, ctx: usize) -> usize {
    req.max_new.min(ctx.saturating_sub(req.prompt.len()))
}

/// Checks a request as an engine of `model` (and `draft`) with `opts` would before it queues: a
/// prompt that fits the context, known token ids, a KV cache within the budget. The error names
/// what is wrong.
pub fn check_request(
    model: &InferenceModel,
    draft: Option<&InferenceModel>,
    opts: &EngineOptions,
    req: &Request,
) -> Result<()> {
    let ctx = model.max_positions();
    ensure!(!req.prompt.is_empty(), "the prompt is empty");
    ensure!(
        req.prompt.len() < ctx || (req.max_new == 0 && req.prompt.len() <= ctx),
        "the prompt has {} tokens and fills the model's context ({ctx})",
        req.prompt.len()
    );
    let v = model.cfg.vocab_size;
    if let Some(&t) = req.prompt.iter().find(|&&t| t as usize >= v) {
        bail!("token id {t} is outside the vocabulary (size {v})");
    }
    if let Some(n) = req.prompt_logprobs {
        ensure!(n <= PROMPT_TOP_MAX, "at most {PROMPT_TOP_MAX} top log-probabilities per prompt token, not {n}");
    }
    let per_position = KvCache::bytes_per_position(model) + draft.map_or(0, KvCache::bytes_per_position);
    let max_new = max_new_within(req, ctx);
    let need = KvCache::capacity(req.prompt.len() + max_new) * per_position;
    ensure!(need <= opts.kv_budget, "the request needs {need} bytes of KV cache; the budget is {}", opts.kv_budget);
    Ok(())
}

/// Emits token `t` of `s` (chosen from `row`), and marks `s` finished at an end id or its length.
fn emit(s: &mut Sequence, t: u32, row: &[f32], events: &mut Vec<Event>, metrics: &Metrics) {
    let now = Instant::now();
    if let Some(prev) = s.last_token_at {
        metrics.gap(now - prev);
    }
    s.last_token_at = Some(now);
    s.last = t;
    s.generated += 1;
    let logprob = s.req.logprobs.map(|n| logprobs(row, t, n));
    events.push(Event::Token { seq: s.id, id: t, logprob });
    if s.req.end_ids.contains(&t) {
        s.finished = Some(Finish::EndToken);
    } else if s.generated >= s.max_new {
        s.finished = Some(Finish::Length);
    }
}
