use std::path::PathBuf;

/// Errors while building, loading or saving a CLIP model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{action} {path}")]
    Io {
        /// What was being done (`cannot read`, `cannot write`, …).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is malformed or has a field of the wrong type.
    #[error("invalid JSON in {path}")]
    Json {
        /// The file.
        path: PathBuf,
        /// serde_json's error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file is damaged or truncated.
    #[error("cannot read safetensors file {path}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The safetensors crate's error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// `model.safetensors.index.json` lists no shard, or a shard that is not there.
    #[error("{path}: {reason}")]
    ShardIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A config value out of range or inconsistent, found before any tensor exists; `key` as
    /// written in the config file (`vision_config.hidden_size`).
    #[error("{}{key} = {value}: {reason}", file_prefix(path))]
    Config {
        /// The config file, when the config came from one.
        path: Option<PathBuf>,
        /// The key, with its section.
        key: String,
        /// Its value.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A config value the weights' shapes contradict, found from the safetensors header
    /// before any tensor is read or sized by the config.
    #[error("{}: {key} = {value} does not match the weights in {}: {found}", path.display(), weights.display())]
    ConfigMismatch {
        /// The config file.
        path: PathBuf,
        /// The key, with its section.
        key: String,
        /// Its value.
        value: usize,
        /// The weights file.
        weights: PathBuf,
        /// What the weights hold instead (`` `…class_embedding` is [768], not [1024] ``).
        found: String,
    },
    /// A directory holds neither known checkpoint layout.
    #[error("{path} is not a model directory: expected config.json + model.safetensors (Hugging Face) or open_clip_config.json + open_clip_model.safetensors (open_clip)")]
    UnknownLayout {
        /// The directory.
        path: PathBuf,
    },
    /// A checkpoint holds a tensor the configured model has no place for.
    #[error("unexpected tensor `{key}` in {path}: the checkpoint does not match its config")]
    UnexpectedTensor {
        /// The tensor name.
        key: String,
        /// The checkpoint file.
        path: PathBuf,
    },
    /// An open_clip feature this implementation does not support.
    #[error("unsupported open_clip setting {field} = {value} in {path}")]
    Unsupported {
        /// The config field.
        field: String,
        /// Its value.
        value: String,
        /// The config file.
        path: PathBuf,
    },
    /// A checkpoint tensor is missing or misshapen (names the file and key).
    #[error("in {path}: {source}")]
    Weights {
        /// The checkpoint file.
        path: PathBuf,
        /// The missing or misshapen tensor.
        #[source]
        source: clip_nn::NnError,
    },
    /// Vision tower error.
    #[error(transparent)]
    Vision(#[from] vision_encoder::VisionError),
    /// Text tower error.
    #[error(transparent)]
    Text(#[from] text_encoder::TextError),
    /// Layer error.
    #[error(transparent)]
    Nn(#[from] clip_nn::NnError),
    /// Tensor error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An int8 weight of a quantized checkpoint that cannot be used as stored.
    #[error("int8 weight `{key}` in {path}: {reason}")]
    Quantized {
        /// The weight's name.
        key: String,
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A precision this model or device cannot run.
    #[error("precision {precision}: {reason}")]
    Precision {
        /// The precision asked for.
        precision: clip_nn::quant::Precision,
        /// Why it cannot run.
        reason: &'static str,
    },
}

impl ModelError {
    /// Names `path` as the file of a [`ModelError::Config`] error that has none yet.
    pub(crate) fn in_file(self, file: &std::path::Path) -> Self {
        match self {
            Self::Config {
                path: None,
                key,
                value,
                reason,
            } => Self::Config {
                path: Some(file.to_path_buf()),
                key,
                value,
                reason,
            },
            other => other,
        }
    }
}

fn file_prefix(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

/// Builds a `map_err` closure that names the file and what was being done.
pub(crate) fn io_err(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> ModelError {
    let path = path.to_path_buf();
    move |source| ModelError::Io {
        action,
        path,
        source,
    }
}
