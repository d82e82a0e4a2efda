//! Pre-norm transformer blocks in the Hugging Face CLIP layout.
//!
//! These structs are the one model definition: candle runs them through [`Module`] (any
//! device and dtype) and the CPU f32 training path copies them into
//! [`crate::taped::HostEncoder`], which destructures every field. A new attention variant
//! (a RoPE table, another scale) is a field here, handled in `Attention::forward` and in
//! `AttnShape` plus `attention_fwd`/`attention_bwd` in `taped/kernels.rs`; a new activation
//! is a variant of [`Activation`] (`layers.rs`) with its `value` and `derivative` in
//! `activation_op.rs`. The compiler points at every place that must follow.

use candle_core::{Module, Tensor};

use crate::quant::Precision;
use crate::{ops, Activation, BadConfig, LayerNorm, Linear, Params, Result};

/// Sizes shared by every block of one tower.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncoderSpec {
    /// Model width (hidden size).
    pub width: usize,
    /// Attention heads; must divide `width`.
    pub heads: usize,
    /// Hidden size of the MLP.
    pub mlp_dim: usize,
    /// Number of blocks.
    pub layers: usize,
    /// MLP non-linearity.
    pub activation: Activation,
    /// Layer-norm epsilon.
    pub eps: f64,
}

impl EncoderSpec {
    /// Upper bound on `hidden_size`: the widest public CLIP towers are under 2048, and a
    /// `config.json` asking for more than 8× that is damaged or hostile, not a model.
    pub const MAX_WIDTH: usize = 16384;
    /// Upper bound on `intermediate_size` (4 × [`Self::MAX_WIDTH`], the usual MLP ratio).
    pub const MAX_MLP_DIM: usize = 4 * Self::MAX_WIDTH;
    /// Upper bound on `num_hidden_layers` (the deepest public towers have under 64).
    pub const MAX_LAYERS: usize = 256;
    /// Upper bound on `heads × tokens²`, the attention scores of one sequence: 2^28 f32
    /// values are 1 GiB per image or caption, the per-input cost a config may ask for.
    pub const MAX_ATTENTION_SCORES: usize = 1 << 28;

    /// The sizes from a tower's Hugging Face config fields (`hidden_size`,
    /// `intermediate_size`, `num_attention_heads`, `num_hidden_layers`, `hidden_act`,
    /// `layer_norm_eps`), checked: both towers name and validate them alike.
    pub fn from_hf(
        (width, mlp_dim, heads, layers): (usize, usize, usize, usize),
        hidden_act: &str,
        eps: f64,
    ) -> std::result::Result<Self, BadConfig> {
        if width == 0 {
            return Err(BadConfig::new("hidden_size", 0, "must be positive"));
        }
        BadConfig::at_most("hidden_size", width, Self::MAX_WIDTH)?;
        if heads == 0 || !width.is_multiple_of(heads) {
            return Err(BadConfig::new(
                "num_attention_heads",
                heads,
                "must divide hidden_size",
            ));
        }
        if mlp_dim == 0 {
            return Err(BadConfig::new("intermediate_size", 0, "must be positive"));
        }
        BadConfig::at_most("intermediate_size", mlp_dim, Self::MAX_MLP_DIM)?;
        BadConfig::at_most("num_hidden_layers", layers, Self::MAX_LAYERS)?;
        if !(eps.is_finite() && eps > 0.0) {
            return Err(BadConfig::new("layer_norm_eps", eps, "must be positive"));
        }
        Ok(Self {
            width,
            heads,
            mlp_dim,
            layers,
            activation: Activation::from_hidden_act(hidden_act)?,
            eps,
        })
    }

    /// Checks that sequences of `tokens` (set by `field` = `value`) keep the attention
    /// scores within [`Self::MAX_ATTENTION_SCORES`]: what one input costs, bounded before
    /// a model exists.
    pub fn check_sequence(
        &self,
        field: &'static str,
        value: usize,
        tokens: usize,
    ) -> std::result::Result<(), BadConfig> {
        let scores = tokens
            .checked_mul(tokens)
            .and_then(|t2| t2.checked_mul(self.heads));
        match scores {
            Some(s) if s <= Self::MAX_ATTENTION_SCORES => Ok(()),
            _ => Err(BadConfig::new(
                field,
                value,
                format!(
                    "gives {tokens} tokens, and {} heads × tokens² exceeds {} attention scores per input",
                    self.heads,
                    Self::MAX_ATTENTION_SCORES
                ),
            )),
        }
    }
}

/// Multi-head self-attention with separate q/k/v projections (`self_attn.{q,k,v,out}_proj`).
#[derive(Debug, Clone)]
pub struct Attention {
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) out: Linear,
    pub(crate) heads: usize,
    /// The factor on `q·kᵀ`, `1/√head_dim`.
    pub(crate) scale: f64,
}

