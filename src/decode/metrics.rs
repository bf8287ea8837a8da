//! What the engine counts, for `/metrics` and the benchmarks: requests, tokens, steps (with their
//! prefill and decode rows), time to first token, the gaps between a sequence's tokens (a
//! histogram), prefix-cache hits and the draft's acceptance. Atomics, so that the server's
//! handlers read them while the engine thread writes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the inter-token gap histogram's buckets (then +Inf).
pub const GAP_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
pub struct Metrics {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    /// KV-cache bytes of running sequences, and of cached prefixes.
    pub kv_bytes: AtomicUsize,
    pub prefix_bytes: AtomicUsize,
    pub requests_total: AtomicU64,
    pub rejected_total: AtomicU64,
    pub prompt_tokens_total: AtomicU64,
    pub generated_tokens_total: AtomicU64,
    pub ttft_micros_total: AtomicU64,
    pub ttft_count: AtomicU64,
    pub steps_total: AtomicU64,
    /// Rows of the steps: prompt tokens prefilled, and decode rows (a token each, plus the draft
    /// tokens verified).
    pub step_prefill_tokens_total: AtomicU64,
    pub step_decode_tokens_total: AtomicU64,
    /// Prompt tokens of the last step (a gauge: how full the token budget was).
    pub last_step_prefill_tokens: AtomicUsize,
    pub last_step_decode_tokens: AtomicUsize,
    pub prefix_lookups_total: AtomicU64,
    pub prefix_hits_total: AtomicU64,
    pub prefix_tokens_reused_total: AtomicU64,
    pub draft_proposed_total: AtomicU64,
    pub draft_accepted_total: AtomicU64,
    /// Time in the draft model's proposals and in the model's passes.
    pub draft_micros_total: AtomicU64,
    pub step_micros_total: AtomicU64,
    /// Inter-token gaps: counts per [`GAP_BUCKETS`] bucket (the last: above them all), their sum.
    pub gap_buckets: [AtomicU64; GAP_BUCKETS.len() + 1],
    pub gap_micros_total: AtomicU64,
    /// (when, tokens) of recent steps, for the tokens/s gauge.
    recent: Mutex<VecDeque<(Instant, usize)>>,
}

impl Metrics {
    pub(crate) fn add(a: &AtomicU64, n: usize) {
        a.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn produced(&self, n: usize) {
        Self::add(&self.generated_tokens_total, n);
        let mut r = self.recent.lock().unwrap();
        let now = Instant::now();
        r.push_back((now, n));
        while r.front().is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(10)) {
            r.pop_front();
        }
    }

    pub(crate) fn gap(&self, d: Duration) {
        let s = d.as_secs_f64();
        let b = GAP_BUCKETS.iter().position(|&u| s <= u).unwrap_or(GAP_BUCKETS.len());
        self.gap_buckets[b].fetch_add(1, Ordering::Relaxed);
        Self::add(&self.gap_micros_total, d.as_micros() as usize);
    }

    /// Generated tokens per second over the last 10 s.
    pub fn tokens_per_second(&self) -> f64 {
        let r = self.recent.lock().unwrap();
        let now = Instant::now();
        let n: usize = r.iter().filter(|(t, _)| now.duration_since(*t) <= Duration::from_secs(10)).map(|x| x.1).sum();
        n as f64 / 10.0
    }

    pub fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }
}
