//! Text tower configuration, in the field names of Hugging Face's `CLIPTextConfig`.

use clip_nn::{BadConfig, EncoderSpec};
use serde::{Deserialize, Serialize};

use crate::Result;

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
    /// Upper bound on `vocab_size`: 4× the largest multilingual vocabularies (~250k).
    pub const MAX_VOCAB: usize = 1 << 20;

    /// Checks that the sizes fit together and stay within their bounds, before any tensor
    /// exists (so a hostile `config.json` cannot size an allocation).
    pub fn validate(&self) -> Result<()> {
        let spec = self.encoder_spec()?;
        let bad = |field, value: usize, reason| Err(BadConfig::new(field, value, reason).into());
        if self.max_position_embeddings < 2 {
            return bad(
                "max_position_embeddings",
                self.max_position_embeddings,
                "needs room for start and end tokens",
            );
        }
        spec.check_sequence(
            "max_position_embeddings",
            self.max_position_embeddings,
            self.max_position_embeddings,
        )?;
        if self.vocab_size == 0 {
            return bad("vocab_size", 0, "must be positive");
        }
        BadConfig::at_most("vocab_size", self.vocab_size, Self::MAX_VOCAB)?;
        Ok(())
    }

    /// The pooling rule transformers applies for this config.
    pub fn pooling(&self) -> Pooling {
        if self.eos_token_id == 2 {
            Pooling::Argmax
        } else {
            Pooling::FirstEos(self.eos_token_id)
        }
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
    fn sizes_past_their_bounds_are_named() {
        let err = |cfg: TextConfig| cfg.validate().unwrap_err().to_string();
        let msg = err(TextConfig {
            vocab_size: usize::MAX,
            ..TextConfig::default()
        });
        assert!(
            msg.contains("vocab_size = 18446744073709551615: exceeds"),
            "{msg}"
        );
        // tokens² overflows usize: still an error, not a wrap-around.
        let msg = err(TextConfig {
            max_position_embeddings: 1 << 33,
            ..TextConfig::default()
        });
        assert!(
            msg.contains("max_position_embeddings = 8589934592: gives"),
            "{msg}"
        );
        assert!(TextConfig::default().validate().is_ok());
    }
}
