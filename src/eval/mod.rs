//! Evaluation: lm-evaluation-harness-compatible zero-shot tasks ([`tasks`], [`harness`]) and
//! sliding-window perplexity ([`perplexity`]).

pub mod harness;
pub mod perplexity;
pub mod tasks;
