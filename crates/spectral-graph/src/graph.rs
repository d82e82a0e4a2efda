//! The weighted augmentation graph: edge and node weights, its normalised adjacency and spectrum.

use candle_core::{Device, Tensor};
use linear_probe::linalg::{symmetric_eigen, Matrix, SymmetricEigen};

use crate::digits::augment;
use crate::{invalid, seeded, DigitGraphConfig, Digits, SpectralError, SpectralResult, DIGIT_SIDE};

/// Squared Euclidean distance.
pub(crate) fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
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

    /// Edge weights as an `n × n` f64 tensor, for [`crate::spectral_population_loss`].
    pub fn pair_weights_tensor(&self, device: &Device) -> SpectralResult<Tensor> {
        let n = self.len();
        Ok(Tensor::from_vec(self.weights.data.clone(), (n, n), device)?)
    }

    /// Node weights as a length-`n` f64 tensor, for [`crate::spectral_population_loss`].
    pub fn node_weights_tensor(&self, device: &Device) -> SpectralResult<Tensor> {
        Ok(Tensor::from_vec(
            self.node_weights.clone(),
            self.len(),
            device,
        )?)
    }

    pub(crate) fn check_embedding(&self, f: &Matrix) -> SpectralResult<()> {
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

    pub(crate) fn check_k(&self, k: usize) -> SpectralResult<()> {
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
