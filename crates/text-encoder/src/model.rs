//! The causal text encoder, as transformers' `CLIPTextModelWithProjection`.

use candle_core::{Device, Module, Tensor};
use clip_nn::{Embedding, Encoder, LayerNorm, Linear, Params};

use crate::{Pooling, Result, TextConfig, TextError};

/// Token and position embeddings, causal pre-norm blocks, final norm, pooling at the
/// end-of-text token and a bias-free projection into the shared space.
#[derive(Debug, Clone)]
pub struct TextTransformer {
    token_embedding: Embedding,
    position_embedding: Embedding,
    encoder: Encoder,
    final_norm: LayerNorm,
    projection: Linear,
    pooling: Pooling,
    vocab_size: usize,
    context: usize,
}

impl TextTransformer {
    /// Builds the tower from parameters named `text_model.*` and `text_projection.weight`.
    pub fn new(cfg: &TextConfig, projection_dim: usize, root: Params) -> Result<Self> {
        Self::with_pooling(cfg, projection_dim, cfg.pooling(), root)
    }

    /// As [`TextTransformer::new`] with an explicit pooling rule (open_clip checkpoints pool
    /// at the highest id).
    pub fn with_pooling(
        cfg: &TextConfig,
        projection_dim: usize,
        pooling: Pooling,
        root: Params,
    ) -> Result<Self> {
        cfg.validate()?;
        let w = cfg.hidden_size;
        let tm = root.pp("text_model");
        let emb = tm.pp("embeddings");
        let spec = cfg.encoder_spec()?;
        Ok(Self {
            token_embedding: Embedding::new(cfg.vocab_size, w, 0.02, &emb.pp("token_embedding"))?,
            position_embedding: Embedding::new(
                cfg.max_position_embeddings,
                w,
                0.01,
                &emb.pp("position_embedding"),
            )?,
            encoder: Encoder::new(&spec, &tm.pp("encoder"))?,
            final_norm: LayerNorm::new(w, cfg.layer_norm_eps, &tm.pp("final_layer_norm"))?,
            projection: Linear::new(
                w,
                projection_dim,
                false,
                (w as f64).powf(-0.5),
                &root.pp("text_projection"),
            )?,
            pooling,
            vocab_size: cfg.vocab_size,
            context: cfg.max_position_embeddings,
        })
    }

    /// The context length the model was built for.
    pub fn context_length(&self) -> usize {
        self.context
    }

    /// Where each row is pooled, following [`Pooling`].
    fn pool_positions(&self, ids: &[Vec<u32>]) -> Vec<u32> {
        ids.iter()
            .map(|row| {
                let pos = match self.pooling {
                    Pooling::FirstEos(eos) => row.iter().position(|&t| t == eos),
                    Pooling::Argmax => row
                        .iter()
                        .enumerate()
                        .fold(None, |best: Option<(usize, u32)>, (i, &t)| match best {
                            Some((_, bt)) if bt >= t => best,
                            _ => Some((i, t)),
                        })
                        .map(|(i, _)| i),
                };
                pos.unwrap_or(row.len().saturating_sub(1)) as u32
            })
            .collect()
    }

    /// Token ids (each row of equal length ≤ context) → projected text features
    /// `[b, projection_dim]` (what transformers' `get_text_features` returns).
    pub fn forward(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let b = ids.len();
        let t = ids.first().map_or(0, Vec::len);
        if t == 0 || t > self.context || ids.iter().any(|r| r.len() != t) {
            return Err(candle_core::Error::Msg(format!(
                "token rows must share one length between 1 and {}",
                self.context
            ))
            .into());
        }
        if let Some(&id) = ids
            .iter()
            .flatten()
            .find(|&&id| id as usize >= self.vocab_size)
        {
            return Err(TextError::TokenOutOfRange {
                id,
                vocab_size: self.vocab_size,
            });
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let ids_t = Tensor::from_vec(flat, (b, t), device)?;
        let x = self.token_embedding.forward(&ids_t)?;
        let pos = self.position_embedding.table().narrow(0, 0, t)?;
        let x = x.broadcast_add(&pos)?;
        let mask = causal_mask(t, device)?;
        let x = self.encoder.forward(&x, Some(&mask))?; // [b, t, w]
        let w = x.dim(2)?;
        // Gather the pooled token of every row from the flattened [b·t, w] activations.
        let rows: Vec<u32> = self
            .pool_positions(ids)
            .into_iter()
            .enumerate()
            .map(|(i, p)| i as u32 * t as u32 + p)
            .collect();
        let rows = Tensor::from_vec(rows, b, device)?;
        let pooled = x.reshape((b * t, w))?.index_select(&rows, 0)?;
        // Layer norm is per token, so normalising after pooling equals normalising before.
        let pooled = self.final_norm.forward(&pooled)?;
        Ok(self.projection.forward(&pooled)?)
    }
}

/// Additive mask `[t, t]`: 0 on and below the diagonal, a large negative number above.
fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { -1e9 } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(data, (t, t), device)?)
}
