//! Dense `f64` linear algebra for matrices of a few thousand rows at most: a row-major matrix,
//! Cholesky solves for ridge regression and the eigen-decomposition of symmetric matrices
//! (graph spectra, PCA). The products and decompositions run on `faer`, which reads the
//! row-major storage in place.

use faer::linalg::cholesky::llt::factor::LltError;
use faer::linalg::solvers::Solve;
use faer::{MatRef, Side};

/// Why a decomposition failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LinalgError {
    /// Shapes that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The matrix is not (numerically) positive definite.
    #[error("matrix is not positive definite (pivot {pivot}); increase the ridge penalty")]
    NotPositiveDefinite {
        /// Row of the failing pivot.
        pivot: usize,
    },
    /// A value is NaN or infinite.
    #[error("matrix contains a non-finite value at ({0}, {1})")]
    NonFinite(usize, usize),
    /// The eigen-decomposition of an `n × n` matrix did not converge.
    #[error("the eigen-decomposition of a {0}×{0} matrix did not converge")]
    NoConvergence(usize),
}

/// A row-major dense matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows * cols` values, row after row.
    pub data: Vec<f64>,
}

impl Matrix {
    /// A zero matrix.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// The identity.
    pub fn identity(n: usize) -> Self {
        let mut m = Self::zeros(n, n);
        for i in 0..n {
            m.data[i * n + i] = 1.0;
        }
        m
    }

    /// Wraps row-major values; errors when the length does not match.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f64>) -> Result<Self, LinalgError> {
        if data.len() != rows * cols {
            return Err(LinalgError::Shape(format!(
                "{} values for a {rows}×{cols} matrix",
                data.len()
            )));
        }
        Ok(Self { rows, cols, data })
    }

    /// Builds from equal-length rows.
    pub fn from_rows(rows: &[Vec<f64>]) -> Result<Self, LinalgError> {
        let cols = rows.first().map_or(0, Vec::len);
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != cols) {
            return Err(LinalgError::Shape(format!(
                "row {i} has {} values, row 0 has {cols}",
                r.len()
            )));
        }
        Ok(Self {
            rows: rows.len(),
            cols,
            data: rows.concat(),
        })
    }

    /// Element `(i, j)`.
    #[inline]
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    /// Sets element `(i, j)`.
    #[inline]
    pub fn set(&mut self, i: usize, j: usize, v: f64) {
        self.data[i * self.cols + j] = v;
    }

    /// Row `i` as a slice.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The transpose.
    pub fn transpose(&self) -> Self {
        Self::from_faer(self.as_faer().transpose())
    }

    /// `self · other`.
    pub fn matmul(&self, other: &Matrix) -> Result<Self, LinalgError> {
        if self.cols != other.rows {
            return Err(LinalgError::Shape(format!(
                "{}×{} times {}×{}",
                self.rows, self.cols, other.rows, other.cols
            )));
        }
        Ok(Self::from_faer((self.as_faer() * other.as_faer()).as_ref()))
    }

    /// `selfᵀ · other`, without forming the transpose.
    pub fn transpose_matmul(&self, other: &Matrix) -> Result<Self, LinalgError> {
        if self.rows != other.rows {
            return Err(LinalgError::Shape(format!(
                "({}×{})ᵀ times {}×{}",
                self.rows, self.cols, other.rows, other.cols
            )));
        }
        Ok(Self::from_faer(
            (self.as_faer().transpose() * other.as_faer()).as_ref(),
        ))
    }

    /// `selfᵀ · self` (the Gram matrix of the columns).
    pub fn gram(&self) -> Self {
        let a = self.as_faer();
        Self::from_faer((a.transpose() * a).as_ref())
    }

    /// Squared Frobenius norm.
    pub fn frobenius_sq(&self) -> f64 {
        self.data.iter().map(|v| v * v).sum()
    }

    /// Rows `rows` of `self`, in the order given.
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        let data = rows.iter().flat_map(|&r| self.row(r)).copied().collect();
        Self::from_vec(rows.len(), self.cols, data).expect("whole rows")
    }

    /// The mean of every column (zeros for a matrix without rows).
    pub fn column_means(&self) -> Vec<f64> {
        self.column_mean_of(|v| v)
    }

    /// The mean square of every column: the population variance once the columns are centred.
    pub fn column_mean_squares(&self) -> Vec<f64> {
        self.column_mean_of(|v| v * v)
    }

    /// The mean of `f(value)` down every column, accumulated row by row (cache order).
    fn column_mean_of(&self, f: impl Fn(f64) -> f64) -> Vec<f64> {
        let mut acc = vec![0.0; self.cols];
        for row in self.data.chunks_exact(self.cols.max(1)) {
            acc.iter_mut().zip(row).for_each(|(a, v)| *a += f(*v));
        }
        let n = self.rows.max(1) as f64;
        acc.iter_mut().for_each(|a| *a /= n);
        acc
    }

    /// Adds `scale · v` to every row (`scale = −1` centres on the means `v`).
    pub fn add_to_rows(&mut self, v: &[f64], scale: f64) {
        for row in self.data.chunks_exact_mut(self.cols.max(1)) {
            row.iter_mut().zip(v).for_each(|(a, b)| *a += scale * b);
        }
    }

    /// The first NaN or infinite value as `(row, column, value)`, in row-major order.
    pub fn first_non_finite(&self) -> Option<(usize, usize, f64)> {
        let p = self.data.iter().position(|v| !v.is_finite())?;
        Some((p / self.cols, p % self.cols, self.data[p]))
    }

    /// The same values as a faer view (no copy: faer reads the row-major layout in place).
    pub(crate) fn as_faer(&self) -> MatRef<'_, f64> {
        MatRef::from_row_major_slice(&self.data, self.rows, self.cols)
    }

    /// Copies any faer matrix into the row-major layout.
    pub(crate) fn from_faer(m: MatRef<'_, f64>) -> Self {
        let (rows, cols) = (m.nrows(), m.ncols());
        let data = (0..rows)
            .flat_map(|i| (0..cols).map(move |j| m[(i, j)]))
            .collect();
        Self { rows, cols, data }
    }

    fn check_finite(&self) -> Result<(), LinalgError> {
        match self.first_non_finite() {
            Some((i, j, _)) => Err(LinalgError::NonFinite(i, j)),
            None => Ok(()),
        }
    }
}

