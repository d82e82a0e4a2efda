//! Standardisation and the two linear read-outs: ridge regression on one-hot targets and
//! multinomial logistic regression, both with an unpenalised intercept.

use crate::linalg::{cholesky_solve, Matrix};
use crate::ProbeError;

/// Errors unless every value of `x` is finite, naming the first offending cell: a NaN would
/// otherwise silently poison every weight.
/// New rows for a fitted transform: the fitted number of columns, every value finite.
pub(crate) fn check_features(x: &Matrix, cols: usize) -> Result<(), ProbeError> {
    if x.cols != cols {
        return Err(ProbeError::LengthMismatch {
            what: "feature columns",
            expected: cols,
            got: x.cols,
        });
    }
    check_finite(x)
}

pub(crate) fn check_finite(x: &Matrix) -> Result<(), ProbeError> {
    match x.data.iter().position(|v| !v.is_finite()) {
        Some(p) => Err(ProbeError::NonFinite {
            row: p / x.cols.max(1),
            col: p % x.cols.max(1),
            value: x.data[p],
        }),
        None => Ok(()),
    }
}

fn check_xy(x: &Matrix, y: &[usize], n_classes: usize) -> Result<(), ProbeError> {
    if x.rows == 0 || x.cols == 0 {
        return Err(ProbeError::Empty(format!(
            "cannot fit on a {}×{} feature matrix",
            x.rows, x.cols
        )));
    }
    if y.len() != x.rows {
        return Err(ProbeError::LengthMismatch {
            what: "labels",
            expected: x.rows,
            got: y.len(),
        });
    }
    if n_classes < 2 {
        return Err(ProbeError::TooFewClasses(n_classes));
    }
    if let Some((i, &c)) = y.iter().enumerate().find(|(_, &c)| c >= n_classes) {
        return Err(ProbeError::InvalidParameter(format!(
            "label {i} is class {c}, but there are only {n_classes} classes"
        )));
    }
    check_finite(x)
}

fn check_penalty(lambda: f64, what: &str) -> Result<(), ProbeError> {
    if lambda.is_finite() && lambda > 0.0 {
        Ok(())
    } else {
        Err(ProbeError::InvalidParameter(format!(
            "{what} penalty must be positive and finite, got {lambda}"
        )))
    }
}

/// Per-feature centring and scaling, fitted on the training rows only so that nothing about
/// the test set leaks into the probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    /// Training mean of each feature.
    pub mean: Vec<f64>,
    /// `1 / std` of each feature; 0 for a feature that is constant in training, which then
    /// carries no information and is mapped to 0 everywhere instead of dividing by zero.
    pub inv_std: Vec<f64>,
}

impl Standardizer {
    /// Fits means and (population) standard deviations to the rows of `x`.
    pub fn fit(x: &Matrix) -> Result<Self, ProbeError> {
        if x.rows == 0 {
            return Err(ProbeError::Empty(
                "cannot standardise zero rows of features".into(),
            ));
        }
        check_finite(x)?;
        let n = x.rows as f64;
        let mut mean = vec![0.0; x.cols];
        for r in 0..x.rows {
            for (m, v) in mean.iter_mut().zip(x.row(r)) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; x.cols];
        for r in 0..x.rows {
            for ((s, v), m) in var.iter_mut().zip(x.row(r)).zip(&mean) {
                *s += (v - m) * (v - m);
            }
        }
        let inv_std = var
            .iter()
            .zip(&mean)
            .map(|(s, m): (&f64, &f64)| {
                let sd = (s / n).sqrt();
                // Rounding in the mean leaves ~1e-16 relative noise in a constant column.
                if sd <= 1e-10 * m.abs().max(1.0) {
                    0.0
                } else {
                    1.0 / sd
                }
            })
            .collect();
        Ok(Self { mean, inv_std })
    }

