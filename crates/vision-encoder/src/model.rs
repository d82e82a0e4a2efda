//! The ViT image encoder, as transformers' `CLIPVisionModelWithProjection`.

use candle_core::{Module, Tensor};
use clip_nn::{Encoder, Init, LayerNorm, Linear, Params};

use crate::{Result, VisionConfig};

/// Patch embedding, class token, learned positions, pre-norm transformer, pooled class token
/// and a bias-free projection into the shared embedding space.
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    /// `[width, 3·p·p]`: the conv kernel flattened, applied as one matmul over patches.
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_norm: LayerNorm,
    encoder: Encoder,
    post_norm: LayerNorm,
    projection: Linear,
    patch: usize,
    grid: usize,
    width: usize,
}

impl VisionTransformer {
    /// Builds the tower from parameters named `vision_model.*` and `visual_projection.weight`.
    pub fn new(cfg: &VisionConfig, projection_dim: usize, root: Params) -> Result<Self> {
        cfg.validate()?;
        let w = cfg.hidden_size;
        let p = cfg.patch_size;
        let grid = cfg.grid();
        let vm = root.pp("vision_model");
        let emb = vm.pp("embeddings");
        let scale = (w as f64).powf(-0.5);
        let class_embedding = emb.get(w, "class_embedding", Init::Normal(scale))?;
        let patch_weight = emb.pp("patch_embedding").get(
            (w, cfg.num_channels, p, p),
            "weight",
            Init::Normal((3.0 * (p * p) as f64).powf(-0.5)),
        )?;
        let patch_weight = patch_weight.reshape((w, cfg.num_channels * p * p))?;
        let position_embedding = emb.pp("position_embedding").get(
            (grid * grid + 1, w),
            "weight",
            Init::Normal(scale),
        )?;
        let spec = cfg.encoder_spec()?;
        Ok(Self {
            patch_weight,
            class_embedding,
            position_embedding,
            pre_norm: LayerNorm::new(w, cfg.layer_norm_eps, &vm.pp("pre_layrnorm"))?,
            encoder: Encoder::new(&spec, &vm.pp("encoder"))?,
            post_norm: LayerNorm::new(w, cfg.layer_norm_eps, &vm.pp("post_layernorm"))?,
            projection: Linear::new(
                w,
                projection_dim,
                false,
                scale,
                &root.pp("visual_projection"),
            )?,
            patch: p,
            grid,
            width: w,
        })
    }

    /// Normalised pixels `[b, 3, H, W]` → projected image features `[b, projection_dim]`
    /// (what transformers' `get_image_features` returns: not unit length).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let (p, g) = (self.patch, self.grid);
        if h != g * p || w != g * p {
            return Err(candle_core::Error::Msg(format!(
                "expected {}×{} pixels, got {h}×{w}",
                g * p,
                g * p
            ))
            .into());
        }
        // [b, c, g, p, g, p] → [b, g, g, c, p, p] → [b·g·g, c·p·p]: a conv with stride = kernel.
        let patches = pixels
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let tokens = patches
            .matmul(&self.patch_weight.t()?)?
            .reshape((b, g * g, self.width))?;
        let cls = self
            .class_embedding
            .reshape((1, 1, self.width))?
            .broadcast_as((b, 1, self.width))?;
        let x = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.position_embedding)?;
        let x = self.pre_norm.forward(&x)?;
        let x = self.encoder.forward(&x, None)?;
        let pooled = self.post_norm.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        Ok(self.projection.forward(&pooled)?)
    }
}
