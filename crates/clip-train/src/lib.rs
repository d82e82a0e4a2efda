//! Contrastive training of CLIP dual encoders: objectives, the optimiser, the background
//! data loader and the training loop with atomic checkpoints and exact resume.

mod config;
pub mod dist;
mod error;
mod loader;
mod loss;
mod optim;
mod plot;
mod run_dir;
mod setup;
mod ssl_loss;
mod step;
mod trainer;

pub use config::{LossKind, Objective, Precision, TrainConfig};
pub use error::{Result, TrainError};
pub use loader::{Batch, Feed, Loader, LoaderMode, LoaderSpec, Share, Start};
pub use loss::{clip_loss, clip_loss_rows, l2_normalize, siglip_loss, siglip_loss_rows, Anchors};
pub use optim::{clip_grad_norm, decays, learning_rate, AdamW, AdamWConfig, ScheduleKind};
pub use plot::write_plot;
pub use run_dir::{checkpoints, TrainState};
pub use setup::RunSetup;
pub use ssl_loss::{
    debiased_clip_loss, debiased_clip_loss_rows, debiased_contrastive_loss, hard_negative_loss,
    nt_xent_loss, oracle_contrastive_loss, oracle_contrastive_loss_rows, spectral_contrastive_loss,
    spectral_contrastive_loss_rows, two_view_loss, two_view_loss_rows, NegativeEstimate,
};
pub use trainer::{train, train_on, Observer, StepStats, Summary, TrainData};
