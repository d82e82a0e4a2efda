//! One optimisation step: the towers' features (taped CPU path or candle's autograd), the
//! loss, its gradients (over accumulation chunks with a feature cache), clipping, AdamW and
//! the temperature clamp.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, TensorId, Var};
use clip_model::{ClipConfig, ClipModel};
use clip_nn::taped::{Grads, Workspace};
use clip_nn::{Init, ParamSource, Params, TensorMap, VarStore};
use text_encoder::TextTape;
use vision_encoder::VisionTape;

use crate::dist::{own_rows, Collective};
use crate::loader::Batch;
use crate::loss::{clip_loss_rows, siglip_loss_rows, Anchors};
use crate::optim::{clip_grad_norm, AdamW};
use crate::run_dir::{self, LOGIT_BIAS};
use crate::ssl_loss::{
    debiased_clip_loss_rows, oracle_contrastive_loss_rows, spectral_contrastive_loss_rows,
    two_view_loss_rows, NegativeEstimate,
};
use crate::{LossKind, Objective, Precision, Result, RunSetup};

fn is_image_param(name: &str) -> bool {
    name.starts_with("vision_model.") || name.starts_with("visual_projection")
}

fn is_text_param(name: &str) -> bool {
    name.starts_with("text_model.") || name.starts_with("text_projection")
}

/// A batch's loss and the gradients of the trainable parameters by name.
type LossAndGrads = (f32, HashMap<String, Tensor>);

/// The model under training, its trainable parameters and their optimiser.
pub(crate) struct Stepper<'a> {
    setup: &'a RunSetup,
    store: &'a VarStore,
    model: ClipModel,
    logit_bias: Option<Tensor>,
    /// The parameters AdamW updates (frozen towers and an unused temperature left out).
    vars: Vec<(String, Var)>,
    opt: AdamW,
    scale: Var,
    /// Activation buffers of the taped path, reused from step to step.
    ws: RefCell<Workspace>,
    /// The ranks this step is shared with ([`crate::dist::Single`] in one process).
    comm: &'a dyn Collective,
}

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
struct Pending {
    image: Held<VisionTape>,
    text: Held<TextTape>,
}

/// What carries the gradient of a tower's features on to its weights: the taped path's tape,
/// or candle's graph of the features (differentiated through `Σ features·gradient`).
enum Carrier<T> {
    Tape(T),
    Graph(Tensor),
}

/// A tower's features as a leaf variable (the loss's input), and their carrier.
type Held<T> = Option<(Var, Carrier<T>)>;

/// The features of the whole (global) batch as the loss sees them: a leaf per side, whose
/// gradient goes back to the ranks that own the rows. `None` when this chunk is the batch.
type Columns = Option<(Var, Var)>;

