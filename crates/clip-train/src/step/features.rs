//! The towers' features for the loss: on the taped CPU path or through candle's autograd, as
//! leaves whose gradient [`super::backward`] carries on to the weights.

use candle_core::{DType, Device, Tensor, Var};
use clip_model::{ClipConfig, ClipModel};
use clip_nn::{ParamSource, Params, TensorMap, VarStore};
use text_encoder::TextTape;
use vision_encoder::VisionTape;

use super::Stepper;
use crate::{Objective, Precision, Result};

/// Keeps a tower's tape in `slot` and returns its features as a fresh leaf for the loss, or,
/// without a slot (no backward follows), recycles the tape and returns the features.
fn hold<T>(
    features: Tensor,
    tape: T,
    slot: Option<&mut Held<T>>,
    release: impl FnOnce(T),
) -> Result<Tensor> {
    let Some(slot) = slot else {
        release(tape);
        return Ok(features);
    };
    let leaf = Var::from_tensor(&features)?;
    let t = leaf.as_tensor().clone();
    *slot = Some((leaf, Carrier::Tape(tape)));
    Ok(t)
}

/// Tower features whose gradient reaches the weights through the towers' backward once the
/// loss's backward has run.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) image: Held<VisionTape>,
    pub(super) text: Held<TextTape>,
}

/// What carries the gradient of a tower's features on to its weights: the taped path's tape,
/// or candle's graph of the features (differentiated through `Σ features·gradient`).
pub(super) enum Carrier<T> {
    Tape(T),
    Graph(Tensor),
}

/// A tower's features as a leaf variable (the loss's input), and their carrier.
type Held<T> = Option<(Var, Carrier<T>)>;

impl Stepper<'_> {
    /// Whether the towers run on the taped CPU path (`clip_nn::taped`) instead of candle's
    /// autograd: f32 on the CPU, where it is several times faster.
    fn taped(&self) -> bool {
        self.setup.train.precision == Precision::F32
            && self.model.device().is_cpu()
            && clip_nn::taped::supported(self.model.logit_scale())
    }

    /// Image features by the taped path; with a `slot`, the tape is kept there for the
    /// backward and the features are a leaf the loss's gradient reaches.
    fn image_taped(&self, pixels: &Tensor, slot: Option<&mut Held<VisionTape>>) -> Result<Tensor> {
        let mut ws = self.ws.borrow_mut();
        let (f, tape) = self.model.vision().forward_taped(pixels, &mut ws)?;
        hold(f, tape, slot, |t| t.release(&mut ws))
    }

    /// Text features by the taped path, as [`Stepper::image_taped`].
    fn text_taped(&self, ids: &[Vec<u32>], slot: Option<&mut Held<TextTape>>) -> Result<Tensor> {
        let mut ws = self.ws.borrow_mut();
        let device = self.model.device();
        let (f, tape) = self.model.text().forward_taped(ids, device, &mut ws)?;
        hold(f, tape, slot, |t| t.release(&mut ws))
    }

    /// The towers for this step: the f32 model, or (bf16 mixed precision) a model over bf16
    /// casts of the current weights, through which gradients reach the f32 weights.
    pub(super) fn step_model(&self) -> Result<Option<ClipModel>> {
        if self.setup.train.precision == Precision::F32 {
            return Ok(None);
        }
        let device = self.model.device();
        model_over(self.store, &self.setup.model, device, DType::BF16, false).map(Some)
    }

    /// Image features in f32: from the f32 model, or from `m` (bf16) on bf16 pixels.
    fn encode_image(&self, m: Option<&ClipModel>, pixels: &Tensor) -> Result<Tensor> {
        let dtype = if m.is_some() { DType::BF16 } else { DType::F32 };
        let image = m
            .unwrap_or(&self.model)
            .encode_image(&pixels.to_dtype(dtype)?)?;
        Ok(image.to_dtype(DType::F32)?)
    }

    fn encode_text(&self, m: Option<&ClipModel>, ids: &[Vec<u32>]) -> Result<Tensor> {
        Ok(m.unwrap_or(&self.model)
            .encode_text(ids)?
            .to_dtype(DType::F32)?)
    }

    /// Both towers' features, or with `--objective images` the image tower's features of
    /// the first and of the second views; with `pending` they are leaves whose towers'
    /// backward `collect` runs, without it (a gradient-free pass) they are detached.
    pub(super) fn features(
        &self,
        m: Option<&ClipModel>,
        pixels: &Tensor,
        ids: &[Vec<u32>],
        pending: Option<&mut Pending>,
    ) -> Result<(Tensor, Tensor)> {
        let t = &self.setup.train;
        let (image, text) = match pending {
            Some(p) => (Some(&mut p.image), Some(&mut p.text)),
            None => (None, None),
        };
        let img = match self.taped() {
            true => self.image_taped(pixels, image.filter(|_| !t.lock_image))?,
            false => {
                let f = self.encode_image(m, pixels)?;
                on_graph(f, image.filter(|_| !t.lock_image))?
            }
        };
        if t.objective == Objective::Images {
            let b = img.dim(0)? / 2;
            return Ok((img.narrow(0, 0, b)?, img.narrow(0, b, b)?));
        }
        let txt = match self.taped() {
            true => self.text_taped(ids, text.filter(|_| !t.lock_text))?,
            false => {
                let f = self.encode_text(m, ids)?;
                on_graph(f, text.filter(|_| !t.lock_text))?
            }
        };
        Ok((img, txt))
    }
}

/// Features computed on candle's graph: with a `slot`, a leaf copy for the loss and the graph
/// kept for the backward; without one (no gradient wanted), detached.
fn on_graph<T>(features: Tensor, slot: Option<&mut Held<T>>) -> Result<Tensor> {
    let Some(slot) = slot else {
        return Ok(features.detach());
    };
    let leaf = Var::from_tensor(&features.detach())?;
    let t = leaf.as_tensor().clone();
    *slot = Some((leaf, Carrier::Graph(features)));
    Ok(t)
}

/// A model over the current values of `store`'s variables, handed out as `dtype`: detached
/// for inference, or through differentiable casts that carry gradients back to the weights.
pub(crate) fn model_over(
    store: &VarStore,
    cfg: &ClipConfig,
    device: &Device,
    dtype: DType,
    detach: bool,
) -> Result<ClipModel> {
    let tensors = store
        .named_vars()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                if detach {
                    v.as_tensor().detach()
                } else {
                    v.as_tensor().clone()
                },
            )
        })
        .collect();
    // The cast happens in `TensorMap::get`: a `to_dtype` of each Var (a no-op for f32).
    let map = TensorMap::new(tensors, device.clone()).with_dtype(dtype);
    clip_model(cfg, &map)
}

/// The CLIP model of `cfg` over the weights of `source`.
pub(super) fn clip_model(cfg: &ClipConfig, source: &dyn ParamSource) -> Result<ClipModel> {
    let pooling = cfg.text_config.pooling();
    Ok(ClipModel::new(cfg, pooling, Params::new(source))?)
}