impl Attention {
    /// Loads the four projections under `p`.
    pub fn new(spec: &EncoderSpec, p: &Params) -> Result<Self> {
        let w = spec.width;
        let in_std = (w as f64).powf(-0.5);
        let out_std = in_std * ((2 * spec.layers) as f64).powf(-0.5);
        Ok(Self {
            q: Linear::packable(w, w, true, in_std, &p.pp("q_proj"))?,
            k: Linear::packable(w, w, true, in_std, &p.pp("k_proj"))?,
            v: Linear::packable(w, w, true, in_std, &p.pp("v_proj"))?,
            out: Linear::packable(w, w, true, out_std, &p.pp("out_proj"))?,
            heads: spec.heads,
            scale: ((w / spec.heads) as f64).powf(-0.5),
        })
    }

    /// `x`: `[b, t, w]`; `mask`: additive `[t, t]` (e.g. causal) or none. Returns `[b, t, w]`.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.forward_queries(x, x, mask)
    }

    /// Attention of the `tq` query tokens `xq` `[b, tq, w]` over the `t` tokens `x`
    /// `[b, t, w]`; `mask` broadcasts to `[b, heads, tq, t]`. Returns `[b, tq, w]`. With
    /// `xq = x` this is [`Attention::forward`]; with fewer queries, the last block of a tower
    /// that only reads one pooled token.
    pub fn forward_queries(
        &self,
        x: &Tensor,
        xq: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t, w) = x.dims3()?;
        let tq = xq.dim(1)?;
        let d = w / self.heads;
        let split = |y: Tensor, t: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split((self.q.forward(xq)? * self.scale)?, tq)?; // [b, h, tq, d]
        let k = split(self.k.forward(x)?, t)?; // [b, h, t, d]
        let v = split(self.v.forward(x)?, t)?;
        let mut scores = q.matmul(&k.t()?)?; // [b, h, tq, t]
        if let Some(m) = mask {
            scores = scores.broadcast_add(&m.to_dtype(scores.dtype())?)?;
        }
        let probs = ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?; // [b, h, tq, d]
        let ctx = ctx.transpose(1, 2)?.reshape((b, tq, w))?;
        Ok(self.out.forward(&ctx)?)
    }
}

/// Two-layer MLP `fc2(act(fc1(x)))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
    pub(crate) act: Activation,
}

impl Mlp {
    /// Loads `fc1` and `fc2` under `p`.
    pub fn new(spec: &EncoderSpec, p: &Params) -> Result<Self> {
        let w = spec.width as f64;
        Ok(Self {
            fc1: Linear::packable(
                spec.width,
                spec.mlp_dim,
                true,
                (2.0 * w).powf(-0.5),
                &p.pp("fc1"),
            )?,
            fc2: Linear::packable(
                spec.mlp_dim,
                spec.width,
                true,
                w.powf(-0.5) * ((2 * spec.layers) as f64).powf(-0.5),
                &p.pp("fc2"),
            )?,
            act: spec.activation,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2.forward(&self.act.forward(&self.fc1.forward(x)?)?)
    }
}

/// One pre-norm block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    pub(crate) ln1: LayerNorm,
    pub(crate) attn: Attention,
    pub(crate) ln2: LayerNorm,
    pub(crate) mlp: Mlp,
}

impl EncoderLayer {
    /// Loads `layer_norm1`, `self_attn`, `layer_norm2`, `mlp` under `p`.
    pub fn new(spec: &EncoderSpec, p: &Params) -> Result<Self> {
        Ok(Self {
            ln1: LayerNorm::new(spec.width, spec.eps, &p.pp("layer_norm1"))?,
            attn: Attention::new(spec, &p.pp("self_attn"))?,
            ln2: LayerNorm::new(spec.width, spec.eps, &p.pp("layer_norm2"))?,
            mlp: Mlp::new(spec, &p.pp("mlp"))?,
        })
    }

    /// `[b, t, w] → [b, t, w]`.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln1.forward(x)?, mask)?)?;
        Ok((&x + self.mlp.forward(&self.ln2.forward(&x)?)?)?)
    }

