//! The training loop: batches in, contrastive loss, AdamW, checkpoints, resume.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, TensorId, Var};
use clip_data::{
    AugmentConfig, Augmenter, CacheConfig, DecodedCache, OrderConfig, SampleSet, Skip,
};
use clip_model::{ClipConfig, ClipModel, Preprocess};
use clip_nn::taped::{Grads, Workspace};
use clip_nn::{Init, Params, TensorMap, VarStore};
use serde::{Deserialize, Serialize};
use text_encoder::ClipTokenizer;
use text_encoder::TextTape;
use vision_encoder::VisionTape;

use crate::error::io;
use crate::loader::{Loader, LoaderMode, LoaderSpec};
use crate::optim::{clip_grad_norm, learning_rate, AdamW, AdamWConfig, ScheduleKind};
use crate::ssl_loss::{
    debiased_clip_loss, oracle_contrastive_loss, spectral_contrastive_loss, two_view_loss,
    NegativeEstimate,
};
use crate::{clip_loss, siglip_loss, Result, TrainError};

/// Arithmetic of the forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed precision: f32 master weights and optimiser state; each step runs the towers on
    /// bf16 copies of the weights (layer norms and softmaxes in f32), gradients flow back to
    /// the f32 weights through the casts, and the loss is computed in f32. Meant for CUDA.
    Bf16,
}

/// What counts as a positive pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// An image and its caption (CLIP): both towers train.
    #[default]
    ImageText,
    /// Two augmented views of one image (SimCLR-style): only the image tower trains and
    /// captions are not needed.
    Images,
}

/// The contrastive loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// Symmetric in-batch softmax cross-entropy ([`clip_loss`]); image–text only.
    #[default]
    Clip,
    /// Pairwise sigmoid loss with a learned bias ([`siglip_loss`]); image–text only.
    Siglip,
    /// NT-Xent over two views ([`crate::nt_xent_loss`]); images only.
    NtXent,
    /// Debiased negatives with prior `tau_plus` ([`crate::debiased_contrastive_loss`], or
    /// [`debiased_clip_loss`] for image–text).
    Debiased,
    /// Debiased plus hard-negative reweighting with `beta` ([`crate::hard_negative_loss`]).
    HardNegative,
    /// Spectral contrastive loss ([`spectral_contrastive_loss`]).
    Spectral,
    /// NT-Xent with same-class negatives removed using true labels
    /// ([`oracle_contrastive_loss`]); images only, for experiments.
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
    /// Checks the options before anything starts; errors name the option.
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
            return bad("batch-size", "a contrastive batch needs at least 2 pairs");
        }
        if self.accum_steps == 0 || !self.batch_size.is_multiple_of(self.accum_steps) {
            return bad("accum-steps", "must divide the batch size");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be a positive number");
        }
        if let Some(c) = self.grad_clip_norm {
            if c.is_nan() || c <= 0.0 {
                return bad("grad-clip-norm", "must be positive");
            }
        }
        use LossKind::*;
        match (self.objective, self.loss) {
            (Objective::ImageText, NtXent | Oracle) => {
                return bad(
                    "loss",
                    "nt-xent and oracle compare two views of one image: use --objective images",
                )
            }
            (Objective::Images, Clip | Siglip) => {
                return bad(
                    "loss",
                    "clip and siglip pair images with captions: with --objective images use \
                     nt-xent, debiased, hard-negative, spectral or oracle",
                )
            }
            (Objective::Images, _) if self.accum_steps != 1 => {
                return bad(
                    "accum-steps",
                    "is only supported with --objective image-text",
                )
            }
            (Objective::Images, _) if self.lock_image => {
                return bad(
                    "lock-image",
                    "--objective images trains only the image tower",
                )
            }
            _ => {}
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad("temperature", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.tau_plus) {
            return bad("tau-plus", "must lie in [0, 1)");
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return bad("beta", "must be a non-negative number");
        }
        if !(self.spectral_mu.is_finite() && self.spectral_mu > 0.0) {
            return bad("spectral-mu", "must be a positive number");
        }
        if self.lock_image && self.lock_text {
            return bad(
                "lock-image/lock-text",
                "locking both towers leaves only the temperature to train",
            );
        }
        self.augment
            .validate()
            .map_err(|reason| TrainError::Config {
                field: "augment",
                reason,
            })?;
        Ok(())
    }
}

