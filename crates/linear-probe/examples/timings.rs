//! Wall time of the probe's dense work at realistic sizes: ridge and logistic fits on a
//! digits-sized (1797×64) and an embedding-sized (2000×512) feature matrix, a 512×512
//! symmetric eigen-decomposition and 2-D PCA. `cargo run --release -p linear-probe --example timings`

use std::time::Instant;

use linear_probe::{fit_logistic, fit_ridge, symmetric_eigen, LogisticOptions, Matrix, Pca2};
use linear_probe::{RidgeSolver, Standardizer};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::SplitMix64;

/// Ten Gaussian classes whose centres overlap, standardised like a probe's training rows.
fn clusters(n: usize, d: usize, rng: &mut SplitMix64) -> (Matrix, Vec<usize>) {
    let centres: Vec<f64> = (0..10 * d).map(|_| rng.sample(StandardNormal)).collect();
    let y: Vec<usize> = (0..n).map(|i| i % 10).collect();
    let data = (0..n * d)
        .map(|i| centres[y[i / d] * d + i % d] + 2.0 * rng.sample::<f64, _>(StandardNormal))
        .collect();
    let x = Matrix::from_vec(n, d, data).unwrap();
    (Standardizer::fit(&x).unwrap().transform(&x).unwrap(), y)
}

fn time<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    println!("| {what} | {:.3} s |", start.elapsed().as_secs_f64());
    out
}

fn main() {
    let mut rng = SplitMix64::seed_from_u64(7);
    for (n, d) in [(1797, 64), (2000, 512)] {
        let (x, y) = clusters(n, d, &mut rng);
        let r = time(&format!("ridge {n}×{d}"), || {
            fit_ridge(&x, &y, 10, 1.0, RidgeSolver::Auto).unwrap()
        });
        let l = time(&format!("logistic {n}×{d}"), || {
            fit_logistic(&x, &y, 10, &LogisticOptions::default()).unwrap()
        });
        let acc = |p: Vec<usize>| p.iter().zip(&y).filter(|(a, b)| a == b).count();
        println!(
            "  train correct: ridge {}, logistic {} in {} iterations",
            acc(r.predict(&x).unwrap()),
            acc(l.classifier.predict(&x).unwrap()),
            l.iterations
        );
        time(&format!("PCA {n}×{d}"), || Pca2::fit(&x).unwrap());
    }
    let (x, _) = clusters(1024, 512, &mut rng);
    let a = x.gram();
    let e = time("symmetric eigen 512×512", || symmetric_eigen(&a).unwrap());
    println!("  largest eigenvalue {:.6e}", e.values[0]);
}