    /// The block's output at one token per row: `x` `[b, t, w]`, `positions[i]` the token
    /// of row `i`, `mask` `[t, t]` or none → `[b, w]`, equal to `forward(x)` at those tokens.
    /// Keys and values still come from every token; queries, the attention output and the
    /// MLP only from the chosen ones.
    pub fn forward_at(
        &self,
        x: &Tensor,
        positions: &[u32],
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t, w) = x.dims3()?;
        let device = x.device();
        let pick =
            |y: &Tensor| -> Result<Tensor> { Ok(pick_tokens(y, positions)?.reshape((b, 1, w))?) };
        let h = self.ln1.forward(x)?;
        // Each chosen token's row of the mask, [b, 1, 1, t].
        let mask = match mask {
            Some(m) => {
                let at = Tensor::from_vec(positions.to_vec(), b, device)?;
                Some(m.index_select(&at, 0)?.reshape((b, 1, 1, t))?)
            }
            None => None,
        };
        let x = (pick(x)? + self.attn.forward_queries(&h, &pick(&h)?, mask.as_ref())?)?;
        let x = (&x + self.mlp.forward(&self.ln2.forward(&x)?)?)?;
        Ok(x.squeeze(1)?)
    }
}

/// A stack of [`EncoderLayer`]s under `layers.{i}`.
#[derive(Debug, Clone)]
pub struct Encoder {
    pub(crate) layers: Vec<EncoderLayer>,
}

impl Encoder {
    /// Loads `spec.layers` blocks under `p.layers.{i}`.
    pub fn new(spec: &EncoderSpec, p: &Params) -> Result<Self> {
        let lp = p.pp("layers");
        let layers = (0..spec.layers)
            .map(|i| EncoderLayer::new(spec, &lp.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Packs every block's attention and MLP projections for `precision` (nothing for f32):
    /// the layers that hold nearly all of a tower's multiply-adds. Layer norms, softmax and
    /// the activations stay f32. Inference only.
    pub fn pack(&mut self, precision: Precision) -> Result<()> {
        for layer in &mut self.layers {
            let EncoderLayer {
                attn: Attention { q, k, v, out, .. },
                mlp: Mlp { fc1, fc2, .. },
                ..
            } = layer;
            for linear in [q, k, v, out, fc1, fc2] {
                linear.pack(precision)?;
            }
        }
        Ok(())
    }

    /// `[b, t, w] → [b, t, w]`.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, mask)?;
        }
        Ok(x)
    }

    /// The stack's output at one token per row, `[b, t, w]` → `[b, w]` (`positions[i]` is
    /// row `i`'s token). Equal to `forward` at those tokens; the last block computes only
    /// what those tokens need ([`EncoderLayer::forward_at`]).
    pub fn forward_at(
        &self,
        x: &Tensor,
        positions: &[u32],
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let Some((last, first)) = self.layers.split_last() else {
            return pick_tokens(x, positions);
        };
        let mut x = x.clone();
        for layer in first {
            x = layer.forward(&x, mask)?;
        }
        last.forward_at(&x, positions, mask)
    }
}

/// Row `i`'s token `positions[i]` of `x` `[b, t, w]`, as `[b, w]`.
fn pick_tokens(x: &Tensor, positions: &[u32]) -> Result<Tensor> {
    let (b, t, w) = x.dims3()?;
    let rows: Vec<u32> = (0..b as u32)
        .zip(positions)
        .map(|(i, &p)| i * t as u32 + p)
        .collect();
    let rows = Tensor::from_vec(rows, b, x.device())?;
    Ok(x.reshape((b * t, w))?.index_select(&rows, 0)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, IndexOp, Tensor};

    use super::*;
    use crate::VarStore;

    fn spec(layers: usize) -> EncoderSpec {
        EncoderSpec::from_hf((16, 24, 2, layers), "quick_gelu", 1e-5).unwrap()
    }

    /// A causal `[t, t]` mask, as the text tower builds it.
    fn causal(t: usize) -> Tensor {
        let m: Vec<f32> = (0..t * t)
            .map(|i| {
                if i % t > i / t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(m, (t, t), &Device::Cpu).unwrap()
    }

    /// The last block computing only the chosen tokens gives exactly what the whole stack
    /// gives there, with and without a causal mask, and with no blocks at all.
    #[test]
    fn forward_at_equals_forward_at_the_chosen_tokens() {
        let (b, t) = (3, 7);
        let x = Tensor::randn(0f32, 1.0, (b, t, 16), &Device::Cpu).unwrap();
        let positions = [0u32, 6, 3];
        for layers in [0, 1, 3] {
            let store = VarStore::new(Device::Cpu, 5);
            let enc = Encoder::new(&spec(layers), &Params::new(&store)).unwrap();
            for mask in [None, Some(causal(t))] {
                let full = enc.forward(&x, mask.as_ref()).unwrap();
                let at = enc.forward_at(&x, &positions, mask.as_ref()).unwrap();
                assert_eq!(at.dims(), &[b, 16]);
                for (i, &p) in positions.iter().enumerate() {
                    let want = full.i((i, p as usize)).unwrap();
                    let diff = (at.i(i).unwrap() - &want)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max(0)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(
                        diff.is_finite() && diff < 1e-5,
                        "{layers} layers, row {i}: {diff}"
                    );
                }
            }
        }
    }
}
