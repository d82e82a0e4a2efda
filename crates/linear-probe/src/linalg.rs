//! Dense `f64` linear algebra for matrices of a few thousand rows at most: a row-major matrix,
//! Cholesky solves for ridge regression and a Jacobi eigen-decomposition for symmetric
//! matrices (graph spectra, PCA). Written for accuracy over speed; no BLAS needed.

/// Why a decomposition failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LinalgError {
    /// Shapes that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The matrix is not (numerically) positive definite.
    #[error(
        "matrix is not positive definite (pivot {pivot} = {value:e}); increase the ridge penalty"
    )]
    NotPositiveDefinite {
        /// Row of the failing pivot.
        pivot: usize,
        /// Its value.
        value: f64,
    },
    /// A value is NaN or infinite.
    #[error("matrix contains a non-finite value at ({0}, {1})")]
    NonFinite(usize, usize),
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
        let mut t = Self::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                t.data[j * self.rows + i] = self.data[i * self.cols + j];
            }
        }
        t
    }

    /// `self · other`.
    pub fn matmul(&self, other: &Matrix) -> Result<Self, LinalgError> {
        if self.cols != other.rows {
            return Err(LinalgError::Shape(format!(
                "{}×{} times {}×{}",
                self.rows, self.cols, other.rows, other.cols
            )));
        }
        let mut out = Self::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            let o = &mut out.data[i * other.cols..(i + 1) * other.cols];
            for k in 0..self.cols {
                let a = self.data[i * self.cols + k];
                if a == 0.0 {
                    continue;
                }
                for (o, b) in o.iter_mut().zip(other.row(k)) {
                    *o += a * b;
                }
            }
        }
        Ok(out)
    }

    /// `selfᵀ · self` (the Gram matrix of the columns).
    pub fn gram(&self) -> Self {
        let n = self.cols;
        let mut g = Self::zeros(n, n);
        for r in 0..self.rows {
            let row = self.row(r);
            for i in 0..n {
                let a = row[i];
                if a == 0.0 {
                    continue;
                }
                for (j, &b) in row.iter().enumerate().skip(i) {
                    g.data[i * n + j] += a * b;
                }
            }
        }
        for i in 0..n {
            for j in 0..i {
                g.data[i * n + j] = g.data[j * n + i];
            }
        }
        g
    }

    /// Squared Frobenius norm.
    pub fn frobenius_sq(&self) -> f64 {
        self.data.iter().map(|v| v * v).sum()
    }

    fn check_finite(&self) -> Result<(), LinalgError> {
        match self.data.iter().position(|v| !v.is_finite()) {
            Some(p) => Err(LinalgError::NonFinite(p / self.cols, p % self.cols)),
            None => Ok(()),
        }
    }
}

/// Solves `A X = B` for a symmetric positive definite `A` by Cholesky factorisation.
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
    // Lower factor L with A = L Lᵀ.
    let mut l = Matrix::zeros(n, n);
    for j in 0..n {
        let mut d = a.get(j, j);
        for k in 0..j {
            d -= l.get(j, k) * l.get(j, k);
        }
        if d <= 0.0 || !d.is_finite() {
            return Err(LinalgError::NotPositiveDefinite { pivot: j, value: d });
        }
        let d = d.sqrt();
        l.set(j, j, d);
        for i in j + 1..n {
            let mut s = a.get(i, j);
            for k in 0..j {
                s -= l.get(i, k) * l.get(j, k);
            }
            l.set(i, j, s / d);
        }
    }
    let m = b.cols;
    let mut x = b.clone();
    // Forward: L Y = B.
    for i in 0..n {
        for k in 0..i {
            let lik = l.get(i, k);
            for c in 0..m {
                let v = x.get(i, c) - lik * x.get(k, c);
                x.set(i, c, v);
            }
        }
        let d = l.get(i, i);
        for c in 0..m {
            x.set(i, c, x.get(i, c) / d);
        }
    }
    // Backward: Lᵀ X = Y.
    for i in (0..n).rev() {
        for k in i + 1..n {
            let lki = l.get(k, i);
            for c in 0..m {
                let v = x.get(i, c) - lki * x.get(k, c);
                x.set(i, c, v);
            }
        }
        let d = l.get(i, i);
        for c in 0..m {
            x.set(i, c, x.get(i, c) / d);
        }
    }
    Ok(x)
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

/// Eigen-decomposition of a symmetric matrix by cyclic Jacobi rotations.
///
/// Jacobi is slower than tridiagonal QR but converges to full relative accuracy, which the
/// spectral tests rely on; for the few hundred rows used here it takes well under a second.
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
    let mut m = a.data.clone();
    let mut v = Matrix::identity(n).data;
    let scale = a.frobenius_sq().max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j] * m[i * n + j])
            .sum();
        if off <= 1e-30 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let (app, aqq) = (m[p * n + p], m[q * n + q]);
                // Rotation angle that zeroes (p, q): t = tan θ, the smaller root.
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[j * n + j].total_cmp(&m[i * n + i]));
    let values = order.iter().map(|&i| m[i * n + i]).collect();
    let mut vectors = Matrix::zeros(n, n);
    for (col, &src) in order.iter().enumerate() {
        for r in 0..n {
            vectors.data[r * n + col] = v[r * n + src];
        }
    }
    Ok(SymmetricEigen { values, vectors })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
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
        assert!(matches!(
            cholesky_solve(&not_pd, &Matrix::identity(2)),
            Err(LinalgError::NotPositiveDefinite { pivot: 1, .. })
        ));
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
