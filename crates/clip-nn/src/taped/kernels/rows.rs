//! Row-wise kernels: layer norm, the activations, softmax (forward and backward).

use multiversion::multiversion;
use rayon::prelude::*;

use super::rows_per_task;
use crate::activation_op::exp_fast;
use crate::simd;
use crate::Activation;

/// Layer norm over rows of width `d`; saves each row's mean and 1/std for the backward.
pub(crate) fn layer_norm_fwd(
    x: &[f32],
    g: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [f32],
    stats: &mut [f32],
) {
    let d = g.len();
    let rows = rows_per_task(d);
    out.par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d))
        .zip(stats.par_chunks_mut(rows * 2))
        .for_each(|((o, xs), st)| layer_norm_rows(xs, g, b, eps, o, st));
}

/// [`layer_norm_fwd`] over one block of rows.
#[multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn layer_norm_rows(xs: &[f32], g: &[f32], b: &[f32], eps: f32, o: &mut [f32], st: &mut [f32]) {
    let d = g.len();
    for ((orow, xrow), s) in o.chunks_mut(d).zip(xs.chunks(d)).zip(st.chunks_mut(2)) {
        let mean = simd::sum_map(xrow, |v| v) / d as f32;
        let var = simd::sum_map(xrow, |v| (v - mean) * (v - mean)) / d as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((o, &x), &g), &b) in orow.iter_mut().zip(xrow).zip(g).zip(b) {
            *o = (x - mean) * rstd * g + b;
        }
        s[0] = mean;
        s[1] = rstd;
    }
}

/// Layer norm backward: `dx (+)= rstd·(h − mean(h) − x̂·mean(h·x̂))` with `h = dy·γ`;
/// `dg = Σ dy·x̂` and `db = Σ dy` are overwritten.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_bwd(
    dy: &[f32],
    x: &[f32],
    stats: &[f32],
    g: &[f32],
    dx: &mut [f32],
    accumulate: bool,
    dg: &mut [f32],
    db: &mut [f32],
) {
    let d = g.len();
    let rows = rows_per_task(d);
    let parts: Vec<Vec<f32>> = dx
        .par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d))
        .zip(dy.par_chunks(rows * d).zip(stats.par_chunks(rows * 2)))
        .map(|((o, xs), (ds, st))| {
            let mut acc = vec![0f32; 2 * d];
            // x̂ of one row, reused by both passes over it.
            let mut xh = vec![0f32; d];
            layer_norm_bwd_rows(xs, ds, st, g, o, accumulate, &mut acc, &mut xh);
            acc
        })
        .collect();
    dg.iter_mut().for_each(|v| *v = 0.0);
    db.iter_mut().for_each(|v| *v = 0.0);
    for p in parts {
        dg.iter_mut().zip(&p[..d]).for_each(|(o, v)| *o += v);
        db.iter_mut().zip(&p[d..]).for_each(|(o, v)| *o += v);
    }
}

/// [`layer_norm_bwd`] over one block of rows; `acc` collects `[Σ dy·x̂, Σ dy]`.
#[allow(clippy::too_many_arguments)]
#[multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn layer_norm_bwd_rows(
    xs: &[f32],
    ds: &[f32],
    st: &[f32],
    g: &[f32],
    o: &mut [f32],
    accumulate: bool,
    acc: &mut [f32],
    xh: &mut [f32],
) {
    let d = g.len();
    let (dg, db) = acc.split_at_mut(d);
    for (((orow, xrow), drow), s) in o
        .chunks_mut(d)
        .zip(xs.chunks(d))
        .zip(ds.chunks(d))
        .zip(st.chunks(2))
    {
        let (mean, rstd) = (s[0], s[1]);
        xh.iter_mut()
            .zip(xrow)
            .for_each(|(h, &x)| *h = (x - mean) * rstd);
        dg.iter_mut()
            .zip(drow)
            .zip(&*xh)
            .for_each(|((a, &dy), &h)| *a += dy * h);
        db.iter_mut().zip(drow).for_each(|(a, &dy)| *a += dy);
        let mh = simd::sum_zip(drow, g, |dy, g| dy * g) / d as f32;
        let mhx = simd::dot3(drow, g, xh) / d as f32;
        for (((o, &dy), &g), &h) in orow.iter_mut().zip(drow).zip(g).zip(&*xh) {
            let v = rstd * (dy * g - mh - h * mhx);
            *o = if accumulate { *o + v } else { v };
        }
    }
}

/// `out = act(x)`.
pub(crate) fn activation_fwd(act: Activation, x: &[f32], out: &mut [f32]) {
    crate::activation_op::map_values(act, x, out);
}

/// `dx = dy·act'(x)`, in place over `dy`.
pub(crate) fn activation_bwd(act: Activation, x: &[f32], dy: &mut [f32]) {
    crate::activation_op::scale_by_derivatives(act, x, dy);
}

/// Softmax of every row (of width `d`) of `x`, in place, rows in parallel.
pub(crate) fn softmax_rows(x: &mut [f32], d: usize) {
    x.par_chunks_mut(rows_per_task(d) * d)
        .for_each(|c| c.chunks_mut(d).for_each(|row| softmax_row(row, d)));
}

/// [`softmax_grad`] over rows of width `d`, rows in parallel.
pub(crate) fn softmax_grad_rows(ds: &mut [f32], p: &[f32], d: usize) {
    assert_eq!(ds.len(), p.len());
    ds.par_chunks_mut(rows_per_task(d) * d)
        .zip(p.par_chunks(rows_per_task(d) * d))
        .for_each(|(ds, p)| softmax_grad(ds, p, d));
}

/// `row[..valid] = softmax(row[..valid])`, the masked rest zeroed.
#[multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
pub(super) fn softmax_row(row: &mut [f32], valid: usize) {
    let max = simd::max(&row[..valid]);
    row[..valid]
        .iter_mut()
        .for_each(|x| *x = exp_fast(*x - max));
    let inv = 1.0 / simd::sum_map(&row[..valid], |x| x);
    row[..valid].iter_mut().for_each(|x| *x *= inv);
    row[valid..].iter_mut().for_each(|x| *x = 0.0);
}

/// Softmax backward row by row (rows of `t`), in place: `dP ← P ⊙ (dP − Σ_j dP·P)`.
#[multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
pub(super) fn softmax_grad(ds: &mut [f32], p: &[f32], t: usize) {
    for (drow, prow) in ds.chunks_mut(t).zip(p.chunks(t)) {
        let dot = simd::sum_zip(drow, prow, |a, b| a * b);
        drow.iter_mut()
            .zip(prow)
            .for_each(|(g, &pv)| *g = pv * (*g - dot));
    }
}