    /// Applies the fitted transform to any rows with the same features.
    pub fn transform(&self, x: &Matrix) -> Result<Matrix, ProbeError> {
        check_features(x, self.mean.len())?;
        let mut out = x.clone();
        for r in 0..x.rows {
            let row = &mut out.data[r * x.cols..(r + 1) * x.cols];
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.inv_std) {
                *v = (*v - m) * s;
            }
        }
        Ok(out)
    }
}

/// A linear classifier: class scores `x·W + b`, prediction by argmax.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearClassifier {
    /// `features × classes`.
    pub weights: Matrix,
    /// One intercept per class.
    pub bias: Vec<f64>,
}

impl LinearClassifier {
    /// Scores of every row of `x` for every class (`rows × classes`).
    pub fn scores(&self, x: &Matrix) -> Result<Matrix, ProbeError> {
        if x.cols != self.weights.rows {
            return Err(ProbeError::LengthMismatch {
                what: "feature columns",
                expected: self.weights.rows,
                got: x.cols,
            });
        }
        let mut s = x.matmul(&self.weights)?;
        let k = self.bias.len();
        for r in 0..s.rows {
            for (v, b) in s.data[r * k..(r + 1) * k].iter_mut().zip(&self.bias) {
                *v += b;
            }
        }
        Ok(s)
    }

    /// The highest-scoring class of every row (the lowest id on a tie).
    pub fn predict(&self, x: &Matrix) -> Result<Vec<usize>, ProbeError> {
        let s = self.scores(x)?;
        Ok((0..s.rows).map(|r| argmax(s.row(r))).collect())
    }
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Which linear system a ridge fit solves; both give the same weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RidgeSolver {
    /// The smaller of the two: primal when features ≤ examples, dual otherwise.
    #[default]
    Auto,
    /// `(XᵀX + nλI) W = XᵀY`, a `features × features` system.
    Primal,
    /// `W = Xᵀ (XXᵀ + nλI)⁻¹ Y`, an `examples × examples` system: a probe on 12288 raw
    /// pixels with 50 labels solves a 50×50 system instead of a 12288×12288 one.
    Dual,
}

/// Ridge regression onto one-hot class targets, the classic closed-form linear probe.
///
/// Minimises `‖X W + 1 bᵀ − Y‖² / n + λ ‖W‖²` over `W` and the unpenalised intercept `b`
/// (`n` = rows, `Y` one-hot). The intercept is handled by centring `X` and `Y`, so the
/// penalty never pulls class scores towards zero. Scaling the penalty by `n` keeps one `λ`
/// meaningful from 5 to 5000 labels on standardised features.
pub fn fit_ridge(
    x: &Matrix,
    y: &[usize],
    n_classes: usize,
    lambda: f64,
    solver: RidgeSolver,
) -> Result<LinearClassifier, ProbeError> {
    check_xy(x, y, n_classes)?;
    check_penalty(lambda, "ridge")?;
    let mut onehot = Matrix::zeros(x.rows, n_classes);
    for (r, &c) in y.iter().enumerate() {
        onehot.set(r, c, 1.0);
    }
    ridge_regression(x, &onehot, lambda, solver)
}

/// Multi-output ridge regression onto real targets (`rows × outputs`), the engine of
/// [`fit_ridge`]; inputs are assumed checked.
fn ridge_regression(
    x: &Matrix,
    targets: &Matrix,
    lambda: f64,
    solver: RidgeSolver,
) -> Result<LinearClassifier, ProbeError> {
    let (n, d, k) = (x.rows, x.cols, targets.cols);
    let x_mean = column_means(x);
    let y_mean = column_means(targets);
    let mut xc = x.clone();
    for r in 0..n {
        for (v, m) in xc.data[r * d..(r + 1) * d].iter_mut().zip(&x_mean) {
            *v -= m;
        }
    }
    let mut yc = targets.clone();
    for r in 0..n {
        for (v, m) in yc.data[r * k..(r + 1) * k].iter_mut().zip(&y_mean) {
            *v -= m;
        }
    }
    let penalty = lambda * n as f64;
    let use_dual = match solver {
        RidgeSolver::Auto => n < d,
        RidgeSolver::Primal => false,
        RidgeSolver::Dual => true,
    };
    let weights = if use_dual {
        let xt = xc.transpose();
        let mut kernel = xt.gram(); // X Xᵀ, n × n
        for i in 0..n {
            kernel.data[i * n + i] += penalty;
        }
        let alpha = cholesky_solve(&kernel, &yc)?;
        xt.matmul(&alpha)?
    } else {
        let mut a = xc.gram(); // Xᵀ X, d × d
        for i in 0..d {
            a.data[i * d + i] += penalty;
        }
        let rhs = xc.transpose().matmul(&yc)?;
        cholesky_solve(&a, &rhs)?
    };
    let bias = intercept(&x_mean, &y_mean, &weights);
    Ok(LinearClassifier { weights, bias })
}

fn column_means(x: &Matrix) -> Vec<f64> {
    let mut m = vec![0.0; x.cols];
    for r in 0..x.rows {
        for (a, v) in m.iter_mut().zip(x.row(r)) {
            *a += v;
        }
    }
    let n = x.rows.max(1) as f64;
    m.iter_mut().for_each(|a| *a /= n);
    m
}

/// `b = ȳ − Wᵀ x̄`: the intercept that makes the fit exact at the means.
fn intercept(x_mean: &[f64], y_mean: &[f64], w: &Matrix) -> Vec<f64> {
    let mut b = y_mean.to_vec();
    for (i, xm) in x_mean.iter().enumerate() {
        for (bj, wij) in b.iter_mut().zip(w.row(i)) {
            *bj -= xm * wij;
        }
    }
    b
}

/// Settings of [`fit_logistic`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticOptions {
    /// L2 penalty `λ` in `mean cross-entropy + λ/2 ‖W‖²` (intercepts are not penalised).
    /// Must be positive: with a few labels the classes are usually separable, and without a
    /// penalty the weights would grow without bound.
    pub lambda: f64,
    /// Most L-BFGS iterations.
    pub max_iter: usize,
    /// Stop when the largest gradient entry is below `tolerance × max(1, initial largest)`.
    pub tolerance: f64,
}

