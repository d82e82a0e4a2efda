//! Data-parallel training: the collective operations a step needs, behind one trait, so the
//! step is written once for one process ([`Single`]), MPI ranks (`Mpi`, feature `mpi`) and
//! NCCL on GPUs (`Nccl`, feature `nccl`).
//!
//! The scheme is open_clip's `gather_with_grad` + `local_loss`: every rank all-gathers the
//! features of the global batch, computes the loss of its own rows against all columns, and
//! sends the gradient of the gathered columns back to their owners with a reduce-scatter;
//! the parameter gradients are then summed over ranks. With each rank's loss normalised by
//! the global batch, the ranks' losses add up to the one-process loss of the global batch,
//! so N ranks take exactly the step one process would (see `tests/distributed_cli.rs`).

use std::cell::Cell;
use std::time::{Duration, Instant};

use candle_core::Tensor;

use crate::Result;

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "mpi")]
pub use self::mpi::Mpi;
#[cfg(feature = "nccl")]
mod nccl;
#[cfg(feature = "nccl")]
pub use self::nccl::Nccl;

/// Time and traffic spent in collectives since the start (this rank's view).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommStats {
    /// Wall time inside collective calls (waiting for the slowest rank included).
    pub time: Duration,
    /// Bytes this rank contributed to collectives.
    pub bytes: u64,
    /// Collective calls made.
    pub calls: u64,
}

/// The collective operations of data-parallel training over `world()` ranks.
///
/// Every rank must make the same calls in the same order with the same shapes; the step in
/// `crate::step` does. Tensors are f32 `[rows, …]`; rank order is the row order.
pub trait Collective {
    /// This process's rank, `0..world()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Every rank's `local` (same shape on all ranks) concatenated along dim 0 in rank order.
    fn all_gather(&self, local: &Tensor) -> Result<Tensor>;
    /// `global` (`[world·n, …]`) summed over ranks; this rank's block of `n` rows.
    fn reduce_scatter_sum(&self, global: &Tensor) -> Result<Tensor>;
    /// `x` summed over ranks, on every rank.
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor>;
    /// Small byte strings (positions, skip lists) from every rank, in rank order.
    fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Ends every rank of the job; called after this rank reported why.
    fn abort(&self, code: i32) -> !;
    /// Time and bytes spent in collectives so far.
    fn stats(&self) -> CommStats;
}

/// One process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        Ok(local.clone())
    }
    fn reduce_scatter_sum(&self, global: &Tensor) -> Result<Tensor> {
        Ok(global.clone())
    }
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![local.to_vec()])
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn stats(&self) -> CommStats {
        CommStats::default()
    }
}

/// Adds the time and bytes of collective calls to running totals (for implementations).
#[derive(Debug, Default)]
pub struct CommMeter(Cell<CommStats>);

impl CommMeter {
    /// Runs `f`, a collective contributing `bytes`, and counts it.
    pub fn time<T>(&self, bytes: usize, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let out = f();
        let mut s = self.0.get();
        s.time += t0.elapsed();
        s.bytes += bytes as u64;
        s.calls += 1;
        self.0.set(s);
        out
    }

    /// The totals so far.
    pub fn get(&self) -> CommStats {
        self.0.get()
    }
}

/// Whether this process was started by an MPI launcher (`mpirun`, `mpiexec`, `srun`), read
/// from the variables Open MPI, MPICH/Hydra and PMIx set for their ranks. Known without the
/// `mpi` feature too, so a build without it can refuse to run as N unconnected copies.
pub fn launched_by_mpi() -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

/// The rows `rank` owns in a global batch of `world × local` rows.
pub fn own_rows(rank: usize, local: usize) -> std::ops::Range<usize> {
    rank * local..(rank + 1) * local
}
