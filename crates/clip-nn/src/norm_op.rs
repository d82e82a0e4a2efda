//! Layer norm and softmax as fused, multithreaded CPU ops with analytic backward passes.
//!
//! candle 0.11's own fused kernels have no backward, and composing them from elementwise ops
//! costs about ten passes over memory per call in training. These ops make one pass forward
//! and one or two backward, row-parallel.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused norm op needs contiguous input"),
    }
}

/// Rows per parallel task: enough work to amortise scheduling.
fn rows_per_task(width: usize) -> usize {
    (16384 / width.max(1)).max(1)
}

fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

struct LayerNormOp {
    eps: f32,
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
        let (x, g, b) = (slice(sx, lx)?, slice(sg, lg)?, slice(sb, lb)?);
        let d = g.len();
        let mut out = vec![0f32; x.len()];
        let chunk = rows_per_task(d) * d;
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(o, xs)| {
                for (orow, xrow) in o.chunks_mut(d).zip(xs.chunks(d)) {
                    let (mean, rstd) = row_stats(xrow, self.eps);
                    for i in 0..d {
                        orow[i] = (xrow[i] - mean) * rstd * g[i] + b[i];
                    }
                }
            });
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
        let dy = dy.contiguous()?;
        let dx = x.apply_op3_no_bwd(g, &dy, &LayerNormGradInput { eps: self.eps })?;
        let dgb = x.apply_op2_no_bwd(&dy, &LayerNormGradParams { eps: self.eps })?; // [2, d]
        Ok((Some(dx), Some(dgb.get(0)?), Some(dgb.get(1)?)))
    }
}

/// `dx = rstd·(h − mean(h) − x̂·mean(h·x̂))` with `h = dy·γ`, per row.
struct LayerNormGradInput {
    eps: f32,
}

impl CustomOp3 for LayerNormGradInput {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad-input"
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
        let (x, g, dy) = (slice(sx, lx)?, slice(sg, lg)?, slice(sd, ld)?);
        let d = g.len();
        let mut out = vec![0f32; x.len()];
        let chunk = rows_per_task(d) * d;
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
            .for_each(|(o, (xs, ds))| {
                for ((orow, xrow), drow) in o.chunks_mut(d).zip(xs.chunks(d)).zip(ds.chunks(d)) {
                    let (mean, rstd) = row_stats(xrow, self.eps);
                    let (mut mh, mut mhx) = (0f32, 0f32);
                    for i in 0..d {
                        let h = drow[i] * g[i];
                        mh += h;
                        mhx += h * (xrow[i] - mean) * rstd;
                    }
                    mh /= d as f32;
                    mhx /= d as f32;
                    for i in 0..d {
                        let xh = (xrow[i] - mean) * rstd;
                        orow[i] = rstd * (drow[i] * g[i] - mh - xh * mhx);
                    }
                }
            });
        Ok((CpuStorage::F32(out), lx.shape().clone()))
    }
}

/// Column sums `[Σ dy·x̂, Σ dy]` over all rows, as a `[2, d]` tensor.
struct LayerNormGradParams {
    eps: f32,
}

impl CustomOp2 for LayerNormGradParams {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad-params"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sd: &CpuStorage,
        ld: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (slice(sx, lx)?, slice(sd, ld)?);
        let d = *lx.shape().dims().last().unwrap_or(&1);
        let chunk = rows_per_task(d) * d;
        let sums = x
            .par_chunks(chunk)
            .zip(dy.par_chunks(chunk))
            .map(|(xs, ds)| {
                let mut acc = vec![0f32; 2 * d];
                for (xrow, drow) in xs.chunks(d).zip(ds.chunks(d)) {
                    let (mean, rstd) = row_stats(xrow, self.eps);
                    for i in 0..d {
                        acc[i] += drow[i] * (xrow[i] - mean) * rstd;
                        acc[d + i] += drow[i];
                    }
                }
                acc
            })
            .reduce(
                || vec![0f32; 2 * d],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        Ok((CpuStorage::F32(sums), Shape::from((2, d))))
    }
}

struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let d = *l.shape().dims().last().unwrap_or(&1);
        let mut out = vec![0f32; x.len()];
        let chunk = rows_per_task(d) * d;
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(o, xs)| {
                for (orow, xrow) in o.chunks_mut(d).zip(xs.chunks(d)) {
                    let max = xrow.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for (o, &v) in orow.iter_mut().zip(xrow) {
                        *o = (v - max).exp();
                        sum += *o;
                    }
                    orow.iter_mut().for_each(|o| *o /= sum);
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxGrad)?))
    }
}

/// `dx = y·(dy − Σ dy·y)` per row.
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
        let (y, dy) = (slice(sy, ly)?, slice(sd, ld)?);
        let d = *ly.shape().dims().last().unwrap_or(&1);
        let mut out = vec![0f32; y.len()];
        let chunk = rows_per_task(d) * d;
        out.par_chunks_mut(chunk)
            .zip(y.par_chunks(chunk).zip(dy.par_chunks(chunk)))
            .for_each(|(o, (ys, ds))| {
                for ((orow, yrow), drow) in o.chunks_mut(d).zip(ys.chunks(d)).zip(ds.chunks(d)) {
                    let dot: f32 = yrow.iter().zip(drow).map(|(a, b)| a * b).sum();
                    for i in 0..d {
                        orow[i] = yrow[i] * (drow[i] - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(out), ly.shape().clone()))
    }
}

fn cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

/// Fused layer norm when all tensors are CPU f32; `None` tells the caller to compose ops.
pub(crate) fn layer_norm(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Option<Result<Tensor>> {
    cpu_f32(&[x, g, b]).then(|| {
        let (x, g, b) = (x.contiguous()?, g.contiguous()?, b.contiguous()?);
        x.apply_op3(&g, &b, LayerNormOp { eps: eps as f32 })
    })
}

/// Fused softmax over the last dimension when the input is CPU f32.
pub(crate) fn softmax_last_dim(x: &Tensor) -> Option<Result<Tensor>> {
    cpu_f32(&[x]).then(|| x.contiguous()?.apply_op1(SoftmaxOp))
}
