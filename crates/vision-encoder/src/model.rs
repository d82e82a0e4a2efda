//! The ViT image encoder, as transformers' `CLIPVisionModelWithProjection`.

use candle_core::{Module, Tensor, Var};
use clip_nn::taped::{
    EncoderTape, Grads, HostEncoder, HostLinear, HostNorm, HostParam, Seqs, Workspace,
};
use clip_nn::{Activation, Encoder, Init, LayerNorm, Linear, Params};

use crate::{Result, VisionConfig};

/// What maps the pooled class token into the embedding space.
#[derive(Debug, Clone)]
enum Projection {
    /// transformers' bias-free `visual_projection`.
    Linear(Linear),
    /// The MLP head of image-only training ([`crate::ProjectionHead`]): hidden blocks of linear →
    /// layer norm → activation under `visual_projection_head.{i}`, then a bias-free linear.
    Mlp {
        hidden: Vec<(Linear, LayerNorm)>,
        out: Linear,
        act: Activation,
    },
}

impl Projection {
    fn new(cfg: &VisionConfig, projection_dim: usize, root: &Params) -> Result<Self> {
        let w = cfg.hidden_size;
        let Some(head) = cfg.projection_head else {
            let std = (w as f64).powf(-0.5);
            let p = root.pp("visual_projection");
            return Ok(Self::Linear(Linear::new(
                w,
                projection_dim,
                false,
                std,
                &p,
            )?));
        };
        let p = root.pp("visual_projection_head");
        let mut hidden = Vec::with_capacity(head.layers - 1);
        let mut in_dim = w;
        for i in 0..head.layers - 1 {
            let l = p.pp(i);
            let std = (in_dim as f64).powf(-0.5);
            let linear = Linear::new(in_dim, head.hidden_size, true, std, &l.pp("linear"))?;
            let norm = LayerNorm::new(head.hidden_size, cfg.layer_norm_eps, &l.pp("norm"))?;
            hidden.push((linear, norm));
            in_dim = head.hidden_size;
        }
        let std = (in_dim as f64).powf(-0.5);
        let out = Linear::new(in_dim, projection_dim, false, std, &p.pp(head.layers - 1))?;
        Ok(Self::Mlp {
            hidden,
            out,
            act: cfg.encoder_spec()?.activation,
        })
    }

    fn forward(&self, pooled: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Linear(l) => l.forward(pooled),
            Self::Mlp { hidden, out, act } => {
                let mut x = pooled.clone();
                for (linear, norm) in hidden {
                    x = act.forward(&norm.forward(&linear.forward(&x)?)?)?;
                }
                out.forward(&x)
            }
        }
    }

    /// The head's parameters (for the gradients of the taped path).
    fn params(&self) -> Vec<&Tensor> {
        match self {
            Self::Linear(l) => l.params(),
            Self::Mlp { hidden, out, .. } => hidden
                .iter()
                .flat_map(|(l, n)| l.params().into_iter().chain(n.params()))
                .chain(out.params())
                .collect(),
        }
    }
}

/// Patch embedding, class token, learned positions, pre-norm transformer, pooled class token
/// and a bias-free projection into the shared embedding space.
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    /// `[width, 3·p·p]`: the conv kernel flattened, applied as one matmul over patches.
    patch_weight: Tensor,
    /// The `[width, 3, p, p]` parameter `patch_weight` is a view of (gradients go here).
    patch_param: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_norm: LayerNorm,
    encoder: Encoder,
    post_norm: LayerNorm,
    projection: Projection,
    patch: usize,
    grid: usize,
    width: usize,
}

