//! A pool of worker threads for the many short parallel loops of one decode step. A token of the
//! 1.1B model runs ~150 matmuls of 20–500 µs each; rayon's workers fall asleep between them, and
//! waking one costs 20–80 µs (measured on our 2-vCPU machines), by which time the calling thread
//! has often taken the whole loop itself. The pool's workers spin for a while after each loop
//! instead (yielding the core to anyone else runnable), so the next loop starts at once; after
//! [`SPIN`] without work they sleep. llama.cpp's thread pool does the same.
//!
//! One caller at a time: a second concurrent caller (tests, nested use) runs its loop on rayon.

use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

/// One parallel loop: tasks `0..tasks` of `f`, claimed one by one.
struct Job {
    /// The caller's closure, its lifetime erased: the caller does not return before every worker
    /// that could call it has left (see `run`).
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

struct Pool {
    workers: usize,
    /// Bumped for each new job.
    epoch: AtomicUsize,
    job: AtomicPtr<Job>,
    /// Workers inside a job (the caller waits for 0 before its job's memory goes).
    joined: AtomicUsize,
    sleeping: Mutex<usize>,
    wake: Condvar,
    caller: Mutex<()>,
}

static TEAM: OnceLock<&'static Pool> = OnceLock::new();

fn pool() -> &'static Pool {
    TEAM.get_or_init(|| {
        let workers = rayon::current_num_threads().saturating_sub(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            workers,
            epoch: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            joined: AtomicUsize::new(0),
            sleeping: Mutex::new(0),
            wake: Condvar::new(),
            caller: Mutex::new(()),
        }));
        for i in 0..workers {
            // a worker the system refuses only means fewer hands: the caller takes what is left
            let _ = std::thread::Builder::new().name(format!("tinyllama-worker-{i}")).spawn(move || worker(pool));
        }
        pool
    })
}

/// Runs `f(0) … f(tasks − 1)` on the calling thread and the pool's workers (each task once, in
/// any order, on any thread); returns when all are done.
pub fn run(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let pool = pool();
    if tasks <= 1 || pool.workers == 0 {
        (0..tasks).for_each(f);
        return;
    }
    let Ok(_one_caller) = pool.caller.try_lock() else {
        (0..tasks).into_par_iter().for_each(f);
        return;
    };
    // SAFETY: only the lifetime is erased; `job` outlives every use of `f` (below).
    let f_static: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
    let job = Job {
        f: f_static,
        tasks,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
    };
    pool.job.store(&job as *const Job as *mut Job, SeqCst);
    pool.epoch.fetch_add(1, SeqCst);
    if *pool.sleeping.lock().unwrap() > 0 {
        pool.wake.notify_all();
    }
    work_on(&job);
    while job.done.load(SeqCst) < tasks {
        std::hint::spin_loop();
    }
    // No worker may still hold `job` when it goes out of scope: retire it, then wait for every
    // worker that joined before it was retired to leave.
    pool.job.store(std::ptr::null_mut(), SeqCst);
    while pool.joined.load(SeqCst) != 0 {
        std::hint::spin_loop();
    }
    assert!(!job.panicked.load(SeqCst), "a parallel task panicked");
}

/// Runs `f(i, &mut items[i])` for every item, as [`run`] does.
pub fn for_each_mut<T: Send>(items: &mut [T], f: &(dyn Fn(usize, &mut T) + Sync)) {
    let ptr = DisjointRows(items.as_mut_ptr());
    run(items.len(), &|i| {
        // SAFETY: task i alone touches item i, and `items` is borrowed mutably for the whole run.
        f(i, unsafe { &mut *ptr.get().add(i) })
    });
}

/// A buffer's pointer shared by parallel tasks that each write their own, disjoint elements (the
/// caller's promise, made at each write).
pub struct DisjointRows<T>(pub *mut T);

impl<T> Clone for DisjointRows<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DisjointRows<T> {}
// SAFETY: the elements are `Send`; tasks reach disjoint elements only.
unsafe impl<T: Send> Send for DisjointRows<T> {}
unsafe impl<T: Send> Sync for DisjointRows<T> {}

impl<T> DisjointRows<T> {
    /// A method, so that closures capture the whole `Sync` wrapper.
    pub fn get(self) -> *mut T {
        self.0
    }

    /// Elements `offset..offset + len` as a slice.
    ///
    /// # Safety
    /// The range lies inside the buffer, no other task touches it while the slice lives, and the
    /// slice does not outlive the buffer's borrow.
    pub unsafe fn at<'a>(self, offset: usize, len: usize) -> &'a mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(offset), len)
    }
}

fn work_on(job: &Job) {
    loop {
        let i = job.next.fetch_add(1, SeqCst);
        if i >= job.tasks {
            return;
        }
        // SAFETY: the caller keeps `f` alive until `done` reaches `tasks` and `joined` reaches 0.
        let f = unsafe { &*job.f };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_err() {
            job.panicked.store(true, SeqCst);
        }
        job.done.fetch_add(1, SeqCst);
    }
}

fn worker(pool: &'static Pool) {
    let mut seen = pool.epoch.load(SeqCst);
    loop {
        let idle_since = Instant::now();
        let mut spins = 0u32;
        while pool.epoch.load(SeqCst) == seen {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                // let anything else that wants this core run (rayon's workers, other processes)
                std::thread::yield_now();
                if idle_since.elapsed() > SPIN {
                    let mut sleeping = pool.sleeping.lock().unwrap();
                    *sleeping += 1;
                    while pool.epoch.load(SeqCst) == seen {
                        sleeping = pool.wake.wait(sleeping).unwrap();
                    }
                    *sleeping -= 1;
                }
            }
        }
        seen = pool.epoch.load(SeqCst);
        pool.joined.fetch_add(1, SeqCst);
        let job = pool.job.load(SeqCst);
        if !job.is_null() {
            // SAFETY: a job stays alive while `joined` counts us (see `run`).
            work_on(unsafe { &*job });
        }
        pool.joined.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task runs exactly once, loop after loop, including loops started back to back and
    /// from several threads at once (which fall back to rayon).
    #[test]
    fn every_task_runs_once() {
        std::thread::scope(|s| {
            for caller in 0..3 {
                s.spawn(move || {
                    for round in 0..300 {
                        let tasks = 1 + (round * 7 + caller) % 40;
                        let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                        run(tasks, &|i| {
                            hits[i].fetch_add(1, SeqCst);
                        });
                        assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "round {round}");
                    }
                });
            }
        });
    }
}
