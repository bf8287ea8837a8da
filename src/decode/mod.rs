//! The decode engine under `generate`, `chat`, `eval`'s generative tasks and `serve`: sequences
//! ([`sequence`]) admitted and stepped together by [`engine::Engine`] — one forward pass a step
//! over every decoding sequence's newest token and the draft tokens it verifies
//! ([`speculative`]), with prefill chunks of waiting prompts filling the rest of a token budget —
//! and finished sequences' caches kept for prompts that start the same way ([`prefix_cache`]).
//! Tokens are chosen by [`sampler`] and turned into text by [`text`].

pub mod engine;
pub mod logprobs;
pub mod metrics;
mod prefix_cache;
pub mod sampler;
pub mod sequence;
pub mod speculative;
pub mod text;

pub use engine::{Engine, EngineOptions, PrefixReuse, StepReport, DEFAULT_STEP_TOKENS};
pub use logprobs::TokenLogprob;
pub use metrics::Metrics;
pub use sampler::{Distribution, Sampler, SamplingOptions};
pub use sequence::{Event, Finish, Request, SeqId, PROMPT_TOP_MAX};
pub use speculative::DraftOptions;
pub use text::{end_ids, TextStream};

#[cfg(test)]
mod tests;
