//! One optimisation step: the towers' features (taped CPU path or candle's autograd), the
//! loss, its gradients (over accumulation chunks with a feature cache), clipping, AdamW and
//! the temperature clamp.
//!
//! `features` computes what the loss sees; `backward` gathers a backward pass's gradients from
//! their three sources; `ranks` is what a step shares with the other ranks.

mod backward;
mod features;
mod ranks;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use clip_data::StreamState;
use clip_model::ClipModel;
use clip_nn::taped::Workspace;
use clip_nn::{Init, Params, VarStore};

use crate::dist::{own_rows, Collective};
use crate::loader::Batch;
use crate::loss::{clip_loss_rows, siglip_loss_rows, Anchors};
use crate::optim::{clip_grad_norm, AdamW};
use crate::run_dir::{self, LOGIT_BIAS};
use crate::ssl_loss::{
    debiased_clip_loss_rows, oracle_contrastive_loss_rows, spectral_contrastive_loss_rows,
    two_view_loss_rows, NegativeEstimate,
};
use crate::{LossKind, Objective, Result, RunSetup};

pub(crate) use features::model_over;
use features::{clip_model, Pending};
use ranks::{splice, Columns};

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
    pub(crate) fn save(
        &self,
        dir: &Path,
        step: usize,
        positions: &[usize],
        streams: Option<&[StreamState]>,
    ) -> Result<()> {
        let (setup, store, opt) = (self.setup, self.store, &self.opt);
        run_dir::save_checkpoint(dir, setup, store, opt, step, positions, streams)
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
}