/// Solves `A X = B` for a symmetric positive definite `A` by Cholesky factorisation
/// (faer's `LLᵀ`, reading the lower triangle of `A`).
pub fn cholesky_solve(a: &Matrix, b: &Matrix) -> Result<Matrix, LinalgError> {
    let n = a.rows;
    if a.cols != n || b.rows != n {
        return Err(LinalgError::Shape(format!(
            "A is {}×{}, B is {}×{}",
            a.rows, a.cols, b.rows, b.cols
        )));
    }
    a.check_finite()?;
    b.check_finite()?;
    let llt = a.as_faer().llt(Side::Lower).map_err(|e| match e {
        LltError::NonPositivePivot { index } => LinalgError::NotPositiveDefinite { pivot: index },
    })?;
    Ok(Matrix::from_faer(llt.solve(b.as_faer()).as_ref()))
}

/// Eigenvalues in descending order and the matching unit eigenvectors (column `i` of
/// `vectors` belongs to `values[i]`).
#[derive(Debug, Clone)]
pub struct SymmetricEigen {
    /// Eigenvalues, largest first.
    pub values: Vec<f64>,
    /// `n × n`, eigenvectors as columns.
    pub vectors: Matrix,
}

impl SymmetricEigen {
    /// Eigenvector `i` as a vector.
    pub fn vector(&self, i: usize) -> Vec<f64> {
        (0..self.vectors.rows)
            .map(|r| self.vectors.get(r, i))
            .collect()
    }
}

