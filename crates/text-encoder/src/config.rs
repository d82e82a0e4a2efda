//! Text tower configuration, in the field names of Hugging Face's `CLIPTextConfig`.

use clip_nn::{Activation, EncoderSpec};
use serde::{Deserialize, Serialize};

use crate::{Result, TextError};

/// Sizes of the text transformer; defaults are those of transformers' `CLIPTextConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    /// Vocabulary size (49408 for the CLIP BPE).
    pub vocab_size: usize,
    /// Transformer width.
    pub hidden_size: usize,
    /// MLP hidden size.
    pub intermediate_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Context length (learned positions).
    pub max_position_embeddings: usize,
    /// MLP activation name.
    pub hidden_act: String,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Padding id.
    pub pad_token_id: u32,
    /// Start-of-text id.
    pub bos_token_id: u32,
    /// End-of-text id; `2` marks legacy configs that pool at the highest id instead.
    pub eos_token_id: u32,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_attention_heads: 8,
            num_hidden_layers: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            pad_token_id: 1,
            bos_token_id: 49406,
            eos_token_id: 49407,
        }
    }
}

/// Which token's output represents the whole caption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first occurrence of this end-of-text id.
    FirstEos(u32),
    /// The position of the highest id (OpenAI's and open_clip's rule: `<|endoftext|>` is the
    /// largest id in the CLIP vocabulary).
    Argmax,
}

impl TextConfig {
    /// Checks that the sizes fit together, before any tensor exists.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: usize, reason| {
            Err(TextError::Config {
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
        if self.max_position_embeddings < 2 {
            return bad(
                "max_position_embeddings",
                self.max_position_embeddings,
                "needs room for start and end tokens",
            );
        }
        if self.vocab_size == 0 {
            return bad("vocab_size", 0, "must be positive");
        }
        self.activation()?;
        Ok(())
    }

    /// The parsed activation.
    pub fn activation(&self) -> Result<Activation> {
        Activation::from_hf_name(&self.hidden_act).ok_or_else(|| TextError::Config {
            field: "hidden_act",
            value: self.hidden_act.clone(),
            reason: "expected quick_gelu, gelu or gelu_new",
        })
    }

    /// The pooling rule transformers applies for this config.
    pub fn pooling(&self) -> Pooling {
        if self.eos_token_id == 2 {
            Pooling::Argmax
        } else {
            Pooling::FirstEos(self.eos_token_id)
        }
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
