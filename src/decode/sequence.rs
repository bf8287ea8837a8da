//! One sequence in the engine: what was asked ([`Request`]), its KV cache, its sampler with the
//! penalties' state, its draft state, and how far it has come.

use super::logprobs::TokenLogprob;
use super::sampler::{Sampler, SamplingOptions};
use crate::model::KvCache;
use std::time::Instant;

pub type SeqId = u64;

/// Top alternatives kept for each prompt position (OpenAI's legacy `logprobs` allows at most 5).
pub const PROMPT_TOP_MAX: usize = 5;

/// What a caller asks the engine for.
#[derive(Clone, Debug)]
pub struct Request {
    /// Token ids, BOS first; never empty.
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (fewer where the context ends). 0: only prefill the prompt,
    /// whose cache is then kept for prompts that start with it (a shared few-shot prefix).
    pub max_new: usize,
    pub sampling: SamplingOptions,
    /// Tokens that end the sequence (emitted, last).
    pub end_ids: Vec<u32>,
    /// How many top alternatives to report with each token (`None`: no log-probabilities).
    pub logprobs: Option<usize>,
    /// The prompt's own log-probabilities (OpenAI's `echo` with `logprobs`): each prompt token's
    /// given the ones before it, with this many top alternatives (at most
    /// [`PROMPT_TOP_MAX`]), in one [`Event::PromptLogprobs`] before the first token.
    pub prompt_logprobs: Option<usize>,
    /// When the request was made (time to first token counts from here).
    pub submitted: Instant,
}

impl Request {
    pub fn new(prompt: Vec<u32>, max_new: usize, sampling: SamplingOptions, end_ids: Vec<u32>) -> Self {
        Request { prompt, max_new, sampling, end_ids, logprobs: None, prompt_logprobs: None, submitted: Instant::now() }
    }
}

/// What the engine reports.
#[derive(Debug)]
pub enum Event {
    /// The prompt's log-probabilities, one per prompt token (`None` for the first).
    PromptLogprobs { seq: SeqId, logprobs: Vec<Option<TokenLogprob>> },
    /// A generated token (an end id included, last), with its log-probability when asked for.
    Token { seq: SeqId, id: u32, logprob: Option<TokenLogprob> },
    /// No more tokens. `reused`: prompt tokens taken from a cached prefix.
    Finished { seq: SeqId, reason: Finish, reused: usize },
    /// The step failed for this sequence, which is gone.
    Failed { seq: SeqId, message: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end id was generated.
    EndToken,
    /// `max_new` tokens, or the context is full (or the prompt alone was asked for).
    Length,
    /// [`Engine::cancel`](super::Engine::cancel).
    Cancelled,
}

/// The draft model's side of a sequence (speculative decoding).
pub(crate) struct DraftState {
    pub cache: KvCache,
    /// Draws the draft's proposals of a sampled sequence.
    pub sampler: Sampler,
    /// Tokens to propose next time (adapts to how many were accepted).
    pub k: usize,
}

pub(crate) struct Sequence {
    pub id: SeqId,
    pub req: Request,
    /// `max_new` within the context.
    pub max_new: usize,
    /// The prompt's positions and the tokens generated so far, except `last`.
    pub cache: KvCache,
    pub sampler: Sampler,
    /// The newest token: emitted, not yet in the cache (valid once `generated > 0`).
    pub last: u32,
    pub generated: usize,
    pub reused: usize,
    /// With `prompt_logprobs`: each prompt token's so far (top [`PROMPT_TOP_MAX`]).
    pub prompt_lp: Option<Vec<Option<TokenLogprob>>>,
    pub draft: Option<DraftState>,
    pub finished: Option<Finish>,
    pub last_token_at: Option<Instant>,
}

impl Sequence {
    /// Prompt tokens still to prefill.
    pub fn to_prefill(&self) -> usize {
        self.req.prompt.len().saturating_sub(self.cache.len)
    }

    pub fn decoding(&self) -> bool {
        self.generated > 0 && self.finished.is_none()
    }

    /// Tokens it may still generate.
    pub fn left(&self) -> usize {
        self.max_new - self.generated
    }
}
