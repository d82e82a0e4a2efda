//! Linear probes on frozen embeddings (ridge and logistic regression with few labels) and the
//! small dense linear algebra they and the spectral experiments need, in `f64`.
//!
//! A linear probe asks how much class information a frozen representation makes *linearly*
//! available: draw `N` labelled examples per class ([`few_label_split`]), standardise with
//! training statistics only ([`Standardizer`]), fit a linear read-out ([`fit_ridge`] or
//! [`fit_logistic`]) and report accuracy on everything else ([`run_probe`]). Running the same
//! probe on raw pixels gives the baseline an embedding has to beat. [`Pca2`] and
//! [`write_scatter_png`] draw the features for a look at the clusters.

mod classifier;
mod lbfgs;
pub mod linalg;
mod logistic;
mod pca;
mod plot;
mod ridge;
mod split;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use classifier::{LinearClassifier, Standardizer};
pub use linalg::{cholesky_solve, symmetric_eigen, LinalgError, Matrix, SymmetricEigen};
pub use logistic::{fit_logistic, LogisticFit, LogisticOptions};
pub use pca::Pca2;
pub use plot::{class_color, write_scatter_png, PALETTE};
pub use ridge::{fit_ridge, select_ridge_lambda, RidgeSolver, RIDGE_LAMBDA_GRID};
pub use split::{few_label_split, Labels, Split};

/// Why a probe, a fit or a plot failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// There is nothing to work on.
    #[error("empty input: {0}")]
    Empty(String),
    /// Two inputs that must have the same length do not.
    #[error("{what}: expected {expected}, got {got}")]
    LengthMismatch {
        /// What was counted.
        what: &'static str,
        /// The length implied by the other input.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A class has too few examples to hold `n_per_class` out for training and still test.
    #[error(
        "class `{class}` has {count} example(s); training on {n_per_class} per class would leave \
         none of it to test (lower the number per class or add examples)"
    )]
    TooFewExamples {
        /// The class name.
        class: String,
        /// Its number of examples.
        count: usize,
        /// The requested training examples per class.
        n_per_class: usize,
    },
    /// Classification needs at least two classes.
    #[error("a probe needs at least 2 classes, found {0}")]
    TooFewClasses(usize),
    /// A feature is NaN or infinite.
    #[error("feature at row {row}, column {col} is {value} (features must be finite)")]
    NonFinite {
        /// Row (example) index.
        row: usize,
        /// Column (feature) index.
        col: usize,
        /// The value.
        value: f64,
    },
    /// A setting or an input value is out of range.
    #[error("invalid input: {0}")]
    InvalidParameter(String),
    /// A linear solve failed.
    #[error(transparent)]
    Linalg(#[from] LinalgError),
    /// Drawing or writing a plot failed.
    #[error(transparent)]
    Plot(#[from] clip_plot::PlotError),
}

/// The linear read-out of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Ridge regression onto one-hot targets ([`fit_ridge`]): closed form, no iterations.
    #[default]
    Ridge,
    /// L2-penalised multinomial logistic regression ([`fit_logistic`]).
    Logistic,
}

impl Method {
    /// The penalty used when none is given.
    ///
    /// Ridge: `λ = 1` in `‖XW − Y‖²/n + λ‖W‖²`, shrinkage on the scale of one standardised
    /// feature's variance, which keeps the few-label fit away from interpolating (with fewer
    /// labels than effective dimensions a small `λ` lost up to 30 points of accuracy on the
    /// bundled digits). Logistic: `λ = 1e-2` in `cross-entropy + λ/2 ‖W‖²`, where accuracy on
    /// the digits is flat from `1e-3` to `1e-1`. Both were chosen on raw digit pixels with 5–50
    /// labels per class; pass an explicit value to tune for other data.
    pub fn default_lambda(self) -> f64 {
        match self {
            Method::Ridge => ridge::DEFAULT_RIDGE_LAMBDA,
            Method::Logistic => LogisticOptions::default().lambda,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Ridge => "ridge",
            Method::Logistic => "logistic",
        })
    }
}

impl FromStr for Method {
    type Err = ProbeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ridge" => Ok(Method::Ridge),
            "logistic" => Ok(Method::Logistic),
            other => Err(ProbeError::InvalidParameter(format!(
                "unknown probe method `{other}` (expected `ridge` or `logistic`)"
            ))),
        }
    }
}