impl Default for LogisticOptions {
    /// `λ = 1e-2`, at most 2000 iterations, tolerance `1e-6`. On standardised features the
    /// bundled digits converge in about 100 iterations and 64×64 emoji pixels (12288
    /// features, 50 labels per class) in about 650; the test accuracy stops changing long
    /// before the tolerance is met, so hitting the cap is a warning, not an error.
    fn default() -> Self {
        Self {
            lambda: 1e-2,
            max_iter: 2000,
            tolerance: 1e-6,
        }
    }
}

/// The result of [`fit_logistic`]: the classifier and how the optimiser ended.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticFit {
    /// The fitted classifier.
    pub classifier: LinearClassifier,
    /// L-BFGS iterations taken.
    pub iterations: usize,
    /// Whether the gradient tolerance was reached (rather than the iteration cap, or a line
    /// search that could make no more progress in floating point).
    pub converged: bool,
}

/// Multinomial logistic regression with an L2 penalty, fitted by full-batch L-BFGS.
///
/// Everything is deterministic: the start is all zeros, the line search is plain Armijo
/// backtracking from a unit step, and sums run in a fixed order, so the same data gives the
/// same weights bit for bit.
pub fn fit_logistic(
    x: &Matrix,
    y: &[usize],
    n_classes: usize,
    opts: &LogisticOptions,
) -> Result<LogisticFit, ProbeError> {
    check_xy(x, y, n_classes)?;
    check_penalty(opts.lambda, "logistic L2")?;
    if !(opts.tolerance.is_finite() && opts.tolerance >= 0.0) {
        return Err(ProbeError::InvalidParameter(format!(
            "tolerance must be finite and non-negative, got {}",
            opts.tolerance
        )));
    }
    fit_logistic_with(x, y, n_classes, opts, x.cols > x.rows)
}

