//! Contrastive training of CLIP dual encoders: objectives, the optimiser, the background
//! data loader and the training loop with atomic checkpoints and exact resume.

mod error;
mod loader;
mod loss;
mod optim;
mod plot;
mod trainer;

pub use error::{Result, TrainError};
pub use loader::{Batch, Loader, Order};
pub use loss::{clip_loss, l2_normalize, siglip_loss};
pub use optim::{clip_grad_norm, decays, learning_rate, AdamW, AdamWConfig, ScheduleKind};
pub use plot::write_plot;
pub use trainer::{
    checkpoints, train, LossKind, Observer, RunSetup, StepStats, Summary, TrainConfig, TrainState,
};