/// Eigen-decomposition of a symmetric matrix (faer: tridiagonalisation, then divide and
/// conquer), backward stable: every eigenvalue is within a few `n·ε·‖A‖` of the exact one,
/// which the spectral tests' `1e-10` checks on normalised adjacencies leave room for.
pub fn symmetric_eigen(a: &Matrix) -> Result<SymmetricEigen, LinalgError> {
    let n = a.rows;
    if a.cols != n {
        return Err(LinalgError::Shape(format!(
            "eigen-decomposition needs a square matrix, got {}×{}",
            a.rows, a.cols
        )));
    }
    a.check_finite()?;
    for i in 0..n {
        for j in 0..i {
            let (x, y) = (a.get(i, j), a.get(j, i));
            if (x - y).abs() > 1e-9 * (1.0 + x.abs().max(y.abs())) {
                return Err(LinalgError::Shape(format!(
                    "matrix is not symmetric at ({i}, {j}): {x} vs {y}"
                )));
            }
        }
    }
    let e = a
        .as_faer()
        .self_adjoint_eigen(Side::Lower)
        .map_err(|_| LinalgError::NoConvergence(n))?;
    // faer sorts ascending; the probe and the spectral code read the largest first.
    let (s, u) = (e.S().column_vector(), e.U());
    Ok(SymmetricEigen {
        values: (0..n).rev().map(|i| s[i]).collect(),
        vectors: Matrix::from_faer(u.reverse_cols()),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `n` values uniform in `[-1, 1)` from the workspace's seeded generator.
    pub(crate) fn pseudo_random(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = rand_xoshiro::SplitMix64::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
    }

    #[test]
    fn eigenpairs_satisfy_the_definition_and_match_an_analytic_spectrum() {
        // The path-graph Laplacian-like tridiagonal(−1, 2, −1) has eigenvalues
        // 2 − 2 cos(kπ/(n+1)), k = 1..n.
        let n = 60;
        let mut a = Matrix::zeros(n, n);
        for i in 0..n {
            a.set(i, i, 2.0);
            if i + 1 < n {
                a.set(i, i + 1, -1.0);
                a.set(i + 1, i, -1.0);
            }
        }
        let e = symmetric_eigen(&a).unwrap();
        assert_eq!((e.values.len(), e.vectors.rows, e.vectors.cols), (n, n, n));
        assert!(e
            .values
            .iter()
            .chain(&e.vectors.data)
            .all(|v| v.is_finite()));
        for (i, got) in e.values.iter().enumerate() {
            let k = (n - i) as f64;
            let want = 2.0 - 2.0 * (k * std::f64::consts::PI / (n + 1) as f64).cos();
            assert!((got - want).abs() < 1e-12, "λ{i}: {got} vs {want}");
        }
        // ‖A v − λ v‖ is rounding-small for every pair, brute force.
        for i in 0..n {
            let v = e.vector(i);
            let av = a
                .matmul(&Matrix::from_vec(n, 1, v.clone()).unwrap())
                .unwrap();
            let r: f64 = (0..n)
                .map(|r| (av.data[r] - e.values[i] * v[r]).powi(2))
                .sum();
            assert!(r.sqrt() < 1e-12, "pair {i}: residual {}", r.sqrt());
        }
    }

    #[test]
    fn eigen_of_a_known_matrix() {
        // [[2, 1], [1, 2]] has eigenvalues 3 and 1 with vectors (1, 1)/√2 and (1, −1)/√2.
        let a = Matrix::from_rows(&[vec![2.0, 1.0], vec![1.0, 2.0]]).unwrap();
        let e = symmetric_eigen(&a).unwrap();
        assert!((e.values[0] - 3.0).abs() < 1e-12 && (e.values[1] - 1.0).abs() < 1e-12);
        let v0 = e.vector(0);
        assert!((v0[0].abs() - 0.5f64.sqrt()).abs() < 1e-12 && (v0[0] - v0[1]).abs() < 1e-12);
    }

    #[test]
    fn eigen_reconstructs_a_random_symmetric_matrix() {
        let n = 40;
        let r = pseudo_random(n * n, 7);
        let mut a = Matrix::zeros(n, n);
        for i in 0..n {
            for j in 0..n {
                a.set(i, j, r[i * n + j] + r[j * n + i]);
            }
        }
        let e = symmetric_eigen(&a).unwrap();
        assert!(e.values.windows(2).all(|w| w[0] >= w[1]));
        // V diag(λ) Vᵀ = A and VᵀV = I.
        let mut vl = e.vectors.clone();
        for r in 0..n {
            for c in 0..n {
                vl.data[r * n + c] *= e.values[c];
            }
        }
        let back = vl.matmul(&e.vectors.transpose()).unwrap();
        let err: f64 = back
            .data
            .iter()
            .zip(&a.data)
            .map(|(x, y)| (x - y).powi(2))
            .sum();
        assert!(err.sqrt() < 1e-9 * a.frobenius_sq().sqrt(), "{err}");
        let vtv = e.vectors.gram();
        for i in 0..n {
            for j in 0..n {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((vtv.get(i, j) - want).abs() < 1e-10);
            }
        }
        // The trace is the sum of eigenvalues.
        let trace: f64 = (0..n).map(|i| a.get(i, i)).sum();
        assert!((trace - e.values.iter().sum::<f64>()).abs() < 1e-9);
    }

    #[test]
    fn cholesky_solves_a_positive_definite_system() {
        let n = 12;
        let r = Matrix::from_vec(n, n, pseudo_random(n * n, 3)).unwrap();
        let mut a = r.gram();
        for i in 0..n {
            a.data[i * n + i] += 0.5;
        }
        let x_true = Matrix::from_vec(n, 2, pseudo_random(2 * n, 9)).unwrap();
        let b = a.matmul(&x_true).unwrap();
        let x = cholesky_solve(&a, &b).unwrap();
        for (u, v) in x.data.iter().zip(&x_true.data) {
            assert!((u - v).abs() < 1e-9, "{u} vs {v}");
        }
    }

    #[test]
    fn bad_matrices_are_errors_not_panics() {
        let not_pd = Matrix::from_rows(&[vec![1.0, 2.0], vec![2.0, 1.0]]).unwrap();
        assert_eq!(
            cholesky_solve(&not_pd, &Matrix::identity(2)),
            Err(LinalgError::NotPositiveDefinite { pivot: 1 })
        );
        let mut nan = Matrix::identity(3);
        nan.set(1, 2, f64::NAN);
        assert_eq!(
            symmetric_eigen(&nan).unwrap_err(),
            LinalgError::NonFinite(1, 2)
        );
        let asym = Matrix::from_rows(&[vec![1.0, 2.0], vec![0.0, 1.0]]).unwrap();
        assert!(symmetric_eigen(&asym)
            .unwrap_err()
            .to_string()
            .contains("not symmetric"));
        assert!(Matrix::from_rows(&[vec![1.0], vec![1.0, 2.0]]).is_err());
        assert!(Matrix::identity(2).matmul(&Matrix::identity(3)).is_err());
    }
}
