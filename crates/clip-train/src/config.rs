//! What shapes a run: the objective, the loss, the arithmetic and every optimisation setting,
//! checked before anything starts. With the `clap` feature the enums are command-line values
//! whose help is each variant's first doc paragraph.

use clip_data::{AugmentConfig, CacheConfig, OrderConfig};
use serde::{Deserialize, Serialize};

use crate::optim::{AdamWConfig, ScheduleKind};
use crate::{Result, TrainError};

/// Arithmetic of the forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed precision: bf16 forward/backward over f32 master weights (for CUDA; slower on
    /// CPU, where f32 is the fast path).
    ///
    /// f32 master weights and optimiser state; each step runs the towers on bf16 copies of
    /// the weights (layer norms and softmaxes in f32), gradients flow back to the f32 weights
    /// through the casts, and the loss is computed in f32.
    Bf16,
}

/// What counts as a positive pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// An image and its caption are the positive pair (CLIP).
    ///
    /// Both towers train.
    #[default]
    ImageText,
    /// Two augmented views of one image are the positive pair (no captions needed).
    ///
    /// SimCLR-style: only the image tower trains.
    Images,
}

/// The contrastive loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// CLIP's symmetric softmax (image-text).
    ///
    /// In-batch softmax cross-entropy, [`clip_loss`](crate::clip_loss).
    #[default]
    Clip,
    /// SigLIP's pairwise sigmoid (image-text).
    ///
    /// With a learned bias, [`siglip_loss`](crate::siglip_loss).
    Siglip,
    /// SimCLR's NT-Xent over two views (images).
    ///
    /// [`nt_xent_loss`](crate::nt_xent_loss).
    NtXent,
    /// Debiased negatives with prior --tau-plus (either objective).
    ///
    /// [`debiased_contrastive_loss`](crate::debiased_contrastive_loss), or
    /// [`debiased_clip_loss`](crate::debiased_clip_loss) for image–text.
    Debiased,
    /// Debiased plus hard-negative weighting --beta (either objective).
    ///
    /// [`hard_negative_loss`](crate::hard_negative_loss).
    HardNegative,
    /// Spectral contrastive loss (either objective).
    ///
    /// [`spectral_contrastive_loss`](crate::spectral_contrastive_loss).
    Spectral,
    /// NT-Xent without same-class negatives, from --labels (images; experiments only).
    ///
    /// [`oracle_contrastive_loss`](crate::oracle_contrastive_loss): same-class negatives are
    /// removed using true labels.
    Oracle,
}

/// Everything that shapes the optimisation (saved with every checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Pairs per step (all of them are each other's negatives).
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup: usize,
    /// Schedule after warmup.
    pub schedule: ScheduleKind,
    /// AdamW settings.
    pub optimizer: AdamWConfig,
    /// Clip the global gradient norm to this value.
    pub grad_clip_norm: Option<f64>,
    /// Split each batch into this many forward passes while keeping the whole batch as
    /// negatives (a feature cache, as open_clip's `--accum-freq`).
    pub accum_steps: usize,
    /// Seed for initialisation, data order and augmentation.
    pub seed: u64,
    /// What a positive pair is.
    pub objective: Objective,
    /// Loss.
    pub loss: LossKind,
    /// Temperature of the two-view softmax losses (image–text losses learn theirs).
    pub temperature: f64,
    /// Class prior τ⁺ of the debiased and hard-negative losses.
    pub tau_plus: f64,
    /// Hard-negative concentration β.
    pub beta: f64,
    /// Norm bound μ of the spectral loss.
    pub spectral_mu: f64,
    /// f32, or bf16 mixed precision.
    pub precision: Precision,
    /// Freeze the image tower.
    pub lock_image: bool,
    /// Freeze the text tower.
    pub lock_text: bool,
    /// Checkpoint every N steps (0: only at the end).
    pub save_every: usize,
    /// Keep this many `checkpoint-*` folders (the newest).
    pub keep_last: usize,
    /// Log every N steps.
    pub log_every: usize,
    /// Validate every N steps (0: only at the end).
    pub val_every: usize,
    /// Augmentation.
    pub augment: AugmentConfig,
    /// Batches prepared ahead of the model.
    pub prefetch: usize,
    /// Epoch length and the shards' shuffle buffer.
    pub order: OrderConfig,
    /// Which decoded samples stay in memory between epochs.
    pub cache: CacheConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 400,
            batch_size: 128,
            lr: 1e-3,
            warmup: 40,
            schedule: ScheduleKind::Cosine,
            optimizer: AdamWConfig::default(),
            grad_clip_norm: None,
            accum_steps: 1,
            seed: 0,
            objective: Objective::ImageText,
            loss: LossKind::Clip,
            temperature: 0.5,
            tau_plus: 0.1,
            beta: 1.0,
            spectral_mu: 1.0,
            precision: Precision::F32,
            lock_image: false,
            lock_text: false,
            save_every: 0,
            keep_last: 3,
            log_every: 10,
            val_every: 0,
            augment: AugmentConfig::default(),
            prefetch: 4,
            order: OrderConfig::default(),
            cache: CacheConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Checks the options before anything starts; errors name the field (`accum_steps`), and
    /// other fields in backticks.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str| {
            Err(TrainError::Config {
                field,
                reason: reason.to_string(),
            })
        };
        if self.steps == 0 {
            return bad("steps", "must be at least 1");
        }
        if self.batch_size < 2 {
            return bad("batch_size", "a contrastive batch needs at least 2 pairs");
        }
        if self.accum_steps == 0 || !self.batch_size.is_multiple_of(self.accum_steps) {
            return bad("accum_steps", "must divide the batch size");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be a positive number");
        }
        if self.grad_clip_norm.is_some_and(|c| c.is_nan() || c <= 0.0) {
            return bad("grad_clip_norm", "must be positive");
        }
        use LossKind::*;
        let images = self.objective == Objective::Images;
        if !images && matches!(self.loss, NtXent | Oracle) {
            return bad(
                "loss",
                "nt-xent and oracle compare two views of one image: they need `objective` images",
            );
        }
        if images && matches!(self.loss, Clip | Siglip) {
            return bad(
                "loss",
                "clip and siglip pair images with captions: with `objective` images use \
                 nt-xent, debiased, hard-negative, spectral or oracle",
            );
        }
        if images && self.accum_steps != 1 {
            return bad(
                "accum_steps",
                "is only supported with `objective` image-text",
            );
        }
        if images && self.lock_image {
            return bad(
                "lock_image",
                "`objective` images trains only the image tower",
            );
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad("temperature", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.tau_plus) {
            return bad("tau_plus", "must lie in [0, 1)");
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return bad("beta", "must be a non-negative number");
        }
        if !(self.spectral_mu.is_finite() && self.spectral_mu > 0.0) {
            return bad("spectral_mu", "must be a positive number");
        }
        if self.lock_image && self.lock_text {
            return bad(
                "lock_image",
                "with `lock_text` too, locking both towers leaves only the temperature to train",
            );
        }
        self.augment
            .validate()
            .map_err(|reason| TrainError::Config {
                field: "augment",
                reason,
            })
    }
}
