//! The CLIP dual encoder: both towers and the learned temperature, their configuration,
//! and reading/writing checkpoints in the Hugging Face and open_clip layouts.

mod checkpoint;
mod config;
mod error;
mod fsutil;
mod header;
mod model;
mod open_clip;

pub use checkpoint::{read_safetensors, save_hf, write_hf_files, Checkpoint, Layout};
pub use config::{load_preprocess_config, ClipConfig};
pub use error::{ModelError, Result};
pub use fsutil::replace_dir_atomically;
pub use model::ClipModel;

pub use text_encoder::{ClipTokenizer, Pooling, TextConfig};
pub use vision_encoder::{Preprocess, ProjectionHead, VisionConfig};
