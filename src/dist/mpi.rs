//! MPI collectives (the `mpi` crate over the system's Open MPI or MPICH), with a watchdog: a
//! collective that does not complete in `TINYLLAMA_COLLECTIVE_TIMEOUT` seconds (default 600) —
//! a dead or stuck rank — ends this process with a clear message, and the launcher then takes the
//! whole job down instead of leaving it hanging.

use super::Collectives;
use anyhow::{Context, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::traits::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct MpiCollectives {
    world: mpi::topology::SimpleCommunicator,
    /// Milliseconds since `t0` when the current collective began, 0 when none runs.
    busy_since: Arc<AtomicU64>,
    t0: Instant,
    comm_ns: AtomicU64,
    _universe: mpi::environment::Universe,
}

impl MpiCollectives {
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize().context("MPI_Init failed (or MPI was already initialised)")?;
        let world = universe.world();
        let busy_since = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let timeout: u64 =
            std::env::var("TINYLLAMA_COLLECTIVE_TIMEOUT").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
        let (flag, rank) = (busy_since.clone(), world.rank());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let since = flag.load(Ordering::Relaxed);
            if since > 0 && t0.elapsed().as_millis() as u64 - since > timeout * 1000 {
                eprintln!(
                    "rank {rank}: a collective has waited {timeout} s (TINYLLAMA_COLLECTIVE_TIMEOUT): another rank \
                     died or is stuck; ending this rank so the launcher stops the job. The last checkpoint is intact."
                );
                std::process::exit(3);
            }
        });
        Ok(MpiCollectives { world, busy_since, t0, comm_ns: AtomicU64::new(0), _universe: universe })
    }

    fn timed<R>(&self, f: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        self.busy_since.store((self.t0.elapsed().as_millis() as u64).max(1), Ordering::Relaxed);
        let r = f();
        self.busy_since.store(0, Ordering::Relaxed);
        self.comm_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }
}

impl Collectives for MpiCollectives {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn world(&self) -> usize {
        self.world.size() as usize
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        let send = buf.to_vec();
        self.timed(|| self.world.all_reduce_into(&send[..], buf, SystemOperation::sum()));
    }
    fn reduce_scatter_sum(&self, send: &[f32], out: &mut [f32]) {
        self.timed(|| self.world.reduce_scatter_block_into(send, out, SystemOperation::sum()));
    }
    fn all_gather(&self, send: &[f32], out: &mut [f32]) {
        self.timed(|| self.world.all_gather_into(send, out));
    }
    fn gather_to_root(&self, send: &[f32], out: &mut [f32]) {
        let root = self.world.process_at_rank(0);
        if self.world.rank() == 0 {
            self.timed(|| root.gather_into_root(send, out));
        } else {
            self.timed(|| root.gather_into(send));
        }
    }
    fn all_gather_bytes(&self, send: &[u8]) -> Vec<Vec<u8>> {
        let n = self.world();
        let len = send.len() as i32;
        let mut lens = vec![0i32; n];
        self.timed(|| self.world.all_gather_into(&len, &mut lens[..]));
        let displs: Vec<i32> = lens
            .iter()
            .scan(0, |acc, &l| {
                let d = *acc;
                *acc += l;
                Some(d)
            })
            .collect();
        let mut buf = vec![0u8; lens.iter().sum::<i32>() as usize];
        {
            let mut part = PartitionMut::new(&mut buf[..], &lens[..], &displs[..]);
            self.timed(|| self.world.all_gather_varcount_into(send, &mut part));
        }
        lens.iter().zip(&displs).map(|(&l, &d)| buf[d as usize..(d + l) as usize].to_vec()).collect()
    }
    fn barrier(&self) {
        self.timed(|| self.world.barrier());
    }
    fn comm_seconds(&self) -> f64 {
        self.comm_ns.load(Ordering::Relaxed) as f64 * 1e-9
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
