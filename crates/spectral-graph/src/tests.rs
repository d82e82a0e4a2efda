//! Analytic graphs, finite differences and the exact optimum, against the code of every module.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use linear_probe::linalg::Matrix;

use super::*;

/// Two pairs {0, 1} and {2, 3}, labelled +1 and −1, with raw weights whose normalised
/// adjacency is `W / 6`: eigenvalues 1, 2/3, 0, −1/3 with eigenvectors (1,1,1,1)/2,
/// (1,1,−1,−1)/2, (1,−1,1,−1)/2, (1,−1,−1,1)/2; four of the 24 units of weight cross.
fn four_nodes() -> AugmentationGraph {
    let w = Matrix::from_rows(&[
        vec![2.0, 3.0, 1.0, 0.0],
        vec![3.0, 2.0, 0.0, 1.0],
        vec![1.0, 0.0, 2.0, 3.0],
        vec![0.0, 1.0, 3.0, 2.0],
    ])
    .unwrap();
    AugmentationGraph::from_weights(w, vec![1, 1, -1, -1]).unwrap()
}

fn random_points(count: usize, dim: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = seeded(seed);
    (0..count)
        .map(|_| (0..dim).map(|_| normal(&mut rng)).collect())
        .collect()
}

fn random_graph(origins: usize, views_each: usize, seed: u64) -> AugmentationGraph {
    let o = random_points(origins, 3, seed);
    let mut rng = seeded(seed ^ 0xABCD);
    let mut views = vec![];
    let mut labels = vec![];
    for (i, x) in o.iter().enumerate() {
        for _ in 0..views_each {
            views.push(x.iter().map(|v| v + 0.3 * normal(&mut rng)).collect());
            labels.push(if i % 2 == 0 { 1 } else { -1 });
        }
    }
    AugmentationGraph::from_points(&o, &views, labels, 0.8).unwrap()
}

fn tensor(m: &Matrix) -> Tensor {
    Tensor::from_vec(m.data.clone(), (m.rows, m.cols), &Device::Cpu).unwrap()
}

fn candle_loss(g: &AugmentationGraph, f: &Matrix) -> f64 {
    let dev = Device::Cpu;
    spectral_population_loss(
        &tensor(f),
        &g.pair_weights_tensor(&dev).unwrap(),
        &g.node_weights_tensor(&dev).unwrap(),
    )
    .unwrap()
    .to_scalar::<f64>()
    .unwrap()
}

#[test]
fn four_node_graph_has_its_analytic_spectrum_and_cut() {
    let g = four_nodes();
    assert!(g.node_weights.iter().all(|w| (w - 0.25).abs() < 1e-15));
    let e = g.spectrum().unwrap();
    for (got, want) in e.values.iter().zip([1.0, 2.0 / 3.0, 0.0, -1.0 / 3.0]) {
        assert!((got - want).abs() < 1e-12, "{:?}", e.values);
    }
    assert!((g.cut_alpha() - 1.0 / 6.0).abs() < 1e-15);
    assert!((g.laplacian_form() - 1.0 / 3.0).abs() < 1e-14);
    // u = y/2 is the second eigenvector: nothing is left outside the top two, and for
    // k = 1 the bound 2α/λᴸ₂ = (1/3)/(1/3) = 1 is met with equality.
    assert!(beta_tail(&g, &e, 2).unwrap() < 1e-24);
    assert!((beta_tail(&g, &e, 1).unwrap() - 1.0).abs() < 1e-12);
    assert!((regression_bound(&g, &e, 1).unwrap() - 1.0).abs() < 1e-12);
    // The optimum for k = 2 is (0)² + (1/3)² and the loss there is −(1 + 4/9).
    assert!((eckart_young_optimum(&e, 2).unwrap() - 1.0 / 9.0).abs() < 1e-12);
    let f = spectral_embedding(&g, &e, 2).unwrap();
    assert!((population_loss(&g, &f).unwrap() + 13.0 / 9.0).abs() < 1e-12);
    assert!((candle_loss(&g, &f) + 13.0 / 9.0).abs() < 1e-12);
    assert!(eckart_young_gap(&g, &e, &f).unwrap().abs() < 1e-12);
    assert!(regression_residual(&g, &f).unwrap() < 1e-20);
    // λ₃ = 0: no real embedding of rank 3 reaches the (PSD-restricted) optimum.
    assert!(spectral_embedding(&g, &e, 3).is_err());
}

#[test]
fn loss_is_the_matrix_approximation_error_shifted() {
    let g = random_graph(4, 3, 5);
    let a = g.normalized_adjacency();
    let mut rng = seeded(11);
    let f = Matrix::from_vec(
        g.len(),
        3,
        (0..g.len() * 3).map(|_| normal(&mut rng)).collect(),
    )
    .unwrap();
    let want = approximation_error(&g, &f).unwrap() - a.frobenius_sq();
    let f64_loss = population_loss(&g, &f).unwrap();
    assert!(
        (f64_loss - want).abs() < 1e-10 * want.abs().max(1.0),
        "{f64_loss} vs {want}"
    );
    let c = candle_loss(&g, &f);
    assert!(
        (c - want).abs() < 1e-10 * want.abs().max(1.0),
        "{c} vs {want}"
    );
}

