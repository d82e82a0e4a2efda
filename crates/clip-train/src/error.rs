use std::path::{Path, PathBuf};

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A training option is out of range.
    #[error("invalid training option {field}: {reason}")]
    Config {
        /// The option.
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// The loss stopped being a finite number.
    #[error("loss is {value} at step {step}; stopping (the last good checkpoint is kept{last})")]
    NonFiniteLoss {
        /// The step.
        step: usize,
        /// The loss value (NaN or ±inf).
        value: f32,
        /// Where the last checkpoint is, if any.
        last: String,
    },
    /// A saved training state is unusable.
    #[error("training state: {0}")]
    State(String),
    /// A file could not be read or written.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The data loader stopped.
    #[error("data loader stopped: {0}")]
    Loader(String),
    /// A collective operation across ranks failed.
    #[error("collective: {0}")]
    Collective(String),
    /// Model error (checkpoint loading or saving).
    #[error(transparent)]
    Model(#[from] clip_model::ModelError),
    /// Tokenizer error.
    #[error(transparent)]
    Text(#[from] text_encoder::TextError),
    /// Image tower error.
    #[error(transparent)]
    Vision(#[from] vision_encoder::VisionError),
    /// Layer error.
    #[error(transparent)]
    Nn(#[from] clip_nn::NnError),
    /// Tensor error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_err(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.to_path_buf();
    move |source| TrainError::Io {
        action,
        path,
        source,
    }
}
