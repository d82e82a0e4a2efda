use std::path::PathBuf;

/// Errors of the vision tower and image preprocessing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VisionError {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid vision config: {0}")]
    Config(#[from] clip_nn::BadConfig),
    /// An image file could not be read.
    #[error("cannot read image {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An image file could not be decoded.
    #[error("cannot decode image {path}")]
    Decode {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
    /// A layer failed to build or run.
    #[error(transparent)]
    Nn(#[from] clip_nn::NnError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, VisionError>;