/// One logged step.
#[derive(Debug, Clone, Serialize)]
pub struct StepStats {
    /// Step just completed (1-based count of updates).
    pub step: usize,
    /// Total steps of the run.
    pub total: usize,
    /// Mean loss since the last log.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// exp(logit_scale), the inverse temperature.
    pub logit_scale: f64,
    /// Training samples per second since the last log.
    pub samples_per_s: f64,
    /// Fraction of step time spent waiting for data.
    pub data_wait: f64,
    /// Seconds since the run (or resume) started.
    pub elapsed_s: f64,
    /// Distinct samples skipped so far (unpaired, unreadable, bad captions).
    pub skipped: usize,
}

/// Hooks for progress display and validation.
pub trait Observer {
    /// Called after each logged step.
    fn on_step(&mut self, _stats: &StepStats) {}
    /// Validation metrics for the current model, or `None` when there is no validation data.
    fn validate(
        &mut self,
        _model: &ClipModel,
        _step: usize,
    ) -> Result<Option<BTreeMap<String, f64>>> {
        Ok(None)
    }
    /// Called after a checkpoint is safely on disk.
    fn on_checkpoint(&mut self, _dir: &Path) {}
}

/// What a run starts from and where it writes.
pub struct RunSetup {
    /// The run directory.
    pub out: PathBuf,
    /// Model architecture.
    pub model: ClipConfig,
    /// Image preprocessing (size, mean, std).
    pub preprocess: Preprocess,
    /// Weights to fine-tune from (None: fresh, seeded initialisation).
    pub init: Option<TensorMap>,
    /// `tokenizer.json` copied into every checkpoint.
    pub tokenizer_file: PathBuf,
    /// The tokenizer.
    pub tokenizer: ClipTokenizer,
    /// Optimisation settings.
    pub train: TrainConfig,
    /// Continue from the newest checkpoint in `out`.
    pub resume: bool,
    /// Class id per sample (needed by [`LossKind::Oracle`] only).
    pub labels: Option<Vec<usize>>,
}

/// The end of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The final model directory (`RUN_DIR/final`).
    pub final_dir: PathBuf,
    /// Last validation metrics, if any.
    pub val: Option<BTreeMap<String, f64>>,
    /// Steps run in this invocation.
    pub steps_run: usize,
    /// Mean training samples per second in this invocation.
    pub samples_per_s: f64,
    /// Mean fraction of step time spent waiting for data.
    pub data_wait: f64,
    /// Distinct samples skipped over the whole run (listed in `RUN/skipped.tsv`).
    pub skipped: usize,
}

/// Saved beside the weights in each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Steps completed.
    pub step: usize,
    /// The configuration of the run.
    pub train: TrainConfig,
    /// Sample position the next step starts reading at (bad samples shift it past
    /// `step × batch`); absent in checkpoints of earlier versions.
    #[serde(default)]
    pub data_position: Option<usize>,
}

const STATE_FILE: &str = "train_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const LOGIT_BIAS: &str = "logit_bias";

fn is_image_param(name: &str) -> bool {
    name.starts_with("vision_model.") || name.starts_with("visual_projection")
}

fn is_text_param(name: &str) -> bool {
    name.starts_with("text_model.") || name.starts_with("text_projection")
}

/// `checkpoint-<step>` folders of a run, oldest first.
pub fn checkpoints(run: &Path) -> Vec<(usize, PathBuf)> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(run)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path()
                .join(STATE_FILE)
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// An inference copy of the current weights (shares storage, tracks no gradients).
fn snapshot_model(store: &VarStore, cfg: &ClipConfig, device: &Device) -> Result<ClipModel> {
    let tensors: HashMap<String, Tensor> = store
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().detach()))
        .collect();
    let map = TensorMap::new(tensors, device.clone());
    Ok(ClipModel::new(
        cfg,
        cfg.text_config.pooling(),
        Params::new(&map),
    )?)
}

struct Ctx<'a> {
    setup: &'a RunSetup,
    store: &'a VarStore,
    model: &'a ClipModel,
    logit_bias: Option<Tensor>,
    /// Activation buffers of the taped path, reused from step to step.
    ws: RefCell<Workspace>,
}

