//! Vision tower configuration, in the field names of Hugging Face's `CLIPVisionConfig`.

use clip_nn::{BadConfig, EncoderSpec};
use serde::{Deserialize, Serialize};

use crate::Result;

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
    /// An MLP between the pooled token and the embedding, for image-only training (not a
    /// transformers field; absent: transformers' bias-free linear `visual_projection`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projection_head: Option<ProjectionHead>,
}

/// The MLP projection head of SimCLR-style image-only training: `layers − 1` blocks of
/// linear → layer norm → activation, then a bias-free linear into the embedding. The probe
/// reads the pooled features before it (`--features pooled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionHead {
    /// Linear layers, at least 2 (one would be the plain projection).
    pub layers: usize,
    /// Width of the hidden layers.
    pub hidden_size: usize,
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
            projection_head: None,
        }
    }
}

impl VisionConfig {
    /// Upper bound on `image_size`: one 4096² RGB input is 200 MB of f32 pixels.
    pub const MAX_IMAGE_SIZE: usize = 4096;
    /// Upper bound on `projection_head.layers` (image-only heads use 2 to 4).
    pub const MAX_HEAD_LAYERS: usize = 64;

    /// Checks that the sizes fit together and stay within their bounds, before any tensor
    /// exists (so a hostile `config.json` cannot size an allocation).
    pub fn validate(&self) -> Result<()> {
        let spec = self.encoder_spec()?;
        let bad = |field, value: usize, reason| Err(BadConfig::new(field, value, reason).into());
        if self.image_size == 0 {
            return bad("image_size", 0, "must be positive");
        }
        BadConfig::at_most("image_size", self.image_size, Self::MAX_IMAGE_SIZE)?;
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return bad("patch_size", self.patch_size, "must divide image_size");
        }
        spec.check_sequence("image_size", self.image_size, self.grid() * self.grid() + 1)?;
        if self.num_channels != 3 {
            return bad(
                "num_channels",
                self.num_channels,
                "only RGB (3) is supported",
            );
        }
        if let Some(h) = &self.projection_head {
            if h.layers < 2 {
                return bad(
                    "projection_head.layers",
                    h.layers,
                    "an MLP head needs at least 2 linear layers",
                );
            }
            BadConfig::at_most("projection_head.layers", h.layers, Self::MAX_HEAD_LAYERS)?;
            if h.hidden_size == 0 {
                return bad("projection_head.hidden_size", 0, "must be positive");
            }
            BadConfig::at_most(
                "projection_head.hidden_size",
                h.hidden_size,
                EncoderSpec::MAX_WIDTH,
            )?;
        }
        Ok(())
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Block sizes for the shared encoder (checked as [`EncoderSpec::from_hf`] does).
    pub fn encoder_spec(&self) -> Result<EncoderSpec> {
        let sizes = (
            self.hidden_size,
            self.intermediate_size,
            self.num_attention_heads,
            self.num_hidden_layers,
        );
        Ok(EncoderSpec::from_hf(
            sizes,
            &self.hidden_act,
            self.layer_norm_eps,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_projection_head_needs_two_layers_and_a_width() {
        let with = |layers, hidden_size| VisionConfig {
            projection_head: Some(ProjectionHead {
                layers,
                hidden_size,
            }),
            ..VisionConfig::default()
        };
        assert!(with(2, 16).validate().is_ok());
        let err = with(1, 16).validate().unwrap_err().to_string();
        assert!(err.contains("projection_head.layers"), "{err}");
        let err = with(3, 0).validate().unwrap_err().to_string();
        assert!(err.contains("projection_head.hidden_size"), "{err}");
    }

    #[test]
    fn sizes_past_their_bounds_are_named() {
        let err = |cfg: VisionConfig| cfg.validate().unwrap_err().to_string();
        let base = VisionConfig::default();
        let msg = err(VisionConfig {
            num_hidden_layers: usize::MAX,
            ..base.clone()
        });
        assert!(
            msg.contains("num_hidden_layers = 18446744073709551615"),
            "{msg}"
        );
        let msg = err(VisionConfig {
            intermediate_size: 1 << 40,
            ..base.clone()
        });
        assert!(
            msg.contains("intermediate_size = 1099511627776: exceeds"),
            "{msg}"
        );
        let msg = err(VisionConfig {
            image_size: 0,
            ..base.clone()
        });
        assert!(msg.contains("image_size = 0"), "{msg}");
        // 1 px patches of a 1024 px image: a million tokens, whose square overflows nothing
        // but far exceeds the attention budget.
        let msg = err(VisionConfig {
            image_size: 1024,
            patch_size: 1,
            ..base.clone()
        });
        assert!(
            msg.contains("image_size = 1024: gives 1048577 tokens"),
            "{msg}"
        );
        let msg = err(VisionConfig {
            layer_norm_eps: -1.0,
            ..base
        });
        assert!(msg.contains("layer_norm_eps = -1"), "{msg}");
    }

    #[test]
    fn a_linear_model_config_has_no_head_key() {
        // transformers' layout stays exactly as it was for image–text models.
        let v = serde_json::to_value(VisionConfig::default()).unwrap();
        assert!(v.get("projection_head").is_none(), "{v}");
        let back: VisionConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, VisionConfig::default());
    }
}
