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

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use linear_probe::linalg::{cholesky_solve, symmetric_eigen, LinalgError, Matrix, SymmetricEigen};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::SplitMix64;
use serde::Serialize;

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

fn invalid<T>(what: &'static str, reason: impl Into<String>) -> SpectralResult<T> {
    Err(SpectralError::Invalid {
        what,
        reason: reason.into(),
    })
}

/// The workspace's one seeded generator: graphs and initialisations repeat from a seed.
fn seeded(seed: u64) -> SplitMix64 {
    SplitMix64::seed_from_u64(seed)
}

/// A standard normal draw.
fn normal(rng: &mut SplitMix64) -> f64 {
    rng.sample(StandardNormal)
}

/// The 8×8 digits data set: pixels scaled from 0–16 to `[0, 1]`, one image per row.
#[derive(Debug, Clone)]
pub struct Digits {
    /// 64 values per image, row-major.
    pub images: Vec<Vec<f64>>,
    /// Class of each image, 0–9.
    pub labels: Vec<u8>,
}

/// Side of a digit image.
pub const DIGIT_SIDE: usize = 8;

/// Reads `digits.csv` (header `p0..p63,label`, pixels 0–16).
pub fn load_digits(path: &Path) -> SpectralResult<Digits> {
    let text = std::fs::read_to_string(path).map_err(|source| SpectralError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_digits(&text)
}

/// Parses the text of `digits.csv`; see [`load_digits`].
pub fn parse_digits(text: &str) -> SpectralResult<Digits> {
    let columns = DIGIT_SIDE * DIGIT_SIDE + 1;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().map_or(0, |h| h.split(',').count());
    if header != columns {
        return invalid(
            "digits file",
            format!("header has {header} columns, want {columns}"),
        );
    }
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for (i, line) in lines.enumerate() {
        let values: Vec<&str> = line.split(',').map(str::trim).collect();
        let row = |reason: String| invalid("digits file", format!("row {}: {reason}", i + 1));
        let Some((label, pixels)) = values.split_last().filter(|_| values.len() == columns) else {
            return row(format!("{} columns, want {columns}", values.len()));
        };
        // NaN fails the range check too.
        let pixel = |v: &&str| v.parse::<f64>().ok().filter(|p| (0.0..=16.0).contains(p));
        match pixels.iter().find(|v| pixel(v).is_none()) {
            Some(v) => return row(format!("bad pixel {v:?}")),
            None => images.push(pixels.iter().filter_map(pixel).map(|p| p / 16.0).collect()),
        }
        match label.parse::<u8>() {
            Ok(l) if l <= 9 => labels.push(l),
            _ => return row(format!("bad label {label:?}")),
        }
    }
    if images.is_empty() {
        return invalid("digits file", "it has a header but no rows");
    }
    Ok(Digits { images, labels })
}

/// How the augmentation graph is drawn from the digits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DigitGraphConfig {
    /// The two classes; the first gets `y = +1`, the second `y = −1`.
    pub classes: [u8; 2],
    /// Origins (clean images) per class: the first ones of each class in file order.
    pub origins_per_class: usize,
    /// Augmented views drawn from each origin; the graph has
    /// `2 · origins_per_class · views_per_origin` nodes.
    pub views_per_origin: usize,
    /// Largest translation in pixels, drawn uniformly per axis from `−max_shift..=max_shift`
    /// (zero fill).
    pub max_shift: usize,
    /// Intensity gain drawn uniformly from `[1 − gain_jitter, 1 + gain_jitter]`.
    pub gain_jitter: f64,
    /// Standard deviation of the per-pixel Gaussian noise (pixels are in `[0, 1]`); the result
    /// is clipped back to `[0, 1]`.
    pub noise_std: f64,
    /// The kernel width is `sigma_scale ×` the median distance between a view and its own
    /// origin, so a view is typically generated by its own origin while near-identical digits
    /// of other origins share some of its mass.
    pub sigma_scale: f64,
    /// Seed of the augmentations.
    pub seed: u64,
}

impl Default for DigitGraphConfig {
    fn default() -> Self {
        Self {
            classes: [4, 9],
            origins_per_class: 30,
            views_per_origin: 5,
            max_shift: 1,
            gain_jitter: 0.15,
            noise_std: 0.05,
            sigma_scale: 0.25,
            seed: 17,
        }
    }
}

