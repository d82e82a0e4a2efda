//! Differentiable building blocks shared by both CLIP towers.
//!
//! candle 0.11's fused `layer_norm` and `softmax_last_dim` have no backward pass, so every
//! op here has a differentiable path (used whenever an input tracks gradients) and a fused
//! fast path for inference. Parameters are fetched by name through [`Params`], whose names
//! mirror the Hugging Face CLIP checkpoint keys.

mod activation_op;
mod cpu_storage;
mod error;
mod layers;
mod linear_op;
mod norm_op;
mod ops;
mod params;
pub mod quant;
pub mod runtime;
mod simd;
pub mod taped;
mod transformer;

pub use error::{BadConfig, NnError, Result};
pub use layers::{Activation, Embedding, LayerNorm, Linear};
pub use ops::{layer_norm, layer_norm_composed, softmax_composed, softmax_last_dim};
pub use params::{Init, ParamSource, Params, ShapeRecorder, TensorMap, VarStore};
pub use transformer::{Attention, Encoder, EncoderLayer, EncoderSpec, Mlp};