/// Keeps a tower's tape in `slot` and returns its features as a fresh leaf for the loss, or,
/// without a slot (no backward follows), recycles the tape and returns the features.
fn hold<T>(
    features: Tensor,
    tape: T,
    slot: Option<&mut Option<(Var, T)>>,
    release: impl FnOnce(T),
) -> Result<Tensor> {
    match slot {
        Some(slot) => {
            let leaf = Var::from_tensor(&features)?;
            let t = leaf.as_tensor().clone();
            *slot = Some((leaf, tape));
            Ok(t)
        }
        None => {
            release(tape);
            Ok(features)
        }
    }
}

/// Tower features whose gradient reaches the weights through the taped backward once the
/// loss's backward has run.
#[derive(Default)]
struct Pending {
    image: Option<(Var, VisionTape)>,
    text: Option<(Var, TextTape)>,
}

impl Ctx<'_> {
    fn estimate(&self) -> NegativeEstimate {
        let t = &self.setup.train;
        match t.loss {
            LossKind::Debiased => NegativeEstimate {
                tau_plus: t.tau_plus,
                beta: 0.0,
            },
            LossKind::HardNegative => NegativeEstimate {
                tau_plus: t.tau_plus,
                beta: t.beta,
            },
            _ => NegativeEstimate::BIASED,
        }
    }

    fn loss(&self, img: &Tensor, txt: &Tensor, scale: &Tensor) -> Result<Tensor> {
        let t = &self.setup.train;
        Ok(match (t.loss, &self.logit_bias) {
            (LossKind::Siglip, Some(b)) => siglip_loss(img, txt, scale, b)?,
            (LossKind::Debiased | LossKind::HardNegative, _) => {
                debiased_clip_loss(img, txt, scale, self.estimate())?
            }
            (LossKind::Spectral, _) => spectral_contrastive_loss(img, txt, t.spectral_mu)?,
            _ => clip_loss(img, txt, scale)?,
        })
    }

    /// The image-only objective: both views through the image tower, one loss over them.
    fn two_view_loss_and_grads(
        &self,
        pixels: &Tensor,
        items: &[usize],
        vars: &[(String, Var)],
    ) -> Result<(f32, HashMap<String, Tensor>)> {
        let t = &self.setup.train;
        let b = items.len();
        let m = self.step_model()?;
        let mut pending = Pending::default();
        let z = if self.taped() {
            self.image_taped(pixels, Some(&mut pending))?
        } else {
            self.encode_image(m.as_ref(), pixels)?
        };
        let (z1, z2) = (z.narrow(0, 0, b)?, z.narrow(0, b, b)?);
        let loss = match t.loss {
            LossKind::Spectral => spectral_contrastive_loss(&z1, &z2, t.spectral_mu)?,
            LossKind::Oracle => {
                let labels = self.setup.labels.as_ref().ok_or(TrainError::Config {
                    field: "labels",
                    reason: "the oracle loss needs a class label for every image".into(),
                })?;
                let ids: Vec<u32> = items.iter().map(|&i| labels[i] as u32).collect();
                oracle_contrastive_loss(&z1, &z2, t.temperature, &ids)?
            }
            _ => two_view_loss(&z1, &z2, t.temperature, self.estimate())?,
        };
        let value = loss.to_scalar::<f32>()?;
        let mut grads = HashMap::new();
        self.collect(&loss.backward()?, pending, vars, &mut grads)?;
        Ok((value, grads))
    }

    /// Whether the towers run on the taped CPU path (`clip_nn::taped`) instead of candle's
    /// autograd: f32 on the CPU, where it is several times faster.
    fn taped(&self) -> bool {
        self.setup.train.precision == Precision::F32
            && self.model.device().is_cpu()
            && clip_nn::taped::supported(self.model.logit_scale())
    }

    /// Image features by the taped path; with `pending`, the tape is kept for the backward
    /// and the features are a leaf the loss's gradient reaches.
    fn image_taped(&self, pixels: &Tensor, pending: Option<&mut Pending>) -> Result<Tensor> {
        let mut ws = self.ws.borrow_mut();
        let (f, tape) = self.model.vision().forward_taped(pixels, &mut ws)?;
        hold(f, tape, pending.map(|p| &mut p.image), |t| {
            t.release(&mut ws)
        })
    }

    /// Text features by the taped path, as [`Ctx::image_taped`].
    fn text_taped(&self, ids: &[Vec<u32>], pending: Option<&mut Pending>) -> Result<Tensor> {
        let mut ws = self.ws.borrow_mut();
        let device = self.model.device();
        let (f, tape) = self.model.text().forward_taped(ids, device, &mut ws)?;
        hold(f, tape, pending.map(|p| &mut p.text), |t| {
            t.release(&mut ws)
        })
    }

    /// Adds the gradients of one backward pass to `grads`: those candle's autograd found,
    /// then the towers' taped backward from the gradients of their features.
    fn collect(
        &self,
        g: &candle_core::backprop::GradStore,
        pending: Pending,
        vars: &[(String, Var)],
        grads: &mut HashMap<String, Tensor>,
    ) -> Result<()> {
        let mut add = |name: &str, t: Tensor| -> Result<()> {
            let t = match grads.remove(name) {
                Some(prev) => (prev + t)?,
                None => t,
            };
            grads.insert(name.to_string(), t);
            Ok(())
        };
        for (name, var) in vars {
            if let Some(t) = g.get(var) {
                add(name, t.clone())?;
            }
        }
        let mut ws = self.ws.borrow_mut();
        let mut taped = Grads::default();
        if let Some((v, tape)) = pending.image {
            match g.get(&v) {
                Some(d) => self
                    .model
                    .vision()
                    .backward_taped(tape, d, &mut ws, &mut taped)?,
                None => tape.release(&mut ws),
            }
        }
        if let Some((v, tape)) = pending.text {
            match g.get(&v) {
                Some(d) => self
                    .model
                    .text()
                    .backward_taped(tape, d, &mut ws, &mut taped)?,
                None => tape.release(&mut ws),
            }
        }
        let mut by_id: HashMap<TensorId, Tensor> = taped
            .into_entries()
            .into_iter()
            .map(|(p, g)| (p.id(), g))
            .collect();
        for (name, var) in vars {
            if let Some(t) = by_id.remove(&var.as_tensor().id()) {
                add(name, t)?;
            }
        }
        Ok(())
    }

    /// The towers for this step: the f32 model, or (bf16 mixed precision) a model over bf16
    /// casts of the current weights, through which gradients reach the f32 weights.
    fn step_model(&self) -> Result<Option<ClipModel>> {
        if self.setup.train.precision == Precision::F32 {
            return Ok(None);
        }
        let device = self.model.device().clone();
        let tensors = self
            .store
            .named_vars()
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().clone()))
            .collect();
        // The cast happens in `TensorMap::get`: a differentiable `to_dtype` of each Var.
        let map = TensorMap::new(tensors, device).with_dtype(DType::BF16);
        let cfg = &self.setup.model;
        Ok(Some(ClipModel::new(
            cfg,
            cfg.text_config.pooling(),
            Params::new(&map),
        )?))
    }

    fn encode_image(&self, m: Option<&ClipModel>, pixels: &Tensor) -> Result<Tensor> {
        Ok(match m {
            Some(m) => m
                .encode_image(&pixels.to_dtype(DType::BF16)?)?
                .to_dtype(DType::F32)?,
            None => self.model.encode_image(pixels)?,
        })
    }

    fn encode_text(&self, m: Option<&ClipModel>, ids: &[Vec<u32>]) -> Result<Tensor> {
        Ok(match m {
            Some(m) => m.encode_text(ids)?.to_dtype(DType::F32)?,
            None => self.model.encode_text(ids)?,
        })
    }

    /// Both towers' features; without `pending` (a gradient-free pass) they are detached.
    fn features(
        &self,
        m: Option<&ClipModel>,
        pixels: &Tensor,
        ids: &[Vec<u32>],
        pending: Option<&mut Pending>,
    ) -> Result<(Tensor, Tensor)> {
        let t = &self.setup.train;
        if self.taped() {
            return Ok(match pending {
                Some(p) => {
                    let img = self.image_taped(pixels, (!t.lock_image).then_some(&mut *p))?;
                    let txt = self.text_taped(ids, (!t.lock_text).then_some(p))?;
                    (img, txt)
                }
                None => (self.image_taped(pixels, None)?, self.text_taped(ids, None)?),
            });
        }
        if pending.is_none() {
            let img = self.encode_image(m, pixels)?.detach();
            return Ok((img, self.encode_text(m, ids)?.detach()));
        }
        let mut img = self.encode_image(m, pixels)?;
        let mut txt = self.encode_text(m, ids)?;
        if t.lock_image {
            img = img.detach();
        }
        if t.lock_text {
            txt = txt.detach();
        }
        Ok((img, txt))
    }

    /// Loss and gradients for one batch; with `accum_steps > 1`, features of the other
    /// chunks come from a gradient-free first pass, so every chunk still sees the whole batch
    /// as negatives (open_clip's feature cache).
    fn loss_and_grads(
        &self,
        pixels: &Tensor,
        ids: &[Vec<u32>],
        vars: &[(String, Var)],
    ) -> Result<(f32, HashMap<String, Tensor>)> {
        let k = self.setup.train.accum_steps;
        let scale = self.model.logit_scale();
        let step_model = self.step_model()?;
        let model = step_model.as_ref();
        let mut grads: HashMap<String, Tensor> = HashMap::new();
        if k == 1 {
            let mut pending = Pending::default();
            let (img, txt) = self.features(model, pixels, ids, Some(&mut pending))?;
            let loss = self.loss(&img, &txt, scale)?;
            let value = loss.to_scalar::<f32>()?;
            self.collect(&loss.backward()?, pending, vars, &mut grads)?;
            return Ok((value, grads));
        }
        let b = ids.len();
        let n = b / k;
        let mut cached_img = Vec::with_capacity(k);
        let mut cached_txt = Vec::with_capacity(k);
        for j in 0..k {
            let (i, t) = self.features(
                model,
                &pixels.narrow(0, j * n, n)?,
                &ids[j * n..(j + 1) * n],
                None,
            )?;
            cached_img.push(i);
            cached_txt.push(t);
        }
        let mut value = 0f32;
        for j in 0..k {
            let mut pending = Pending::default();
            let (i, t) = self.features(
                model,
                &pixels.narrow(0, j * n, n)?,
                &ids[j * n..(j + 1) * n],
                Some(&mut pending),
            )?;
            let mut imgs = cached_img.clone();
            let mut txts = cached_txt.clone();
            imgs[j] = i;
            txts[j] = t;
            // The temperature (and bias) get their gradient once, from the first chunk.
            let s = if j == 0 {
                scale.clone()
            } else {
                scale.detach()
            };
            let loss = match (&self.setup.train.loss, &self.logit_bias) {
                (LossKind::Siglip, Some(bias)) => {
                    let bias = if j == 0 { bias.clone() } else { bias.detach() };
                    siglip_loss(&Tensor::cat(&imgs, 0)?, &Tensor::cat(&txts, 0)?, &s, &bias)?
                }
                _ => self.loss(&Tensor::cat(&imgs, 0)?, &Tensor::cat(&txts, 0)?, &s)?,
            };
            if j == 0 {
                value = loss.to_scalar::<f32>()?;
            }
            self.collect(&loss.backward()?, pending, vars, &mut grads)?;
        }
        Ok((value, grads))
    }

    fn save(&self, dir: &Path, step: usize, data_position: usize, opt: &AdamW) -> Result<()> {
        let setup = self.setup;
        let mut tensors = self.store.tensors();
        let bias = tensors.remove(LOGIT_BIAS);
        let mut opt_state = opt.state_tensors()?;
        if let Some(b) = bias {
            opt_state.insert(LOGIT_BIAS.into(), b);
        }
        let state = TrainState {
            step,
            train: setup.train.clone(),
            data_position: Some(data_position),
        };
        clip_model::replace_dir_atomically(dir, |tmp| {
            clip_model::write_hf_files(
                tmp,
                &setup.model,
                &setup.preprocess,
                &tensors,
                Some(&setup.tokenizer_file),
            )?;
            let p = tmp.join(OPTIMIZER_FILE);
            let meta = HashMap::from([("adam_steps".to_string(), opt.steps_taken().to_string())]);
            safetensors::serialize_to_file(&opt_state, Some(meta), &p).map_err(|source| {
                clip_model::ModelError::Safetensors {
                    path: p.clone(),
                    source,
                }
            })?;
            let p = tmp.join(STATE_FILE);
            let json = serde_json::to_string_pretty(&state).expect("state serialises");
            std::fs::write(&p, json).map_err(|source| clip_model::ModelError::Io {
                action: "cannot write",
                path: p.clone(),
                source,
            })?;
            Ok(())
        })?;
        Ok(())
    }
}

