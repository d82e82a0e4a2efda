//! L2-penalised multinomial logistic regression, fitted by L-BFGS, in the row space of the
//! features when they outnumber the examples.

use crate::classifier::{check_penalty, check_xy, LinearClassifier};
use crate::lbfgs::lbfgs;
use crate::linalg::{symmetric_eigen, Matrix};
use crate::ProbeError;

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
/// Deterministic: the start is all zeros and the line search is plain Armijo backtracking
/// from a unit step, so the same data gives the same weights run after run.
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
/// `x` (exact, see [`RowSpaceBasis`]), which is much cheaper when features outnumber rows.
fn fit_logistic_with(
    x: &Matrix,
    y: &[usize],
    n_classes: usize,
    opts: &LogisticOptions,
    dual: bool,
) -> Result<LogisticFit, ProbeError> {
    let basis = dual.then(|| RowSpaceBasis::of(x)).transpose()?;
    let problem = Logistic {
        x: basis.as_ref().map_or(x, |b| &b.z),
        y,
        k: n_classes,
        lambda: opts.lambda,
    };
    let min = lbfgs(
        |t, g| problem.loss_and_grad(t, g),
        problem.n_params(),
        opts.max_iter,
        opts.tolerance,
    );
    let mut classifier = problem.unpack(&min.x);
    if let Some(b) = basis {
        classifier.weights = x.transpose_matmul(&b.to_weights.matmul(&classifier.weights)?)?;
    }
    Ok(LogisticFit {
        classifier,
        iterations: min.iterations,
        converged: min.converged,
    })
}

/// Coordinates of the rows of `X` in an orthonormal basis of their span, from the
/// eigen-decomposition of the kernel `K = X Xᵀ = U S Uᵀ`: `Z = U S^½`.
///
/// An L2-penalised linear model only ever needs weights in the row space of `X` (any other
/// component adds penalty without changing a score), and in orthonormal coordinates both the
/// scores and the penalty are unchanged: fitting on `Z` (`n × rank`) instead of `X`
/// (`n × d`) is the same problem, `d / n` times cheaper per iteration for raw pixels.
struct RowSpaceBasis {
    /// `n × r`, with `Z Zᵀ = X Xᵀ`.
    z: Matrix,
    /// `U S^-½` (`n × r`): weights `B` for `Z` are `W = Xᵀ U S^-½ B` for `X` (then
    /// `X W = K U S^-½ B = Z B`, and `‖W‖ = ‖B‖`).
    to_weights: Matrix,
}

