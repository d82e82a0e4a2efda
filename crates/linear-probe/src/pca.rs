//! Two-dimensional PCA, to look at how separable the classes are before (or instead of)
//! trusting a single accuracy number.

use rand::{Rng, SeedableRng};
use rand_xoshiro::SplitMix64;

use crate::classifier::{argmax, check_features, check_finite};
use crate::linalg::{symmetric_eigen, Matrix};
use crate::ProbeError;

/// Up to this many features the covariance is decomposed directly; above it a
/// block power iteration finds the top directions without forming a `d × d` matrix (raw
/// pixels easily have 12288 features).
const DIRECT_MAX_FEATURES: usize = 256;

/// The top two principal directions of a set of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Pca2 {
    /// Feature means subtracted before projecting.
    pub mean: Vec<f64>,
    /// Two orthonormal directions, largest variance first. The sign of each is fixed so that
    /// its largest-magnitude entry is positive, making plots repeatable across runs. With a
    /// single feature the second direction is all zeros.
    pub components: [Vec<f64>; 2],
    /// Variance (population) along each direction.
    pub variances: [f64; 2],
}

impl Pca2 {
    /// Fits the directions to the rows of `x`.
    pub fn fit(x: &Matrix) -> Result<Self, ProbeError> {
        let method = if x.cols <= DIRECT_MAX_FEATURES {
            Method::Covariance
        } else {
            Method::Subspace
        };
        fit_with(x, method)
    }

