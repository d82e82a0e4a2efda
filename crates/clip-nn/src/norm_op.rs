//! Layer norm and softmax as candle ops on CPU f32, with a backward pass.
//!
//! candle 0.11's own fused kernels have no backward, and composing them from elementwise ops
//! costs about ten passes over memory per call in training. These ops run the taped path's
//! kernels ([`crate::taped`]), so candle's autograd and the taped executor share one formula
//! for each: one row-parallel pass forward, one backward.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::cpu_storage::contiguous_f32;
use crate::taped::{layer_norm_bwd, layer_norm_fwd, softmax_grad_rows, softmax_rows, supported};

/// Layer norm of `x` with gain and bias; keeps each row's mean and 1/std for the backward.
struct LayerNormOp {
    eps: f32,
    stats: OnceLock<Vec<f32>>,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g, b) = (
            contiguous_f32(sx, lx)?,
            contiguous_f32(sg, lg)?,
            contiguous_f32(sb, lb)?,
        );
        let mut out = vec![0f32; x.len()];
        let mut stats = vec![0f32; x.len() / g.len().max(1) * 2];
        layer_norm_fwd(x, g, b, self.eps, &mut out, &mut stats);
        if self.stats.set(stats).is_err() {
            candle_core::bail!("fused layer norm evaluated twice");
        }
        Ok((CpuStorage::F32(out), lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(stats) = self.stats.get() else {
            candle_core::bail!("fused layer norm: backward before forward");
        };
        let rows = x.elem_count() / g.elem_count().max(1);
        let all = x.apply_op3_no_bwd(g, &dy.contiguous()?, &LayerNormGrad { stats })?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        Ok((Some(dx), Some(all.get(rows)?), Some(all.get(rows + 1)?)))
    }
}

/// The layer norm's gradients from `(x, gain, dy)`, stacked as `[rows + 2, d]`: `dx`, then
/// the gain's and the bias's.
struct LayerNormGrad<'a> {
    stats: &'a [f32],
}

impl CustomOp3 for LayerNormGrad<'_> {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
        sd: &CpuStorage,
        ld: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g, dy) = (
            contiguous_f32(sx, lx)?,
            contiguous_f32(sg, lg)?,
            contiguous_f32(sd, ld)?,
        );
        let d = g.len();
        let rows = x.len() / d.max(1);
        let mut out = vec![0f32; (rows + 2) * d];
        let (dx, dgb) = out.split_at_mut(rows * d);
        let (dg, db) = dgb.split_at_mut(d);
        layer_norm_bwd(dy, x, self.stats, g, dx, false, dg, db);
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, d))))
    }
}

struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut out = contiguous_f32(s, l)?.to_vec();
        softmax_rows(&mut out, *l.shape().dims().last().unwrap_or(&1));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxGrad)?))
    }
}

/// `dx = y·(dy − Σ dy·y)` per row, from `(y, dy)`.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        sy: &CpuStorage,
        ly: &Layout,
        sd: &CpuStorage,
        ld: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(sy, ly)?;
        let mut out = contiguous_f32(sd, ld)?.to_vec();
        softmax_grad_rows(&mut out, y, *ly.shape().dims().last().unwrap_or(&1));
        Ok((CpuStorage::F32(out), ly.shape().clone()))
    }
}

/// Fused layer norm when all tensors are CPU f32; `None` tells the caller to compose ops.
pub(crate) fn layer_norm(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Option<Result<Tensor>> {
    [x, g, b].into_iter().all(supported).then(|| {
        let (x, g, b) = (x.contiguous()?, g.contiguous()?, b.contiguous()?);
        let op = LayerNormOp {
            eps: eps as f32,
            stats: OnceLock::new(),
        };
        x.apply_op3(&g, &b, op)
    })
}

/// Fused softmax over the last dimension when the input is CPU f32.
pub(crate) fn softmax_last_dim(x: &Tensor) -> Option<Result<Tensor>> {
    supported(x).then(|| x.contiguous()?.apply_op1(SoftmaxOp))
}