impl RowSpaceBasis {
    fn of(x: &Matrix) -> Result<Self, ProbeError> {
        let e = symmetric_eigen(&x.matmul(&x.transpose())?)?;
        // Below this the remaining directions are rounding noise (a centred X loses one rank).
        let cutoff = 1e-11 * e.values[0];
        let r = e.values.iter().take_while(|&&s| s > cutoff).count();
        let (mut z, mut to_weights) = (Matrix::zeros(x.rows, r), Matrix::zeros(x.rows, r));
        for (j, s) in e.values[..r].iter().enumerate() {
            for i in 0..x.rows {
                z.set(i, j, e.vectors.get(i, j) * s.sqrt());
                to_weights.set(i, j, e.vectors.get(i, j) / s.sqrt());
            }
        }
        Ok(Self { z, to_weights })
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
        let classifier = self.unpack(theta);
        // Scores, then (in place) the residual p − onehot, scaled by 1/n.
        let mut z = self.x.matmul(&classifier.weights).expect("d × k weights");
        z.add_to_rows(&classifier.bias, 1.0);
        let inv_n = 1.0 / n as f64;
        let mut loss = 0.0;
        for (row, &label) in z.data.chunks_exact_mut(k).zip(self.y) {
            // Stable log-sum-exp: shift by the maximum so exp never overflows.
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            loss += lse - row[label];
            row.iter_mut().for_each(|v| *v = (*v - lse).exp() * inv_n);
            row[label] -= inv_n;
        }
        let gw = self.x.transpose_matmul(&z).expect("n rows");
        let (w, _) = theta.split_at(d * k);
        let (gw_out, gb_out) = grad.split_at_mut(d * k);
        for ((g, a), wv) in gw_out.iter_mut().zip(&gw.data).zip(w) {
            *g = a + self.lambda * wv;
        }
        let gb = z.column_means();
        gb_out
            .iter_mut()
            .zip(gb)
            .for_each(|(g, v)| *g = v * n as f64);
        loss * inv_n + 0.5 * self.lambda * w.iter().map(|v| v * v).sum::<f64>()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::linalg::tests::pseudo_random;

    /// Three blobs around well separated centres in `d` dimensions, noise uniform in ±1.
    pub(crate) fn blobs(per_class: usize, d: usize, seed: u64) -> (Matrix, Vec<usize>) {
        let mut x =
            Matrix::from_vec(3 * per_class, d, pseudo_random(3 * per_class * d, seed)).unwrap();
        let y: Vec<usize> = (0..3 * per_class).map(|i| i % 3).collect();
        for (i, &c) in y.iter().enumerate() {
            for j in (c..d).step_by(3) {
                x.set(i, j, x.get(i, j) + 4.0);
            }
        }
        (x, y)
    }

    #[test]
    fn logistic_separates_three_blobs_and_not_shuffled_labels() {
        let (x, y) = blobs(15, 5, 3);
        let fit = fit_logistic(&x, &y, 3, &LogisticOptions::default()).unwrap();
        assert!(fit.converged, "{} iterations", fit.iterations);
        assert_eq!(fit.classifier.predict(&x).unwrap(), y);
        let (xt, yt) = blobs(30, 5, 4);
        assert_eq!(fit.classifier.correct(&xt, &yt).unwrap(), 90);
        // Labels unrelated to the features: the fit cannot carry over to new rows (chance 1/3).
        let shuffled: Vec<usize> = (0..45).map(|i| (i * 7 / 3) % 3).collect();
        let fit = fit_logistic(&x, &shuffled, 3, &LogisticOptions::default()).unwrap();
        let held: Vec<usize> = (0..90).map(|i| (i * 7 / 3) % 3).collect();
        let correct = fit.classifier.correct(&xt, &held).unwrap();
        assert!(correct < 45, "{correct} of 90 right on shuffled labels");
    }

    #[test]
    fn logistic_in_the_row_space_equals_the_full_fit() {
        // More features than rows, centred like standardised data (so the kernel is singular).
        let (n, d) = (12, 30);
        let mut x = Matrix::from_vec(n, d, pseudo_random(n * d, 21)).unwrap();
        x.add_to_rows(&x.column_means(), -1.0);
        let y: Vec<usize> = (0..n).map(|i| i % 3).collect();
        let opts = LogisticOptions {
            lambda: 0.05,
            max_iter: 5000,
            tolerance: 1e-11,
        };
        let full = fit_logistic_with(&x, &y, 3, &opts, false).unwrap();
        let dual = fit_logistic_with(&x, &y, 3, &opts, true).unwrap();
        assert!(full.converged && dual.converged);
        assert_eq!(RowSpaceBasis::of(&x).unwrap().z.cols, n - 1);
        let (a, b) = (&full.classifier, &dual.classifier);
        assert_eq!((b.weights.rows, b.weights.cols), (d, 3));
        for (u, v) in a
            .weights
            .data
            .iter()
            .chain(&a.bias)
            .zip(b.weights.data.iter().chain(&b.bias))
        {
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
    fn softmax_is_exact_for_huge_scores() {
        // Scores ±1e6 on the right class: no cross-entropy, no residual; the loss is the
        // penalty λ/2 ‖W‖² = 1 and the gradient λ W, exactly.
        let x = Matrix::from_rows(&[vec![1e6], vec![-1e6]]).unwrap();
        let p = Logistic {
            x: &x,
            y: &[0, 1],
            k: 2,
            lambda: 1.0,
        };
        let mut g = vec![f64::NAN; 4];
        let loss = p.loss_and_grad(&[1.0, -1.0, 0.0, 0.0], &mut g);
        assert_eq!((loss, g), (1.0, vec![1.0, -1.0, 0.0, 0.0]));
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_fault() {
        let bad = Matrix::from_rows(&[vec![1.0], vec![2.0], vec![f64::NAN]]).unwrap();
        let err = fit_logistic(&bad, &[0, 1, 0], 2, &LogisticOptions::default()).unwrap_err();
        assert!(err.to_string().contains("row 2"), "{err}");
        let x = Matrix::from_rows(&[vec![1.0], vec![2.0]]).unwrap();
        let opts = LogisticOptions {
            tolerance: -1.0,
            ..LogisticOptions::default()
        };
        assert!(fit_logistic(&x, &[0, 1], 2, &opts)
            .unwrap_err()
            .to_string()
            .contains("-1"));
    }
}
