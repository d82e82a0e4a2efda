//! What every linear read-out shares: input checks, standardisation with training statistics,
//! the fitted classifier and its accuracy.

use crate::linalg::Matrix;
use crate::ProbeError;

/// Errors unless every value of `x` is finite, naming the first offending cell: a NaN would
/// otherwise silently poison every weight.
pub(crate) fn check_finite(x: &Matrix) -> Result<(), ProbeError> {
    match x.first_non_finite() {
        Some((row, col, value)) => Err(ProbeError::NonFinite { row, col, value }),
        None => Ok(()),
    }
}

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

/// A training set a fit can use: rows, one label below `n_classes` per row, finite values.
pub(crate) fn check_xy(x: &Matrix, y: &[usize], n_classes: usize) -> Result<(), ProbeError> {
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

/// A penalty must be positive and finite: without one, separable classes drive the weights
/// to infinity.
pub(crate) fn check_penalty(lambda: f64, what: &str) -> Result<(), ProbeError> {
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
        let mean = x.column_means();
        let mut centred = x.clone();
        centred.add_to_rows(&mean, -1.0);
        let inv_std = centred
            .column_mean_squares()
            .iter()
            .zip(&mean)
            .map(|(var, m)| {
                let sd = var.sqrt();
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
        out.add_to_rows(&self.mean, -1.0);
        for row in out.data.chunks_exact_mut(x.cols.max(1)) {
            row.iter_mut().zip(&self.inv_std).for_each(|(v, s)| *v *= s);
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
        check_features(x, self.weights.rows)?;
        let mut s = x.matmul(&self.weights)?;
        s.add_to_rows(&self.bias, 1.0);
        Ok(s)
    }

    /// The highest-scoring class of every row (the lowest id on a tie).
    pub fn predict(&self, x: &Matrix) -> Result<Vec<usize>, ProbeError> {
        let s = self.scores(x)?;
        Ok((0..s.rows).map(|r| argmax(s.row(r))).collect())
    }

    /// How many rows of `x` are predicted as their label in `y`.
    pub fn correct(&self, x: &Matrix, y: &[usize]) -> Result<usize, ProbeError> {
        Ok(self
            .predict(x)?
            .iter()
            .zip(y)
            .filter(|(p, t)| p == t)
            .count())
    }
}

/// The index of the first largest value.
pub(crate) fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(Standardizer::fit(&Matrix::zeros(0, 2)).is_err());
    }

    #[test]
    fn classifier_scores_are_x_w_plus_b_and_ties_go_to_the_lowest_class() {
        let c = LinearClassifier {
            weights: Matrix::from_rows(&[vec![1.0, -1.0], vec![0.0, 2.0]]).unwrap(),
            bias: vec![0.5, 0.0],
        };
        let x = Matrix::from_rows(&[vec![1.0, 1.0], vec![0.0, 0.25], vec![2.0, 0.0]]).unwrap();
        assert_eq!(c.scores(&x).unwrap().data, [1.5, 1.0, 0.5, 0.5, 2.5, -2.0]);
        assert_eq!(c.predict(&x).unwrap(), [0, 0, 0]);
        assert_eq!(c.correct(&x, &[0, 1, 1]).unwrap(), 1);
    }
}
