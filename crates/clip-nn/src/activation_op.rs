//! GELU-family activations as fused, multi-threaded CPU ops with an analytic backward.
//!
//! Composed from candle's elementwise ops, `x·σ(1.702x)` makes three single-threaded passes
//! over memory and costs nearly as much as the matmul before it; one parallel pass with a
//! closed-form derivative is several times faster and still trains.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::Activation;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// erf with Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): branch-free apart from the sign,
/// so it vectorises, unlike libm's `erff`, which took a tenth of a training step.
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * (-a * a).exp();
    y.copysign(x)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Activation {
    fn value(self, x: f32) -> f32 {
        match self {
            Activation::QuickGelu => x * sigmoid(1.702 * x),
            Activation::Gelu => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
            Activation::GeluTanh => {
                0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + GELU_C * x * x * x)).tanh())
            }
        }
    }

    fn derivative(self, x: f32) -> f32 {
        match self {
            Activation::QuickGelu => {
                let s = sigmoid(1.702 * x);
                s + 1.702 * x * s * (1.0 - s)
            }
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = (-0.5 * x * x).exp() * 0.398_942_3;
                cdf + x * pdf
            }
            Activation::GeluTanh => {
                let t = (SQRT_2_OVER_PI * (x + GELU_C * x * x * x)).tanh();
                0.5 * (1.0 + t)
                    + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x)
            }
        }
    }
}

const CHUNK: usize = 4096;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("activation op needs a contiguous input"),
    }
}

/// Forward op: `y = act(x)`.
struct ActForward(Activation);

impl CustomOp1 for ActForward {
    fn name(&self) -> &'static str {
        "fused-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let mut out = vec![0f32; x.len()];
        let act = self.0;
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &v)| *o = act.value(v)));
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
        let x = f32_slice(s1, l1)?;
        let g = f32_slice(s2, l2)?;
        let mut out = vec![0f32; x.len()];
        let act = self.0;
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(o, (xs, gs))| {
                for ((o, &x), &g) in o.iter_mut().zip(xs).zip(gs) {
                    *o = g * act.derivative(x);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Applies `act` with the fused op on CPU f32 tensors, and with candle's ops elsewhere.
pub(crate) fn apply(act: Activation, x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        return x.contiguous()?.apply_op1(ActForward(act));
    }
    match act {
        // x / (1 + e^{-1.702x}) = x·σ(1.702x), from ops that all have a backward.
        Activation::QuickGelu => x.div(&((x * -1.702)?.exp()? + 1.0)?),
        Activation::Gelu => x.gelu_erf(),
        Activation::GeluTanh => x.gelu(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fast_erf_is_accurate() {
        for i in -400..=400 {
            let x = i as f32 * 0.01;
            assert!((erf(x) - libm::erff(x)).abs() < 1e-6, "erf({x})");
        }
    }

    #[test]
    fn matches_candle_reference_ops_and_finite_differences() {
        let xs: Vec<f32> = (0..200).map(|i| (i as f32 - 100.0) * 0.05).collect();
        let x = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        for act in [
            Activation::QuickGelu,
            Activation::Gelu,
            Activation::GeluTanh,
        ] {
            let fused: Vec<f32> = apply(act, &x).unwrap().to_vec1().unwrap();
            let reference: Vec<f32> = match act {
                Activation::QuickGelu => x
                    .div(&((&x * -1.702).unwrap().exp().unwrap() + 1.0).unwrap())
                    .unwrap(),
                Activation::Gelu => x.gelu_erf().unwrap(),
                Activation::GeluTanh => x.gelu().unwrap(),
            }
            .to_vec1()
            .unwrap();
            for (a, b) in fused.iter().zip(&reference) {
                assert!((a - b).abs() < 1e-5, "{act:?}: {a} vs {b}");
            }
            // Gradient of sum(act(x)) is act'(x); compare with central differences.
            let v = Var::from_tensor(&x).unwrap();
            let g = apply(act, v.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g: Vec<f32> = g.get(&v).unwrap().to_vec1().unwrap();
            for (&xi, &gi) in xs.iter().zip(&g) {
                let h = 1e-3f64;
                let f = |t: f64| act.value(t as f32) as f64;
                let fd = (f(xi as f64 + h) - f(xi as f64 - h)) / (2.0 * h);
                assert!(
                    (gi as f64 - fd).abs() < 2e-3,
                    "{act:?} at {xi}: {gi} vs {fd}"
                );
            }
        }
    }
}
