//! The Eckart–Young optimum of the loss, from the exact spectrum, and how far an embedding is above it.

use linear_probe::linalg::{Matrix, SymmetricEigen};

use crate::graph::sq_dist;
use crate::{invalid, normalized_embedding, AugmentationGraph, SpectralResult};

/// The optimal embedding by Eckart–Young: `f = D^{-1/2} V_k diag(√λ₁, …, √λ_k)`. Refuses a
/// non-positive eigenvalue among the top `k`, where no real `f` reaches the optimum.
pub fn spectral_embedding(
    graph: &AugmentationGraph,
    eigen: &SymmetricEigen,
    k: usize,
) -> SpectralResult<Matrix> {
    check_eigen(graph, eigen, k)?;
    if let Some(i) = (0..k).find(|&i| eigen.values[i] <= 0.0) {
        return invalid(
            "k",
            format!("eigenvalue {} is {} ≤ 0", i + 1, eigen.values[i]),
        );
    }
    let n = graph.len();
    let mut f = Matrix::zeros(n, k);
    for a in 0..n {
        let s = 1.0 / graph.node_weights[a].sqrt();
        for i in 0..k {
            f.set(a, i, s * eigen.values[i].sqrt() * eigen.vectors.get(a, i));
        }
    }
    Ok(f)
}

/// A spectrum of `graph` and an embedding dimension `k` it can be compared at.
pub(crate) fn check_eigen(
    graph: &AugmentationGraph,
    eigen: &SymmetricEigen,
    k: usize,
) -> SpectralResult<()> {
    graph.check_k(k)?;
    let n = graph.len();
    if eigen.values.len() != n || eigen.vectors.rows != n || eigen.vectors.cols != n {
        return invalid(
            "spectrum",
            format!(
                "{} eigenvalues for a graph of {n} nodes",
                eigen.values.len()
            ),
        );
    }
    Ok(())
}

/// `‖Ā − FFᵀ‖²_F` with `F = D^{1/2} f`.
pub fn approximation_error(graph: &AugmentationGraph, f: &Matrix) -> SpectralResult<f64> {
    let big_f = normalized_embedding(graph, f)?;
    let approx = big_f.matmul(&big_f.transpose())?;
    Ok(sq_dist(&graph.normalized_adjacency().data, &approx.data))
}

/// The Eckart–Young optimum `Σ_{i>k} λᵢ²` of `‖Ā − FFᵀ‖²_F` over rank-`k` `F`. It is the
/// optimum over `FFᵀ` (positive semi-definite) as long as the top `k` eigenvalues are
/// non-negative, which holds for every graph from [`AugmentationGraph::from_points`].
pub fn eckart_young_optimum(eigen: &SymmetricEigen, k: usize) -> SpectralResult<f64> {
    if k == 0 || k >= eigen.values.len() {
        return invalid("k", format!("{k} is not in 1..{}", eigen.values.len()));
    }
    Ok(eigen.values[k..].iter().map(|l| l * l).sum())
}

/// How far `f` is above the optimum: `‖Ā − FFᵀ‖²_F − Σ_{i>k} λᵢ²` with `k = f.cols`; never
/// negative beyond rounding.
pub fn eckart_young_gap(
    graph: &AugmentationGraph,
    eigen: &SymmetricEigen,
    f: &Matrix,
) -> SpectralResult<f64> {
    check_eigen(graph, eigen, f.cols)?;
    Ok(approximation_error(graph, f)? - eckart_young_optimum(eigen, f.cols)?)
}