/// `all` with rows `at..at + block.rows` replaced by `block`.
fn splice(all: &Tensor, at: usize, block: &Tensor) -> Result<Tensor> {
    let (n, r) = (all.dim(0)?, block.dim(0)?);
    let mut parts = Vec::with_capacity(3);
    if at > 0 {
        parts.push(all.narrow(0, 0, at)?);
    }
    parts.push(block.clone());
    if at + r < n {
        parts.push(all.narrow(0, at + r, n - at - r)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

impl<'a> Stepper<'a> {
    /// The model over `store`'s weights and AdamW over the parameters that train, with the
    /// moments of a resumed run.
    pub(crate) fn new(
        setup: &'a RunSetup,
        store: &'a VarStore,
        saved_opt: Option<&(HashMap<String, Tensor>, u64)>,
        comm: &'a dyn Collective,
    ) -> Result<Self> {
        let t = &setup.train;
        let model = clip_model(&setup.model, store)?;
        let logit_bias = (t.loss == LossKind::Siglip)
            .then(|| Params::new(store).get((), LOGIT_BIAS, Init::Const(-10.0)))
            .transpose()?;
        let images_only = t.objective == Objective::Images;
        // The temperature trains only where a loss uses it: CLIP-style image–text softmaxes.
        let learned_scale = !images_only && t.loss != LossKind::Spectral;
        let all = store.named_vars();
        let scale = all
            .iter()
            .find(|(n, _)| n == "logit_scale")
            .map(|(_, v)| v.clone())
            .expect("the model defines logit_scale");
        let vars: Vec<(String, Var)> = all
            .into_iter()
            .filter(|(n, _)| {
                let frozen = (t.lock_image && is_image_param(n))
                    || ((t.lock_text || images_only) && is_text_param(n))
                    || (n == "logit_scale" && !learned_scale);
                !frozen
            })
            .collect();
        let mut opt = AdamW::new(vars.clone(), t.optimizer.clone());
        if let Some((state, steps)) = saved_opt {
            opt.load_state(state, *steps)?;
        }
        Ok(Self {
            setup,
            store,
            model,
            logit_bias,
            vars,
            opt,
            scale,
            ws: RefCell::new(Workspace::default()),
            comm,
        })
    }

    /// Writes checkpoint `dir`: the weights and optimiser moments after `step` updates, and
    /// each rank's data position for the next step.
    pub(crate) fn save(&self, dir: &Path, step: usize, positions: &[usize]) -> Result<()> {
        run_dir::save_checkpoint(dir, self.setup, self.store, &self.opt, step, positions)
    }

    /// exp(logit_scale), the inverse temperature.
    pub(crate) fn logit_scale(&self) -> Result<f64> {
        Ok(self.scale.as_tensor().to_scalar::<f32>()?.exp() as f64)
    }

    /// The loss of one batch and the gradients of the trainable parameters.
    pub(crate) fn gradients(&self, batch: Batch, device: &Device) -> Result<LossAndGrads> {
        let t = &self.setup.train;
        let s = self.setup.preprocess.image_size;
        let views = if t.objective == Objective::Images {
            2
        } else {
            1
        };
        let rows = batch.items.len();
        let pixels = Tensor::from_vec(batch.pixels, (views * rows, 3, s, s), device)?;
        self.loss_and_grads(&pixels, &batch.ids, &batch.items)
    }

    /// Clips the gradients (if asked), takes the AdamW step at rate `lr` and clamps the
    /// temperature.
    pub(crate) fn update(&mut self, mut grads: HashMap<String, Tensor>, lr: f64) -> Result<()> {
        if let Some(c) = self.setup.train.grad_clip_norm {
            clip_grad_norm(&mut grads, c)?;
        }
        self.opt.step(&grads, lr)?;
        // CLIP clamps the temperature so exp(t) stays within [1, 100].
        let clamped = self.scale.as_tensor().clamp(0f32, 100f32.ln())?;
        self.scale.set(&clamped)?;
        Ok(())
    }

    fn estimate(&self) -> NegativeEstimate {
        let t = &self.setup.train;
        match t.loss {
            LossKind::Debiased | LossKind::HardNegative => NegativeEstimate {
                tau_plus: t.tau_plus,
                beta: if t.loss == LossKind::HardNegative {
                    t.beta
                } else {
                    0.0
                },
            },
            _ => NegativeEstimate::BIASED,
        }
    }

    /// The loss between the two sides of the positive pairs (image and caption features, or
    /// two views' features) with anchors `rows`; `detached` leaves the temperature (and bias)
    /// without a gradient. `items` are the rows' samples, whose labels the oracle loss reads.
    fn loss(
        &self,
        a: &Tensor,
        b: &Tensor,
        rows: Anchors,
        detached: bool,
        items: &[usize],
    ) -> Result<Tensor> {
        let t = &self.setup.train;
        let grad = |x: &Tensor| if detached { x.detach() } else { x.clone() };
        let scale = &grad(self.model.logit_scale());
        let images = t.objective == Objective::Images;
        Ok(match (t.loss, &self.logit_bias) {
            (LossKind::Spectral, _) => spectral_contrastive_loss_rows(a, b, t.spectral_mu, rows)?,
            (LossKind::Oracle, _) => {
                let labels = self.setup.labels.as_ref().expect("train checks the labels");
                let ids: Vec<u32> = items.iter().map(|&i| labels[i] as u32).collect();
                oracle_contrastive_loss_rows(a, b, t.temperature, &ids, rows)?
            }
            _ if images => two_view_loss_rows(a, b, t.temperature, self.estimate(), rows)?,
            (LossKind::Siglip, Some(bias)) => siglip_loss_rows(a, b, scale, &grad(bias), rows)?,
            (LossKind::Debiased | LossKind::HardNegative, _) => {
                debiased_clip_loss_rows(a, b, scale, self.estimate(), rows)?
            }
            _ => clip_loss_rows(a, b, scale, rows)?,
        })
    }

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

    /// Adds the gradients of one backward pass to `grads`: those candle's autograd found
    /// (the loss's parameters), then the towers' backward from the gradients of their
    /// features, plus `extra` (the gradients other ranks' losses sent for these rows).
    fn collect(
        &self,
        g: &candle_core::backprop::GradStore,
        pending: Pending,
        extra: Option<(Tensor, Tensor)>,
        grads: &mut HashMap<String, Tensor>,
    ) -> Result<()> {
        let mut ws = self.ws.borrow_mut();
        let mut taped = Grads::default();
        let (vision, text) = (self.model.vision(), self.model.text());
        // With two views both sides are rows of the one image leaf: first views, then second.
        let (img_extra, txt_extra) = match extra {
            Some((a, b)) if self.setup.train.objective == Objective::Images => {
                (Some(Tensor::cat(&[a, b], 0)?), None)
            }
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        let total = |v: &Var, extra: Option<Tensor>| -> Result<Option<Tensor>> {
            Ok(match (g.get(v), extra) {
                (Some(d), Some(e)) => Some((d + e)?),
                (d, e) => d.cloned().or(e),
            })
        };
        // Towers on candle's graph: one backward of Σ features·gradient over both.
        let mut surrogate: Option<Tensor> = None;
        let mut through_graph = |f: Tensor, d: Option<Tensor>| -> Result<()> {
            if let Some(d) = d {
                let term = (f * d.detach())?.sum_all()?;
                surrogate = Some(match surrogate.take() {
                    Some(s) => (s + term)?,
                    None => term,
                });
            }
            Ok(())
        };
        if let Some((v, carrier)) = pending.image {
            let d = total(&v, img_extra)?;
            match (carrier, d) {
                (Carrier::Tape(tape), Some(d)) => {
                    vision.backward_taped(tape, &d, &mut ws, &mut taped)?
                }
                (Carrier::Tape(tape), None) => tape.release(&mut ws),
                (Carrier::Graph(f), d) => through_graph(f, d)?,
            }
        }
        if let Some((v, carrier)) = pending.text {
            let d = total(&v, txt_extra)?;
            match (carrier, d) {
                (Carrier::Tape(tape), Some(d)) => {
                    text.backward_taped(tape, &d, &mut ws, &mut taped)?
                }
                (Carrier::Tape(tape), None) => tape.release(&mut ws),
                (Carrier::Graph(f), d) => through_graph(f, d)?,
            }
        }
        let towers = surrogate.map(|s| s.backward()).transpose()?;
        let mut by_id: HashMap<TensorId, Tensor> = taped
            .into_entries()
            .into_iter()
            .map(|(p, g)| (p.id(), g))
            .collect();
        // The loss's gradient first, then the towers', added to earlier chunks' sums.
        for (name, var) in &self.vars {
            let from_towers = towers.as_ref().and_then(|t| t.get(var).cloned());
            let mine = [
                g.get(var).cloned(),
                from_towers,
                by_id.remove(&var.as_tensor().id()),
            ];
            for t in mine.into_iter().flatten() {
                let t = match grads.remove(name) {
                    Some(prev) => (prev + t)?,
                    None => t,
                };
                grads.insert(name.clone(), t);
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
    fn features(
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

    /// The global batch's features for the loss, from this rank's features of all chunks
    /// (`local`): gathered from every rank, or (one process, several chunks) as they are.
    fn columns(&self, local: (Tensor, Tensor), chunks: usize) -> Result<Columns> {
        if self.comm.world() == 1 && chunks == 1 {
            return Ok(None);
        }
        let side = |x: Tensor| -> Result<Var> {
            Ok(Var::from_tensor(&self.comm.all_gather(&x.detach())?)?)
        };
        Ok(Some((side(local.0)?, side(local.1)?)))
    }

    /// The gradients that the other ranks' losses give this rank's rows (`own`): the
    /// gradient of this rank's loss for every gathered row except its own, summed over ranks
    /// and scattered back to the owners.
    fn scatter_gradients(
        &self,
        g: &candle_core::backprop::GradStore,
        columns: &(Var, Var),
        own: &Anchors,
    ) -> Result<(Tensor, Tensor)> {
        let side = |v: &Var| -> Result<Tensor> {
            let d = match g.get(v) {
                Some(d) => d.clone(),
                None => v.as_tensor().zeros_like()?,
            };
            let mine = Tensor::zeros((own.len(), d.dim(1)?), d.dtype(), d.device())?;
            self.comm.reduce_scatter_sum(&splice(&d, own.start, &mine)?)
        };
        Ok((side(&columns.0)?, side(&columns.1)?))
    }

    /// Loss and gradients for this rank's share of a batch.
    ///
    /// The loss's anchors are this rank's rows and its columns the whole global batch
    /// (gathered; see [`crate::dist`]). With `accum_steps > 1`, the features of the other
    /// chunks come from a gradient-free first pass, so every chunk still sees the whole batch
    /// as negatives (open_clip's feature cache); only the chunk being differentiated is live.
    /// Gradients and the loss are summed over ranks at the end.
    fn loss_and_grads(
        &self,
        pixels: &Tensor,
        ids: &[Vec<u32>],
        items: &[usize],
    ) -> Result<LossAndGrads> {
        let k = self.setup.train.accum_steps;
        let step_model = self.step_model()?;
        let model = step_model.as_ref();
        let (b, rank) = (items.len(), self.comm.rank());
        // Two views are one chunk of 2·rows pixel rows and no captions.
        let (np, n, rows) = (pixels.dim(0)? / k, ids.len() / k, b / k);
        let chunk = |j: usize| {
            let p = pixels.narrow(0, j * np, np)?;
            Ok::<_, candle_core::Error>((p, &ids[j * n..(j + 1) * n]))
        };
        let mut cached: Vec<(Tensor, Tensor)> = Vec::with_capacity(k);
        for j in (0..k).filter(|_| k > 1) {
            let (p, i) = chunk(j)?;
            cached.push(self.features(model, &p, i, None)?);
        }
        let items = self.global_items(items)?;
        let own = own_rows(rank, b);
        let mut columns: Columns = None;
        let mut extra: Option<(Tensor, Tensor)> = None;
        let mut grads = HashMap::new();
        let mut value = 0f32;
        for j in 0..k {
            let mut pending = Pending::default();
            let (p, i) = chunk(j)?;
            let (img, txt) = self.features(model, &p, i, Some(&mut pending))?;
            if j == 0 {
                let local = match k {
                    1 => (img.clone(), txt.clone()),
                    _ => {
                        let (imgs, txts): (Vec<_>, Vec<_>) = cached.iter().cloned().unzip();
                        (Tensor::cat(&imgs, 0)?, Tensor::cat(&txts, 0)?)
                    }
                };
                columns = self.columns(local, k)?;
            }
            let at = own.start + j * rows;
            let (all_img, all_txt) = match &columns {
                Some((ci, ct)) => (splice(ci, at, &img)?, splice(ct, at, &txt)?),
                None => (img, txt),
            };
            // The temperature (and bias) get their gradient once, from the first chunk.
            let loss = self.loss(&all_img, &all_txt, own.clone(), j > 0, &items)?;
            let g = loss.backward()?;
            if j == 0 {
                value = loss.to_scalar::<f32>()?;
                if let Some(c) = columns.as_ref().filter(|_| self.comm.world() > 1) {
                    extra = Some(self.scatter_gradients(&g, c, &own)?);
                }
            }
            let mine = match &extra {
                Some((a, c)) => Some((a.narrow(0, j * rows, rows)?, c.narrow(0, j * rows, rows)?)),
                None => None,
            };
            self.collect(&g, pending, mine, &mut grads)?;
        }
        if self.comm.world() > 1 {
            value = self.sum_over_ranks(&mut grads, value)?;
        }
        Ok((value, grads))
    }

    /// The sample of every row of the global batch (the oracle loss reads their labels).
    fn global_items(&self, local: &[usize]) -> Result<Vec<usize>> {
        if self.comm.world() == 1 || self.setup.train.loss != LossKind::Oracle {
            return Ok(local.to_vec());
        }
        let bytes: Vec<u8> = local
            .iter()
            .flat_map(|&i| (i as u64).to_le_bytes())
            .collect();
        let all = self.comm.all_gather_bytes(&bytes)?;
        Ok(all
            .iter()
            .flat_map(|r| r.chunks_exact(8))
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
            .collect())
    }

    /// Sums the gradients (in one buffer, in parameter order) and the loss over the ranks.
    fn sum_over_ranks(&self, grads: &mut HashMap<String, Tensor>, loss: f32) -> Result<f32> {
        let present: Vec<&(String, Var)> = self
            .vars
            .iter()
            .filter(|(n, _)| grads.contains_key(n))
            .collect();
        let mut flat = Vec::with_capacity(present.len() + 1);
        for (name, _) in &present {
            flat.push(grads[name].flatten_all()?.to_dtype(DType::F32)?);
        }
        flat.push(Tensor::new(&[loss], self.model.device())?);
        let sum = self.comm.all_reduce_sum(&Tensor::cat(&flat, 0)?)?;
        let mut at = 0;
        for (name, var) in present {
            let n = var.as_tensor().elem_count();
            let g = sum.narrow(0, at, n)?.reshape(var.as_tensor().shape())?;
            grads.insert(name.clone(), g.to_dtype(var.as_tensor().dtype())?);
            at += n;
        }
        Ok(sum.narrow(0, at, 1)?.to_vec1::<f32>()?[0])
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
fn clip_model(cfg: &ClipConfig, source: &dyn ParamSource) -> Result<ClipModel> {
    let pooling = cfg.text_config.pooling();
    Ok(ClipModel::new(cfg, pooling, Params::new(source))?)
}