/// [`fit_logistic`] with the solver chosen by the caller: `dual` fits in the row space of
/// `x` (exact, see [`row_space_basis`]), which is much cheaper when features outnumber rows.
fn fit_logistic_with(
    x: &Matrix,
    y: &[usize],
    n_classes: usize,
    opts: &LogisticOptions,
    dual: bool,
) -> Result<LogisticFit, ProbeError> {
    let basis = if dual {
        Some(row_space_basis(x)?)
    } else {
        None
    };
    let z = basis.as_ref().map_or(x, |b| &b.z);
    let problem = Logistic {
        x: z,
        y,
        k: n_classes,
        lambda: opts.lambda,
    };
    let (theta, iterations, converged) = lbfgs(
        |t, g| problem.loss_and_grad(t, g),
        problem.n_params(),
        opts.max_iter,
        opts.tolerance,
    );
    let mut classifier = problem.unpack(&theta);
    if let Some(b) = basis {
        classifier.weights = b.weights_from(x, &classifier.weights)?;
    }
    Ok(LogisticFit {
        classifier,
        iterations,
        converged,
    })
}

/// Coordinates of the rows of `X` in an orthonormal basis of their span, from a pivoted
/// Cholesky factorisation of the kernel `K = X Xᵀ = Z Zᵀ`.
///
/// An L2-penalised linear model only ever needs weights in the row space of `X` (any other
/// component adds penalty without changing a score), and in orthonormal coordinates both the
/// scores and the penalty are unchanged: fitting on `Z` (`n × rank`) instead of `X`
/// (`n × d`) is the same problem, `d / n` times cheaper per iteration for raw pixels.
struct RowSpaceBasis {
    /// `n × r`, with `Z Zᵀ = X Xᵀ`.
    z: Matrix,
    /// Pivot rows, in pivot order: `Z` restricted to them is lower triangular.
    pivots: Vec<usize>,
}

fn row_space_basis(x: &Matrix) -> Result<RowSpaceBasis, ProbeError> {
    let n = x.rows;
    let kernel = x.transpose().gram();
    let max_diag = (0..n).map(|i| kernel.get(i, i)).fold(0.0, f64::max);
    // Below this the remaining directions are rounding noise (a centred X loses one rank).
    let cutoff = 1e-11 * max_diag;
    let mut residual: Vec<f64> = (0..n).map(|i| kernel.get(i, i)).collect();
    let mut done = vec![false; n];
    let mut g = Matrix::zeros(n, n);
    let mut pivots = Vec::new();
    for j in 0..n {
        let Some(p) = (0..n)
            .filter(|&i| !done[i])
            .max_by(|&a, &b| residual[a].total_cmp(&residual[b]).then(b.cmp(&a)))
        else {
            break;
        };
        if residual[p] <= cutoff || max_diag == 0.0 {
            break;
        }
        let gpp = residual[p].sqrt();
        done[p] = true;
        pivots.push(p);
        g.set(p, j, gpp);
        for i in 0..n {
            if done[i] {
                continue;
            }
            let mut v = kernel.get(i, p);
            for m in 0..j {
                v -= g.get(i, m) * g.get(p, m);
            }
            let v = v / gpp;
            g.set(i, j, v);
            residual[i] -= v * v;
        }
    }
    let r = pivots.len();
    let mut z = Matrix::zeros(n, r);
    for i in 0..n {
        z.data[i * r..(i + 1) * r].copy_from_slice(&g.row(i)[..r]);
    }
    Ok(RowSpaceBasis { z, pivots })
}

