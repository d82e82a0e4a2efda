//! Ridge regression onto one-hot targets: the closed-form linear probe, and the choice of its
//! penalty by cross-validation on the labelled rows.

use crate::classifier::{check_penalty, check_xy, LinearClassifier};
use crate::linalg::{cholesky_solve, Matrix};
use crate::ProbeError;

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
    let (n, d) = (x.rows, x.cols);
    let (x_mean, y_mean) = (x.column_means(), targets.column_means());
    let mut xc = x.clone();
    xc.add_to_rows(&x_mean, -1.0);
    let mut yc = targets.clone();
    yc.add_to_rows(&y_mean, -1.0);
    let use_dual = match solver {
        RidgeSolver::Auto => n < d,
        RidgeSolver::Primal => false,
        RidgeSolver::Dual => true,
    };
    let weights = if use_dual {
        let xt = xc.transpose();
        let alpha = cholesky_solve(&plus_diagonal(xt.gram(), lambda * n as f64), &yc)?;
        xt.matmul(&alpha)?
    } else {
        let rhs = xc.transpose_matmul(&yc)?;
        cholesky_solve(&plus_diagonal(xc.gram(), lambda * n as f64), &rhs)?
    };
    // b = ȳ − Wᵀ x̄: the intercept that makes the fit exact at the means.
    let wx = Matrix::from_vec(1, d, x_mean)?.matmul(&weights)?;
    let bias = y_mean.iter().zip(&wx.data).map(|(y, w)| y - w).collect();
    Ok(LinearClassifier { weights, bias })
}

/// `a + p·I`: the ridge penalty on a Gram matrix.
fn plus_diagonal(mut a: Matrix, p: f64) -> Matrix {
    for i in 0..a.rows {
        a.data[i * a.cols + i] += p;
    }
    a
}

/// Ridge penalties tried by [`select_ridge_lambda`] (per-example scale, standardised features).
pub const RIDGE_LAMBDA_GRID: [f64; 6] = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0];

/// The penalty used when cross-validation has nothing to validate on: `λ = 1`, shrinkage on
/// the scale of one standardised feature's variance (see [`crate::Method::default_lambda`]).
pub(crate) const DEFAULT_RIDGE_LAMBDA: f64 = 1.0;

/// Picks the ridge penalty by stratified k-fold cross-validation on the labelled rows only
/// (k = 5, or the smallest class size if lower; the test rows are never seen).
///
/// No single penalty suits every feature kind: raw pixels with 5 labels per class need a
/// strong one, learned embeddings lose 5–10 points of accuracy under it. The penalty with
/// the highest cross-validated accuracy wins; ties go to the stronger penalty. With fewer than
/// two labelled examples in some class there is nothing to validate on and
/// [`crate::Method::default_lambda`] is used.
pub fn select_ridge_lambda(x: &Matrix, y: &[usize], n_classes: usize) -> Result<f64, ProbeError> {
    let mut counts = vec![0usize; n_classes];
    let fold_of: Vec<usize> = y
        .iter()
        .map(|&c| {
            counts[c] += 1;
            counts[c] - 1
        })
        .collect();
    let folds = counts
        .iter()
        .copied()
        .filter(|&c| c > 0)
        .min()
        .unwrap_or(0)
        .min(5);
    if folds < 2 {
        return Ok(DEFAULT_RIDGE_LAMBDA);
    }
    let mut best = (f64::NEG_INFINITY, DEFAULT_RIDGE_LAMBDA);
    for &lambda in RIDGE_LAMBDA_GRID.iter().rev() {
        let mut correct = 0usize;
        for f in 0..folds {
            let (held, kept): (Vec<usize>, Vec<usize>) =
                (0..y.len()).partition(|&i| fold_of[i] % folds == f);
            let pick = |rows: &[usize]| rows.iter().map(|&i| y[i]).collect::<Vec<_>>();
            let fit = fit_ridge(
                &x.select_rows(&kept),
                &pick(&kept),
                n_classes,
                lambda,
                RidgeSolver::Auto,
            )?;
            correct += fit.correct(&x.select_rows(&held), &pick(&held))?;
        }
        let acc = correct as f64 / y.len() as f64;
        if acc > best.0 {
            best = (acc, lambda);
        }
    }
    Ok(best.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::tests::pseudo_random;
    use crate::logistic::tests::blobs;

    #[test]
    fn ridge_matches_the_closed_form_and_primal_equals_dual() {
        let (n, d, k) = (9, 4, 3);
        let x = Matrix::from_vec(n, d, pseudo_random(n * d, 5)).unwrap();
        let y: Vec<usize> = (0..n).map(|i| (i * 7) % k).collect();
        let lambda = 0.3;
        let fit = fit_ridge(&x, &y, k, lambda, RidgeSolver::Primal).unwrap();
        assert_eq!(
            (fit.weights.rows, fit.weights.cols, fit.bias.len()),
            (d, k, k)
        );
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
            let (pv, qv) = (
                [&p.weights.data[..], &p.bias].concat(),
                [&q.weights.data[..], &q.bias].concat(),
            );
            for (u, v) in pv.iter().zip(&qv) {
                assert!((u - v).abs() < 1e-8, "{u} vs {v}");
            }
        }
    }

    #[test]
    fn ridge_recovers_a_known_linear_map() {
        // Well separated blobs: a tiny penalty classifies them all.
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
        t.add_to_rows(&b_true, 1.0);
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
    fn ridge_penalty_is_chosen_by_cross_validation() {
        // Two classes told apart by feature 0 only, 40 noise features, few rows: a tiny
        // penalty fits the noise, and cross-validation must prefer a stronger one.
        let (n, d) = (20, 41);
        let y: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let mut x = Matrix::from_vec(n, d, pseudo_random(n * d, 0x1234)).unwrap();
        for (i, &c) in y.iter().enumerate() {
            x.set(i, 0, if c == 0 { -0.3 } else { 0.3 } + 0.2 * x.get(i, 0));
        }
        let chosen = select_ridge_lambda(&x, &y, 2).unwrap();
        assert!(chosen >= 0.1, "chose {chosen}");
        // A perfectly separable, noise-free problem: every penalty is perfect, the tie goes
        // to the strongest.
        let x = Matrix::from_vec(n, 1, y.iter().map(|&c| c as f64 - 0.5).collect()).unwrap();
        assert_eq!(select_ridge_lambda(&x, &y, 2).unwrap(), 100.0);
        // One example in a class: nothing to validate on, the default is used.
        let mut one = vec![1; n];
        one[0] = 0;
        assert_eq!(
            select_ridge_lambda(&x, &one, 2).unwrap(),
            DEFAULT_RIDGE_LAMBDA
        );
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
    }
}
