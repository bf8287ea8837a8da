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

/// A learning rate for a log line: `0` for zero (the first warmup step), else two decimals of
/// scientific notation.
pub fn format_lr(lr: f64) -> String {
    if lr == 0.0 {
        "0".into()
    } else {
        format!("{lr:.2e}")
    }
}

impl CosineSchedule {
    /// The schedule in words, for a note that it changed.
    pub fn describe(&self) -> String {
        format!(
            "warmup {} steps, then cosine {} → {} at step {}",
            self.warmup_iters,
            format_lr(self.max_lr),
            format_lr(self.min_lr),
            self.decay_iters
        )
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// TinyLlama's `get_lr` at hand-computed points: 4e-4 → 4e-5, 2000 warmup, decay to 10000.
    #[test]
    fn get_lr_by_hand() {
        let s = CosineSchedule { max_lr: 4e-4, min_lr: 4e-5, warmup_iters: 2000, decay_iters: 10000 };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        assert_eq!(s.lr(0), 0.0);
        assert!(close(s.lr(1000), 2e-4)); // halfway through warmup
        assert!(close(s.lr(2000), 4e-4)); // the peak
        assert!(close(s.lr(4000), 4e-5 + 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos()) * 3.6e-4));
        assert!(close(s.lr(4000), 3.4727922061357855e-4));
        assert!(close(s.lr(6000), 2.2e-4)); // half the cosine: the midpoint
        assert!(close(s.lr(10000), 4e-5));
        assert_eq!(s.lr(10001), 4e-5);
        assert_eq!(s.lr(1_000_000), 4e-5);
    }
}
