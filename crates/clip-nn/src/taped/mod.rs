//! A hand-written forward and backward pass of the encoders for CPU f32 training.
//!
//! candle's autograd spends most of a CPU training step outside the matrix products: every
//! gradient is accumulated into a fresh zero tensor, every head split is a strided copy, and
//! every activation is a new allocation whose pages the kernel clears. The taped path runs
//! the same arithmetic as the candle layers over plain slices: the forward records what the
//! backward needs (the tape), buffers are recycled across steps through a [`Workspace`], and
//! the backward writes each parameter's gradient exactly once. Tests check it against candle's
//! autograd on the same weights.
//!
//! The host copies ([`HostLinear`], [`HostNorm`], [`HostQkv`], [`HostEncoder`]) take the
//! layer structs apart without `..`: a new field on a layer does not compile until the
//! executor handles it.

mod encoder;
mod kernels;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use candle_core::Tensor;

pub use encoder::{EncoderTape, HostEncoder};
pub use kernels::Seqs;
pub(crate) use kernels::{
    column_sums, layer_norm_bwd, layer_norm_fwd, linear_bwd, linear_fwd, softmax_grad_rows,
    softmax_rows,
};

use crate::{LayerNorm, Linear, Result};

/// Buffers kept between training steps, so that activations reuse warm memory.
///
/// Buffers are matched by capacity, not exact length: the text tower's sizes change with
/// each batch's longest caption, and exact matching kept a new set of buffers (fresh pages
/// to fault in) for every length seen.
#[derive(Debug, Default)]
pub struct Workspace {
    /// Free buffers by capacity, each at its full length (contents unspecified).
    free: BTreeMap<usize, Vec<Vec<f32>>>,
}

impl Workspace {
    /// A buffer of `len` elements with unspecified (initialised) contents: the smallest free
    /// one that holds `len` without wasting more than half of itself, or a new one.
    pub fn take(&mut self, len: usize) -> Vec<f32> {
        let fit = self
            .free
            .range_mut(len..=len.saturating_mul(2))
            .find_map(|(_, bufs)| bufs.pop());
        match fit {
            Some(mut buf) => {
                buf.truncate(len);
                buf
            }
            None => vec![0.0; len],
        }
    }

    /// Bytes held in free buffers. In a training loop it stops growing after the first step,
    /// as long as every buffer given back was taken from here.
    pub fn held_bytes(&self) -> usize {
        self.free
            .iter()
            .map(|(cap, bufs)| cap * bufs.len() * std::mem::size_of::<f32>())
            .sum()
    }

    /// Returns a buffer for reuse.
    pub fn give(&mut self, mut buf: Vec<f32>) {
        if buf.capacity() > 0 {
            // Restore the full length (zeroing only a tail cut off by `take`).
            buf.resize(buf.capacity(), 0.0);
            self.free.entry(buf.len()).or_default().push(buf);
        }
    }
}

/// Gradients of parameters, keyed by the parameter tensor they belong to.
#[derive(Debug, Default)]
pub struct Grads {
    entries: Vec<(Tensor, Tensor)>,
}

impl Grads {
    /// Records `data` (laid out like `param`) as the gradient of `param`.
    pub fn push(&mut self, param: &Tensor, data: Vec<f32>) -> Result<()> {
        let g = Tensor::from_vec(data, param.shape(), param.device())?;
        self.entries.push((param.clone(), g));
        Ok(())
    }

    /// `(parameter, gradient)` pairs; match parameters by [`Tensor::id`].
    pub fn into_entries(self) -> Vec<(Tensor, Tensor)> {
        self.entries
    }
}

/// A parameter's values on the host, with the tensor its gradient belongs to.
#[derive(Debug)]
pub struct HostParam {
    pub(crate) data: Vec<f32>,
    pub(crate) tensor: Tensor,
}

impl HostParam {
    /// Copies `t` (any shape, read row-major).
    pub fn new(t: &Tensor) -> Result<Self> {
        Ok(Self {
            data: t.flatten_all()?.to_vec1::<f32>()?,
            tensor: t.clone(),
        })
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Pushes `grad` (laid out like the parameter) as its gradient.
    pub fn push_grad(&self, grad: Vec<f32>, grads: &mut Grads) -> Result<()> {
        grads.push(&self.tensor, grad)
    }
}

/// A linear layer's weight `[out, in]` and optional bias on the host.
#[derive(Debug)]
pub struct HostLinear {
    pub(crate) w: HostParam,
    pub(crate) b: Option<HostParam>,
    pub(crate) in_dim: usize,
}

impl HostLinear {
    /// Copies the layer's parameters.
    pub fn new(l: &Linear) -> Result<Self> {
        let Linear { weight, bias } = l;
        let weight = weight.dense()?;
        Ok(Self {
            w: HostParam::new(weight)?,
            b: bias.as_ref().map(HostParam::new).transpose()?,
            in_dim: weight.dim(1)?,
        })
    }

    /// A bias-free layer whose weight `[out, in]` is `weight`, a reshaped view of `param`
    /// (gradients are pushed to `param`, in its own shape).
    pub fn from_weight(weight: &Tensor, param: &Tensor) -> Result<Self> {
        Ok(Self {
            w: HostParam {
                tensor: param.clone(),
                ..HostParam::new(weight)?
            },
            b: None,
            in_dim: weight.dim(1)?,
        })
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.w.data.len() / self.in_dim
    }

    /// `out = (residual +) x·Wᵀ + b` over rows of `in_dim`: the layer, and the skip
    /// connection after it when there is one.
    pub fn forward(&self, x: &[f32], residual: Option<&[f32]>, out: &mut [f32]) {
        let b = self.b.as_ref().map(|b| b.data.as_slice());
        linear_fwd(out, x, &self.w.data, b, residual, self.in_dim);
    }

