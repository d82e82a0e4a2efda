//! The downstream guarantee: the label regression residual, its spectral bound, and the report that holds them together.

use linear_probe::linalg::{cholesky_solve, Matrix, SymmetricEigen};
use serde::Serialize;

use crate::graph::sq_dist;
use crate::optimum::check_eigen;
use crate::{
    approximation_error, eckart_young_optimum, normalized_embedding, population_loss,
    AugmentationGraph, SpectralResult,
};

/// Residual of the node-weighted least-squares fit of the labels from the embeddings,
/// `R = min_W Σ_a w_a (y_a − f_aᵀW)² = ‖u − F(FᵀF)⁻¹Fᵀu‖²` with `u = D^{1/2}y`. Errors
/// when `FᵀF` is singular (the embedding has collapsed directions).
pub fn regression_residual(graph: &AugmentationGraph, f: &Matrix) -> SpectralResult<f64> {
    let big_f = normalized_embedding(graph, f)?;
    let u = graph.label_vector();
    let u = Matrix::from_vec(u.len(), 1, u)?;
    let coef = cholesky_solve(&big_f.gram(), &big_f.transpose().matmul(&u)?)?;
    Ok(sq_dist(&u.data, &big_f.matmul(&coef)?.data))
}

/// `Σ_{i>k} βᵢ²` with `βᵢ = uᵀvᵢ`: the part of `u = D^{1/2}y` outside the top-`k`
/// eigenvectors, which is what the best rank-`k` embedding cannot fit.
pub fn beta_tail(
    graph: &AugmentationGraph,
    eigen: &SymmetricEigen,
    k: usize,
) -> SpectralResult<f64> {
    check_eigen(graph, eigen, k)?;
    let u = graph.label_vector();
    let n = graph.len();
    Ok((k..n)
        .map(|i| {
            let beta: f64 = (0..n).map(|a| u[a] * eigen.vectors.get(a, i)).sum();
            beta * beta
        })
        .sum())
}

/// The bound `2α / λᴸ_{k+1}` on [`beta_tail`], with `λᴸ_{k+1} = 1 − λ_{k+1}(Ā)`. Infinite
/// when `λᴸ_{k+1} ≤ 0` (the graph has more than `k` connected components).
pub fn regression_bound(
    graph: &AugmentationGraph,
    eigen: &SymmetricEigen,
    k: usize,
) -> SpectralResult<f64> {
    check_eigen(graph, eigen, k)?;
    let gap = 1.0 - eigen.values[k];
    Ok(if gap > 0.0 {
        2.0 * graph.cut_alpha() / gap
    } else {
        f64::INFINITY
    })
}

/// Every quantity of the guarantee for one embedding dimension `k`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuaranteeReport {
    /// Embedding dimension.
    pub k: usize,
    /// `λ_k(Ā)`, the smallest eigenvalue the embedding should capture (must be positive).
    pub lambda_k: f64,
    /// `λᴸ_{k+1} = 1 − λ_{k+1}(Ā)`, the `(k+1)`-th smallest normalised-Laplacian eigenvalue.
    pub laplacian_k_plus_1: f64,
    /// Population loss of the embedding.
    pub loss: f64,
    /// `‖Ā − FFᵀ‖²_F` of the embedding.
    pub approximation_error: f64,
    /// Eckart–Young optimum `Σ_{i>k} λᵢ²`.
    pub eckart_young_optimum: f64,
    /// Weighted least-squares residual `R` of `y` on the embedding.
    pub residual: f64,
    /// `Σ_{i>k} βᵢ²`, the residual of the exact top-`k` eigenvectors.
    pub beta_tail: f64,
    /// `2α / λᴸ_{k+1}`.
    pub bound: f64,
}

/// Measures an embedding `f` (of `k = f.cols` columns) against the exact spectrum.
pub fn guarantee_report(
    graph: &AugmentationGraph,
    eigen: &SymmetricEigen,
    f: &Matrix,
) -> SpectralResult<GuaranteeReport> {
    let k = f.cols;
    check_eigen(graph, eigen, k)?;
    Ok(GuaranteeReport {
        k,
        lambda_k: eigen.values[k - 1],
        laplacian_k_plus_1: 1.0 - eigen.values[k],
        loss: population_loss(graph, f)?,
        approximation_error: approximation_error(graph, f)?,
        eckart_young_optimum: eckart_young_optimum(eigen, k)?,
        residual: regression_residual(graph, f)?,
        beta_tail: beta_tail(graph, eigen, k)?,
        bound: regression_bound(graph, eigen, k)?,
    })
}