impl VisionTransformer {
    /// Builds the tower from parameters named `vision_model.*` and `visual_projection.weight`
    /// (or `visual_projection_head.*` with an MLP head).
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
        let patch_param = patch_weight.clone();
        let patch_weight = patch_weight.reshape((w, cfg.num_channels * p * p))?;
        let position_embedding = emb.pp("position_embedding").get(
            (grid * grid + 1, w),
            "weight",
            Init::Normal(scale),
        )?;
        let spec = cfg.encoder_spec()?;
        Ok(Self {
            patch_weight,
            patch_param,
            class_embedding,
            position_embedding,
            pre_norm: LayerNorm::new(w, cfg.layer_norm_eps, &vm.pp("pre_layrnorm"))?,
            encoder: Encoder::new(&spec, &vm.pp("encoder"))?,
            post_norm: LayerNorm::new(w, cfg.layer_norm_eps, &vm.pp("post_layernorm"))?,
            projection: Projection::new(cfg, projection_dim, &root)?,
            patch: p,
            grid,
            width: w,
        })
    }

    /// Packs the transformer blocks' linear layers for `precision` (inference on the CPU
    /// only). The patch embedding, norms and projection stay f32: together they are a few
    /// percent of the multiply-adds, and the projection writes the embedding itself.
    pub fn pack(&mut self, precision: clip_nn::quant::Precision) -> Result<()> {
        Ok(self.encoder.pack(precision)?)
    }

    /// `[b, c, g·p, g·p]` → `[b·g·g, c·p·p]`: the patches a conv with stride = kernel sees.
    fn patches(&self, pixels: &Tensor) -> Result<Tensor> {
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
        // [b, c, g, p, g, p] → [b, g, g, c, p, p] → [b·g·g, c·p·p].
        Ok(pixels
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?)
    }

    /// Normalised pixels `[b, 3, H, W]` → projected image features `[b, projection_dim]`
    /// (what transformers' `get_image_features` returns: not unit length).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.projection.forward(&self.pooled(pixels)?)?)
    }

    /// Normalised pixels `[b, 3, H, W]` → the normalised class token `[b, hidden_size]`
    /// before the projection (transformers' `pooler_output`): what a linear probe of an
    /// image-only model reads.
    pub fn pooled(&self, pixels: &Tensor) -> Result<Tensor> {
        let b = pixels.dim(0)?;
        let g = self.grid;
        let patches = self.patches(pixels)?;
        let tokens = patches
            .matmul(&self.patch_weight.t()?)?
            .reshape((b, g * g, self.width))?;
        let cls = self
            .class_embedding
            .reshape((1, 1, self.width))?
            .broadcast_as((b, 1, self.width))?;
        let x = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.position_embedding)?;
        let x = self.pre_norm.forward(&x)?;
        // Only the class token (position 0) is read.
        let x = self.encoder.forward_at(&x, &vec![0; b], None)?;
        Ok(self.post_norm.forward(&x)?)
    }
}

/// What [`VisionTransformer::backward_taped`] needs from the forward: host weights and
/// activations of one batch.
#[derive(Debug)]
pub struct VisionTape {
    encoder: HostEncoder,
    enc_tape: EncoderTape,
    patch: HostLinear,
    class: HostParam,
    position: HostParam,
    pre_norm: HostNorm,
    post_norm: HostNorm,
    head: HeadTape,
    patches: Vec<f32>,
    embedded: Vec<f32>,
    pre_stats: Vec<f32>,
    pooled: Vec<f32>,
    post_stats: Vec<f32>,
    pooled_norm: Vec<f32>,
    batch: usize,
}

/// The projection on the taped path: the linear one by its host kernel; an MLP head through
/// candle's autograd from a leaf over the pooled features, differentiated from the features'
/// gradient in [`VisionTransformer::backward_taped`].
#[derive(Debug)]
enum HeadTape {
    Linear(HostLinear),
    Mlp { input: Var, output: Tensor },
}

impl VisionTape {
    /// Returns the activations to the workspace when no backward follows.
    pub fn release(self, ws: &mut Workspace) {
        self.enc_tape.release(ws);
        for buf in [self.patches, self.embedded, self.pre_stats] {
            ws.give(buf);
        }
    }
}