    /// Pushes `dW` (and `db`) for output gradient `dy` and input `x`; writes or adds `dy·W`
    /// into `dx` when given (the flag says add).
    pub fn backward(
        &self,
        dy: &[f32],
        x: &[f32],
        dx: Option<(&mut [f32], bool)>,
        grads: &mut Grads,
    ) -> Result<()> {
        let mut dw = vec![0f32; self.w.data.len()];
        let mut db = self.b.as_ref().map(|b| vec![0f32; b.data.len()]);
        linear_bwd(
            dy,
            x,
            &self.w.data,
            self.in_dim,
            &mut dw,
            db.as_deref_mut(),
            dx,
        );
        grads.push(&self.w.tensor, dw)?;
        if let (Some(b), Some(db)) = (&self.b, db) {
            grads.push(&b.tensor, db)?;
        }
        Ok(())
    }
}

/// The q, k and v projections of one attention as a single `[3w, w]` weight and `[3w]` bias
/// (rows: q, then k, then v), so that the three products are one GEMM with three times the
/// columns, which the kernel runs much closer to its peak than three thin ones.
#[derive(Debug)]
pub struct HostQkv {
    w: Vec<f32>,
    b: Vec<f32>,
    /// The weight and (optional) bias tensors of q, k and v, for their gradients.
    params: Vec<(Tensor, Option<Tensor>)>,
    width: usize,
}

impl HostQkv {
    /// Concatenates the three layers' parameters (a missing bias counts as zeros).
    pub fn new(q: &Linear, k: &Linear, v: &Linear) -> Result<Self> {
        let width = q.weight.dense()?.dim(1)?;
        let (mut w, mut b, mut params) = (Vec::new(), Vec::new(), Vec::new());
        for Linear { weight, bias } in [q, k, v] {
            let weight = weight.dense()?;
            w.extend(weight.flatten_all()?.to_vec1::<f32>()?);
            match bias {
                Some(t) => b.extend(t.to_vec1::<f32>()?),
                None => b.extend(std::iter::repeat_n(0f32, width)),
            }
            params.push((weight.clone(), bias.clone()));
        }
        Ok(Self {
            w,
            b,
            params,
            width,
        })
    }

    fn weight(&self, parts: &std::ops::Range<usize>) -> (&[f32], &[f32]) {
        let w = self.width;
        (
            &self.w[parts.start * w * w..parts.end * w * w],
            &self.b[parts.start * w..parts.end * w],
        )
    }

    /// `out = x·Wᵀ + b` for the projections in `parts` (0 = q, 1 = k, 2 = v), side by side:
    /// `out` is `[rows, parts.len()·w]`.
    pub fn forward(&self, parts: std::ops::Range<usize>, x: &[f32], out: &mut [f32]) {
        let (w, b) = self.weight(&parts);
        linear_fwd(out, x, w, Some(b), None, self.width);
    }

    /// Backward of [`HostQkv::forward`] for the same `parts`: pushes each projection's
    /// weight and bias gradient and writes (or adds) the input gradient into `dx`.
    pub fn backward(
        &self,
        parts: std::ops::Range<usize>,
        dy: &[f32],
        x: &[f32],
        dx: (&mut [f32], bool),
        grads: &mut Grads,
    ) -> Result<()> {
        let width = self.width;
        let (w, _) = self.weight(&parts);
        let mut dw = vec![0f32; w.len()];
        let mut db = vec![0f32; parts.len() * width];
        linear_bwd(dy, x, w, width, &mut dw, Some(&mut db), Some(dx));
        for (i, part) in parts.enumerate() {
            let (wt, bt) = &self.params[part];
            grads.push(wt, dw[i * width * width..(i + 1) * width * width].to_vec())?;
            if let Some(bt) = bt {
                grads.push(bt, db[i * width..(i + 1) * width].to_vec())?;
            }
        }
        Ok(())
    }
}

/// A layer norm's gain and bias on the host.
#[derive(Debug)]
pub struct HostNorm {
    pub(crate) g: HostParam,
    pub(crate) b: HostParam,
    pub(crate) eps: f32,
}

impl HostNorm {
    /// Copies the norm's parameters.
    pub fn new(n: &LayerNorm) -> Result<Self> {
        let LayerNorm { weight, bias, eps } = n;
        Ok(Self {
            g: HostParam::new(weight)?,
            b: HostParam::new(bias)?,
            eps: *eps as f32,
        })
    }

    /// Normalises rows of `x` into `out`; `stats` (2 per row) is saved for the backward.
    pub fn forward(&self, x: &[f32], out: &mut [f32], stats: &mut [f32]) {
        layer_norm_fwd(x, &self.g.data, &self.b.data, self.eps, out, stats);
    }

    /// Writes (or, with `accumulate`, adds) the input gradient into `dx` and pushes the
    /// gain and bias gradients.
    pub fn backward(
        &self,
        dy: &[f32],
        x: &[f32],
        stats: &[f32],
        dx: &mut [f32],
        accumulate: bool,
        grads: &mut Grads,
    ) -> Result<()> {
        let d = self.g.data.len();
        let (mut dg, mut db) = (vec![0f32; d], vec![0f32; d]);
        layer_norm_bwd(dy, x, stats, &self.g.data, dx, accumulate, &mut dg, &mut db);
        grads.push(&self.g.tensor, dg)?;
        grads.push(&self.b.tensor, db)
    }
}

/// Whether the taped path applies: CPU tensors in f32.
pub fn supported(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// Sums rows of `x` (width `cols`) into a fresh vector, in a fixed order.
pub fn sum_rows(x: &[f32], cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; cols];
    column_sums(x, cols, &mut out);
    out
}
