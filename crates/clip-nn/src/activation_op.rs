//! GELU-family activations as fused, multi-threaded CPU ops with an analytic backward.
//!
//! Composed from candle's elementwise ops, `x·σ(1.702x)` makes three single-threaded passes
//! over memory and costs nearly as much as the matmul before it; one parallel pass with a
//! closed-form derivative is several times faster and still trains. `Activation`'s
//! `Module::forward` is here: the fused op on CPU f32, candle's ops elsewhere.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Module, Result, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use crate::cpu_storage::contiguous_f32;
use crate::Activation;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// `eˣ` by range reduction and a degree-6 polynomial (relative error < 2e-7): branch-free,
/// so loops over it vectorise, unlike libm's `expf`, which took a tenth of a training step.
#[inline(always)]
pub(crate) fn exp_fast(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Round to nearest with the 1.5·2²³ trick (exact in f32, no libm call).
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2_E + MAGIC;
    let k = shifted - MAGIC;
    // The integer k sits in the low mantissa bits of `shifted`: read it with integer ops,
    // which vectorise, where `k as i32` (a saturating conversion) compiles to one scalar
    // instruction per element and made GELU 5× slower.
    let ki = (shifted.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(((ki + 127) << 23) as u32) * p
}

/// `1 − erf(|x|)` as Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7) given `e^{−x²}`.
#[inline(always)]
fn erfc_abs(x: f32, exp_neg_x2: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    poly * exp_neg_x2
}

/// erf, branch-free apart from the sign.
#[cfg(test)]
fn erf(x: f32) -> f32 {
    (1.0 - erfc_abs(x, exp_fast(-x * x))).copysign(x)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-x))
}

/// Φ(x) and φ(x) of the standard normal, sharing one exponential.
#[inline(always)]
fn normal_cdf_pdf(x: f32) -> (f32, f32) {
    let e = exp_fast(-0.5 * x * x);
    let half_erfc = 0.5 * erfc_abs(x * std::f32::consts::FRAC_1_SQRT_2, e);
    let cdf = if x >= 0.0 { 1.0 - half_erfc } else { half_erfc };
    (cdf, e * 0.398_942_3)
}

#[inline(always)]
fn tanh_fast(z: f32) -> f32 {
    1.0 - 2.0 / (1.0 + exp_fast(2.0 * z))
}

impl Activation {
    #[inline(always)]
    pub(crate) fn value(self, x: f32) -> f32 {
        match self {
            Activation::QuickGelu => x * sigmoid(1.702 * x),
            Activation::Gelu => x * normal_cdf_pdf(x).0,
            Activation::GeluTanh => {
                0.5 * x * (1.0 + tanh_fast(SQRT_2_OVER_PI * (x + GELU_C * x * x * x)))
            }
        }
    }

    #[inline(always)]
    pub(crate) fn derivative(self, x: f32) -> f32 {
        match self {
            Activation::QuickGelu => {
                let s = sigmoid(1.702 * x);
                s + 1.702 * x * s * (1.0 - s)
            }
            Activation::Gelu => {
                let (cdf, pdf) = normal_cdf_pdf(x);
                cdf + x * pdf
            }
            Activation::GeluTanh => {
                let t = tanh_fast(SQRT_2_OVER_PI * (x + GELU_C * x * x * x));
                0.5 * (1.0 + t)
                    + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x)
            }
        }
    }
}

const CHUNK: usize = 4096;

/// `out[i] = act(x[i])` over one chunk, compiled per instruction set.
#[multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn values_chunk(act: Activation, x: &[f32], out: &mut [f32]) {
    // One loop per variant, so that `value` is inlined with a constant `act`.
    macro_rules! each {
        ($a:expr) => {
            out.iter_mut().zip(x).for_each(|(o, &v)| *o = $a.value(v))
        };
    }
    match act {
        Activation::QuickGelu => each!(Activation::QuickGelu),
        Activation::Gelu => each!(Activation::Gelu),
        Activation::GeluTanh => each!(Activation::GeluTanh),
    }
}

/// `dy[i] *= act'(x[i])` over one chunk, compiled per instruction set.
#[multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn derivatives_chunk(act: Activation, x: &[f32], dy: &mut [f32]) {
    macro_rules! each {
        ($a:expr) => {
            dy.iter_mut()
                .zip(x)
                .for_each(|(d, &v)| *d *= $a.derivative(v))
        };
    }
    match act {
        Activation::QuickGelu => each!(Activation::QuickGelu),
        Activation::Gelu => each!(Activation::Gelu),
        Activation::GeluTanh => each!(Activation::GeluTanh),
    }
}

/// `out = act(x)` elementwise, in parallel.
pub(crate) fn map_values(act: Activation, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, i)| values_chunk(act, i, o));
}

/// `dy *= act'(x)` elementwise, in parallel.
pub(crate) fn scale_by_derivatives(act: Activation, x: &[f32], dy: &mut [f32]) {
    assert_eq!(x.len(), dy.len());
    dy.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(d, i)| derivatives_chunk(act, i, d));
}

/// Forward op: `y = act(x)`.
struct ActForward(Activation);

impl CustomOp1 for ActForward {
    fn name(&self) -> &'static str {
        "fused-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let mut out = vec![0f32; x.len()];
        map_values(self.0, x, &mut out);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = arg
            .contiguous()?
            .apply_op2(&grad_res.contiguous()?, ActBackward(self.0))?;
        Ok(Some(grad))
    }
}

/// Backward op: `dx = dy · act'(x)`.
struct ActBackward(Activation);

impl CustomOp2 for ActBackward {
    fn name(&self) -> &'static str {
        "fused-activation-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1)?;
        let g = contiguous_f32(s2, l2)?;
        let mut out = g.to_vec();
        scale_by_derivatives(self.0, x, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// An activation runs as the fused op on CPU f32 tensors, and with candle's ops elsewhere.
impl Module for Activation {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if crate::taped::supported(x) {
            return x.contiguous()?.apply_op1(ActForward(*self));
        }
        match self {
            // x / (1 + e^{-1.702x}) = x·σ(1.702x), from ops that all have a backward.
            Activation::QuickGelu => x.div(&((x * -1.702)?.exp()? + 1.0)?),
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (a, b) = (exp_fast(x) as f64, (x as f64).exp());
            assert!((a - b).abs() <= 3e-7 * b, "exp({x}): {a} vs {b}");
        }
    }

    #[test]
    fn fast_erf_is_accurate() {
        for i in -400..=400 {
            let x = i as f32 * 0.01;
            assert!((erf(x) - libm::erff(x)).abs() < 1e-6, "erf({x})");
        }
    }
}
