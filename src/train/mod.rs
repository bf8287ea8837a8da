//! Training pieces: the optimiser with global-norm clipping ([`adamw`]) and TinyLlama's learning
//! rate schedule ([`schedule`]).

pub mod adamw;
pub mod schedule;

pub use adamw::{clip_grad_norm, global_grad_norm, AdamW, AdamWConfig};
pub use schedule::CosineSchedule;
