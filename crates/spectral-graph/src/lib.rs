//! The spectral guarantee of HaoChen et al. (2021), "Provable guarantees for self-supervised
//! deep learning with spectral contrastive loss", checked exactly on a graph small enough to
//! decompose.
//!
//! Contrastive learning is read as a graph problem. The nodes are augmented views; the weight
//! `w_ab` of an edge is the probability that a positive pair is `(a, b)`, and the node weight
//! `w_a = Σ_b w_ab` is the probability of drawing `a` at all. The *population* spectral
//! contrastive loss of an embedding `f` (one row `f_a` per node) is
//!
//! ```text
//! L(f) = −2 Σ_ab w_ab f_aᵀf_b + Σ_ab w_a w_b (f_aᵀf_b)²
//! ```
//!
//! the expectation of the sampled loss `−2 f(x)ᵀf(x⁺) + (f(x)ᵀf(x⁻))²`. Writing
//! `F = D^{1/2} f` (row `a` scaled by `√w_a`) and `Ā = D^{-1/2} W D^{-1/2}`,
//! `L(f) = ‖Ā − FFᵀ‖²_F − ‖Ā‖²_F`, so minimising the contrastive loss *is* a rank-`k`
//! approximation of `Ā`, and by Eckart–Young its minimum is reached by the top-`k`
//! eigenvectors scaled by `√λᵢ`, with `‖Ā − FFᵀ‖²_F = Σ_{i>k} λᵢ²`.
//!
//! For labels `y_a = ±1` and `u = D^{1/2}y` (a unit vector), weighted least squares on the
//! embeddings leaves the residual `‖u − P_F u‖² = Σ_{i>k} βᵢ²` with `βᵢ = uᵀvᵢ`; a Rayleigh
//! quotient argument bounds it by `uᵀ(I − Ā)u / λᴸ_{k+1} = 2α / λᴸ_{k+1}`, where `α` is the
//! probability that a positive pair crosses the two classes and `λᴸ_{k+1} = 1 − λ_{k+1}(Ā)`
//! is the `(k+1)`-th smallest eigenvalue of the normalised Laplacian.
//!
//! [`AugmentationGraph`] builds such a graph from real digits, [`fit_free_embeddings`] trains
//! a free embedding table on the loss with Adam, and [`guarantee_report`] compares the result
//! with the exact spectrum (see `docs/SPECTRAL.md`).

use std::path::PathBuf;

use linear_probe::linalg::LinalgError;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::SplitMix64;

mod bound;
mod digits;
mod graph;
mod loss;
mod optimum;
#[cfg(test)]
mod tests;
#[cfg(test)]
use {digits::augment, graph::median};

pub use bound::{
    beta_tail, guarantee_report, regression_bound, regression_residual, GuaranteeReport,
};
pub use digits::{load_digits, parse_digits, DigitGraphConfig, Digits, DIGIT_SIDE};
pub use graph::AugmentationGraph;
pub use loss::{
    fit_free_embeddings, normalized_embedding, population_loss, spectral_population_loss,
};
pub use optimum::{
    approximation_error, eckart_young_gap, eckart_young_optimum, spectral_embedding,
};

/// Why a spectral computation was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpectralError {
    /// An input is empty, non-finite, of the wrong shape or out of range.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The rejected input.
        what: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// The digits file could not be read.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A dense decomposition failed (for example a rank-deficient embedding in a regression).
    #[error(transparent)]
    Linalg(#[from] LinalgError),
    /// Tensor error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this module.
pub type SpectralResult<T> = std::result::Result<T, SpectralError>;

pub(crate) fn invalid<T>(what: &'static str, reason: impl Into<String>) -> SpectralResult<T> {
    Err(SpectralError::Invalid {
        what,
        reason: reason.into(),
    })
}

/// The workspace's one seeded generator: graphs and initialisations repeat from a seed.
pub(crate) fn seeded(seed: u64) -> SplitMix64 {
    SplitMix64::seed_from_u64(seed)
}

/// A standard normal draw.
pub(crate) fn normal(rng: &mut SplitMix64) -> f64 {
    rng.sample(StandardNormal)
}