impl VisionTransformer {
    /// The same features as [`VisionTransformer::forward`] (CPU, f32), computed by the taped
    /// path (`clip_nn::taped`) that [`VisionTransformer::backward_taped`] differentiates.
    pub fn forward_taped(
        &self,
        pixels: &Tensor,
        ws: &mut Workspace,
    ) -> Result<(Tensor, VisionTape)> {
        let b = pixels.dim(0)?;
        let (gg, w) = (self.grid * self.grid, self.width);
        let t = gg + 1;
        // Through the workspace: the tape gives this buffer back to it after the backward, and
        // a buffer given back that the pool never handed out is one more kept every step
        // (≈ 3 MB a step of 256 at 32 px: the training run's RSS grew without bound).
        let patch_rows = self.patches(pixels)?.flatten_all()?;
        let mut patches = ws.take(patch_rows.elem_count());
        patches.copy_from_slice(&patch_rows.to_vec1::<f32>()?);
        let patch = HostLinear::from_weight(&self.patch_weight, &self.patch_param)?;
        let class = HostParam::new(&self.class_embedding)?;
        let position = HostParam::new(&self.position_embedding)?;
        let mut tokens = ws.take(b * gg * w);
        patch.forward(&patches, None, &mut tokens);
        let mut embedded = ws.take(b * t * w);
        let pos = position.data();
        for (bi, seq) in embedded.chunks_mut(t * w).enumerate() {
            let (cls_row, rest) = seq.split_at_mut(w);
            for ((o, c), p) in cls_row.iter_mut().zip(class.data()).zip(&pos[..w]) {
                *o = c + p;
            }
            let toks = &tokens[bi * gg * w..(bi + 1) * gg * w];
            for ((o, tk), p) in rest.iter_mut().zip(toks).zip(&pos[w..]) {
                *o = tk + p;
            }
        }
        ws.give(tokens);
        let pre_norm = HostNorm::new(&self.pre_norm)?;
        let (mut x0, mut pre_stats) = (ws.take(b * t * w), ws.take(b * t * 2));
        pre_norm.forward(&embedded, &mut x0, &mut pre_stats);
        let encoder = HostEncoder::new(&self.encoder, w)?;
        // Only the class token (position 0) is pooled.
        let (pooled, enc_tape) =
            encoder.forward(x0, &Seqs::uniform(b, t), false, Some(&vec![0; b]), ws);
        let post_norm = HostNorm::new(&self.post_norm)?;
        let (mut pooled_norm, mut post_stats) = (vec![0f32; b * w], vec![0f32; b * 2]);
        post_norm.forward(&pooled, &mut pooled_norm, &mut post_stats);
        let (features, head) = match &self.projection {
            Projection::Linear(l) => {
                let projection = HostLinear::new(l)?;
                let e = projection.out_dim();
                let mut features = vec![0f32; b * e];
                projection.forward(&pooled_norm, None, &mut features);
                let features = Tensor::from_vec(features, (b, e), pixels.device())?;
                (features, HeadTape::Linear(projection))
            }
            mlp => {
                let input = Var::from_slice(&pooled_norm, (b, w), pixels.device())?;
                let output = mlp.forward(input.as_tensor())?;
                (output.detach(), HeadTape::Mlp { input, output })
            }
        };
        Ok((
            features,
            VisionTape {
                encoder,
                enc_tape,
                patch,
                class,
                position,
                pre_norm,
                post_norm,
                head,
                patches,
                embedded,
                pre_stats,
                pooled,
                post_stats,
                pooled_norm,
                batch: b,
            },
        ))
    }

    /// Pushes the gradient of every tower parameter, given the gradient of the features
    /// [`VisionTransformer::forward_taped`] returned.
    pub fn backward_taped(
        &self,
        tape: VisionTape,
        d_features: &Tensor,
        ws: &mut Workspace,
        grads: &mut Grads,
    ) -> Result<()> {
        let b = tape.batch;
        let (gg, w) = (self.grid * self.grid, self.width);
        let t = gg + 1;
        let mut d_norm = vec![0f32; b * w];
        match tape.head {
            HeadTape::Linear(projection) => {
                let dfeat = d_features.flatten_all()?.to_vec1::<f32>()?;
                projection.backward(
                    &dfeat,
                    &tape.pooled_norm,
                    Some((&mut d_norm, false)),
                    grads,
                )?;
            }
            HeadTape::Mlp { input, output } => {
                // Σ output ⊙ d_features has d_features as its gradient at the output.
                let g = (output * d_features.detach())?.sum_all()?.backward()?;
                for p in self.projection.params() {
                    if let Some(d) = g.get(p) {
                        grads.push(p, d.flatten_all()?.to_vec1::<f32>()?)?;
                    }
                }
                if let Some(d) = g.get(input.as_tensor()) {
                    d_norm = d.flatten_all()?.to_vec1::<f32>()?;
                }
            }
        }
        // From the workspace, which the encoder's backward gives it back to.
        let mut d_pooled = ws.take(b * w);
        d_pooled.fill(0.0);
        tape.post_norm.backward(
            &d_norm,
            &tape.pooled,
            &tape.post_stats,
            &mut d_pooled,
            false,
            grads,
        )?;
        let d_x0 = tape.encoder.backward(tape.enc_tape, d_pooled, ws, grads)?;
        let mut d_emb = ws.take(b * t * w);
        tape.pre_norm.backward(
            &d_x0,
            &tape.embedded,
            &tape.pre_stats,
            &mut d_emb,
            false,
            grads,
        )?;
        ws.give(d_x0);
        // Class embedding and positions are added to every image: sum over the batch.
        let d_pos = clip_nn::taped::sum_rows(&d_emb, t * w);
        tape.class.push_grad(d_pos[..w].to_vec(), grads)?;
        tape.position.push_grad(d_pos, grads)?;
        let mut d_tokens = ws.take(b * gg * w);
        for (dst, seq) in d_tokens.chunks_mut(gg * w).zip(d_emb.chunks(t * w)) {
            dst.copy_from_slice(&seq[w..]);
        }
        tape.patch.backward(&d_tokens, &tape.patches, None, grads)?;
        for buf in [d_tokens, d_emb, tape.patches, tape.embedded, tape.pre_stats] {
            ws.give(buf);
        }
        Ok(())
    }
}
