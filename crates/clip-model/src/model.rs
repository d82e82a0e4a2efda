//! Both towers plus the learned temperature.

use candle_core::{Device, Shape, Tensor};
use clip_nn::{Init, Params, ShapeRecorder};
use text_encoder::{Pooling, TextTransformer};
use vision_encoder::VisionTransformer;

use crate::{ClipConfig, Result};

/// A CLIP dual encoder; parameter names follow transformers' `CLIPModel`.
#[derive(Debug, Clone)]
pub struct ClipModel {
    vision: VisionTransformer,
    text: TextTransformer,
    logit_scale: Tensor,
    config: ClipConfig,
    device: Device,
}

impl ClipModel {
    /// Builds the model from `params` (a checkpoint, a trainable store or a recorder).
    pub fn new(cfg: &ClipConfig, pooling: Pooling, params: Params) -> Result<Self> {
        cfg.validate()?;
        let vision =
            VisionTransformer::new(&cfg.vision_config, cfg.projection_dim, params.clone())?;
        let text = TextTransformer::with_pooling(
            &cfg.text_config,
            cfg.projection_dim,
            pooling,
            params.clone(),
        )?;
        let logit_scale = params.get((), "logit_scale", Init::Const(cfg.logit_scale_init_value))?;
        Ok(Self {
            vision,
            text,
            logit_scale,
            config: cfg.clone(),
            device: params.device().clone(),
        })
    }

    /// Every parameter name and shape the configuration implies, without allocating weights.
    pub fn parameter_shapes(cfg: &ClipConfig) -> Result<Vec<(String, Shape)>> {
        let recorder = ShapeRecorder::new();
        Self::new(cfg, cfg.text_config.pooling(), Params::new(&recorder))?;
        Ok(recorder.shapes())
    }

    /// The weights of the linear layers that run packed in int8 or bf16 (the transformer
    /// blocks' attention and MLP projections): those a quantized checkpoint stores as int8.
    pub fn packable_weights(cfg: &ClipConfig) -> Result<Vec<String>> {
        let recorder = ShapeRecorder::new();
        Self::new(cfg, cfg.text_config.pooling(), Params::new(&recorder))?;
        Ok(recorder.packable())
    }

    /// Packs both towers' transformer blocks for `precision` (int8 or bf16; f32 leaves the
    /// model as it is). Inference on the CPU only: a packed model cannot be trained or saved.
    pub fn pack(&mut self, precision: clip_nn::quant::Precision) -> Result<()> {
        if precision != clip_nn::quant::Precision::F32 && !self.device.is_cpu() {
            return Err(crate::ModelError::Precision {
                precision,
                reason: "reduced-precision kernels run on the CPU; use the cpu device or f32",
            });
        }
        self.vision.pack(precision)?;
        self.text.pack(precision)?;
        Ok(())
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Normalised pixels `[b, 3, s, s]` → image features `[b, projection_dim]`.
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.vision.forward(pixels)?)
    }

    /// Token rows (see [`text_encoder::ClipTokenizer`]) → text features `[b, projection_dim]`.
    pub fn encode_text(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        Ok(self.text.forward(ids, &self.device)?)
    }

    /// Normalised pixels → the image tower's output before the projection
    /// `[b, vision hidden_size]` (what a linear probe of an image-only model reads).
    pub fn pooled_image(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.vision.pooled(pixels)?)
    }

    /// Token rows → the text tower's output before the projection `[b, text hidden_size]`.
    pub fn pooled_text(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        Ok(self.text.pooled(ids, &self.device)?)
    }

    /// The image tower (for the taped training path).
    pub fn vision(&self) -> &VisionTransformer {
        &self.vision
    }

    /// The text tower (for the taped training path).
    pub fn text(&self) -> &TextTransformer {
        &self.text
    }

    /// The learned log inverse temperature (a scalar tensor).
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }
}
