use std::path::PathBuf;

/// Errors while reading data sources.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A manifest lacks a required column.
    #[error("{path} has no column `{column}` (columns: {found})")]
    MissingColumn {
        /// The manifest.
        path: PathBuf,
        /// The column asked for.
        column: String,
        /// The columns present.
        found: String,
    },
    /// A manifest row or JSONL line is malformed.
    #[error("{path}:{line}: {message}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// 1-based line (or record) number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The path is not a data source we know how to read.
    #[error("{path}: not a data source (expected a folder, .csv/.tsv, .jsonl or .tar)")]
    UnknownSource {
        /// The path given.
        path: PathBuf,
    },
    /// A data pattern (brace range or glob) that is malformed or matches nothing.
    #[error("data pattern {pattern}: {reason}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// After skipping bad samples nothing is left.
    #[error("no usable image–caption pairs in {sources}{detail}")]
    Empty {
        /// The sources, comma-separated.
        sources: String,
        /// What was skipped, if anything.
        detail: String,
    },
    /// Every shard of a streamed run failed, one after another.
    #[error("no shard could be read ({shards} shards, each failed in turn): {detail}")]
    NoShardReadable {
        /// How many shards there are.
        shards: usize,
        /// Why the last ones failed.
        detail: String,
    },
    /// Remote data could not be named or sized (a bad URL, a damaged sidecar file, no
    /// epoch size).
    #[error(transparent)]
    Shards(Box<shard_source::ShardError>),
}

impl From<shard_source::ShardError> for DataError {
    fn from(e: shard_source::ShardError) -> Self {
        DataError::Shards(Box::new(e))
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, DataError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DataError {
    let path = path.to_path_buf();
    move |source| DataError::Io { path, source }
}
