//! Evaluation: lm-evaluation-harness-compatible zero-shot tasks ([`tasks`], [`harness`]),
//! sliding-window perplexity ([`perplexity`]), and InstructEval's generative problem-solving
//! tasks ([`instruct`] builds the prompts, [`generative`] generates and scores them,
//! [`humaneval`] runs the programs, [`pyrandom`] draws DROP's shots as CPython does).

pub mod generative;
pub mod harness;
pub mod humaneval;
pub mod instruct;
pub mod perplexity;
pub mod pyrandom;
pub mod runner;
pub mod tasks;
