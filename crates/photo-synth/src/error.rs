use std::path::{Path, PathBuf};

/// Errors of the generator's writers and of [`crate::encode_jpeg`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SynthError {
    /// A file or folder could not be written.
    #[error("cannot write {path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An argument is out of range: an empty image or a side over 65,535 for JPEG, no samples
    /// per shard.
    #[error("{0}")]
    Invalid(String),
}

/// Builds a `map_err` closure that names the file or folder.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}
