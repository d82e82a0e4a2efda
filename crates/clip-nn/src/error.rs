use candle_core::Shape;

/// Errors raised while building or running layers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NnError {
    /// A parameter the model needs is absent from the checkpoint.
    #[error("missing tensor `{key}` (expected shape {expected:?})")]
    MissingTensor {
        /// Full parameter name, e.g. `vision_model.pre_layrnorm.weight`.
        key: String,
        /// The shape the model expects.
        expected: Shape,
    },
    /// A parameter exists but its shape does not match the model configuration.
    #[error("tensor `{key}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Full parameter name.
        key: String,
        /// The shape the model expects.
        expected: Shape,
        /// The shape found in the checkpoint.
        found: Shape,
    },
    /// The same parameter name was requested twice while building a model.
    #[error("parameter `{0}` is defined twice")]
    DuplicateParameter(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, NnError>;
