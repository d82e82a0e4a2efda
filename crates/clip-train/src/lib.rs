//! Contrastive training of CLIP dual encoders.

mod loss;

pub use loss::clip_loss;
