//! The population spectral contrastive loss, and a free embedding table trained on it.

use candle_core::{DType, Device, Tensor, Var};
use linear_probe::linalg::Matrix;

use crate::{invalid, normal, seeded, AugmentationGraph, SpectralResult};

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