/// Applies one random augmentation (shift, gain, noise) to an 8×8 image in `[0, 1]`.
fn augment(image: &[f64], cfg: &DigitGraphConfig, rng: &mut SplitMix64) -> Vec<f64> {
    let s = DIGIT_SIDE as isize;
    let m = cfg.max_shift as i64;
    let mut offset = || rng.random_range(-m..=m) as isize;
    let (dx, dy) = (offset(), offset());
    let gain = 1.0 + cfg.gain_jitter * (2.0 * rng.random::<f64>() - 1.0);
    let mut out = vec![0.0; image.len()];
    for r in 0..s {
        for c in 0..s {
            let (sr, sc) = (r - dy, c - dx);
            let src = if (0..s).contains(&sr) && (0..s).contains(&sc) {
                image[(sr * s + sc) as usize]
            } else {
                0.0
            };
            let v = gain * src + cfg.noise_std * normal(rng);
            out[(r * s + c) as usize] = v.clamp(0.0, 1.0);
        }
    }
    out
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// A weighted augmentation graph: `weights[a][b] = w_ab` is the probability that a positive
/// pair is `(a, b)`, so the matrix is symmetric, non-negative and sums to one.
#[derive(Debug, Clone)]
pub struct AugmentationGraph {
    /// `n × n` edge weights `w_ab`, summing to 1.
    pub weights: Matrix,
    /// Node weights `w_a = Σ_b w_ab`, all positive, summing to 1.
    pub node_weights: Vec<f64>,
    /// Two-cluster labelling `y_a ∈ {+1, −1}`.
    pub labels: Vec<i8>,
}

impl AugmentationGraph {
    /// Wraps explicit edge weights, rescaled to sum to one. Rejects empty, non-square,
    /// non-finite, negative or non-symmetric weights, isolated nodes and labels other than
    /// ±1, because each would make `D^{-1/2}` or the guarantee meaningless.
    pub fn from_weights(weights: Matrix, labels: Vec<i8>) -> SpectralResult<Self> {
        let n = weights.rows;
        if n == 0 {
            return invalid("graph", "it has no nodes");
        }
        if weights.cols != n {
            return invalid(
                "graph",
                format!("weights are {}×{}, not square", n, weights.cols),
            );
        }
        if labels.len() != n {
            return invalid("labels", format!("{} labels for {n} nodes", labels.len()));
        }
        if let Some(a) = labels.iter().position(|&y| y != 1 && y != -1) {
            return invalid(
                "labels",
                format!("node {a} has label {}, not ±1", labels[a]),
            );
        }
        let mut total = 0.0;
        for a in 0..n {
            for b in 0..n {
                let w = weights.get(a, b);
                if !w.is_finite() || w < 0.0 {
                    return invalid("graph", format!("weight ({a}, {b}) is {w}"));
                }
                let t = weights.get(b, a);
                if (w - t).abs() > 1e-12 * w.abs().max(t.abs()).max(f64::MIN_POSITIVE) {
                    return invalid(
                        "graph",
                        format!("weights are not symmetric at ({a}, {b}): {w} vs {t}"),
                    );
                }
                total += w;
            }
        }
        if total <= 0.0 || !total.is_finite() {
            return invalid("graph", format!("total weight is {total}"));
        }
        let mut weights = weights;
        weights.data.iter_mut().for_each(|w| *w /= total);
        // Average with the transpose so the stored matrix is exactly symmetric.
        for a in 0..n {
            for b in 0..a {
                let m = 0.5 * (weights.get(a, b) + weights.get(b, a));
                weights.set(a, b, m);
                weights.set(b, a, m);
            }
        }
        let node_weights: Vec<f64> = (0..n).map(|a| weights.row(a).iter().sum()).collect();
        if let Some(a) = node_weights.iter().position(|&w| w <= 0.0) {
            return invalid("graph", format!("node {a} has no edges"));
        }
        Ok(Self {
            weights,
            node_weights,
            labels,
        })
    }

    /// The soft augmentation graph of views and the origins that generated them.
    ///
    /// Origin `o` generates view `a` with probability
    /// `p(a|o) ∝ exp(−‖x_a − x_o‖² / (2σ²))` over all views, and a positive pair is two
    /// independent draws from a uniformly chosen origin:
    /// `w_ab = (1/N_o) Σ_o p(a|o) p(b|o)`. Hence `W = PᵀP / N_o` is a Gram matrix, so `Ā` is
    /// positive semi-definite — every eigenvalue lies in `[0, 1]` — and different origins
    /// connect through views that both could have produced.
    pub fn from_points(
        origins: &[Vec<f64>],
        views: &[Vec<f64>],
        labels: Vec<i8>,
        sigma: f64,
    ) -> SpectralResult<Self> {
        if origins.is_empty() || views.is_empty() {
            return invalid("points", "no origins or no views");
        }
        if !(sigma.is_finite() && sigma > 0.0) {
            return invalid("sigma", format!("{sigma} is not a positive number"));
        }
        let dim = origins[0].len();
        if dim == 0 {
            return invalid("points", "points have no coordinates");
        }
        for (what, set) in [("origins", origins), ("views", views)] {
            for (i, p) in set.iter().enumerate() {
                if p.len() != dim {
                    return invalid(
                        "points",
                        format!("{what} {i} has {} values, not {dim}", p.len()),
                    );
                }
                if p.iter().any(|v| !v.is_finite()) {
                    return invalid("points", format!("{what} {i} has a non-finite value"));
                }
            }
        }
        let n = views.len();
        if labels.len() != n {
            return invalid("labels", format!("{} labels for {n} views", labels.len()));
        }
        let two_s2 = 2.0 * sigma * sigma;
        // p(a|o) row by row, normalised by a log-sum-exp shift so no row underflows to zero.
        let mut p = Matrix::zeros(origins.len(), n);
        for (o, x_o) in origins.iter().enumerate() {
            let logits: Vec<f64> = views
                .iter()
                .map(|x_a| -sq_dist(x_a, x_o) / two_s2)
                .collect();
            let top = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| (l - top).exp()).collect();
            let z: f64 = e.iter().sum();
            for (a, v) in e.into_iter().enumerate() {
                p.set(o, a, v / z);
            }
        }
        let mut w = p.gram();
        let scale = 1.0 / origins.len() as f64;
        w.data.iter_mut().for_each(|v| *v *= scale);
        Self::from_weights(w, labels).map_err(|e| match e {
            SpectralError::Invalid { what, reason } if reason.contains("no edges") => {
                SpectralError::Invalid {
                    what,
                    reason: format!("{reason}: no origin reaches it; increase sigma"),
                }
            }
            e => e,
        })
    }

    /// The augmentation graph of two digit classes; see [`DigitGraphConfig`]. Also returns σ.
    pub fn from_digits(digits: &Digits, cfg: &DigitGraphConfig) -> SpectralResult<(Self, f64)> {
        if cfg.classes[0] == cfg.classes[1] || cfg.classes.iter().any(|&c| c > 9) {
            return invalid(
                "classes",
                format!("{:?} are not two distinct digits", cfg.classes),
            );
        }
        if cfg.origins_per_class == 0 || cfg.views_per_origin == 0 {
            return invalid(
                "graph size",
                "need at least one origin and one view per origin",
            );
        }
        if cfg.max_shift >= DIGIT_SIDE {
            return invalid(
                "max_shift",
                format!("{} shifts the digit out", cfg.max_shift),
            );
        }
        let jitter_ok = (0.0..1.0).contains(&cfg.gain_jitter);
        let noise_ok = cfg.noise_std.is_finite() && cfg.noise_std >= 0.0;
        if !(jitter_ok && noise_ok) {
            return invalid(
                "augmentation",
                "gain_jitter must be in [0, 1), noise_std ≥ 0",
            );
        }
        if !(cfg.sigma_scale.is_finite() && cfg.sigma_scale > 0.0) {
            return invalid(
                "sigma_scale",
                format!("{} is not positive", cfg.sigma_scale),
            );
        }
        let mut rng = seeded(cfg.seed);
        let (mut origins, mut views, mut labels, mut own) = (vec![], vec![], vec![], vec![]);
        for (ci, &class) in cfg.classes.iter().enumerate() {
            let chosen: Vec<&Vec<f64>> = digits
                .images
                .iter()
                .zip(&digits.labels)
                .filter(|(_, &l)| l == class)
                .map(|(x, _)| x)
                .take(cfg.origins_per_class)
                .collect();
            if chosen.len() < cfg.origins_per_class {
                return invalid(
                    "graph size",
                    format!(
                        "class {class} has {} images, {} wanted",
                        chosen.len(),
                        cfg.origins_per_class
                    ),
                );
            }
            for x in chosen {
                if x.len() != DIGIT_SIDE * DIGIT_SIDE {
                    return invalid("digits", format!("an image has {} pixels, not 64", x.len()));
                }
                for _ in 0..cfg.views_per_origin {
                    let v = augment(x, cfg, &mut rng);
                    own.push(sq_dist(&v, x).sqrt());
                    views.push(v);
                    labels.push(if ci == 0 { 1 } else { -1 });
                }
                origins.push(x.clone());
            }
        }
        let sigma = cfg.sigma_scale * median(own);
        Ok((Self::from_points(&origins, &views, labels, sigma)?, sigma))
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.node_weights.len()
    }

    /// Whether the graph has no nodes (never true for a constructed graph).
    pub fn is_empty(&self) -> bool {
        self.node_weights.is_empty()
    }

    /// `Ā = D^{-1/2} W D^{-1/2}`: its top eigenvalue is 1 with eigenvector `√w`.
    pub fn normalized_adjacency(&self) -> Matrix {
        let s: Vec<f64> = self.node_weights.iter().map(|w| 1.0 / w.sqrt()).collect();
        let mut a = self.weights.clone();
        for (row, si) in a.data.chunks_exact_mut(self.len()).zip(&s) {
            row.iter_mut().zip(&s).for_each(|(v, sj)| *v *= si * sj);
        }
        a
    }

    /// The exact spectrum of `Ā`, eigenvalues descending.
    pub fn spectrum(&self) -> SpectralResult<SymmetricEigen> {
        Ok(symmetric_eigen(&self.normalized_adjacency())?)
    }

    /// `α = Σ_{a,b: y_a ≠ y_b} w_ab`: the probability that a positive pair crosses the two
    /// clusters (both orders counted, as the pair is ordered).
    pub fn cut_alpha(&self) -> f64 {
        let n = self.len();
        (0..n * n)
            .filter(|&i| self.labels[i / n] != self.labels[i % n])
            .map(|i| self.weights.data[i])
            .sum()
    }

    /// `u = D^{1/2} y`; a unit vector because the node weights sum to one.
    pub fn label_vector(&self) -> Vec<f64> {
        self.node_weights
            .iter()
            .zip(&self.labels)
            .map(|(w, &y)| w.sqrt() * f64::from(y))
            .collect()
    }

    /// `uᵀ(I − Ā)u`, computed from `Ā` directly; it equals `2α` (see
    /// [`AugmentationGraph::cut_alpha`]) because `yᵀ(D − W)y = Σ_ab w_ab (1 − y_a y_b)`.
    pub fn laplacian_form(&self) -> f64 {
        let (u, a) = (self.label_vector(), self.normalized_adjacency());
        (0..self.len())
            .map(|i| u[i] * u[i] - u[i] * a.row(i).iter().zip(&u).map(|(x, y)| x * y).sum::<f64>())
            .sum()
    }

    /// Edge weights as an `n × n` f64 tensor, for [`spectral_population_loss`].
    pub fn pair_weights_tensor(&self, device: &Device) -> SpectralResult<Tensor> {
        let n = self.len();
        Ok(Tensor::from_vec(self.weights.data.clone(), (n, n), device)?)
    }

    /// Node weights as a length-`n` f64 tensor, for [`spectral_population_loss`].
    pub fn node_weights_tensor(&self, device: &Device) -> SpectralResult<Tensor> {
        Ok(Tensor::from_vec(
            self.node_weights.clone(),
            self.len(),
            device,
        )?)
    }

    fn check_embedding(&self, f: &Matrix) -> SpectralResult<()> {
        if f.rows != self.len() {
            return invalid(
                "embedding",
                format!("{} rows for {} nodes", f.rows, self.len()),
            );
        }
        if f.cols == 0 {
            return invalid("embedding", "it has no columns");
        }
        if f.data.iter().any(|v| !v.is_finite()) {
            return invalid("embedding", "it has a non-finite value");
        }
        Ok(())
    }

    fn check_k(&self, k: usize) -> SpectralResult<()> {
        if k == 0 || k >= self.len() {
            return invalid(
                "k",
                format!(
                    "{k} is not in 1..{} for a graph of {} nodes",
                    self.len(),
                    self.len()
                ),
            );
        }
        Ok(())
    }
}

