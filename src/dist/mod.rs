//! Collectives for data-parallel training behind one small interface, on existing engines only:
//! [`SingleProcess`] (the default: every collective is a copy) and, with `--features mpi`,
//! [`mpi::MpiCollectives`] (Open MPI / MPICH, launched by `mpirun` or Slurm's `srun`). A NCCL
//! implementation belongs beside them when the CUDA backend comes.
//!
//! ZeRO-1 uses them as: gradients reduce-scattered (each rank owns a contiguous 1/N of the flat
//! parameter buffer), the global gradient norm all-reduced, AdamW on the owned shard, the updated
//! shard all-gathered.

#[cfg(feature = "mpi")]
pub mod mpi;

use anyhow::{bail, Result};
use std::ops::Range;

pub trait Collectives {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Elementwise sum across ranks, in place.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]);
    /// `out` = this rank's block of the elementwise sum of every rank's `send`
    /// (`send.len() == world * out.len()`).
    fn reduce_scatter_sum(&self, send: &[f32], out: &mut [f32]);
    /// `out` = every rank's `send`, concatenated in rank order (`out.len() == world * send.len()`).
    fn all_gather(&self, send: &[f32], out: &mut [f32]);
    /// Rank 0's `out` = every rank's `send`, concatenated in rank order; other ranks pass an empty
    /// `out` (so only rank 0 holds the whole, e.g. the optimizer state at checkpoint time).
    fn gather_to_root(&self, send: &[f32], out: &mut [f32]);
    /// Every rank's bytes, in rank order (small messages: states, config digests).
    fn all_gather_bytes(&self, send: &[u8]) -> Vec<Vec<u8>>;
    fn barrier(&self);
    /// Seconds spent inside collectives so far.
    fn comm_seconds(&self) -> f64;
    /// Ends the whole job (every rank) after an error on this one, so that no rank waits forever.
    fn abort(&self, code: i32) -> !;
}

pub struct SingleProcess;

impl Collectives for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) {}
    fn reduce_scatter_sum(&self, send: &[f32], out: &mut [f32]) {
        out.copy_from_slice(&send[..out.len()]);
    }
    fn all_gather(&self, send: &[f32], out: &mut [f32]) {
        out.copy_from_slice(send);
    }
    fn gather_to_root(&self, send: &[f32], out: &mut [f32]) {
        out.copy_from_slice(send);
    }
    fn all_gather_bytes(&self, send: &[u8]) -> Vec<Vec<u8>> {
        vec![send.to_vec()]
    }
    fn barrier(&self) {}
    fn comm_seconds(&self) -> f64 {
        0.0
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The owned shard of `n` parameters on `rank` of `world`: equal blocks of `ceil(n / world)`, the
/// flat buffers padded to `world` blocks.
pub fn shard_range(n: usize, rank: usize, world: usize) -> Range<usize> {
    let block = n.div_ceil(world);
    (rank * block).min(n)..((rank + 1) * block).min(n)
}

/// Ranks in the launch environment (Open MPI, MPICH/PMI, PMIx, Slurm), if launched under one.
pub fn launcher_world_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok().and_then(|v| v.parse().ok()))
}

/// The collectives for this process: MPI when built with it and launched under a launcher.
pub fn init() -> Result<Box<dyn Collectives>> {
    #[cfg(feature = "mpi")]
    {
        if launcher_world_size().is_some() {
            return Ok(Box::new(mpi::MpiCollectives::init()?));
        }
    }
    if let Some(n) = launcher_world_size().filter(|&n| n > 1) {
        bail!(
            "launched as one of {n} MPI ranks, but this binary was built without MPI: rebuild with \
             `cargo build --release --features mpi` (needs Open MPI: apt-get install libopenmpi-dev openmpi-bin libclang-dev)"
        );
    }
    Ok(Box::new(SingleProcess))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_tile_the_buffer() {
        for (n, w) in [(10, 3), (9, 3), (1, 2), (100, 1)] {
            let mut at = 0;
            for r in 0..w {
                let s = shard_range(n, r, w);
                assert_eq!(s.start, at);
                at = s.end;
                assert!(s.len() <= n.div_ceil(w));
            }
            assert_eq!(at, n);
        }
    }
}
