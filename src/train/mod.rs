//! Training: the optimiser with global-norm clipping ([`adamw`]), TinyLlama's learning-rate
//! schedule ([`schedule`]), the run's configuration ([`config`]), checkpoints ([`checkpoint`]), the
//! run's record ([`metrics`]: metrics.jsonl and the loss plot of [`plot`]) and the loop itself
//! ([`pretrain`]).

pub mod adamw;
pub mod checkpoint;
pub mod config;
pub mod metrics;
pub mod plot;
pub mod pretrain;
pub mod schedule;

pub use adamw::{clip_grad_norm, clip_to_norm, global_grad_norm, grad_sum_squares, AdamW, AdamWConfig};
pub use schedule::CosineSchedule;