impl RowSpaceBasis {
    /// Maps weights `B` (`r × k`) for `Z` back to weights `W = Xᵀ C` (`d × k`) for `X`,
    /// with `C` zero outside the pivot rows and `Zᵀ C = B` there: then `X W = K C = Z B`.
    fn weights_from(&self, x: &Matrix, b: &Matrix) -> Result<Matrix, ProbeError> {
        let (r, k) = (self.pivots.len(), b.cols);
        // Solve (Z_piv)ᵀ C_piv = B, Z_piv lower triangular, by back substitution.
        let mut c_piv = b.clone();
        for j in (0..r).rev() {
            for m in j + 1..r {
                let zmj = self.z.get(self.pivots[m], j);
                for col in 0..k {
                    let v = c_piv.get(j, col) - zmj * c_piv.get(m, col);
                    c_piv.set(j, col, v);
                }
            }
            let d = self.z.get(self.pivots[j], j);
            for col in 0..k {
                c_piv.set(j, col, c_piv.get(j, col) / d);
            }
        }
        let mut c = Matrix::zeros(x.rows, k);
        for (j, &p) in self.pivots.iter().enumerate() {
            c.data[p * k..(p + 1) * k].copy_from_slice(c_piv.row(j));
        }
        Ok(x.transpose().matmul(&c)?)
    }
}

/// The penalised multinomial cross-entropy; parameters are `W` (row-major `d × k`) then `b`.
struct Logistic<'a> {
    x: &'a Matrix,
    y: &'a [usize],
    k: usize,
    lambda: f64,
}

