//! A per-kernel wall-time breakdown for `tinyllama bench train --profile`: off by default (one
//! relaxed atomic load per kernel call), on, it sums the time of each named kernel call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<Vec<(&'static str, f64, u64)>> = Mutex::new(Vec::new());

pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Runs `f`, adding its wall time to `name` when profiling is on.
#[inline]
pub fn timed<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let t = Instant::now();
    let r = f();
    let dt = t.elapsed().as_secs_f64();
    let mut tab = TABLE.lock().unwrap();
    match tab.iter_mut().find(|e| e.0 == name) {
        Some(e) => {
            e.1 += dt;
            e.2 += 1;
        }
        None => tab.push((name, dt, 1)),
    }
    r
}

/// (name, seconds, calls), largest first; clears the table.
pub fn take() -> Vec<(&'static str, f64, u64)> {
    let mut tab = std::mem::take(&mut *TABLE.lock().unwrap());
    tab.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    tab
}
