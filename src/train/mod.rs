//! Training: the optimiser with global-norm clipping ([`adamw`]), TinyLlama's learning-rate
//! schedule ([`schedule`]), the run's configuration ([`config`]), checkpoints ([`checkpoint`]), the
//! run's record ([`metrics`]: metrics.jsonl and the loss plot of [`plot`]) the parts every training mode shares ([`trainer`]: resume, the
//! optimiser step, checkpoints) and the pretraining loop ([`pretrain`]).

pub mod adamw;
pub mod checkpoint;
pub mod config;
pub mod finetune;
pub mod lora;
pub mod metrics;
pub mod plot;
pub mod pretrain;
pub mod schedule;
pub mod trainer;

pub use adamw::{clip_grad_norm, clip_to_norm, global_grad_norm, grad_sum_squares, AdamW, AdamWConfig};
pub use schedule::{format_lr, CosineSchedule};
