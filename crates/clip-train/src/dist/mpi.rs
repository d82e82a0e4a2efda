//! [`Collective`] over MPI (Open MPI or MPICH through the `mpi` crate): the CPU path, and the
//! rendezvous of the GPU one. Tensors go through host buffers.

use ::mpi::collective::SystemOperation;
use ::mpi::datatype::PartitionMut;
use ::mpi::environment::Universe;
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::*;
use ::mpi::Count;
use candle_core::{DType, Tensor};

use super::{Collective, CommMeter, CommStats};
use crate::{Result, TrainError};

/// The MPI world of this job; dropping it finalises MPI.
pub struct Mpi {
    world: SimpleCommunicator,
    meter: CommMeter,
    // Last, so the communicator is dropped before MPI is finalised.
    _universe: Universe,
}

impl Mpi {
    /// Initialises MPI (once per process).
    pub fn init() -> Result<Self> {
        let universe = ::mpi::initialize().ok_or_else(|| {
            TrainError::Collective("MPI was already initialised in this process".into())
        })?;
        Ok(Self {
            world: universe.world(),
            meter: CommMeter::default(),
            _universe: universe,
        })
    }

    /// Rank 0's `buf` on every rank: the rendezvous of other transports (NCCL's unique id).
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    pub(crate) fn broadcast_from_rank0(&self, buf: &mut [u8]) {
        self.world.process_at_rank(0).broadcast_into(buf);
    }
}

/// A tensor's f32 values on the host (collectives here run on host buffers).
fn host(x: &Tensor) -> Result<Vec<f32>> {
    Ok(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world(&self) -> usize {
        self.world.size() as usize
    }

    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        let send = host(local)?;
        let mut recv = vec![0f32; send.len() * self.world()];
        self.meter.time(send.len() * 4, || {
            self.world.all_gather_into(&send[..], &mut recv[..])
        });
        let mut dims = local.dims().to_vec();
        dims[0] *= self.world();
        Ok(Tensor::from_vec(recv, dims, local.device())?)
    }

    fn reduce_scatter_sum(&self, global: &Tensor) -> Result<Tensor> {
        let send = host(global)?;
        let n = self.world();
        let mut recv = vec![0f32; send.len() / n];
        self.meter.time(send.len() * 4, || {
            self.world
                .reduce_scatter_block_into(&send[..], &mut recv[..], SystemOperation::sum())
        });
        let mut dims = global.dims().to_vec();
        dims[0] /= n;
        Ok(Tensor::from_vec(recv, dims, global.device())?)
    }

    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        let send = host(x)?;
        let mut recv = vec![0f32; send.len()];
        self.meter.time(send.len() * 4, || {
            self.world
                .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum())
        });
        Ok(Tensor::from_vec(recv, x.dims(), x.device())?)
    }

    fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        let n = self.world();
        let len = Count::try_from(local.len())
            .map_err(|_| TrainError::Collective("message over 2 GiB".into()))?;
        let mut counts = vec![0 as Count; n];
        self.meter
            .time(4, || self.world.all_gather_into(&len, &mut counts[..]));
        let displs: Vec<Count> = counts
            .iter()
            .scan(0, |at, &c| {
                let d = *at;
                *at += c;
                Some(d)
            })
            .collect();
        let total = counts.iter().map(|&c| c as usize).sum();
        if total == 0 {
            // Open MPI rejects an all-empty Allgatherv; every rank knows there is nothing.
            return Ok(vec![Vec::new(); n]);
        }
        let mut buf = vec![0u8; total];
        {
            let mut part = PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
            self.meter.time(local.len(), || {
                self.world.all_gather_varcount_into(local, &mut part)
            });
        }
        Ok(counts
            .iter()
            .zip(&displs)
            .map(|(&c, &d)| buf[d as usize..(d + c) as usize].to_vec())
            .collect())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn stats(&self) -> CommStats {
        self.meter.get()
    }
}