/// What to probe with.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// The read-out.
    pub method: Method,
    /// Labelled training examples per class.
    pub n_per_class: usize,
    /// Seed of the labelled subset.
    pub seed: u64,
    /// Penalty; `None` chooses it: ridge by cross-validation on the labelled images
    /// ([`select_ridge_lambda`]), logistic [`Method::default_lambda`].
    pub lambda: Option<f64>,
}

/// Accuracy on one class's test examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    /// The class name.
    pub class: String,
    /// Its test examples.
    pub test: usize,
    /// How many of them were classified correctly.
    pub correct: usize,
    /// `correct / test`.
    pub accuracy: f64,
}

/// The outcome of one probe, serialisable for `--json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The read-out.
    pub method: Method,
    /// The penalty used.
    pub lambda: f64,
    /// Feature dimension.
    pub features: usize,
    /// Labelled examples per class.
    pub n_per_class: usize,
    /// Seed of the labelled subset.
    pub seed: u64,
    /// Training examples.
    pub train: usize,
    /// Test examples.
    pub test: usize,
    /// Fraction of test examples classified correctly.
    pub accuracy: f64,
    /// Mean of the per-class accuracies (equals `accuracy` when classes are balanced; lower
    /// when the probe neglects small classes).
    pub balanced_accuracy: f64,
    /// Class names, indexed by class id.
    pub classes: Vec<String>,
    /// Test accuracy per class, in class-id order.
    pub per_class: Vec<ClassAccuracy>,
    /// The labelled examples (row indices into the features, ascending), so a run can be
    /// reproduced or compared across seeds.
    pub train_indices: Vec<usize>,
    /// L-BFGS iterations (logistic only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<usize>,
    /// Whether L-BFGS met its tolerance (logistic only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converged: Option<bool>,
}

