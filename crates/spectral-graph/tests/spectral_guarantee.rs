//! The spectral guarantee on real digits: on an augmentation graph of 4s and 9s small enough
//! to decompose exactly, a free embedding table trained on the population spectral
//! contrastive loss reaches the Eckart–Young optimum, and least squares on it fits the class
//! labels within the bound `2α / λᴸ_{k+1}`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use linear_probe::linalg::{Matrix, SymmetricEigen};
use spectral_graph::{
    approximation_error, beta_tail, eckart_young_optimum, fit_free_embeddings, guarantee_report,
    load_digits, population_loss, regression_residual, spectral_embedding,
    spectral_population_loss, AugmentationGraph, DigitGraphConfig, Digits, SpectralError,
};

fn digits_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/digits/digits.csv")
}

fn digits() -> &'static Digits {
    static DIGITS: OnceLock<Digits> = OnceLock::new();
    DIGITS.get_or_init(|| load_digits(&digits_path()).expect("data/digits/digits.csv"))
}

/// 12 origins per class × 5 views = 120 nodes: an exact spectrum in well under a second.
fn small_config() -> DigitGraphConfig {
    DigitGraphConfig {
        origins_per_class: 12,
        views_per_origin: 5,
        ..DigitGraphConfig::default()
    }
}

fn graph() -> &'static (AugmentationGraph, SymmetricEigen) {
    static GRAPH: OnceLock<(AugmentationGraph, SymmetricEigen)> = OnceLock::new();
    GRAPH.get_or_init(|| {
        let (g, _sigma) = AugmentationGraph::from_digits(digits(), &small_config()).unwrap();
        let e = g.spectrum().unwrap();
        (g, e)
    })
}

#[test]
fn digits_file_has_the_expected_shape() {
    let d = digits();
    assert_eq!(d.images.len(), 1797);
    assert!(d.images.iter().all(|x| x.len() == 64));
    assert!(d.images.iter().flatten().all(|p| (0.0..=1.0).contains(p)));
    for c in 0..10u8 {
        assert!(d.labels.iter().filter(|&&l| l == c).count() > 150);
    }
}

