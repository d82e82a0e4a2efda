use std::path::{Path, PathBuf};

/// Errors of index building, loading and searching, and of the evaluation math.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetrievalError {
    /// A file or directory could not be read or written.
    #[error("{action} {path}")]
    Io {
        /// What was being done (`cannot read`, `cannot rename`, …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON manifest is malformed or has a field of the wrong type.
    #[error("invalid index manifest {path}")]
    Json {
        /// The manifest file.
        path: PathBuf,
        /// serde_json's error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file cannot be parsed.
    #[error("cannot read safetensors file {path}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The safetensors crate's error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// An index file is truncated, corrupted or disagrees with its manifest.
    #[error("index file {path} is damaged: {reason}; rebuild the index")]
    Damaged {
        /// The damaged file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// A directory that should hold an index holds none.
    #[error("{path} is not an index: {reason}")]
    NotAnIndex {
        /// The directory.
        path: PathBuf,
        /// What is missing or in the way.
        reason: String,
    },
    /// The manifest was written by a newer or unknown format.
    #[error("index {path} has format version {found}; this build reads versions 1 to {supported} (was it written by a newer clip?)")]
    UnsupportedVersion {
        /// The manifest file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// A safetensors file lacks the tensor we need.
    #[error("{path} has no tensor `{key}` (it has: {available})")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor name looked for.
        key: String,
        /// The tensor names the file does have, comma-separated.
        available: String,
    },
    /// A tensor has the wrong rank or an unsupported element type.
    #[error("tensor `{key}` in {path} {reason}")]
    BadTensor {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Vectors of one dimension met vectors of another.
    #[error("dimension mismatch: {what} has dimension {got}, but {expected_what} has dimension {expected}")]
    DimensionMismatch {
        /// The side that was given (`the query`, `the image embeddings`, …).
        what: String,
        /// Its dimension.
        got: usize,
        /// The side it must match (`the index`, …).
        expected_what: String,
        /// That side's dimension.
        expected: usize,
    },
    /// A flat buffer is not a whole number of rows, or counts disagree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A vector holds NaN or infinity.
    #[error("{what} row {row} holds a non-finite value (NaN or infinity)")]
    NonFinite {
        /// Which vectors (`index vector`, `query`, …).
        what: &'static str,
        /// The 0-based row.
        row: usize,
    },
    /// A vector is not of unit length where inner-product search needs it to be.
    #[error("{what} row {row} has norm {norm}, but inner-product search needs unit-length rows (normalise them first)")]
    NotUnitLength {
        /// Which vectors.
        what: &'static str,
        /// The 0-based row.
        row: usize,
        /// Its Euclidean norm.
        norm: f32,
    },
    /// An argument is out of range.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidArgument {
        /// The parameter name.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The caller's row source failed while an index was being written.
    #[error("writing the index was aborted")]
    Fill {
        /// The caller's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file derived from an index's vectors was made for other vectors (they were rewritten
    /// since); it is not used.
    #[error("{path} was built for other vectors than the index holds now")]
    Stale {
        /// The file.
        path: PathBuf,
    },
    /// The approximate-search graph could not be built.
    #[error("approximate search: {0}")]
    Ann(String),
    /// A memory-mapped index file was truncated by another process while in use (a build or
    /// `cp` over it): what was read from it since cannot be trusted. Open the index again.
    #[error("{path} changed while mapped (truncated); reopen the index")]
    ChangedWhileMapped {
        /// The file.
        path: PathBuf,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, RetrievalError>;

/// Builds a `map_err` closure that names the file and what was being done.
pub(crate) fn io_err(
    action: &'static str,
    path: &Path,
) -> impl Fn(std::io::Error) -> RetrievalError {
    let path = path.to_path_buf();
    move |source| RetrievalError::Io {
        action,
        path: path.clone(),
        source,
    }
}

/// Builds a `map_err` closure for a malformed manifest at `path`.
pub(crate) fn json_err(path: &Path) -> impl FnOnce(serde_json::Error) -> RetrievalError {
    let path = path.to_path_buf();
    move |source| RetrievalError::Json { path, source }
}

/// The number of `dim`-long rows in `len` floats of `what`, or a shape error.
pub(crate) fn rows_of(len: usize, dim: usize, what: &str) -> Result<usize> {
    if dim == 0 || !len.is_multiple_of(dim) {
        return Err(RetrievalError::Shape(format!(
            "{len} {what} floats are not rows of dimension {dim}"
        )));
    }
    Ok(len / dim)
}

/// An [`RetrievalError::InvalidArgument`].
pub(crate) fn invalid(
    name: &'static str,
    value: impl ToString,
    reason: impl Into<String>,
) -> RetrievalError {
    RetrievalError::InvalidArgument {
        name,
        value: value.to_string(),
        reason: reason.into(),
    }
}
