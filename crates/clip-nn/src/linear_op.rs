//! `y = x·Wᵀ + b` as one CPU op whose forward and backward are the taped path's kernels.
//!
//! Composed from candle ops, a linear layer's backward pays for a strided transpose of the
//! weight gradient and a single-threaded column sum for the bias on every step; here the
//! bias is fused into the GEMM (`dst = b + x·Wᵀ`), `dW = dyᵀ·x` lands directly in `[out, in]`
//! layout, and the two GEMMs of the backward run side by side (`taped::linear_bwd`).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::quant::PackedLinear;

use crate::cpu_storage::contiguous_f32;
use crate::taped::{linear_bwd, linear_fwd, supported};

fn dims(lx: &Layout, lw: &Layout) -> Result<(usize, usize, usize)> {
    let (m, k) = lx.shape().dims2()?;
    let (n, k2) = lw.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("linear: input width {k} does not match weight width {k2}");
    }
    Ok((m, k, n))
}

/// Shared body of both ops' `cpu_fwd`: checks shapes, runs the taped kernel `linear_fwd`.
fn linear_storage(
    sx: &CpuStorage,
    lx: &Layout,
    sw: &CpuStorage,
    lw: &Layout,
    bias: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let (m, k, n) = dims(lx, lw)?;
    let b = bias.map(|(sb, lb)| contiguous_f32(sb, lb)).transpose()?;
    let (x, w) = (contiguous_f32(sx, lx)?, contiguous_f32(sw, lw)?);
    let mut out = vec![0f32; m * n];
    linear_fwd(&mut out, x, w, b, None, k);
    Ok((CpuStorage::F32(out), Shape::from((m, n))))
}

/// The backward of both ops: `(dx, dw, db)` from the taped kernel `linear_bwd`, `db` only
/// `with_bias`.
fn linear_grads(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    with_bias: bool,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let ((m, k), n) = (x.dims2()?, w.dim(0)?);
    let all = dy
        .contiguous()?
        .apply_op3_no_bwd(x, w, &LinearGrad { with_bias })?;
    let dx = all.narrow(0, 0, m * k)?.reshape((m, k))?;
    let dw = all.narrow(0, m * k, n * k)?.reshape((n, k))?;
    let db = with_bias
        .then(|| all.narrow(0, (m + n) * k, n))
        .transpose()?;
    Ok((dx, dw, db))
}

/// `(dy, x, w)` → `dx`, `dw` (and `db`) flattened one after another.
struct LinearGrad {
    with_bias: bool,
}

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "linear-grad"
    }

    fn cpu_fwd(
        &self,
        sd: &CpuStorage,
        ld: &Layout,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k, n) = dims(lx, lw)?;
        let dy = contiguous_f32(sd, ld)?;
        let (x, w) = (contiguous_f32(sx, lx)?, contiguous_f32(sw, lw)?);
        let len = (m + n) * k + if self.with_bias { n } else { 0 };
        let mut out = vec![0f32; len];
        let (dx, rest) = out.split_at_mut(m * k);
        let (dw, db) = rest.split_at_mut(n * k);
        let db = self.with_bias.then_some(db);
        linear_bwd(dy, x, w, k, dw, db, Some((dx, false)));
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

struct LinearBias;

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "linear-bias"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        linear_storage(sx, lx, sw, lw, Some((sb, lb)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = linear_grads(x, w, dy, true)?;
        Ok((Some(dx), Some(dw), db))
    }
}

struct LinearNoBias;

impl CustomOp2 for LinearNoBias {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        linear_storage(sx, lx, sw, lw, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = linear_grads(x, w, dy, false)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `x [m, k]`, `w [n, k]`, `b [n]` → `[m, n]`; the fused op on CPU f32, candle ops elsewhere.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if supported(x) && supported(w) && w.is_contiguous() {
        let x = x.contiguous()?;
        return match b {
            Some(b) => x.apply_op3(w, &b.contiguous()?, LinearBias),
            None => x.apply_op2(w, LinearNoBias),
        };
    }
    let y = x.matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// `x [m, k]` → `[m, n]` through a packed (int8 or bf16) layer: CPU and f32 input only, no
/// backward (a packed model is for inference).
pub(crate) fn packed(x: &Tensor, layer: &Arc<PackedLinear>) -> Result<Tensor> {
    if !supported(x) {
        candle_core::bail!(
            "a {} layer runs on the CPU on f32 input, got {:?} on {:?}",
            layer.precision(),
            x.dtype(),
            x.device()
        );
    }
    x.contiguous()?.apply_op1_no_bwd(&PackedOp(layer.clone()))
}

struct PackedOp(Arc<PackedLinear>);

impl CustomOp1 for PackedOp {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l.shape().dims2()?;
        if k != self.0.in_dim() {
            candle_core::bail!(
                "linear: input width {k} does not match weight width {}",
                self.0.in_dim()
            );
        }
        let y = self.0.forward(contiguous_f32(s, l)?);
        Ok((CpuStorage::F32(y), Shape::from((m, self.0.out_dim()))))
    }
}
