//! Normalisation and softmax with a backward pass.

use candle_core::{DType, Tensor, D};

use crate::Result;

/// True when any input needs gradients, i.e. the fused (backward-less) kernels must be avoided.
fn needs_grad(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op())
}

/// Layer normalisation over the last dimension: `(x − mean) / sqrt(var + eps) · weight + bias`.
///
/// Uses candle's fused kernel for inference and plain differentiable ops when training.
/// Half-precision inputs are normalised in f32 (as mixed-precision training does: a bf16
/// mean and variance lose too many digits) and the result cast back.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if is_half(x.dtype()) {
        let up = |t: &Tensor| t.to_dtype(DType::F32);
        return Ok(layer_norm(&up(x)?, &up(weight)?, &up(bias)?, eps)?.to_dtype(x.dtype())?);
    }
    if !needs_grad(&[x, weight, bias]) && x.dtype() == DType::F32 {
        let x = x.contiguous()?;
        return Ok(candle_nn::ops::layer_norm(&x, weight, bias, eps as f32)?);
    }
    if let Some(y) = crate::norm_op::layer_norm(x, weight, bias, eps) {
        return Ok(y?);
    }
    layer_norm_composed(x, weight, bias, eps)
}

fn is_half(dt: DType) -> bool {
    matches!(dt, DType::BF16 | DType::F16)
}

/// Softmax over the last dimension, numerically stabilised by subtracting the row maximum.
/// Half-precision inputs are computed in f32 and cast back (see [`layer_norm`]).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if is_half(x.dtype()) {
        return Ok(softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?);
    }
    if !needs_grad(&[x]) && x.dtype() == DType::F32 {
        return Ok(candle_nn::ops::softmax_last_dim(&x.contiguous()?)?);
    }
    if let Some(y) = crate::norm_op::softmax_last_dim(x) {
        return Ok(y?);
    }
    softmax_composed(x)
}

/// The composed reference implementations, used off-CPU and to check the fused ops.
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(weight)?.broadcast_add(bias)?)
}

/// Composed softmax (see [`layer_norm_composed`]).
pub fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    // The max is a constant shift: detaching it leaves the gradient unchanged.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}
