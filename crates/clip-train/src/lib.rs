//! Contrastive training of CLIP dual encoders: objectives, the optimiser, the background
//! data loader and the training loop with atomic checkpoints and exact resume.

mod error;
mod loader;
mod loss;
mod optim;
mod plot;
pub mod spectral_graph;
mod ssl_loss;
mod trainer;

pub use error::{Result, TrainError};
pub use loader::{Batch, Loader, LoaderMode, LoaderSpec};
pub use loss::{clip_loss, l2_normalize, siglip_loss};
pub use optim::{clip_grad_norm, decays, learning_rate, AdamW, AdamWConfig, ScheduleKind};
pub use plot::write_plot;
pub use ssl_loss::{
    debiased_clip_loss, debiased_contrastive_loss, hard_negative_loss, nt_xent_loss,
    oracle_contrastive_loss, spectral_contrastive_loss, two_view_loss, NegativeEstimate,
};
pub use trainer::{
    checkpoints, train, LossKind, Objective, Observer, Precision, RunSetup, StepStats, Summary,
    TrainConfig, TrainState,
};