    /// Coordinates of each row of `x` along the two directions.
    pub fn project(&self, x: &Matrix) -> Result<Vec<[f64; 2]>, ProbeError> {
        check_features(x, self.mean.len())?;
        Ok((0..x.rows)
            .map(|r| {
                let mut p = [0.0; 2];
                for (j, (v, m)) in x.row(r).iter().zip(&self.mean).enumerate() {
                    let c = v - m;
                    p[0] += c * self.components[0][j];
                    p[1] += c * self.components[1][j];
                }
                p
            })
            .collect())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    Covariance,
    Subspace,
}

fn fit_with(x: &Matrix, method: Method) -> Result<Pca2, ProbeError> {
    if x.rows == 0 || x.cols == 0 {
        return Err(ProbeError::Empty(format!(
            "cannot run PCA on a {}×{} matrix",
            x.rows, x.cols
        )));
    }
    check_finite(x)?;
    let (n, d) = (x.rows, x.cols);
    let mean = x.column_means();
    let mut xc = x.clone();
    xc.add_to_rows(&mean, -1.0);
    let (mut vectors, variances) = match method {
        Method::Covariance => {
            let mut cov = xc.gram();
            cov.data.iter_mut().for_each(|v| *v /= n as f64);
            let e = symmetric_eigen(&cov)?;
            let take = |i: usize| {
                if i < d {
                    (e.vector(i), e.values[i].max(0.0))
                } else {
                    (vec![0.0; d], 0.0)
                }
            };
            let ((v0, l0), (v1, l1)) = (take(0), take(1));
            ([v0, v1], [l0, l1])
        }
        Method::Subspace => subspace_top2(&xc)?,
    };
    for v in &mut vectors {
        if v[argmax(&v.iter().map(|a| a.abs()).collect::<Vec<_>>())] < 0.0 {
            v.iter_mut().for_each(|a| *a = -*a);
        }
    }
    Ok(Pca2 {
        mean,
        components: vectors,
        variances,
    })
}

/// An orthonormal basis of the column space of `m` (`d × b`, `b ≤ d`): the thin `Q` of a
/// Householder QR, orthonormal even when the columns are dependent (rank-deficient data).
fn orthonormal_columns(m: &Matrix) -> Matrix {
    Matrix::from_faer(m.as_faer().qr().compute_thin_Q().as_ref())
}

/// Block power iteration with Rayleigh–Ritz on a few extra vectors, from a fixed
/// pseudo-random start so the result is deterministic.
fn subspace_top2(xc: &Matrix) -> Result<([Vec<f64>; 2], [f64; 2]), ProbeError> {
    const BLOCK: usize = 6;
    const MAX_ITER: usize = 300;
    let (n, d) = (xc.rows, xc.cols);
    let b = BLOCK.min(d);
    let mut rng = SplitMix64::seed_from_u64(0x5ca7_7e12);
    let start: Vec<f64> = (0..d * b).map(|_| rng.random::<f64>() - 0.5).collect();
    let mut v = orthonormal_columns(&Matrix::from_vec(d, b, start)?);
    let mut previous = [f64::NAN; 2];
    let mut z = xc.matmul(&v)?;
    let mut iterations = 0;
    let e = loop {
        // Ritz values of the current block: stop once the top two have settled.
        let e = symmetric_eigen(&z.gram())?;
        let current = [e.values[0], e.values.get(1).copied().unwrap_or(0.0)];
        let settled = current
            .iter()
            .zip(&previous)
            .all(|(c, p)| (c - p).abs() <= 1e-12 * current[0].abs().max(f64::MIN_POSITIVE));
        previous = current;
        iterations += 1;
        if settled || iterations > MAX_ITER {
            break e;
        }
        // V ← orth(Xᵀ X V): one multiplication by the (unformed) covariance.
        v = orthonormal_columns(&xc.transpose_matmul(&z)?);
        z = xc.matmul(&v)?;
    };
    // Rayleigh–Ritz: rotate the block onto the eigenvectors of its projected covariance.
    let ritz = v.matmul(&e.vectors)?;
    let col = |i: usize| -> Vec<f64> {
        if i < b {
            (0..d).map(|r| ritz.get(r, i)).collect()
        } else {
            vec![0.0; d]
        }
    };
    let var = |i: usize| e.values.get(i).map_or(0.0, |l| l.max(0.0) / n as f64);
    Ok(([col(0), col(1)], [var(0), var(1)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::linalg::tests::pseudo_random;

    #[test]
    fn points_on_a_line_give_that_line() {
        let dir = [3.0, -4.0, 0.0];
        let rows: Vec<Vec<f64>> = (0..20)
            .map(|i| {
                let t = i as f64 - 7.0;
                vec![1.0 + t * dir[0], 2.0 + t * dir[1], 5.0]
            })
            .collect();
        let x = Matrix::from_rows(&rows).unwrap();
        let p = Pca2::fit(&x).unwrap();
        // The largest-magnitude entry (−4/5) is made positive.
        let want = [-0.6, 0.8, 0.0];
        for (a, b) in p.components[0].iter().zip(&want) {
            assert!((a - b).abs() < 1e-10, "{:?}", p.components[0]);
        }
        assert!(p.variances[1].abs() < 1e-10, "{:?}", p.variances);
        let proj = p.project(&x).unwrap();
        assert!(proj.iter().all(|q| q[1].abs() < 1e-9));
        // Coordinates along the line are the (signed) distances from the mean.
        assert!((proj[8][0] - proj[7][0] - (-5.0)).abs() < 1e-9, "{proj:?}");
    }

    #[test]
    fn block_iteration_agrees_with_the_direct_decomposition() {
        // Anisotropic data: a few strong directions plus noise.
        let (n, d) = (120, 30);
        let base = pseudo_random(n * d, 1);
        let mut x = Matrix::from_vec(n, d, base).unwrap();
        for r in 0..n {
            let (a, b) = (x.get(r, 0) * 6.0, x.get(r, 1) * 3.0);
            for j in 0..d {
                let v = x.get(r, j) * 0.3 + a * (j as f64 / d as f64) + b * ((j % 3) as f64);
                x.set(r, j, v);
            }
        }
        let direct = fit_with(&x, Method::Covariance).unwrap();
        let block = fit_with(&x, Method::Subspace).unwrap();
        for k in 0..2 {
            let rel = (direct.variances[k] - block.variances[k]).abs() / direct.variances[k];
            assert!(
                rel < 1e-9,
                "{:?} vs {:?}",
                direct.variances,
                block.variances
            );
            for (a, b) in direct.components[k].iter().zip(&block.components[k]) {
                assert!((a - b).abs() < 1e-6, "component {k}");
            }
        }
    }

    #[test]
    fn degenerate_inputs() {
        assert!(matches!(
            Pca2::fit(&Matrix::zeros(0, 3)),
            Err(ProbeError::Empty(_))
        ));
        let one = Pca2::fit(&Matrix::from_rows(&[vec![1.0], vec![3.0]]).unwrap()).unwrap();
        assert_eq!(one.components[0], [1.0]);
        assert_eq!(one.components[1], [0.0]);
        let mut bad = Matrix::zeros(2, 2);
        bad.set(1, 1, f64::INFINITY);
        assert!(matches!(
            Pca2::fit(&bad),
            Err(ProbeError::NonFinite { row: 1, col: 1, .. })
        ));
        // Rank-one data through the block path still yields orthonormal directions.
        let rows: Vec<Vec<f64>> = (0..5).map(|i| vec![i as f64; 300]).collect();
        let p = fit_with(&Matrix::from_rows(&rows).unwrap(), Method::Subspace).unwrap();
        let dot: f64 = p.components[0]
            .iter()
            .zip(&p.components[1])
            .map(|(a, b)| a * b)
            .sum();
        assert!(dot.abs() < 1e-9);
        assert!(p.variances[1] < 1e-9 * p.variances[0]);
    }
}
