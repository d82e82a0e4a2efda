//! Vision tower configuration, in the field names of Hugging Face's `CLIPVisionConfig`.

use clip_nn::{Activation, EncoderSpec};
use serde::{Deserialize, Serialize};

use crate::{Result, VisionError};

/// Sizes of the ViT; defaults are those of transformers' `CLIPVisionConfig` (ViT-B/32).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    /// Transformer width.
    pub hidden_size: usize,
    /// MLP hidden size.
    pub intermediate_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Input side length in pixels.
    pub image_size: usize,
    /// Patch side length in pixels.
    pub patch_size: usize,
    /// Colour channels (CLIP uses 3).
    pub num_channels: usize,
    /// MLP activation name (`quick_gelu`, `gelu`, `gelu_new`).
    pub hidden_act: String,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_attention_heads: 12,
            num_hidden_layers: 12,
            image_size: 224,
            patch_size: 32,
            num_channels: 3,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl VisionConfig {
    /// Checks that the sizes fit together, before any tensor exists.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: usize, reason| {
            Err(VisionError::Config {
                field,
                value: value.to_string(),
                reason,
            })
        };
        if self.hidden_size == 0 {
            return bad("hidden_size", 0, "must be positive");
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(
                "num_attention_heads",
                self.num_attention_heads,
                "must divide hidden_size",
            );
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return bad("patch_size", self.patch_size, "must divide image_size");
        }
        if self.num_channels != 3 {
            return bad(
                "num_channels",
                self.num_channels,
                "only RGB (3) is supported",
            );
        }
        if self.intermediate_size == 0 {
            return bad("intermediate_size", 0, "must be positive");
        }
        self.activation()?;
        Ok(())
    }

    /// The parsed activation.
    pub fn activation(&self) -> Result<Activation> {
        Activation::from_hf_name(&self.hidden_act).ok_or_else(|| VisionError::Config {
            field: "hidden_act",
            value: self.hidden_act.clone(),
            reason: "expected quick_gelu, gelu or gelu_new",
        })
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Block sizes for the shared encoder.
    pub fn encoder_spec(&self) -> Result<EncoderSpec> {
        Ok(EncoderSpec {
            width: self.hidden_size,
            heads: self.num_attention_heads,
            mlp_dim: self.intermediate_size,
            layers: self.num_hidden_layers,
            activation: self.activation()?,
            eps: self.layer_norm_eps,
        })
    }
}
