//! A linear layer's forward and backward over row-major slices.

use multiversion::multiversion;
use rayon::prelude::*;

use super::gemm::{gemm_raw, threads, View};
use super::rows_per_task;

/// `out[m, n] = (residual +) x[m, k]·w[n, k]ᵀ (+ b)`: a linear layer's forward, with the
/// residual connection that follows it folded into the output's first pass.
pub(crate) fn linear_fwd(
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    residual: Option<&[f32]>,
    k: usize,
) {
    let n = w.len() / k;
    let m = x.len() / k;
    assert!(out.len() == m * n && x.len() == m * k && w.len() == n * k);
    match (b, residual) {
        (Some(b), None) => {
            assert_eq!(b.len(), n);
            out.par_chunks_mut(n * 64)
                .for_each(|c| c.chunks_mut(n).for_each(|r| r.copy_from_slice(b)));
        }
        (b, Some(res)) => {
            assert_eq!(res.len(), out.len());
            out.par_chunks_mut(n * 64)
                .zip(res.par_chunks(n * 64))
                .for_each(|(c, rs)| match b {
                    Some(b) => c.chunks_mut(n).zip(rs.chunks(n)).for_each(|(o, r)| {
                        o.iter_mut()
                            .zip(r.iter().zip(b))
                            .for_each(|(o, (r, b))| *o = r + b)
                    }),
                    None => c.copy_from_slice(rs),
                });
        }
        (None, None) => {}
    }
    let accumulate = b.is_some() || residual.is_some();
    // SAFETY: sizes checked above; x and w are rows of k, wᵀ read with strides (1, k).
    unsafe {
        gemm_raw(
            (m, n, k),
            out.as_mut_ptr(),
            n,
            accumulate,
            View::rows(x.as_ptr(), k),
            View::cols(w.as_ptr(), k),
            1.0,
            threads(),
        );
    }
}

/// A linear layer's backward: `dw = dyᵀ·x` (overwritten), `db = Σ_rows dy` (overwritten),
/// and `dx (+)= dy·w` when `dx` is given.
///
/// The two products have the same cost and share nothing, so each runs on half the threads
/// at once: on these thin shapes the GEMM kernel splitting one product across all threads
/// syncs per block, and the backward ran ≈ 8 % slower that way (`benches/train_step.rs`).
/// Without `dx`, the rows are split in two halves summed separately instead. Either way the
/// arithmetic does not depend on the thread count, so runs repeat to the bit.
pub(crate) fn linear_bwd(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    k: usize,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dx: Option<(&mut [f32], bool)>,
) {
    let n = w.len() / k;
    let m = x.len() / k;
    assert!(dy.len() == m * n && dw.len() == n * k);
    let all = threads();
    let half = all.div_ceil(2);
    let weight_grad = |dw: &mut [f32], db: Option<&mut [f32]>, threads: usize| {
        dw_rows(dy, x, n, k, 0..m, dw, threads);
        if let Some(db) = db {
            column_sums(dy, n, db);
        }
    };
    match dx {
        Some((dx, accumulate)) => {
            assert_eq!(dx.len(), m * k);
            rayon::join(
                || weight_grad(dw, db, half),
                // SAFETY: dx [m, k] = dy [m, n] · w [n, k].
                || unsafe {
                    gemm_raw(
                        (m, k, n),
                        dx.as_mut_ptr(),
                        k,
                        accumulate,
                        View::rows(dy.as_ptr(), n),
                        View::rows(w.as_ptr(), k),
                        1.0,
                        half,
                    )
                },
            );
        }
        None if m >= 512 => {
            let mid = m / 2;
            let mut upper = vec![0f32; dw.len()];
            rayon::join(
                || dw_rows(dy, x, n, k, 0..mid, dw, half),
                || dw_rows(dy, x, n, k, mid..m, &mut upper, half),
            );
            dw.iter_mut().zip(&upper).for_each(|(a, b)| *a += b);
            if let Some(db) = db {
                column_sums(dy, n, db);
            }
        }
        None => weight_grad(dw, db, all),
    }
}

/// `dw = dy[rows]ᵀ·x[rows]` for a block of rows of `dy` (`[m, n]`) and `x` (`[m, k]`).
fn dw_rows(
    dy: &[f32],
    x: &[f32],
    n: usize,
    k: usize,
    rows: std::ops::Range<usize>,
    dw: &mut [f32],
    threads: usize,
) {
    assert!(rows.end * n <= dy.len() && rows.end * k <= x.len() && dw.len() == n * k);
    // SAFETY: dw [n, k] = dyᵀ [n, rows] · x [rows, k]; dyᵀ read with strides (1, n), both
    // blocks inside their buffers (checked above).
    unsafe {
        gemm_raw(
            (n, k, rows.len()),
            dw.as_mut_ptr(),
            k,
            false,
            View::cols(dy[rows.start * n..].as_ptr(), n),
            View::rows(x[rows.start * k..].as_ptr(), k),
            1.0,
            threads,
        );
    }
}

/// Sums of `cols` columns over all rows of `x`, in a fixed order.
pub(crate) fn column_sums(x: &[f32], cols: usize, out: &mut [f32]) {
    let parts: Vec<Vec<f32>> = x
        .par_chunks(rows_per_task(cols) * cols * 4)
        .map(|c| {
            let mut acc = vec![0f32; cols];
            add_rows(c, &mut acc);
            acc
        })
        .collect();
    out.iter_mut().for_each(|o| *o = 0.0);
    for p in parts {
        out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
    }
}

/// `acc += Σ rows` for the rows (of `acc.len()`) in `x`.
#[multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn add_rows(x: &[f32], acc: &mut [f32]) {
    for row in x.chunks_exact(acc.len()) {
        acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
    }
}