fn prune(run: &Path, keep: usize) {
    let all = checkpoints(run);
    if all.len() > keep.max(1) {
        for (_, dir) in &all[..all.len() - keep.max(1)] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn append_jsonl(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io("cannot write", path))?;
    writeln!(f, "{value}").map_err(io("cannot write", path))
}

/// Drops metric lines past `step` (a resumed run rewrites them).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let body = if kept.is_empty() {
        String::new()
    } else {
        kept.join("\n") + "\n"
    };
    std::fs::write(path, body).map_err(io("cannot write", path))
}

/// Trains until `setup.train.steps`, checkpointing and validating along the way.
pub fn train(
    setup: RunSetup,
    data: Arc<SampleSet>,
    device: &Device,
    obs: &mut dyn Observer,
) -> Result<Summary> {
    let t = setup.train.clone();
    t.validate()?;
    if data.is_empty() {
        return Err(TrainError::Config {
            field: "data",
            reason: "there are no samples to train on".into(),
        });
    }
    std::fs::create_dir_all(&setup.out).map_err(io("cannot create", &setup.out))?;
    let metrics_path = setup.out.join("metrics.jsonl");

    // Resume: weights, optimiser moments and step from the newest complete checkpoint.
    let resume_from = if setup.resume {
        checkpoints(&setup.out).pop()
    } else {
        None
    };
    if setup.resume && resume_from.is_none() {
        return Err(TrainError::State(format!(
            "no checkpoint to resume in {}",
            setup.out.display()
        )));
    }
    let mut saved_opt: Option<(HashMap<String, Tensor>, u64)> = None;
    let mut start_position = None;
    let (store, start) = match &resume_from {
        Some((step, dir)) => {
            let ckpt = clip_model::Checkpoint::load(dir, device)?;
            start_position = read_state(dir)?.data_position;
            let opt_path = dir.join(OPTIMIZER_FILE);
            let opt = clip_model::read_safetensors(&opt_path, device)?;
            let bytes = std::fs::read(&opt_path).map_err(io("cannot read", &opt_path))?;
            let adam_steps = safetensors::SafeTensors::read_metadata(&bytes)
                .ok()
                .and_then(|(_, m)| {
                    m.metadata()
                        .as_ref()
                        .and_then(|m| m.get("adam_steps").cloned())
                })
                .and_then(|s| s.parse().ok())
                .unwrap_or(*step as u64);
            let mut weights = ckpt.weights.into_inner();
            if let Some(b) = opt.get(LOGIT_BIAS) {
                weights.insert(LOGIT_BIAS.into(), b.clone());
            }
            saved_opt = Some((opt, adam_steps));
            (
                VarStore::from_tensors(TensorMap::new(weights, device.clone())),
                *step,
            )
        }
        None => match &setup.init {
            Some(w) => (VarStore::from_tensors(w.clone()), 0),
            None => (VarStore::new(device.clone(), t.seed), 0),
        },
    };
    let model = ClipModel::new(
        &setup.model,
        setup.model.text_config.pooling(),
        Params::new(&store),
    )?;
    let logit_bias = match t.loss {
        LossKind::Siglip => Some(Params::new(&store).get((), LOGIT_BIAS, Init::Const(-10.0))?),
        _ => None,
    };
    if t.loss == LossKind::Oracle {
        match &setup.labels {
            Some(l) if l.len() == data.len() => {}
            Some(l) => {
                return Err(TrainError::Config {
                    field: "labels",
                    reason: format!("{} labels for {} images", l.len(), data.len()),
                })
            }
            None => {
                return Err(TrainError::Config {
                    field: "labels",
                    reason: "the oracle loss needs a class label for every image".into(),
                })
            }
        }
    }
    let images_only = t.objective == Objective::Images;
    // The temperature trains only where a loss uses it: CLIP-style image–text softmaxes.
    let learned_scale = !images_only && t.loss != LossKind::Spectral;
    let vars: Vec<(String, Var)> = store
        .named_vars()
        .into_iter()
        .filter(|(n, _)| {
            let frozen = (t.lock_image && is_image_param(n))
                || ((t.lock_text || images_only) && is_text_param(n))
                || (n == "logit_scale" && !learned_scale);
            !frozen
        })
        .collect();
    let mut opt = AdamW::new(vars.clone(), t.optimizer.clone());
    if let Some((state, steps)) = &saved_opt {
        opt.load_state(state, *steps)?;
        truncate_metrics(&metrics_path, start)?;
    } else if metrics_path.exists() {
        std::fs::remove_file(&metrics_path).map_err(io("cannot remove", &metrics_path))?;
    }
    let scale_var = store
        .named_vars()
        .into_iter()
        .find(|(n, _)| n == "logit_scale")
        .map(|(_, v)| v)
        .expect("the model defines logit_scale");
    let ctx = Ctx {
        setup: &setup,
        store: &store,
        model: &model,
        logit_bias,
        ws: RefCell::new(Workspace::default()),
    };

    let mut skips = SkipLog::open(&setup.out.join(SKIPPED_FILE), start, data.scan_skips())?;
    let spec = LoaderSpec {
        cache: Arc::new(DecodedCache::new(&t.cache)),
        aug: Augmenter::new(t.augment.clone(), setup.preprocess.clone()),
        mode: if images_only {
            LoaderMode::TwoViews
        } else {
            LoaderMode::Captions(Box::new(setup.tokenizer.clone()))
        },
        batch: t.batch_size,
        seed: t.seed,
        order: t.order.clone(),
        max_short_side: (2 * setup.preprocess.image_size).max(1) as u32,
        data,
    };
    let mut position = start_position.unwrap_or(start * t.batch_size);
    let loader = Loader::spawn(spec, start..t.steps, position, t.prefetch);
    let s = setup.preprocess.image_size;
    let run_start = Instant::now();
    let (mut window_loss, mut window_n, mut window_wait, mut window_time) =
        (0f64, 0usize, 0f64, 0f64);
    let (mut total_wait, mut total_time) = (0f64, 0f64);
    let mut last_ckpt: Option<PathBuf> = resume_from.as_ref().map(|(_, d)| d.clone());
    let mut last_val = None;
    for step in start..t.steps {
        let t0 = Instant::now();
        let batch = loader.next().map_err(TrainError::Loader)?;
        let wait = t0.elapsed().as_secs_f64();
        debug_assert_eq!(batch.step, step);
        position = batch.next_position;
        skips.record(step + 1, &batch.skipped)?;
        let (loss, mut grads) = if images_only {
            let pixels = Tensor::from_vec(batch.pixels, (2 * t.batch_size, 3, s, s), device)?;
            ctx.two_view_loss_and_grads(&pixels, &batch.items, &vars)?
        } else {
            let pixels = Tensor::from_vec(batch.pixels, (t.batch_size, 3, s, s), device)?;
            ctx.loss_and_grads(&pixels, &batch.ids, &vars)?
        };
        if !loss.is_finite() {
            let last = last_ckpt
                .as_ref()
                .map(|p| format!(" at {}", p.display()))
                .unwrap_or_default();
            return Err(TrainError::NonFiniteLoss {
                step: step + 1,
                value: loss,
                last,
            });
        }
        if let Some(c) = t.grad_clip_norm {
            clip_grad_norm(&mut grads, c)?;
        }
        let lr = learning_rate(t.schedule, t.lr, t.warmup, t.steps, step);
        opt.step(&grads, lr)?;
        // CLIP clamps the temperature so exp(t) stays within [1, 100].
        let clamped = scale_var.as_tensor().clamp(0f32, 100f32.ln())?;
        scale_var.set(&clamped)?;

        let dt = t0.elapsed().as_secs_f64();
        window_loss += loss as f64;
        window_n += 1;
        window_wait += wait;
        window_time += dt;
        total_wait += wait;
        total_time += dt;
        let done = step + 1;
        if done % t.log_every.max(1) == 0 || done == t.steps {
            let stats = StepStats {
                step: done,
                total: t.steps,
                loss: window_loss / window_n as f64,
                lr,
                logit_scale: scale_var.as_tensor().to_scalar::<f32>()?.exp() as f64,
                samples_per_s: (window_n * t.batch_size) as f64 / window_time,
                data_wait: window_wait / window_time,
                elapsed_s: run_start.elapsed().as_secs_f64(),
                skipped: skips.count(),
            };
            append_jsonl(
                &metrics_path,
                &serde_json::to_value(&stats).expect("stats serialise"),
            )?;
            obs.on_step(&stats);
            (window_loss, window_n, window_wait, window_time) = (0.0, 0, 0.0, 0.0);
        }
        if (t.val_every > 0 && done % t.val_every == 0) || done == t.steps {
            let snap = snapshot_model(&store, &setup.model, device)?;
            if let Some(m) = obs.validate(&snap, done)? {
                append_jsonl(
                    &metrics_path,
                    &serde_json::json!({ "step": done, "val": m }),
                )?;
                last_val = Some(m);
            }
        }
        if (t.save_every > 0 && done % t.save_every == 0) || done == t.steps {
            let dir = setup.out.join(format!("checkpoint-{done}"));
            ctx.save(&dir, done, position, &opt)?;
            obs.on_checkpoint(&dir);
            last_ckpt = Some(dir);
            prune(&setup.out, t.keep_last);
        }
    }
    drop(loader);
    let final_dir = setup.out.join("final");
    ctx.save(&final_dir, t.steps, position, &opt)?;
    let _ = crate::plot::write_plot(&metrics_path, &setup.out.join("metrics.svg"));
    let steps_run = t.steps - start;
    Ok(Summary {
        final_dir,
        val: last_val,
        steps_run,
        samples_per_s: if total_time > 0.0 {
            (steps_run * t.batch_size) as f64 / total_time
        } else {
            0.0
        },
        data_wait: if total_time > 0.0 {
            total_wait / total_time
        } else {
            0.0
        },
        skipped: skips.count(),
    })
}

