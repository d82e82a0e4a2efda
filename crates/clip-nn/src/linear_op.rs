//! `y = x·Wᵀ + b` as one CPU op with a hand-written backward.
//!
//! Composed from candle ops, a linear layer's backward pays for a strided transpose of the
//! weight gradient and a single-threaded column sum for the bias on every step; here the
//! bias is fused into the GEMM (`dst = b + x·Wᵀ`), `dW = dyᵀ·x` lands directly in `[out, in]`
//! layout, and `db = 1ᵀ·dy` is a GEMM too, so all three run on the multithreaded kernel.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("linear op needs a contiguous {what}"),
    }
}

/// `x [m, k] · wᵀ` with `w [n, k]`, plus an optional bias `[n]` broadcast over rows (the
/// taped path's kernel, into a fresh buffer).
fn forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    crate::taped::linear_fwd(&mut out, x, w, bias, None, k);
    out
}

fn dims(lx: &Layout, lw: &Layout) -> Result<(usize, usize, usize)> {
    let (m, k) = lx.shape().dims2()?;
    let (n, k2) = lw.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("linear: input width {k} does not match weight width {k2}");
    }
    Ok((m, k, n))
}

/// Shared body of both ops' `cpu_fwd`: checks shapes, runs [`forward`].
fn linear_storage(
    sx: &CpuStorage,
    lx: &Layout,
    sw: &CpuStorage,
    lw: &Layout,
    bias: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let (m, k, n) = dims(lx, lw)?;
    let b = bias
        .map(|(sb, lb)| contiguous(sb, lb, "bias"))
        .transpose()?;
    let out = forward(
        contiguous(sx, lx, "input")?,
        contiguous(sw, lw, "weight")?,
        b,
        m,
        k,
        n,
    );
    Ok((CpuStorage::F32(out), Shape::from((m, n))))
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
        let dy = dy.contiguous()?;
        let dx = dy.matmul(w)?;
        let dw = dy.t()?.matmul(x)?;
        let ones = Tensor::ones((1, dy.dim(0)?), dy.dtype(), dy.device())?;
        let db = ones.matmul(&dy)?.squeeze(0)?;
        Ok((Some(dx), Some(dw), Some(db)))
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
        let dy = dy.contiguous()?;
        Ok((Some(dy.matmul(w)?), Some(dy.t()?.matmul(x)?)))
    }
}

/// `x [m, k]`, `w [n, k]`, `b [n]` → `[m, n]`; the fused op on CPU f32, candle ops elsewhere.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let cpu_f32 = x.device().is_cpu()
        && x.dtype() == candle_core::DType::F32
        && w.dtype() == candle_core::DType::F32;
    if cpu_f32 && w.is_contiguous() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_linear_matches_candle_ops_forward_and_backward() {
        let d = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 5), &d).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5), &d).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 3, &d).unwrap()).unwrap();
        let target = Tensor::randn(0f32, 1.0, (7, 3), &d).unwrap();
        let fused = linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())).unwrap();
        let plain = x
            .as_tensor()
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        let diff: f32 = (&fused - &plain)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-5);
        let g1 = (fused * &target)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (plain * &target)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w, &b] {
            let d: f32 = (g1.get(v).unwrap() - g2.get(v).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d < 1e-4, "gradient differs by {d}");
        }
        let nb = linear(x.as_tensor(), w.as_tensor(), None).unwrap();
        let g3 = nb.sum_all().unwrap().backward().unwrap();
        assert!(g3.get(&w).is_some() && g3.get(&x).is_some());
    }
}
