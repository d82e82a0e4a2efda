//! Black-box tests of `clip probe` on the bundled handwritten digits.

mod common;

use std::process::Output;

use common::{clip, digit_subset, digits, fail, fixture, ok, ok_stderr, s};
use serde_json::Value;

fn digit_labels() -> String {
    digits().join("labels.tsv").display().to_string()
}

/// `clip probe --pixels --labels labels --train-per-class per_class` with `extra`.
fn pixel_probe(labels: &str, per_class: &str, extra: &[&str]) -> Output {
    let args = ["probe", "--pixels", "--labels", labels];
    clip(&[&args[..], &["--train-per-class", per_class], extra].concat())
}

/// Writes a labels file listing the first `per_class[c]` digits of class `c`, plus `extra`.
fn subset_labels(dir: &std::path::Path, per_class: &[usize], extra: &[&str]) -> String {
    s(&digit_subset(dir, per_class, extra)).to_string()
}

fn reports(stdout: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(stdout).unwrap();
    v["reports"].as_array().unwrap().clone()
}

#[test]
fn pixel_probe_on_digits_is_far_above_chance_with_both_methods() {
    // Measured with seed 0 and 10 per class: ridge 0.877, logistic 0.884 (chance: 0.1).
    for (method, floor) in [("ridge", 0.80), ("logistic", 0.80)] {
        let out = ok(&pixel_probe(
            &digit_labels(),
            "10",
            &["--method", method, "--json"],
        ));
        let r = reports(&out);
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r["method"], method);
        assert_eq!(
            (r["train"].as_u64(), r["test"].as_u64()),
            (Some(100), Some(1697))
        );
        assert_eq!(r["features"], 8 * 8 * 3);
        let acc = r["accuracy"].as_f64().unwrap();
        assert!(acc > floor, "{method}: accuracy {acc}");
        let per_class = r["per_class"].as_array().unwrap();
        assert_eq!(per_class.len(), 10);
        assert_eq!(per_class[0]["class"], "0");
        let tested: u64 = per_class.iter().map(|c| c["test"].as_u64().unwrap()).sum();
        assert_eq!(tested, 1697);
    }
}

#[test]
fn several_sizes_give_a_table_and_seeds_are_repeatable() {
    let labels = digit_labels();
    let run = |seed: &str, json: bool| {
        let json: &[&str] = if json { &["--json"] } else { &[] };
        ok(&pixel_probe(
            &labels,
            "5,20",
            &[&["--seed", seed], json].concat(),
        ))
    };
    let table = run("3", false);
    assert!(
        table.contains("accuracy") && table.contains("ridge"),
        "{table}"
    );
    assert_eq!(
        table.lines().filter(|l| l.starts_with("ridge")).count(),
        2,
        "{table}"
    );
    let a = run("3", true);
    assert_eq!(a, run("3", true), "same seed, different output");
    let b = run("4", true);
    let (ra, rb) = (reports(&a), reports(&b));
    assert_eq!(ra.len(), 2);
    assert_eq!(ra[0]["train_indices"].as_array().unwrap().len(), 50);
    assert_eq!(ra[1]["train_indices"].as_array().unwrap().len(), 200);
    assert_ne!(ra[0]["train_indices"], rb[0]["train_indices"]);
}

#[test]
fn model_probe_runs_end_to_end_with_a_plot() {
    let tmp = tempfile::tempdir().unwrap();
    // Three classes of 12 digits; --data lists the whole folder, so the rest are skipped.
    let labels = subset_labels(tmp.path(), &[12, 12, 12], &[]);
    let plot = tmp.path().join("plots/scatter.png");
    let (model, png) = (fixture("hf_tiny"), digits().join("png"));
    let out = clip(&[
        "probe",
        "--model",
        &model,
        "--data",
        s(&png),
        "--labels",
        &labels,
        "--train-per-class",
        "4",
        "--method",
        "logistic",
        "--plot",
        s(&plot),
        "--batch-size",
        "16",
        "--json",
    ]);
    let (stdout, stderr) = (ok(&out), ok_stderr(&out));
    assert!(stderr.contains("skipped 1761 of 1797"), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["images"], 36);
    assert_eq!(v["feature_dim"], 12);
    let r = &reports(&stdout)[0];
    assert_eq!(
        (r["train"].as_u64(), r["test"].as_u64()),
        (Some(12), Some(24))
    );
    // A count of the 24 test images: a wrong denominator or a count past 24 fails.
    let right = r["accuracy"].as_f64().unwrap() * 24.0;
    assert!(
        (right - right.round()).abs() < 1e-9 && (0.0..=24.0).contains(&right),
        "{right}/24"
    );

    let img = image::open(&plot).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (800, 600));
    for c in 0..3 {
        let color = linear_probe::class_color(c);
        assert!(img.pixels().any(|p| p.0 == color), "class {c} not drawn");
    }
    // Only the PNG is left in the folder (no temporary file).
    assert_eq!(
        std::fs::read_dir(plot.parent().unwrap()).unwrap().count(),
        1
    );
}

#[test]
fn bad_inputs_are_errors_that_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.tsv");
    let err = fail(&pixel_probe(missing.to_str().unwrap(), "1", &[]));
    assert!(err.contains("nope.tsv"), "{err}");

    // A label naming a missing image: the labels file, its line and the path.
    let labels = subset_labels(tmp.path(), &[3, 3], &["gone/7777.png\t1"]);
    let err = fail(&pixel_probe(&labels, "1", &[]));
    assert!(
        err.contains("labels.tsv:8") && err.contains("7777.png"),
        "{err}"
    );

    // A class with too few images for N.
    let labels = subset_labels(tmp.path(), &[9, 3], &[]);
    let err = fail(&pixel_probe(&labels, "2,3", &[]));
    assert!(err.contains("`1` has 3"), "{err}");

    // One class only.
    let labels = subset_labels(tmp.path(), &[6], &[]);
    let err = fail(&pixel_probe(&labels, "2", &[]));
    assert!(err.contains("at least 2 classes"), "{err}");

    // An unreadable image is named.
    let broken = tmp.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG but not really").unwrap();
    let line = format!("{}\t1", broken.display());
    let labels = subset_labels(tmp.path(), &[3, 3], &[&line]);
    let err = fail(&pixel_probe(&labels, "1", &[]));
    assert!(err.contains("broken.png"), "{err}");

    // Unknown method, and a model or --pixels is required.
    let labels = digit_labels();
    let err = fail(&pixel_probe(&labels, "1", &["--method", "svm"]));
    assert!(err.contains("svm") && err.contains("ridge"), "{err}");
    let err = fail(&clip(&[
        "probe",
        "--labels",
        &labels,
        "--train-per-class",
        "1",
    ]));
    assert!(err.contains("--model"), "{err}");
}
