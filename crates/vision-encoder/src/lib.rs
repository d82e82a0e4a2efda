//! The CLIP vision tower (a ViT) and CLIP's image preprocessing.

mod config;
mod error;
mod model;
mod preprocess;
mod resize;

pub use config::{ProjectionHead, VisionConfig};
pub use error::{Result, VisionError};
pub use model::{VisionTape, VisionTransformer};
pub use preprocess::{
    decode_image, decode_image_limited, load_image, pixels_to_tensor, preprocess, preprocess_files,
    Preprocess, OPENAI_MEAN, OPENAI_STD,
};
pub use resize::resize_bicubic;
