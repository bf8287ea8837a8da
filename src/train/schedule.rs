//! TinyLlama's learning-rate schedule (`get_lr` in `pretrain/tinyllama.py`): linear warmup from 0,
//! cosine decay to `min_lr` at `decay_iters`, then constant.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup_iters: u64,
    pub decay_iters: u64,
}

impl CosineSchedule {
    pub fn lr(&self, it: u64) -> f64 {
        if it < self.warmup_iters {
            return self.max_lr * it as f64 / self.warmup_iters as f64;
        }
        if it > self.decay_iters {
            return self.min_lr;
        }
        let ratio = (it - self.warmup_iters) as f64 / (self.decay_iters - self.warmup_iters).max(1) as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        self.min_lr + coeff * (self.max_lr - self.min_lr)
    }
}