/// Runs one probe: split, standardise on the training rows, fit, and score the rest.
///
/// `features` has one row per example of `labels`. Every feature must be finite, training
/// and test rows alike, so a broken embedding cannot hide in the test set.
pub fn run_probe(
    features: &Matrix,
    labels: &Labels,
    cfg: &ProbeConfig,
) -> Result<ProbeReport, ProbeError> {
    if features.rows == 0 || features.cols == 0 {
        return Err(ProbeError::Empty(format!(
            "a {}×{} feature matrix",
            features.rows, features.cols
        )));
    }
    if features.rows != labels.len() {
        return Err(ProbeError::LengthMismatch {
            what: "labels (one per feature row)",
            expected: features.rows,
            got: labels.len(),
        });
    }
    let k = labels.n_classes();
    if k < 2 {
        return Err(ProbeError::TooFewClasses(k));
    }
    classifier::check_finite(features)?;
    let split = few_label_split(labels, cfg.n_per_class, cfg.seed)?;
    let ids = labels.ids();
    let x_train = features.select_rows(&split.train);
    let y_train: Vec<usize> = split.train.iter().map(|&i| ids[i]).collect();
    let scaler = Standardizer::fit(&x_train)?;
    let x_train = scaler.transform(&x_train)?;
    let lambda = match (cfg.lambda, cfg.method) {
        (Some(l), _) => l,
        (None, Method::Ridge) => select_ridge_lambda(&x_train, &y_train, k)?,
        (None, m) => m.default_lambda(),
    };
    let (classifier, iterations, converged) = match cfg.method {
        Method::Ridge => (
            fit_ridge(&x_train, &y_train, k, lambda, RidgeSolver::Auto)?,
            None,
            None,
        ),
        Method::Logistic => {
            let opts = LogisticOptions {
                lambda,
                ..LogisticOptions::default()
            };
            let fit = fit_logistic(&x_train, &y_train, k, &opts)?;
            (fit.classifier, Some(fit.iterations), Some(fit.converged))
        }
    };
    // Score the test rows in chunks so that wide features (raw pixels) are not copied whole.
    let mut test_count = vec![0usize; k];
    let mut correct = vec![0usize; k];
    for chunk in split.test.chunks(1024) {
        let x = scaler.transform(&features.select_rows(chunk))?;
        for (&i, p) in chunk.iter().zip(classifier.predict(&x)?) {
            test_count[ids[i]] += 1;
            if p == ids[i] {
                correct[ids[i]] += 1;
            }
        }
    }
    let per_class: Vec<ClassAccuracy> = (0..k)
        .map(|c| ClassAccuracy {
            class: labels.names()[c].clone(),
            test: test_count[c],
            correct: correct[c],
            accuracy: correct[c] as f64 / test_count[c].max(1) as f64,
        })
        .collect();
    let total_correct: usize = correct.iter().sum();
    Ok(ProbeReport {
        method: cfg.method,
        lambda,
        features: features.cols,
        n_per_class: cfg.n_per_class,
        seed: cfg.seed,
        train: split.train.len(),
        test: split.test.len(),
        accuracy: total_correct as f64 / split.test.len().max(1) as f64,
        balanced_accuracy: per_class.iter().map(|c| c.accuracy).sum::<f64>() / k as f64,
        classes: labels.names().to_vec(),
        per_class,
        train_indices: split.train,
        iterations,
        converged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::tests::pseudo_random;

    /// Two noisy clusters per class in 8 dimensions, three classes.
    fn toy(per_class: usize) -> (Matrix, Labels) {
        let n = 3 * per_class;
        let mut x = Matrix::from_vec(n, 8, pseudo_random(n * 8, 42)).unwrap();
        x.data.iter_mut().for_each(|v| *v *= 0.5);
        let names: Vec<&str> = (0..n).map(|i| ["cat", "dog", "eel"][i % 3]).collect();
        for i in 0..n {
            x.set(i, i % 3, x.get(i, i % 3) + 3.0);
        }
        (x, Labels::from_names(&names))
    }

    #[test]
    fn both_methods_probe_a_separable_toy_set() {
        let (x, labels) = toy(20);
        for method in [Method::Ridge, Method::Logistic] {
            let cfg = ProbeConfig {
                method,
                n_per_class: 5,
                seed: 7,
                lambda: None,
            };
            let r = run_probe(&x, &labels, &cfg).unwrap();
            assert_eq!((r.train, r.test), (15, 45));
            assert_eq!(r.accuracy, 1.0, "{method}");
            assert_eq!(r.classes, ["cat", "dog", "eel"]);
            assert_eq!(r.per_class.iter().map(|c| c.test).sum::<usize>(), 45);
            assert_eq!(r.iterations.is_some(), method == Method::Logistic);
            let json = serde_json::to_string(&r).unwrap();
            assert!(json.contains(&format!("\"method\":\"{method}\"")), "{json}");
            let back: ProbeReport = serde_json::from_str(&json).unwrap();
            assert_eq!(back, r);
            // Same seed, same report.
            assert_eq!(run_probe(&x, &labels, &cfg).unwrap(), r);
            // Labels that ignore the clusters: near chance (1/3), far from perfect.
            let names: Vec<&str> = (0..60)
                .map(|i| ["cat", "dog", "eel"][(i * 7 / 3) % 3])
                .collect();
            let r = run_probe(&x, &Labels::from_names(&names), &cfg).unwrap();
            assert!(
                r.accuracy < 0.6,
                "{method}: {} on shuffled labels",
                r.accuracy
            );
        }
    }

    #[test]
    fn bad_probe_inputs_are_errors_naming_the_fault() {
        let (x, labels) = toy(4);
        let cfg = ProbeConfig {
            method: Method::Ridge,
            n_per_class: 4,
            seed: 0,
            lambda: None,
        };
        let err = run_probe(&x, &labels, &cfg).unwrap_err();
        assert!(err.to_string().contains("`cat` has 4"), "{err}");
        let cfg = ProbeConfig {
            n_per_class: 2,
            ..cfg
        };
        let short = Labels::from_names(&["a", "b"]);
        assert!(matches!(
            run_probe(&x, &short, &cfg),
            Err(ProbeError::LengthMismatch { .. })
        ));
        let one = Labels::from_names(&["a"; 12]);
        assert!(matches!(
            run_probe(&x, &one, &cfg),
            Err(ProbeError::TooFewClasses(1))
        ));
        let mut bad = x.clone();
        bad.set(11, 3, f64::NAN);
        let err = run_probe(&bad, &labels, &cfg).unwrap_err();
        assert!(err.to_string().contains("row 11, column 3"), "{err}");
        assert!(run_probe(&Matrix::zeros(0, 0), &Labels::from_names::<&str>(&[]), &cfg).is_err());
        let err = "svm".parse::<Method>().unwrap_err();
        assert!(err.to_string().contains("`svm`"), "{err}");
        assert_eq!("Logistic".parse::<Method>().unwrap(), Method::Logistic);
    }
}
