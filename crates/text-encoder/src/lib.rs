//! The CLIP text tower (a causal transformer) and its tokenizer.

mod config;
mod error;
mod model;
mod tokenizer;

pub use config::{Pooling, TextConfig};
pub use error::{Result, TextError};
pub use model::{TextTape, TextTransformer};
pub use tokenizer::ClipTokenizer;