#[test]
fn soft_graph_is_a_normalised_psd_gram_matrix() {
    let g = random_graph(5, 4, 9);
    let total: f64 = g.weights.data.iter().sum();
    assert!((total - 1.0).abs() < 1e-12);
    for a in 0..g.len() {
        for b in 0..g.len() {
            assert_eq!(g.weights.get(a, b), g.weights.get(b, a));
            assert!(g.weights.get(a, b) > 0.0);
        }
    }
    let e = g.spectrum().unwrap();
    assert!(
        (e.values[0] - 1.0).abs() < 1e-12,
        "top eigenvalue {}",
        e.values[0]
    );
    assert!(e.values.iter().all(|&l| l > -1e-12), "{:?}", e.values);
    // The top eigenvector is √w (up to sign).
    let v0 = e.vector(0);
    let s = v0[0].signum();
    for (v, w) in v0.iter().zip(&g.node_weights) {
        assert!((s * v - w.sqrt()).abs() < 1e-10);
    }
    assert!((g.laplacian_form() - 2.0 * g.cut_alpha()).abs() < 1e-13);
}

#[test]
fn candle_gradient_matches_finite_differences() {
    let g = random_graph(3, 2, 21);
    let (n, k) = (g.len(), 2);
    let mut rng = seeded(3);
    let f = Matrix::from_vec(n, k, (0..n * k).map(|_| normal(&mut rng)).collect()).unwrap();
    let dev = Device::Cpu;
    let var = Var::from_tensor(&tensor(&f)).unwrap();
    let loss = spectral_population_loss(
        var.as_tensor(),
        &g.pair_weights_tensor(&dev).unwrap(),
        &g.node_weights_tensor(&dev).unwrap(),
    )
    .unwrap();
    let grads = loss.backward().unwrap();
    let grad: Vec<f64> = grads
        .get(var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let h = 1e-6;
    assert_eq!(grad.len(), n * k);
    for (i, &analytic) in grad.iter().enumerate() {
        let (mut up, mut down) = (f.clone(), f.clone());
        up.data[i] += h;
        down.data[i] -= h;
        let fd =
            (population_loss(&g, &up).unwrap() - population_loss(&g, &down).unwrap()) / (2.0 * h);
        assert!(
            (fd - analytic).abs() < 1e-7 * (1.0 + fd.abs()),
            "{i}: {fd} vs {analytic}"
        );
    }
}

#[test]
fn training_reaches_the_optimum_on_a_small_graph() {
    let g = random_graph(4, 3, 2);
    let e = g.spectrum().unwrap();
    let f = fit_free_embeddings(&g, 2, 600, 0.05, 1).unwrap();
    let gap = eckart_young_gap(&g, &e, &f).unwrap();
    assert!(gap > -1e-10 && gap < 1e-7, "gap {gap}");
    // Same seed, same table.
    assert_eq!(f, fit_free_embeddings(&g, 2, 600, 0.05, 1).unwrap());
}

#[test]
fn augmentation_stays_in_range_and_is_reproducible() {
    let cfg = DigitGraphConfig {
        noise_std: 0.3,
        ..DigitGraphConfig::default()
    };
    let image: Vec<f64> = (0..64).map(|i| (i % 17) as f64 / 16.0).collect();
    let (mut r1, mut r2) = (seeded(4), seeded(4));
    for _ in 0..20 {
        let a = augment(&image, &cfg, &mut r1);
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(a, augment(&image, &cfg, &mut r2));
    }
    assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let ok = four_nodes().weights;
    let labels = vec![1, 1, -1, -1];
    let bad_weights = |m: Matrix, l: Vec<i8>| AugmentationGraph::from_weights(m, l).is_err();
    assert!(bad_weights(Matrix::zeros(0, 0), vec![]));
    assert!(bad_weights(Matrix::zeros(2, 3), vec![1, 1]));
    assert!(bad_weights(Matrix::zeros(4, 4), labels.clone()));
    assert!(bad_weights(ok.clone(), vec![1, 1, -1]));
    assert!(bad_weights(ok.clone(), vec![1, 0, -1, -1]));
    for (i, v) in [(1, f64::NAN), (1, -0.5), (2, 7.0), (1, f64::INFINITY)] {
        let mut m = ok.clone();
        m.data[i] = v;
        assert!(bad_weights(m, labels.clone()), "weight {v} at {i}");
    }
    let mut isolated = ok.clone();
    for j in 0..4 {
        isolated.set(3, j, 0.0);
        isolated.set(j, 3, 0.0);
    }
    assert!(bad_weights(isolated, labels.clone()));

    let pts = random_points(3, 2, 1);
    assert!(AugmentationGraph::from_points(&[], &pts, vec![1; 3], 1.0).is_err());
    assert!(AugmentationGraph::from_points(&pts, &[], vec![], 1.0).is_err());
    assert!(AugmentationGraph::from_points(&pts, &pts, vec![1; 3], 0.0).is_err());
    assert!(AugmentationGraph::from_points(&pts, &pts, vec![1; 3], f64::NAN).is_err());
    assert!(AugmentationGraph::from_points(&pts, &pts, vec![1; 2], 1.0).is_err());
    let mut nan = pts.clone();
    nan[1][0] = f64::NAN;
    assert!(AugmentationGraph::from_points(&pts, &nan, vec![1; 3], 1.0).is_err());
    let ragged = vec![vec![0.0, 1.0], vec![0.0]];
    assert!(AugmentationGraph::from_points(&pts, &ragged, vec![1; 2], 1.0).is_err());
    // A σ so small that a far view gets no mass from any origin.
    let far = vec![vec![0.0, 0.0], vec![1e6, 1e6]];
    let err = AugmentationGraph::from_points(&far[..1], &far, vec![1, -1], 1e-3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("increase sigma"), "{err}");

    let g = four_nodes();
    let e = g.spectrum().unwrap();
    for k in [0, 4, 9] {
        assert!(fit_free_embeddings(&g, k, 10, 0.01, 0).is_err(), "k = {k}");
        assert!(beta_tail(&g, &e, k).is_err());
        assert!(regression_bound(&g, &e, k).is_err());
        assert!(spectral_embedding(&g, &e, k).is_err());
        assert!(eckart_young_optimum(&e, k).is_err());
    }
    assert!(fit_free_embeddings(&g, 1, 0, 0.01, 0).is_err());
    assert!(fit_free_embeddings(&g, 1, 10, -1.0, 0).is_err());
    assert!(fit_free_embeddings(&g, 1, 10, f64::NAN, 0).is_err());
    // A learning rate large enough to blow up is reported, not returned as NaNs.
    assert!(fit_free_embeddings(&g, 1, 50, 1e200, 0).is_err());
    let short = Matrix::zeros(3, 2);
    assert!(population_loss(&g, &short).is_err());
    assert!(approximation_error(&g, &short).is_err());
    assert!(guarantee_report(&g, &e, &short).is_err());
    let mut nan_f = Matrix::zeros(4, 1);
    nan_f.data[2] = f64::NAN;
    assert!(population_loss(&g, &nan_f).is_err());
    // A collapsed embedding (both columns equal) makes FᵀF singular.
    let collapsed = Matrix::from_vec(4, 2, vec![1.0; 8]).unwrap();
    assert!(matches!(
        regression_residual(&g, &collapsed),
        Err(SpectralError::Linalg(_))
    ));
    let other = random_graph(3, 2, 1).spectrum().unwrap();
    assert!(beta_tail(&g, &other, 1).is_err());

    let dev = Device::Cpu;
    let (pw, nw) = (
        g.pair_weights_tensor(&dev).unwrap(),
        g.node_weights_tensor(&dev).unwrap(),
    );
    let f3 = Tensor::zeros((3, 2), DType::F64, &dev).unwrap();
    assert!(spectral_population_loss(&f3, &pw, &nw).is_err());
    let f0 = Tensor::zeros((4, 0), DType::F64, &dev).unwrap();
    assert!(spectral_population_loss(&f0, &pw, &nw).is_err());
    let f1 = Tensor::zeros(4, DType::F64, &dev).unwrap();
    assert!(spectral_population_loss(&f1, &pw, &nw).is_err());

    assert!(parse_digits("").is_err());
    assert!(parse_digits("a,b\n1,2\n").is_err());
    let header: Vec<String> = (0..64)
        .map(|i| format!("p{i}"))
        .chain(["label".into()])
        .collect();
    let header = header.join(",");
    let row = |pixel: &str, label: &str| {
        let mut v = vec!["0"; 64];
        v[5] = pixel;
        format!("{header}\n{},{label}\n", v.join(","))
    };
    assert!(parse_digits(&row("3", "4")).is_ok());
    assert!(parse_digits(&format!("{header}\n")).is_err());
    assert!(parse_digits(&row("17", "4")).is_err());
    assert!(parse_digits(&row("x", "4")).is_err());
    assert!(parse_digits(&row("NaN", "4")).is_err());
    assert!(parse_digits(&row("3", "10")).is_err());
    assert!(parse_digits(&row("3", "4").replace(",4\n", "\n")).is_err());
    assert!(load_digits(Path::new("/nonexistent/digits.csv")).is_err());
}