const SKIPPED_FILE: &str = "skipped.tsv";

fn read_state(dir: &Path) -> Result<TrainState> {
    let p = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&p).map_err(io("cannot read", &p))?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::State(format!("{} is damaged: {e}", p.display())))
}

/// `RUN/skipped.tsv`: every sample left out, once, with the step that met it and why.
struct SkipLog {
    path: PathBuf,
    seen: std::collections::HashSet<String>,
}

impl SkipLog {
    const HEADER: &'static str = "step\tsample\treason";

    /// Starts the log: a fresh run lists what scanning skipped (step 0); a resumed one keeps
    /// the rows up to its step and drops later ones, which the run will meet again.
    fn open(path: &Path, start: usize, scan: &[Skip]) -> Result<Self> {
        let mut log = Self {
            path: path.to_path_buf(),
            seen: Default::default(),
        };
        let mut body = format!("{}\n", Self::HEADER);
        if start > 0 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            for line in text.lines().skip(1) {
                let mut f = line.splitn(3, '\t');
                let (Some(step), Some(name)) = (f.next(), f.next()) else {
                    continue;
                };
                if step.parse::<usize>().is_ok_and(|s| s <= start) && log.seen.insert(name.into()) {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
        std::fs::write(path, body).map_err(io("cannot write", path))?;
        log.record(0, scan)?;
        Ok(log)
    }

    /// Appends the skips not listed yet.
    fn record(&mut self, step: usize, skips: &[Skip]) -> Result<()> {
        let mut rows = String::new();
        for s in skips {
            if self.seen.insert(s.name.clone()) {
                let reason = s.reason.to_string().replace(['\t', '\n'], " ");
                rows.push_str(&format!("{step}\t{}\t{reason}\n", s.name));
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io("cannot write", &self.path))?;
        f.write_all(rows.as_bytes())
            .map_err(io("cannot write", &self.path))
    }

    /// Distinct samples listed.
    fn count(&self) -> usize {
        self.seen.len()
    }
}
