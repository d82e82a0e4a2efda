use std::path::PathBuf;

/// Errors of the text tower and tokenizer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid text config: {0}")]
    Config(#[from] clip_nn::BadConfig),
    /// The tokenizer file could not be loaded.
    #[error("cannot load tokenizer {path}: {message}")]
    TokenizerLoad {
        /// The `tokenizer.json` path.
        path: PathBuf,
        /// The tokenizers crate's message.
        message: String,
    },
    /// Tokenisation failed.
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of size {vocab_size}")]
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// A layer failed to build or run.
    #[error(transparent)]
    Nn(#[from] clip_nn::NnError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, TextError>;
