//! Contrastive training of CLIP dual encoders: objectives, the optimiser, the background
//! data loader and the training loop with atomic checkpoints and exact resume.

mod config;
mod error;
mod loader;
mod loss;
mod optim;
mod plot;
mod run_dir;
mod ssl_loss;
mod step;
mod trainer;

pub use config::{LossKind, Objective, Precision, TrainConfig};
pub use error::{Result, TrainError};
pub use loader::{Batch, Loader, LoaderMode, LoaderSpec};
pub use loss::{clip_loss, l2_normalize, siglip_loss};
pub use optim::{clip_grad_norm, decays, learning_rate, AdamW, AdamWConfig, ScheduleKind};
pub use plot::write_plot;
pub use run_dir::{checkpoints, TrainState};
pub use ssl_loss::{
    debiased_clip_loss, debiased_contrastive_loss, hard_negative_loss, nt_xent_loss,
    oracle_contrastive_loss, spectral_contrastive_loss, two_view_loss, NegativeEstimate,
};
pub use trainer::{train, Observer, RunSetup, StepStats, Summary};
