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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn sample() -> Tensor {
        let v: Vec<f32> = (0..24)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
            .collect();
        Tensor::from_vec(v, (2, 3, 4), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn fused_and_differentiable_paths_agree_and_have_gradients() {
        let x = sample();
        let w = Tensor::new(&[1.0f32, 2.0, 0.5, -1.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.1f32, 0.0, -0.2, 0.3], &Device::Cpu).unwrap();
        let fused = layer_norm(&x, &w, &b, 1e-5).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let slow = layer_norm(xv.as_tensor(), &w, &b, 1e-5).unwrap();
        assert!(max_diff(&fused, &slow) < 1e-5);
        let fused_s = softmax_last_dim(&x).unwrap();
        let slow_s = softmax_last_dim(xv.as_tensor()).unwrap();
        assert!(max_diff(&fused_s, &slow_s) < 1e-6);
        // Gradients flow through both differentiable ops.
        let target = Tensor::new(&[0.3f32, -0.1, 0.2, 0.9], &Device::Cpu).unwrap();
        let loss = (slow.broadcast_mul(&target).unwrap() + slow_s.sqr().unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(&xv).unwrap();
        let gnorm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(gnorm > 0.0 && gnorm.is_finite());
    }

    #[test]
    fn fused_training_ops_match_composed_ops_in_value_and_gradient() {
        let d = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (5, 3, 7), &d).unwrap()).unwrap();
        let g =
            Var::from_tensor(&(Tensor::randn(0f32, 0.3, 7, &d).unwrap() + 1.0).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 7, &d).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (5, 3, 7), &d).unwrap();
        let fused = layer_norm(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        let plain = layer_norm_composed(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        assert!(max_diff(&fused, &plain) < 1e-5);
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &g, &b] {
            assert!(max_diff(gf.get(v).unwrap(), gp.get(v).unwrap()) < 1e-4);
        }
        let sf = softmax_last_dim(x.as_tensor()).unwrap();
        let sp = softmax_composed(x.as_tensor()).unwrap();
        assert!(max_diff(&sf, &sp) < 1e-6);
        let gf = (sf * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (sp * &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(gf.get(&x).unwrap(), gp.get(&x).unwrap()) < 1e-5);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_match_reference() {
        let x = Tensor::new(&[[1.0f32, 2.0, 3.0]], &Device::Cpu).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let s: Vec<Vec<f32>> = softmax_last_dim(xv.as_tensor()).unwrap().to_vec2().unwrap();
        let z = 1f32.exp() + 2f32.exp() + 3f32.exp();
        for (got, want) in s[0]
            .iter()
            .zip([1f32.exp() / z, 2f32.exp() / z, 3f32.exp() / z])
        {
            assert!((got - want).abs() < 1e-6);
        }
    }
}