impl Logistic<'_> {
    fn n_params(&self) -> usize {
        (self.x.cols + 1) * self.k
    }

    fn unpack(&self, theta: &[f64]) -> LinearClassifier {
        let (d, k) = (self.x.cols, self.k);
        LinearClassifier {
            weights: Matrix {
                rows: d,
                cols: k,
                data: theta[..d * k].to_vec(),
            },
            bias: theta[d * k..].to_vec(),
        }
    }

    /// Returns the loss and writes its gradient into `grad`.
    fn loss_and_grad(&self, theta: &[f64], grad: &mut [f64]) -> f64 {
        let (n, d, k) = (self.x.rows, self.x.cols, self.k);
        let (w, b) = theta.split_at(d * k);
        grad.iter_mut().for_each(|g| *g = 0.0);
        let (gw, gb) = grad.split_at_mut(d * k);
        let inv_n = 1.0 / n as f64;
        let mut loss = 0.0;
        let mut z = vec![0.0; k];
        for (r, &label) in self.y.iter().enumerate() {
            let xr = self.x.row(r);
            z.copy_from_slice(b);
            for (xi, wi) in xr.iter().zip(w.chunks_exact(k)) {
                if *xi != 0.0 {
                    for (zj, wij) in z.iter_mut().zip(wi) {
                        *zj += xi * wij;
                    }
                }
            }
            // Stable log-sum-exp: shift by the maximum so exp never overflows.
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|v| (v - m).exp()).sum();
            let lse = m + sum.ln();
            loss += lse - z[label];
            // z becomes the residual p − onehot, scaled by 1/n.
            for (j, zj) in z.iter_mut().enumerate() {
                let p = (*zj - lse).exp();
                *zj = (p - if j == label { 1.0 } else { 0.0 }) * inv_n;
            }
            for (xi, gi) in xr.iter().zip(gw.chunks_exact_mut(k)) {
                if *xi != 0.0 {
                    for (g, e) in gi.iter_mut().zip(&z) {
                        *g += xi * e;
                    }
                }
            }
            for (g, e) in gb.iter_mut().zip(&z) {
                *g += e;
            }
        }
        let mut reg = 0.0;
        for (g, wv) in gw.iter_mut().zip(w) {
            *g += self.lambda * wv;
            reg += wv * wv;
        }
        loss * inv_n + 0.5 * self.lambda * reg
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Limited-memory BFGS (Nocedal and Wright, algorithm 7.4) with Armijo backtracking, from
/// zero. Returns the parameters, the iterations taken and whether the gradient tolerance was
/// met.
fn lbfgs(
    mut f: impl FnMut(&[f64], &mut [f64]) -> f64,
    n: usize,
    max_iter: usize,
    tolerance: f64,
) -> (Vec<f64>, usize, bool) {
    const MEMORY: usize = 10;
    const ARMIJO: f64 = 1e-4;
    let mut x = vec![0.0; n];
    let mut g = vec![0.0; n];
    let mut fx = f(&x, &mut g);
    let stop = tolerance * max_abs(&g).max(1.0);
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> =
        std::collections::VecDeque::new();
    let (mut x_new, mut g_new) = (vec![0.0; n], vec![0.0; n]);
    for it in 0..max_iter {
        if max_abs(&g) <= stop {
            return (x, it, true);
        }
        // Two-loop recursion: dir = −H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        let gamma = match history.back() {
            Some((s, y, _)) => dot(s, y) / dot(y, y),
            // No curvature yet: a first step of length at most 1 in parameter space.
            None => 1.0 / max_abs(&g).max(1.0),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let bcoef = rho * dot(y, &q);
            q.iter_mut()
                .zip(s)
                .for_each(|(qi, si)| *qi += (a - bcoef) * si);
        }
        let mut dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        if slope >= 0.0 || !slope.is_finite() {
            // Lost the descent property (rounding): restart from steepest descent.
            history.clear();
            dir = g.iter().map(|v| -v / max_abs(&g).max(1.0)).collect();
            slope = dot(&g, &dir);
        }
        let mut step = 1.0;
        let mut accepted = false;
        for _ in 0..60 {
            for ((xn, xi), di) in x_new.iter_mut().zip(&x).zip(&dir) {
                *xn = xi + step * di;
            }
            let f_new = f(&x_new, &mut g_new);
            if f_new.is_finite() && f_new <= fx + ARMIJO * step * slope {
                fx = f_new;
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            // No representable step decreases the loss: as converged as f64 allows.
            return (x, it, max_abs(&g) <= stop);
        }
        let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 * dot(&y, &y).sqrt() * dot(&s, &s).sqrt() && sy > 0.0 {
            if history.len() == MEMORY {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / sy));
        }
        std::mem::swap(&mut x, &mut x_new);
        std::mem::swap(&mut g, &mut g_new);
    }
    let done = max_abs(&g) <= stop;
    (x, max_iter, done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::split::SplitMix64::new(seed);
        (0..n)
            .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
            .collect()
    }

    /// Three Gaussian-ish blobs around well separated centres in `d` dimensions.
    fn blobs(per_class: usize, d: usize, seed: u64) -> (Matrix, Vec<usize>) {
        let noise = pseudo_random(3 * per_class * d, seed);
        let mut x = Matrix::zeros(3 * per_class, d);
        let mut y = Vec::new();
        for i in 0..3 * per_class {
            let c = i % 3;
            y.push(c);
            for j in 0..d {
                let centre = if j % 3 == c { 4.0 } else { 0.0 };
                x.set(i, j, centre + noise[i * d + j]);
            }
        }
        (x, y)
    }

    #[test]
    fn ridge_matches_the_closed_form_and_primal_equals_dual() {
        let (n, d, k) = (9, 4, 3);
        let x = Matrix::from_vec(n, d, pseudo_random(n * d, 5)).unwrap();
        let y: Vec<usize> = (0..n).map(|i| (i * 7) % k).collect();
        let lambda = 0.3;
        let fit = fit_ridge(&x, &y, k, lambda, RidgeSolver::Primal).unwrap();
        // Closed form with an explicit intercept column that the penalty skips.
        let mut xa = Matrix::zeros(n, d + 1);
        for i in 0..n {
            for j in 0..d {
                xa.set(i, j, x.get(i, j));
            }
            xa.set(i, d, 1.0);
        }
        let mut a = xa.gram();
        for i in 0..d {
            a.data[i * (d + 1) + i] += lambda * n as f64;
        }
        let mut yo = Matrix::zeros(n, k);
        for (i, &c) in y.iter().enumerate() {
            yo.set(i, c, 1.0);
        }
        let sol = cholesky_solve(&a, &xa.transpose().matmul(&yo).unwrap()).unwrap();
        for j in 0..k {
            for i in 0..d {
                assert!((fit.weights.get(i, j) - sol.get(i, j)).abs() < 1e-10);
            }
            assert!((fit.bias[j] - sol.get(d, j)).abs() < 1e-10);
        }
        // The dual system gives the same classifier, here and with more features than rows.
        for (n, d) in [(9, 4), (6, 20)] {
            let x = Matrix::from_vec(n, d, pseudo_random(n * d, 8)).unwrap();
            let y: Vec<usize> = (0..n).map(|i| i % k).collect();
            let p = fit_ridge(&x, &y, k, 0.05, RidgeSolver::Primal).unwrap();
            let q = fit_ridge(&x, &y, k, 0.05, RidgeSolver::Dual).unwrap();
            for (u, v) in p.weights.data.iter().zip(&q.weights.data) {
                assert!((u - v).abs() < 1e-8, "{u} vs {v}");
            }
            for (u, v) in p.bias.iter().zip(&q.bias) {
                assert!((u - v).abs() < 1e-8, "{u} vs {v}");
            }
        }
    }

    #[test]
    fn ridge_recovers_a_known_linear_map() {
        // Targets that are exactly linear in x (a one-hot-like code): a tiny penalty gives
        // them back, so the probe classifies perfectly.
        let (x, y) = blobs(20, 6, 1);
        let fit = fit_ridge(&x, &y, 3, 1e-6, RidgeSolver::Auto).unwrap();
        assert_eq!(fit.predict(&x).unwrap(), y);
        // A noiseless linear map with an intercept is recovered (the dual system is the same
        // classifier, tested above, but with more rows than features its kernel is singular).
        let (n, d, k) = (40, 5, 3);
        let x = Matrix::from_vec(n, d, pseudo_random(n * d, 2)).unwrap();
        let w_true = Matrix::from_vec(d, k, pseudo_random(d * k, 3)).unwrap();
        let b_true = [0.25, -1.5, 3.0];
        let mut t = x.matmul(&w_true).unwrap();
        for row in t.data.chunks_exact_mut(k) {
            for (v, b) in row.iter_mut().zip(&b_true) {
                *v += b;
            }
        }
        for solver in [RidgeSolver::Primal, RidgeSolver::Auto] {
            let fit = ridge_regression(&x, &t, 1e-12, solver).unwrap();
            for (u, v) in fit.weights.data.iter().zip(&w_true.data) {
                assert!((u - v).abs() < 1e-6, "{solver:?}: {u} vs {v}");
            }
            for (u, v) in fit.bias.iter().zip(&b_true) {
                assert!((u - v).abs() < 1e-6, "{solver:?}: {u} vs {v}");
            }
        }
    }

    #[test]
    fn logistic_separates_three_blobs() {
        let (x, y) = blobs(15, 5, 3);
        let fit = fit_logistic(&x, &y, 3, &LogisticOptions::default()).unwrap();
        assert!(fit.converged, "{} iterations", fit.iterations);
        assert_eq!(fit.classifier.predict(&x).unwrap(), y);
        let (xt, yt) = blobs(30, 5, 4);
        assert_eq!(fit.classifier.predict(&xt).unwrap(), yt);
    }

    #[test]
    fn logistic_in_the_row_space_equals_the_full_fit() {
        // More features than rows, centred like standardised data (so the kernel is singular).
        let (n, d) = (12, 30);
        let mut x = Matrix::from_vec(n, d, pseudo_random(n * d, 21)).unwrap();
        let mean = column_means(&x);
        for row in x.data.chunks_exact_mut(d) {
            for (v, m) in row.iter_mut().zip(&mean) {
                *v -= m;
            }
        }
        let y: Vec<usize> = (0..n).map(|i| i % 3).collect();
        let opts = LogisticOptions {
            lambda: 0.05,
            max_iter: 5000,
            tolerance: 1e-11,
        };
        let full = fit_logistic_with(&x, &y, 3, &opts, false).unwrap();
        let dual = fit_logistic_with(&x, &y, 3, &opts, true).unwrap();
        assert!(full.converged && dual.converged);
        assert_eq!(row_space_basis(&x).unwrap().z.cols, n - 1);
        let (a, b) = (&full.classifier, &dual.classifier);
        for (u, v) in a.weights.data.iter().zip(&b.weights.data) {
            assert!((u - v).abs() < 1e-7, "{u} vs {v}");
        }
        for (u, v) in a.bias.iter().zip(&b.bias) {
            assert!((u - v).abs() < 1e-7, "{u} vs {v}");
        }
    }

    #[test]
    fn logistic_gradient_matches_finite_differences() {
        let (x, y) = blobs(4, 3, 6);
        let p = Logistic {
            x: &x,
            y: &y,
            k: 3,
            lambda: 0.1,
        };
        let theta = pseudo_random(p.n_params(), 9);
        let mut g = vec![0.0; p.n_params()];
        p.loss_and_grad(&theta, &mut g);
        let mut scratch = vec![0.0; p.n_params()];
        for i in 0..p.n_params() {
            let h = 1e-6;
            let mut t = theta.clone();
            t[i] += h;
            let up = p.loss_and_grad(&t, &mut scratch);
            t[i] -= 2.0 * h;
            let down = p.loss_and_grad(&t, &mut scratch);
            let fd = (up - down) / (2.0 * h);
            assert!((fd - g[i]).abs() < 1e-7, "param {i}: {fd} vs {}", g[i]);
        }
    }

    #[test]
    fn softmax_is_stable_for_huge_scores() {
        let x = Matrix::from_rows(&[vec![1e6], vec![-1e6]]).unwrap();
        let p = Logistic {
            x: &x,
            y: &[0, 1],
            k: 2,
            lambda: 1.0,
        };
        let mut g = vec![0.0; 4];
        let loss = p.loss_and_grad(&[1.0, -1.0, 0.0, 0.0], &mut g);
        assert!(
            loss.is_finite() && g.iter().all(|v| v.is_finite()),
            "{loss} {g:?}"
        );
    }

    #[test]
    fn standardizer_uses_train_statistics_and_zeroes_constant_columns() {
        let x = Matrix::from_rows(&[vec![1.0, 5.0], vec![3.0, 5.0]]).unwrap();
        let s = Standardizer::fit(&x).unwrap();
        assert_eq!(s.mean, [2.0, 5.0]);
        assert_eq!(s.inv_std, [1.0, 0.0]);
        let t = s
            .transform(&Matrix::from_rows(&[vec![4.0, 9.0]]).unwrap())
            .unwrap();
        assert_eq!(t.data, [2.0, 0.0]);
        assert!(s.transform(&Matrix::zeros(1, 3)).is_err());
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_fault() {
        let x = Matrix::from_rows(&[vec![1.0], vec![2.0], vec![3.0]]).unwrap();
        let err = fit_ridge(&x, &[0, 1], 2, 1.0, RidgeSolver::Auto).unwrap_err();
        assert!(err.to_string().contains("labels"), "{err}");
        let mut bad = x.clone();
        bad.set(2, 0, f64::NAN);
        let err = fit_ridge(&bad, &[0, 1, 0], 2, 1.0, RidgeSolver::Auto).unwrap_err();
        assert!(
            matches!(err, ProbeError::NonFinite { row: 2, col: 0, .. }),
            "{err}"
        );
        let err = fit_logistic(&bad, &[0, 1, 0], 2, &LogisticOptions::default()).unwrap_err();
        assert!(err.to_string().contains("row 2"), "{err}");
        assert!(matches!(
            fit_ridge(&Matrix::zeros(0, 3), &[], 2, 1.0, RidgeSolver::Auto),
            Err(ProbeError::Empty(_))
        ));
        assert!(fit_ridge(&x, &[0, 1, 0], 2, 0.0, RidgeSolver::Auto).is_err());
        assert!(fit_ridge(&x, &[0, 1, 2], 2, 1.0, RidgeSolver::Auto).is_err());
        assert!(matches!(
            fit_ridge(&x, &[0, 0, 0], 1, 1.0, RidgeSolver::Auto),
            Err(ProbeError::TooFewClasses(1))
        ));
        assert!(Standardizer::fit(&Matrix::zeros(0, 2)).is_err());
    }
}
