//! [`DeviceKind`]: where a command runs, as `--device` and `run.json` name it.

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The CPU (default).
    #[default]
    Cpu,
    /// The first CUDA GPU (needs a build with `--features cuda`).
    Cuda,
}

impl DeviceKind {
    /// The device: the CPU, or CUDA GPU 0.
    pub fn device(self) -> Result<Device> {
        self.device_at(0)
    }

    /// The device of this process: with CUDA under an MPI launcher, the GPU of the rank's
    /// local index on its node (one GPU per rank), else GPU 0.
    pub fn device_for_rank(self) -> Result<Device> {
        let local = [
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "MPI_LOCALRANKID",
            "SLURM_LOCALID",
        ]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .unwrap_or(0);
        self.device_at(local)
    }

    fn device_at(self, gpu: usize) -> Result<Device> {
        match self {
            DeviceKind::Cpu => Ok(Device::Cpu),
            DeviceKind::Cuda if cfg!(feature = "cuda") => Device::new_cuda(gpu)
                .map_err(|e| Error::Input(format!("cannot open CUDA device {gpu}: {e}"))),
            DeviceKind::Cuda => Err(Error::Input(
                "this clip binary was built without CUDA; rebuild with `--features cuda`".into(),
            )),
        }
    }
}