/// The population spectral contrastive loss, differentiable through candle:
///
/// ```text
/// L(f) = −2 Σ_ab w_ab f_aᵀf_b + Σ_ab w_a w_b (f_aᵀf_b)²
/// ```
///
/// with `f` the `n × k` embedding table, `pair_weights` the `n × n` positive-pair
/// probabilities `w_ab` and `node_weights` the `n` marginals `w_a`. It is the expectation of
/// the sampled loss `−2 f(x)ᵀf(x⁺) + (f(x)ᵀf(x⁻))²` (positive pairs drawn from `w_ab`,
/// negatives independently from `w_a`), and equals `‖Ā − FFᵀ‖²_F − ‖Ā‖²_F` with
/// `F = D^{1/2} f`. All three tensors must share a dtype; f64 is what the guarantee needs.
pub fn spectral_population_loss(
    f: &Tensor,
    pair_weights: &Tensor,
    node_weights: &Tensor,
) -> candle_core::Result<Tensor> {
    let (n, k) = f.dims2()?;
    let (p, q) = pair_weights.dims2()?;
    let m = node_weights.dims1()?;
    if k == 0 || n == 0 {
        candle_core::bail!("spectral loss: embedding is {n}×{k}");
    }
    if (p, q) != (n, n) || m != n {
        candle_core::bail!("spectral loss: {n} embeddings, pair weights {p}×{q}, {m} node weights");
    }
    // Inner products f_aᵀf_b of every pair.
    let gram = f.matmul(&f.t()?.contiguous()?)?;
    let positive = (pair_weights * &gram)?.sum_all()?;
    let marginals = node_weights
        .unsqueeze(1)?
        .broadcast_mul(&node_weights.unsqueeze(0)?)?;
    let negative = (marginals * gram.sqr()?)?.sum_all()?;
    negative - (positive * 2.0)?
}

