//! [`Collective`] over NCCL, one CUDA device per rank: the tensor collectives run device to
//! device on the stream candle computes on, so features and gradients never visit the host.
//! MPI does the rest: the rendezvous (rank 0's NCCL id reaches every rank by broadcast), the
//! small byte messages and the abort.

use candle_core::backend::BackendDevice;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::cudarc::nccl::result::{NcclError, NcclStatus};
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Storage, Tensor};

use super::{Collective, CommMeter, CommStats, Mpi};
use crate::{Result, TrainError};

/// What cudarc's NCCL calls return.
type NcclResult = std::result::Result<NcclStatus, NcclError>;

/// Bytes of an NCCL unique id (`ncclUniqueId::internal`).
const ID_BYTES: usize = 128;

/// The ranks of an MPI job, each on its own GPU, joined by an NCCL communicator.
pub struct Nccl {
    // First, so the communicator is torn down before MPI is finalised.
    comm: Comm,
    device: CudaDevice,
    meter: CommMeter,
    mpi: Mpi,
}

fn nccl_err(what: &str) -> impl FnOnce(NcclError) -> TrainError + '_ {
    // `NcclError`'s own Debug says only "NcclError"; the status code names the cause.
    move |e| TrainError::Collective(format!("NCCL {what}: {:?}", e.0))
}

impl Nccl {
    /// Joins every rank of `mpi` into one NCCL communicator on `device` (this rank's GPU).
    /// Collective: every rank calls it, each with its own device.
    pub fn init(mpi: Mpi, device: &Device) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            return Err(TrainError::Collective(format!(
                "NCCL needs a CUDA device, not {:?}",
                device.location()
            )));
        };
        // Byte 0 says whether rank 0 made an id, so that a failure there ends every rank
        // with an error instead of leaving the others waiting for a communicator.
        let mut msg = [0u8; 1 + ID_BYTES];
        let mut made = Ok(());
        if mpi.rank() == 0 {
            match Id::new() {
                Ok(id) => {
                    msg[0] = 1;
                    for (b, &c) in msg[1..].iter_mut().zip(id.internal()) {
                        *b = c as u8;
                    }
                }
                Err(e) => made = Err(e),
            }
        }
        mpi.broadcast_from_rank0(&mut msg);
        made.map_err(nccl_err("creating the unique id on rank 0"))?;
        if msg[0] != 1 {
            return Err(TrainError::Collective(
                "rank 0 could not create an NCCL unique id".into(),
            ));
        }
        let id = Id::uninit(std::array::from_fn(|i| msg[1 + i] as _));
        let comm = Comm::from_rank(cuda.cuda_stream(), mpi.rank(), mpi.world(), id)
            .map_err(nccl_err("joining the communicator"))?;
        Ok(Self {
            comm,
            device: cuda.clone(),
            meter: CommMeter::default(),
            mpi,
        })
    }

    /// `x` as contiguous f32 on this rank's GPU (the dtype every collective here works in).
    fn prepare(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.to_device(&Device::Cuda(self.device.clone()))?
            .to_dtype(DType::F32)?
            .contiguous()?)
    }

    /// Runs `op` from the device buffer of `x` (see [`Self::prepare`]) into a new zeroed
    /// buffer of `out_len` f32s and returns it as a tensor of `dims` on `like`'s device.
    /// Waits for the stream, so errors surface here and [`CommStats::time`] is real time.
    fn run(
        &self,
        what: &str,
        x: &Tensor,
        out_len: usize,
        dims: Vec<usize>,
        like: &Tensor,
        op: impl FnOnce(&CudaView<'_, f32>, &mut CudaSlice<f32>) -> NcclResult,
    ) -> Result<Tensor> {
        let mut out = self.device.alloc_zeros::<f32>(out_len)?;
        {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cuda(storage) = &*storage else {
                return Err(TrainError::Collective(format!(
                    "NCCL {what}: the tensor is not on the GPU"
                )));
            };
            let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
                TrainError::Collective(format!("NCCL {what}: the tensor is not contiguous"))
            })?;
            let src = storage.as_cuda_slice::<f32>()?.slice(start..end);
            self.meter.time((end - start) * 4, || {
                op(&src, &mut out).map_err(nccl_err(what))?;
                self.device.synchronize()?;
                Ok::<_, TrainError>(())
            })?;
        }
        let storage = CudaStorage::wrap_cuda_slice(out, self.device.clone());
        let y = Tensor::from_storage(Storage::Cuda(storage), dims, BackpropOp::none(), false);
        Ok(y.to_device(like.device())?)
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world(&self) -> usize {
        self.comm.world_size()
    }

    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        let mut dims = local.dims().to_vec();
        let Some(rows) = dims.first_mut() else {
            return Err(TrainError::Collective(
                "all-gather of a scalar: tensors are gathered along dim 0".into(),
            ));
        };
        *rows *= self.world();
        let x = self.prepare(local)?;
        let n = x.elem_count() * self.world();
        self.run("all-gather", &x, n, dims, local, |src, dst| {
            self.comm.all_gather(src, dst)
        })
    }

    fn reduce_scatter_sum(&self, global: &Tensor) -> Result<Tensor> {
        let n = self.world();
        let mut dims = global.dims().to_vec();
        if dims.first().is_none_or(|&rows| rows % n != 0) {
            return Err(TrainError::Collective(format!(
                "reduce-scatter of shape {dims:?} over {n} ranks: rows must divide evenly"
            )));
        }
        dims[0] /= n;
        let x = self.prepare(global)?;
        let len = x.elem_count() / n;
        self.run("reduce-scatter", &x, len, dims, global, |src, dst| {
            self.comm.reduce_scatter(src, dst, &ReduceOp::Sum)
        })
    }

    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        let dev = self.prepare(x)?;
        let len = dev.elem_count();
        self.run("all-reduce", &dev, len, x.dims().to_vec(), x, |src, dst| {
            self.comm.all_reduce(src, dst, &ReduceOp::Sum)
        })
    }

    fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.mpi.all_gather_bytes(local)
    }

    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }

    fn stats(&self) -> CommStats {
        let (gpu, host) = (self.meter.get(), self.mpi.stats());
        CommStats {
            time: gpu.time + host.time,
            bytes: gpu.bytes + host.bytes,
            calls: gpu.calls + host.calls,
        }
    }
}
