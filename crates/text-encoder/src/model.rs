//! The causal text encoder, as transformers' `CLIPTextModelWithProjection`.

use candle_core::{Device, Module, Tensor};
use clip_nn::taped::{
    EncoderTape, Grads, HostEncoder, HostLinear, HostNorm, HostParam, Seqs, Workspace,
};
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

    /// Packs the transformer blocks' linear layers for `precision` (inference on the CPU
    /// only); embeddings, norms and the projection stay f32.
    pub fn pack(&mut self, precision: clip_nn::quant::Precision) -> Result<()> {
        Ok(self.encoder.pack(precision)?)
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

    /// Checks token rows; returns where each is pooled and how many leading tokens matter.
    ///
    /// Attention is causal, so the pooled token only sees positions up to itself: tokens
    /// after the last pooled position of the batch cannot change any output and are cut.
    fn prepare(&self, ids: &[Vec<u32>]) -> Result<(Vec<u32>, usize)> {
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
        let pos = self.pool_positions(ids);
        let used = pos.iter().map(|&p| p as usize + 1).max().unwrap_or(t);
        Ok((pos, used))
    }

    /// Token ids (each row of equal length ≤ context) → projected text features
    /// `[b, projection_dim]` (what transformers' `get_text_features` returns).
    pub fn forward(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        Ok(self.projection.forward(&self.pooled(ids, device)?)?)
    }

    /// Token ids → the normalised pooled token `[b, hidden_size]` before the projection
    /// (transformers' `pooler_output`).
    pub fn pooled(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let b = ids.len();
        let (pos, t) = self.prepare(ids)?;
        let flat: Vec<u32> = ids.iter().flat_map(|r| r[..t].to_vec()).collect();
        let ids_t = Tensor::from_vec(flat, (b, t), device)?;
        let x = self.token_embedding.forward(&ids_t)?;
        let positions = self.position_embedding.table().narrow(0, 0, t)?;
        let x = x.broadcast_add(&positions)?;
        let mask = causal_mask(t, device)?;
        let pooled = self.encoder.forward_at(&x, &pos, Some(&mask))?; // [b, w]
                                                                      // Layer norm is per token, so normalising after pooling equals normalising before.
        Ok(self.final_norm.forward(&pooled)?)
    }

    /// The same features as [`TextTransformer::forward`] (CPU, f32), computed by the taped
    /// path (`clip_nn::taped`) that [`TextTransformer::backward_taped`] differentiates.
    pub fn forward_taped(
        &self,
        ids: &[Vec<u32>],
        device: &Device,
        ws: &mut Workspace,
    ) -> Result<(Tensor, TextTape)> {
        let b = ids.len();
        let (pos, _) = self.prepare(ids)?;
        // Each caption only up to its pooled token: attention is causal, so the rest cannot
        // reach it, and the sequences are packed without that padding.
        let seqs = Seqs::ragged(pos.iter().map(|&p| p as usize + 1).collect());
        let flat: Vec<u32> = ids
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r[..seqs.len(i)].iter().copied())
            .collect();
        let table = self.token_embedding.table();
        let w = table.dim(1)?;
        let rows = Tensor::from_vec(flat.clone(), flat.len(), device)?;
        // Through the workspace: the encoder's tape gives this buffer back to it, and one the
        // pool never handed out would be kept there every step.
        let token_rows = table.index_select(&rows, 0)?.flatten_all()?;
        let mut x = ws.take(token_rows.elem_count());
        x.copy_from_slice(&token_rows.to_vec1::<f32>()?);
        let position = HostParam::new(self.position_embedding.table())?;
        for i in 0..b {
            let (start, len) = (seqs.start(i), seqs.len(i));
            x[start * w..(start + len) * w]
                .iter_mut()
                .zip(&position.data()[..len * w])
                .for_each(|(v, p)| *v += p);
        }
        let encoder = HostEncoder::new(&self.encoder, w)?;
        let at: Vec<usize> = pos.iter().map(|&p| p as usize).collect();
        let (pooled, enc_tape) = encoder.forward(x, &seqs, true, Some(&at), ws);
        let final_norm = HostNorm::new(&self.final_norm)?;
        let (mut pooled_norm, mut stats) = (vec![0f32; b * w], vec![0f32; b * 2]);
        final_norm.forward(&pooled, &mut pooled_norm, &mut stats);
        let projection = HostLinear::new(&self.projection)?;
        let e = projection.out_dim();
        let mut features = vec![0f32; b * e];
        projection.forward(&pooled_norm, None, &mut features);
        let features = Tensor::from_vec(features, (b, e), device)?;
        Ok((
            features,
            TextTape {
                encoder,
                enc_tape,
                position,
                final_norm,
                projection,
                ids: flat,
                pooled,
                stats,
                pooled_norm,
                seqs,
            },
        ))
    }

    /// Pushes the gradient of every tower parameter, given the gradient of the features
    /// [`TextTransformer::forward_taped`] returned.
    pub fn backward_taped(
        &self,
        tape: TextTape,
        d_features: &Tensor,
        ws: &mut Workspace,
        grads: &mut Grads,
    ) -> Result<()> {
        let b = tape.seqs.batch();
        let table = self.token_embedding.table();
        let (vocab, w) = table.dims2()?;
        let dfeat = d_features.flatten_all()?.to_vec1::<f32>()?;
        let mut d_norm = vec![0f32; b * w];
        tape.projection
            .backward(&dfeat, &tape.pooled_norm, Some((&mut d_norm, false)), grads)?;
        // From the workspace, which the encoder's backward gives it back to.
        let mut d_pooled = ws.take(b * w);
        d_pooled.fill(0.0);
        tape.final_norm.backward(
            &d_norm,
            &tape.pooled,
            &tape.stats,
            &mut d_pooled,
            false,
            grads,
        )?;
        let dx = tape.encoder.backward(tape.enc_tape, d_pooled, ws, grads)?;
        // Every sequence adds its rows to the positions they were at, in order
        // (deterministic).
        let mut d_pos = vec![0f32; tape.position.data().len()];
        for i in 0..b {
            let (start, len) = (tape.seqs.start(i), tape.seqs.len(i));
            d_pos[..len * w]
                .iter_mut()
                .zip(&dx[start * w..(start + len) * w])
                .for_each(|(d, v)| *d += v);
        }
        tape.position.push_grad(d_pos, grads)?;
        // Token rows scatter back into the table, in order (deterministic).
        let mut d_table = vec![0f32; vocab * w];
        for (&id, row) in tape.ids.iter().zip(dx.chunks(w)) {
            let dst = &mut d_table[id as usize * w..(id as usize + 1) * w];
            dst.iter_mut().zip(row).for_each(|(d, v)| *d += v);
        }
        grads.push(table, d_table)?;
        ws.give(dx);
        Ok(())
    }
}

/// What [`TextTransformer::backward_taped`] needs from the forward.
#[derive(Debug)]
pub struct TextTape {
    encoder: HostEncoder,
    enc_tape: EncoderTape,
    position: HostParam,
    final_norm: HostNorm,
    projection: HostLinear,
    ids: Vec<u32>,
    pooled: Vec<f32>,
    stats: Vec<f32>,
    pooled_norm: Vec<f32>,
    seqs: Seqs,
}

impl TextTape {
    /// Returns the activations to the workspace when no backward follows.
    pub fn release(self, ws: &mut Workspace) {
        self.enc_tape.release(ws);
    }
}

/// Additive mask `[t, t]`: 0 on and below the diagonal, a large negative number above.
fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { -1e9 } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(data, (t, t), device)?)
}