/// [`spectral_population_loss`] in f64 on a [`Matrix`] embedding (one row per node).
pub fn population_loss(graph: &AugmentationGraph, f: &Matrix) -> SpectralResult<f64> {
    graph.check_embedding(f)?;
    let n = graph.len();
    let mut loss = 0.0;
    for a in 0..n {
        for b in 0..n {
            let dot: f64 = f.row(a).iter().zip(f.row(b)).map(|(x, y)| x * y).sum();
            loss += -2.0 * graph.weights.get(a, b) * dot
                + graph.node_weights[a] * graph.node_weights[b] * dot * dot;
        }
    }
    Ok(loss)
}

/// `F = D^{1/2} f`: row `a` scaled by `√w_a`, the coordinates in which the loss is a matrix
/// approximation of `Ā`.
pub fn normalized_embedding(graph: &AugmentationGraph, f: &Matrix) -> SpectralResult<Matrix> {
    graph.check_embedding(f)?;
    let mut out = f.clone();
    for (row, w) in out.data.chunks_exact_mut(f.cols).zip(&graph.node_weights) {
        row.iter_mut().for_each(|v| *v *= w.sqrt());
    }
    Ok(out)
}

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
fn check_eigen(graph: &AugmentationGraph, eigen: &SymmetricEigen, k: usize) -> SpectralResult<()> {
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

/// Trains a free `n × k` embedding table on [`spectral_population_loss`] with full-graph Adam
/// (β = 0.9, 0.999) in f64, the learning rate decaying by a cosine from `lr` to `lr / 1000`
/// so the iterate settles instead of hovering at Adam's step size. Initialisation is
/// `N(0, 0.1²)` from `seed` (zero is a saddle point of the loss).
pub fn fit_free_embeddings(
    graph: &AugmentationGraph,
    k: usize,
    steps: usize,
    lr: f64,
    seed: u64,
) -> SpectralResult<Matrix> {
    graph.check_k(k)?;
    if steps == 0 {
        return invalid("steps", "need at least one step");
    }
    if !(lr.is_finite() && lr > 0.0) {
        return invalid("lr", format!("{lr} is not a positive number"));
    }
    let n = graph.len();
    let device = Device::Cpu;
    let pairs = graph.pair_weights_tensor(&device)?;
    let nodes = graph.node_weights_tensor(&device)?;
    let mut rng = seeded(seed);
    let mut params: Vec<f64> = (0..n * k).map(|_| 0.1 * normal(&mut rng)).collect();
    let var = Var::from_tensor(&Tensor::from_vec(params.clone(), (n, k), &device)?)?;
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-12f64);
    let (mut m, mut v) = (vec![0.0; n * k], vec![0.0; n * k]);
    for t in 1..=steps {
        let loss = spectral_population_loss(var.as_tensor(), &pairs, &nodes)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return invalid(
                "lr",
                format!("loss became {value} at step {t}; lower the rate"),
            );
        }
        let grads = loss.backward()?;
        let Some(g) = grads.get(var.as_tensor()) else {
            return invalid("embedding", "no gradient reached the table");
        };
        let g: Vec<f64> = g.flatten_all()?.to_vec1()?;
        let progress = (t - 1) as f64 / steps.max(2).saturating_sub(1) as f64;
        let rate =
            lr * (1e-3 + (1.0 - 1e-3) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()));
        let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        for i in 0..n * k {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            params[i] -= rate * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
        }
        var.set(&Tensor::from_vec(params.clone(), (n, k), &device)?)?;
    }
    Ok(Matrix::from_vec(n, k, params)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two pairs {0, 1} and {2, 3}, labelled +1 and −1, with raw weights whose normalised
    /// adjacency is `W / 6`: eigenvalues 1, 2/3, 0, −1/3 with eigenvectors (1,1,1,1)/2,
    /// (1,1,−1,−1)/2, (1,−1,1,−1)/2, (1,−1,−1,1)/2; four of the 24 units of weight cross.
    fn four_nodes() -> AugmentationGraph {
        let w = Matrix::from_rows(&[
            vec![2.0, 3.0, 1.0, 0.0],
            vec![3.0, 2.0, 0.0, 1.0],
            vec![1.0, 0.0, 2.0, 3.0],
            vec![0.0, 1.0, 3.0, 2.0],
        ])
        .unwrap();
        AugmentationGraph::from_weights(w, vec![1, 1, -1, -1]).unwrap()
    }

    fn random_points(count: usize, dim: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = seeded(seed);
        (0..count)
            .map(|_| (0..dim).map(|_| normal(&mut rng)).collect())
            .collect()
    }

    fn random_graph(origins: usize, views_each: usize, seed: u64) -> AugmentationGraph {
        let o = random_points(origins, 3, seed);
        let mut rng = seeded(seed ^ 0xABCD);
        let mut views = vec![];
        let mut labels = vec![];
        for (i, x) in o.iter().enumerate() {
            for _ in 0..views_each {
                views.push(x.iter().map(|v| v + 0.3 * normal(&mut rng)).collect());
                labels.push(if i % 2 == 0 { 1 } else { -1 });
            }
        }
        AugmentationGraph::from_points(&o, &views, labels, 0.8).unwrap()
    }

    fn tensor(m: &Matrix) -> Tensor {
        Tensor::from_vec(m.data.clone(), (m.rows, m.cols), &Device::Cpu).unwrap()
    }

    fn candle_loss(g: &AugmentationGraph, f: &Matrix) -> f64 {
        let dev = Device::Cpu;
        spectral_population_loss(
            &tensor(f),
            &g.pair_weights_tensor(&dev).unwrap(),
            &g.node_weights_tensor(&dev).unwrap(),
        )
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
    }

    #[test]
    fn four_node_graph_has_its_analytic_spectrum_and_cut() {
        let g = four_nodes();
        assert!(g.node_weights.iter().all(|w| (w - 0.25).abs() < 1e-15));
        let e = g.spectrum().unwrap();
        for (got, want) in e.values.iter().zip([1.0, 2.0 / 3.0, 0.0, -1.0 / 3.0]) {
            assert!((got - want).abs() < 1e-12, "{:?}", e.values);
        }
        assert!((g.cut_alpha() - 1.0 / 6.0).abs() < 1e-15);
        assert!((g.laplacian_form() - 1.0 / 3.0).abs() < 1e-14);
        // u = y/2 is the second eigenvector: nothing is left outside the top two, and for
        // k = 1 the bound 2α/λᴸ₂ = (1/3)/(1/3) = 1 is met with equality.
        assert!(beta_tail(&g, &e, 2).unwrap() < 1e-24);
        assert!((beta_tail(&g, &e, 1).unwrap() - 1.0).abs() < 1e-12);
        assert!((regression_bound(&g, &e, 1).unwrap() - 1.0).abs() < 1e-12);
        // The optimum for k = 2 is (0)² + (1/3)² and the loss there is −(1 + 4/9).
        assert!((eckart_young_optimum(&e, 2).unwrap() - 1.0 / 9.0).abs() < 1e-12);
        let f = spectral_embedding(&g, &e, 2).unwrap();
        assert!((population_loss(&g, &f).unwrap() + 13.0 / 9.0).abs() < 1e-12);
        assert!((candle_loss(&g, &f) + 13.0 / 9.0).abs() < 1e-12);
        assert!(eckart_young_gap(&g, &e, &f).unwrap().abs() < 1e-12);
        assert!(regression_residual(&g, &f).unwrap() < 1e-20);
        // λ₃ = 0: no real embedding of rank 3 reaches the (PSD-restricted) optimum.
        assert!(spectral_embedding(&g, &e, 3).is_err());
    }

    #[test]
    fn loss_is_the_matrix_approximation_error_shifted() {
        let g = random_graph(4, 3, 5);
        let a = g.normalized_adjacency();
        let mut rng = seeded(11);
        let f = Matrix::from_vec(
            g.len(),
            3,
            (0..g.len() * 3).map(|_| normal(&mut rng)).collect(),
        )
        .unwrap();
        let want = approximation_error(&g, &f).unwrap() - a.frobenius_sq();
        let f64_loss = population_loss(&g, &f).unwrap();
        assert!(
            (f64_loss - want).abs() < 1e-10 * want.abs().max(1.0),
            "{f64_loss} vs {want}"
        );
        let c = candle_loss(&g, &f);
        assert!(
            (c - want).abs() < 1e-10 * want.abs().max(1.0),
            "{c} vs {want}"
        );
    }

    #[test]
    fn soft_graph_is_a_normalised_psd_gram_matrix() {
        let g = random_graph(5, 4, 9);
        let total: f64 = g.weights.data.iter().sum();
        assert!((total - 1.0).abs() < 1e-12);
        for a in 0..g.len() {
            for b in 0..g.len() {
                assert_eq!(g.weights.get(a, b), g.weights.get(b, a));
                assert!(g.weights.get(a, b) > 0.0);
            }
        }
        let e = g.spectrum().unwrap();
        assert!(
            (e.values[0] - 1.0).abs() < 1e-12,
            "top eigenvalue {}",
            e.values[0]
        );
        assert!(e.values.iter().all(|&l| l > -1e-12), "{:?}", e.values);
        // The top eigenvector is √w (up to sign).
        let v0 = e.vector(0);
        let s = v0[0].signum();
        for (v, w) in v0.iter().zip(&g.node_weights) {
            assert!((s * v - w.sqrt()).abs() < 1e-10);
        }
        assert!((g.laplacian_form() - 2.0 * g.cut_alpha()).abs() < 1e-13);
    }

    #[test]
    fn candle_gradient_matches_finite_differences() {
        let g = random_graph(3, 2, 21);
        let (n, k) = (g.len(), 2);
        let mut rng = seeded(3);
        let f = Matrix::from_vec(n, k, (0..n * k).map(|_| normal(&mut rng)).collect()).unwrap();
        let dev = Device::Cpu;
        let var = Var::from_tensor(&tensor(&f)).unwrap();
        let loss = spectral_population_loss(
            var.as_tensor(),
            &g.pair_weights_tensor(&dev).unwrap(),
            &g.node_weights_tensor(&dev).unwrap(),
        )
        .unwrap();
        let grads = loss.backward().unwrap();
        let grad: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let h = 1e-6;
        assert_eq!(grad.len(), n * k);
        for (i, &analytic) in grad.iter().enumerate() {
            let (mut up, mut down) = (f.clone(), f.clone());
            up.data[i] += h;
            down.data[i] -= h;
            let fd = (population_loss(&g, &up).unwrap() - population_loss(&g, &down).unwrap())
                / (2.0 * h);
            assert!(
                (fd - analytic).abs() < 1e-7 * (1.0 + fd.abs()),
                "{i}: {fd} vs {analytic}"
            );
        }
    }

    #[test]
    fn training_reaches_the_optimum_on_a_small_graph() {
        let g = random_graph(4, 3, 2);
        let e = g.spectrum().unwrap();
        let f = fit_free_embeddings(&g, 2, 600, 0.05, 1).unwrap();
        let gap = eckart_young_gap(&g, &e, &f).unwrap();
        assert!(gap > -1e-10 && gap < 1e-7, "gap {gap}");
        // Same seed, same table.
        assert_eq!(f, fit_free_embeddings(&g, 2, 600, 0.05, 1).unwrap());
    }

    #[test]
    fn augmentation_stays_in_range_and_is_reproducible() {
        let cfg = DigitGraphConfig {
            noise_std: 0.3,
            ..DigitGraphConfig::default()
        };
        let image: Vec<f64> = (0..64).map(|i| (i % 17) as f64 / 16.0).collect();
        let (mut r1, mut r2) = (seeded(4), seeded(4));
        for _ in 0..20 {
            let a = augment(&image, &cfg, &mut r1);
            assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
            assert_eq!(a, augment(&image, &cfg, &mut r2));
        }
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let ok = four_nodes().weights;
        let labels = vec![1, 1, -1, -1];
        let bad_weights = |m: Matrix, l: Vec<i8>| AugmentationGraph::from_weights(m, l).is_err();
        assert!(bad_weights(Matrix::zeros(0, 0), vec![]));
        assert!(bad_weights(Matrix::zeros(2, 3), vec![1, 1]));
        assert!(bad_weights(Matrix::zeros(4, 4), labels.clone()));
        assert!(bad_weights(ok.clone(), vec![1, 1, -1]));
        assert!(bad_weights(ok.clone(), vec![1, 0, -1, -1]));
        for (i, v) in [(1, f64::NAN), (1, -0.5), (2, 7.0), (1, f64::INFINITY)] {
            let mut m = ok.clone();
            m.data[i] = v;
            assert!(bad_weights(m, labels.clone()), "weight {v} at {i}");
        }
        let mut isolated = ok.clone();
        for j in 0..4 {
            isolated.set(3, j, 0.0);
            isolated.set(j, 3, 0.0);
        }
        assert!(bad_weights(isolated, labels.clone()));

        let pts = random_points(3, 2, 1);
        assert!(AugmentationGraph::from_points(&[], &pts, vec![1; 3], 1.0).is_err());
        assert!(AugmentationGraph::from_points(&pts, &[], vec![], 1.0).is_err());
        assert!(AugmentationGraph::from_points(&pts, &pts, vec![1; 3], 0.0).is_err());
        assert!(AugmentationGraph::from_points(&pts, &pts, vec![1; 3], f64::NAN).is_err());
        assert!(AugmentationGraph::from_points(&pts, &pts, vec![1; 2], 1.0).is_err());
        let mut nan = pts.clone();
        nan[1][0] = f64::NAN;
        assert!(AugmentationGraph::from_points(&pts, &nan, vec![1; 3], 1.0).is_err());
        let ragged = vec![vec![0.0, 1.0], vec![0.0]];
        assert!(AugmentationGraph::from_points(&pts, &ragged, vec![1; 2], 1.0).is_err());
        // A σ so small that a far view gets no mass from any origin.
        let far = vec![vec![0.0, 0.0], vec![1e6, 1e6]];
        let err = AugmentationGraph::from_points(&far[..1], &far, vec![1, -1], 1e-3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("increase sigma"), "{err}");

        let g = four_nodes();
        let e = g.spectrum().unwrap();
        for k in [0, 4, 9] {
            assert!(fit_free_embeddings(&g, k, 10, 0.01, 0).is_err(), "k = {k}");
            assert!(beta_tail(&g, &e, k).is_err());
            assert!(regression_bound(&g, &e, k).is_err());
            assert!(spectral_embedding(&g, &e, k).is_err());
            assert!(eckart_young_optimum(&e, k).is_err());
        }
        assert!(fit_free_embeddings(&g, 1, 0, 0.01, 0).is_err());
        assert!(fit_free_embeddings(&g, 1, 10, -1.0, 0).is_err());
        assert!(fit_free_embeddings(&g, 1, 10, f64::NAN, 0).is_err());
        // A learning rate large enough to blow up is reported, not returned as NaNs.
        assert!(fit_free_embeddings(&g, 1, 50, 1e200, 0).is_err());
        let short = Matrix::zeros(3, 2);
        assert!(population_loss(&g, &short).is_err());
        assert!(approximation_error(&g, &short).is_err());
        assert!(guarantee_report(&g, &e, &short).is_err());
        let mut nan_f = Matrix::zeros(4, 1);
        nan_f.data[2] = f64::NAN;
        assert!(population_loss(&g, &nan_f).is_err());
        // A collapsed embedding (both columns equal) makes FᵀF singular.
        let collapsed = Matrix::from_vec(4, 2, vec![1.0; 8]).unwrap();
        assert!(matches!(
            regression_residual(&g, &collapsed),
            Err(SpectralError::Linalg(_))
        ));
        let other = random_graph(3, 2, 1).spectrum().unwrap();
        assert!(beta_tail(&g, &other, 1).is_err());

        let dev = Device::Cpu;
        let (pw, nw) = (
            g.pair_weights_tensor(&dev).unwrap(),
            g.node_weights_tensor(&dev).unwrap(),
        );
        let f3 = Tensor::zeros((3, 2), DType::F64, &dev).unwrap();
        assert!(spectral_population_loss(&f3, &pw, &nw).is_err());
        let f0 = Tensor::zeros((4, 0), DType::F64, &dev).unwrap();
        assert!(spectral_population_loss(&f0, &pw, &nw).is_err());
        let f1 = Tensor::zeros(4, DType::F64, &dev).unwrap();
        assert!(spectral_population_loss(&f1, &pw, &nw).is_err());

        assert!(parse_digits("").is_err());
        assert!(parse_digits("a,b\n1,2\n").is_err());
        let header: Vec<String> = (0..64)
            .map(|i| format!("p{i}"))
            .chain(["label".into()])
            .collect();
        let header = header.join(",");
        let row = |pixel: &str, label: &str| {
            let mut v = vec!["0"; 64];
            v[5] = pixel;
            format!("{header}\n{},{label}\n", v.join(","))
        };
        assert!(parse_digits(&row("3", "4")).is_ok());
        assert!(parse_digits(&format!("{header}\n")).is_err());
        assert!(parse_digits(&row("17", "4")).is_err());
        assert!(parse_digits(&row("x", "4")).is_err());
        assert!(parse_digits(&row("NaN", "4")).is_err());
        assert!(parse_digits(&row("3", "10")).is_err());
        assert!(parse_digits(&row("3", "4").replace(",4\n", "\n")).is_err());
        assert!(load_digits(Path::new("/nonexistent/digits.csv")).is_err());
    }
}