#[test]
fn graph_is_a_normalised_psd_adjacency_with_a_small_nonzero_cut() {
    let (g, e) = graph();
    assert_eq!(g.len(), 120);
    assert_eq!(g.labels.iter().filter(|&&y| y == 1).count(), 60);
    let total: f64 = g.weights.data.iter().sum();
    assert!((total - 1.0).abs() < 1e-12);
    assert!((g.node_weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert!(
        (e.values[0] - 1.0).abs() < 1e-10,
        "top eigenvalue {}",
        e.values[0]
    );
    // W = PᵀP / N_o is a Gram matrix, so Ā is PSD and the top eigenvalues are positive.
    assert!(e.values.iter().all(|&l| l > -1e-10 && l < 1.0 + 1e-10));
    assert!(
        e.values[..8].iter().all(|&l| l > 0.05),
        "{:?}",
        &e.values[..8]
    );
    // Connected (λ₂ < 1) and the classes mostly separate: a few percent of positive pairs
    // cross between 4s and 9s, but not none.
    assert!(e.values[1] < 0.999);
    let alpha = g.cut_alpha();
    assert!(alpha > 1e-3 && alpha < 0.15, "α = {alpha}");
}

#[test]
fn laplacian_form_of_the_labels_is_twice_the_cut() {
    let (g, _) = graph();
    let (quad, alpha) = (g.laplacian_form(), g.cut_alpha());
    assert!((quad - 2.0 * alpha).abs() < 1e-12, "{quad} vs 2·{alpha}");
    // u = D^{1/2}y is a unit vector.
    let u = g.label_vector();
    assert!((u.iter().map(|v| v * v).sum::<f64>() - 1.0).abs() < 1e-12);
}

#[test]
fn loss_of_the_scaled_eigenvectors_is_minus_the_captured_spectrum() {
    let (g, e) = graph();
    let dev = Device::Cpu;
    let pairs = g.pair_weights_tensor(&dev).unwrap();
    let nodes = g.node_weights_tensor(&dev).unwrap();
    for k in 1..=6 {
        let f = spectral_embedding(g, e, k).unwrap();
        let t = Tensor::from_vec(f.data.clone(), (f.rows, f.cols), &dev).unwrap();
        let loss: f64 = spectral_population_loss(&t, &pairs, &nodes)
            .unwrap()
            .to_scalar()
            .unwrap();
        let want = -e.values[..k].iter().map(|l| l * l).sum::<f64>();
        assert!(
            (loss - want).abs() < 1e-6 * want.abs(),
            "k = {k}: {loss} vs {want}"
        );
        let f64_loss = population_loss(g, &f).unwrap();
        assert!((f64_loss - want).abs() < 1e-9 * want.abs());
        // At the optimum the regression residual is exactly the β tail.
        let r = regression_residual(g, &f).unwrap();
        let tail = beta_tail(g, e, k).unwrap();
        assert!((r - tail).abs() < 1e-9, "k = {k}: R {r} vs Σβ² {tail}");
    }
}

#[test]
fn trained_embeddings_reach_eckart_young_and_fit_labels_within_the_bound() {
    let (g, e) = graph();
    for k in [2, 4] {
        let f = fit_free_embeddings(g, k, 800, 0.05, 7).unwrap();
        let r = guarantee_report(g, e, &f).unwrap();
        // Eckart–Young against the entries of Ā: ‖Ā‖²_F = Σλᵢ², so the tail is what the
        // top k leave of it.
        let top: f64 = e.values[..k].iter().map(|l| l * l).sum();
        let optimum = g.normalized_adjacency().frobenius_sq() - top;
        assert!(optimum.is_finite() && optimum > 0.0, "k = {k}: {optimum}");
        let tail = r.eckart_young_optimum;
        assert!(
            (tail - optimum).abs() < 1e-10,
            "k = {k}: {tail} vs {optimum}"
        );
        let gap = r.approximation_error - optimum;
        // Never below the optimum beyond rounding, and at most 1e-4 above it.
        assert!(gap > -1e-9, "k = {k}: below the optimum by {gap}");
        assert!(gap < 1e-4_f64.max(1e-3 * optimum), "k = {k}: gap {gap}");
        // The learned embedding spans the top-k eigenvectors, so its least-squares residual
        // is the β tail, and that tail is within the bound the proof gives.
        assert!(
            (r.residual - r.beta_tail).abs() < 1e-3,
            "k = {k}: R {} vs Σβ² {}",
            r.residual,
            r.beta_tail
        );
        assert!(
            r.beta_tail <= r.bound,
            "k = {k}: {} > {}",
            r.beta_tail,
            r.bound
        );
        assert!(r.residual <= r.bound + 1e-3);
        // By k = 4 the bound says something: well below the trivial ‖u‖² = 1 (at k = 2 it
        // depends on the draw: λ₃ is 0.90 on this one, leaving 2α/λᴸ₃ above 1).
        assert!(k < 4 || r.bound < 0.7, "k = {k}: bound {}", r.bound);
        // The bound from the quadratic form uᵀ(I − Ā)u summed over the graph's entries.
        let (u, a) = (g.label_vector(), g.normalized_adjacency());
        let quad: f64 = (0..g.len())
            .map(|i| u[i] * (u[i] - (0..g.len()).map(|j| a.get(i, j) * u[j]).sum::<f64>()))
            .sum();
        let want = quad / (1.0 - e.values[k]);
        assert!(
            want.is_finite() && (r.bound - want).abs() < 1e-10 * want,
            "k = {k}"
        );
        assert!(r.lambda_k > 0.0 && r.laplacian_k_plus_1 > 0.0);
    }
}

#[test]
fn an_untrained_embedding_is_far_from_the_optimum() {
    // The check above can fail: a few steps leave the table well above Σ_{i>k} λᵢ² and its
    // regression residual away from the β tail.
    let (g, e) = graph();
    let f = fit_free_embeddings(g, 4, 3, 0.01, 7).unwrap();
    let err = approximation_error(g, &f).unwrap();
    let optimum = eckart_young_optimum(e, 4).unwrap();
    assert!(err - optimum > 0.1, "{err} vs {optimum}");
}

#[test]
fn the_graph_is_reproducible_from_its_seed() {
    let (g, _) = graph();
    let (again, sigma) = AugmentationGraph::from_digits(digits(), &small_config()).unwrap();
    assert_eq!(g.weights, again.weights);
    assert!(sigma > 0.0 && sigma.is_finite());
    let other = DigitGraphConfig {
        seed: 18,
        ..small_config()
    };
    let (moved, _) = AugmentationGraph::from_digits(digits(), &other).unwrap();
    assert_ne!(g.weights, moved.weights);
}

#[test]
fn bad_inputs_are_errors() {
    let d = digits();
    // The small configuration with one field made invalid.
    let with = |edit: fn(&mut DigitGraphConfig)| {
        let mut cfg = small_config();
        edit(&mut cfg);
        cfg
    };
    let bad = [
        with(|c| c.classes = [4, 4]),
        with(|c| c.classes = [4, 12]),
        with(|c| c.origins_per_class = 0),
        with(|c| c.views_per_origin = 0),
        with(|c| c.origins_per_class = 10_000),
        with(|c| c.max_shift = 8),
        with(|c| c.gain_jitter = 1.5),
        with(|c| c.noise_std = f64::NAN),
        with(|c| c.sigma_scale = 0.0),
    ];
    for cfg in &bad {
        assert!(
            matches!(
                AugmentationGraph::from_digits(d, cfg),
                Err(SpectralError::Invalid { .. })
            ),
            "{cfg:?}"
        );
    }
    let (g, e) = graph();
    assert!(fit_free_embeddings(g, g.len(), 10, 0.01, 0).is_err());
    assert!(fit_free_embeddings(g, 0, 10, 0.01, 0).is_err());
    assert!(spectral_embedding(g, e, 200).is_err());
    assert!(regression_residual(g, &Matrix::zeros(5, 2)).is_err());
    assert!(matches!(
        load_digits(Path::new("no/such/digits.csv")),
        Err(SpectralError::Io { .. })
    ));
}
