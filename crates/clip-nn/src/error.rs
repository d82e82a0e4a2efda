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
    /// A layer packed for reduced-precision inference was asked for its f32 weight (to
    /// train, export or run it off the CPU).
    #[error("this layer was packed for {0} inference; training and saving need the f32 model")]
    Packed(crate::quant::Precision),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A configuration value out of range, found before any tensor exists; each tower's error
/// wraps it with the config's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value}: {reason}")]
pub struct BadConfig {
    /// The offending field, named as in `config.json`.
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// Why it is rejected (`must be positive`, `exceeds 16384`, …).
    pub reason: std::borrow::Cow<'static, str>,
}

impl BadConfig {
    /// `field` holding `value` is rejected for `reason`.
    pub fn new(
        field: &'static str,
        value: impl ToString,
        reason: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Self {
        Self {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// `field` holding `value` is rejected unless `value <= max`: the bounds that keep a
    /// hostile `config.json` from sizing huge allocations.
    pub fn at_most(field: &'static str, value: usize, max: usize) -> std::result::Result<(), Self> {
        if value > max {
            return Err(Self::new(field, value, format!("exceeds {max}")));
        }
        Ok(())
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, NnError>;
