//! The library's error: what went wrong, naming the file, model or value at fault.

use std::path::PathBuf;

/// Everything the facade can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--model` named neither a folder nor a cached Hub model.
    #[error("model `{0}` is neither a directory nor a model in the Hugging Face cache (try `clip download {0}`)")]
    ModelNotFound(String),
    /// A model folder whose checkpoint cannot be used.
    #[error("cannot load model {}", dir.display())]
    Load {
        /// The model folder.
        dir: PathBuf,
        /// What is wrong with it.
        source: Box<clip_model::ModelError>,
    },
    /// A preset name that is not bundled.
    #[error("unknown preset {0:?} (choose {known})", known = crate::assets::PRESETS.map(|(n, _)| n).join(", "))]
    UnknownPreset(String),
    /// Reading or writing a file or folder.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An input the caller gave that cannot be used (empty, wrong shape, bad text).
    #[error("{0}")]
    Input(String),
    /// A setting out of range, named by its config field; other fields the reason names are
    /// in backticks (the binary names their flags).
    #[error("invalid {field}: {reason}")]
    Config {
        /// The config field, e.g. `val_data`.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// Training (boxed: it is the largest cause).
    #[error(transparent)]
    Train(Box<clip_train::TrainError>),
    /// A linear probe (boxed, as training).
    #[error(transparent)]
    Probe(Box<linear_probe::ProbeError>),
    /// Loading or running the model.
    #[error(transparent)]
    Checkpoint(#[from] clip_model::ModelError),
    /// Decoding or preprocessing an image.
    #[error(transparent)]
    Image(#[from] vision_encoder::VisionError),
    /// Tokenising text.
    #[error(transparent)]
    Text(#[from] text_encoder::TextError),
    /// Writing, opening or searching an index.
    #[error(transparent)]
    Index(#[from] retrieval::RetrievalError),
    /// Reading training or validation data.
    #[error(transparent)]
    Data(#[from] clip_data::DataError),
    /// A tensor operation.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// Downloading from the Hugging Face Hub.
    #[error("Hugging Face Hub: {0}")]
    Hub(String),
}

impl From<clip_train::TrainError> for Error {
    fn from(e: clip_train::TrainError) -> Self {
        Error::Train(Box::new(e))
    }
}

impl From<linear_probe::ProbeError> for Error {
    fn from(e: linear_probe::ProbeError) -> Self {
        Error::Probe(Box::new(e))
    }
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// An [`Error::Io`] at `path`, for `map_err`.
pub(crate) fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
