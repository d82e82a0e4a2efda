//! [`RunSetup`]: what a run starts from and where it writes, shared by the loop, the step and
//! the run directory.

use std::path::PathBuf;

use clip_model::{ClipConfig, Preprocess};
use clip_nn::TensorMap;
use text_encoder::ClipTokenizer;

use crate::TrainConfig;

/// What a run starts from and where it writes.
pub struct RunSetup {
    /// The run directory.
    pub out: PathBuf,
    /// Model architecture.
    pub model: ClipConfig,
    /// Image preprocessing (size, mean, std).
    pub preprocess: Preprocess,
    /// Weights to fine-tune from (None: fresh, seeded initialisation).
    pub init: Option<TensorMap>,
    /// `tokenizer.json` copied into every checkpoint.
    pub tokenizer_file: PathBuf,
    /// The tokenizer.
    pub tokenizer: ClipTokenizer,
    /// Optimisation settings.
    pub train: TrainConfig,
    /// Continue from the newest checkpoint in `out`.
    pub resume: bool,
    /// Class id per sample (needed by [`crate::LossKind::Oracle`] only).
    pub labels: Option<Vec<usize>>,
}
