//! Black-box tests of `clip probe` on the bundled handwritten digits.

mod common;

use std::path::Path;

use common::{clip, digits, fail, fixtures, ok};
use serde_json::Value;

fn digit_labels() -> String {
    digits().join("labels.tsv").display().to_string()
}

/// Writes a labels file listing the first `per_class[c]` digits of class `c` (absolute
/// paths), plus `extra` lines verbatim, and returns its path.
fn subset_labels(dir: &Path, per_class: &[usize], extra: &[&str]) -> String {
    let text = std::fs::read_to_string(digits().join("labels.tsv")).unwrap();
    let mut taken = vec![0; per_class.len()];
    let mut out = String::from("filepath\tlabel\n");
    for line in text.lines().skip(1) {
        let (file, label) = line.split_once('\t').unwrap();
        let c: usize = label.parse().unwrap();
        if c < per_class.len() && taken[c] < per_class[c] {
            taken[c] += 1;
            out += &format!("{}\t{label}\n", digits().join(file).display());
        }
    }
    for e in extra {
        out += e;
        out += "\n";
    }
    let path = dir.join("labels.tsv");
    std::fs::write(&path, out).unwrap();
    path.display().to_string()
}

fn reports(stdout: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(stdout).unwrap();
    v["reports"].as_array().unwrap().clone()
}

#[test]
fn pixel_probe_on_digits_is_far_above_chance_with_both_methods() {
    // Measured with seed 0 and 10 per class: ridge 0.877, logistic 0.884 (chance: 0.1).
    for (method, floor) in [("ridge", 0.80), ("logistic", 0.80)] {
        let labels = digit_labels();
        let out = ok(&clip(&[
            "probe",
            "--pixels",
            "--labels",
            &labels,
            "--train-per-class",
            "10",
            "--method",
            method,
            "--json",
        ]));
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
        let mut args = vec![
            "probe",
            "--pixels",
            "--labels",
            &labels,
            "--train-per-class",
            "5,20",
            "--seed",
            seed,
        ];
        if json {
            args.push("--json");
        }
        ok(&clip(&args))
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
    let model = fixtures().join("hf_tiny");
    let png = digits().join("png");
    let out = clip(&[
        "probe",
        "--model",
        model.to_str().unwrap(),
        "--data",
        png.to_str().unwrap(),
        "--labels",
        &labels,
        "--train-per-class",
        "4",
        "--method",
        "logistic",
        "--plot",
        plot.to_str().unwrap(),
        "--batch-size",
        "16",
        "--json",
    ]);
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
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

/// Stderr of a `clip probe --pixels` run that must fail.
fn pixel_probe_error(labels: &str, per_class: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "probe",
        "--pixels",
        "--labels",
        labels,
        "--train-per-class",
        per_class,
    ];
    args.extend_from_slice(extra);
    fail(&clip(&args))
}

#[test]
fn bad_inputs_are_errors_that_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.tsv");
    let err = pixel_probe_error(missing.to_str().unwrap(), "1", &[]);
    assert!(err.contains("nope.tsv"), "{err}");

    // A label naming a missing image: the labels file, its line and the path.
    let labels = subset_labels(tmp.path(), &[3, 3], &["gone/7777.png\t1"]);
    let err = pixel_probe_error(&labels, "1", &[]);
    assert!(
        err.contains("labels.tsv:8") && err.contains("7777.png"),
        "{err}"
    );

    // A class with too few images for N.
    let labels = subset_labels(tmp.path(), &[9, 3], &[]);
    let err = pixel_probe_error(&labels, "2,3", &[]);
    assert!(err.contains("`1` has 3"), "{err}");

    // One class only.
    let labels = subset_labels(tmp.path(), &[6], &[]);
    let err = pixel_probe_error(&labels, "2", &[]);
    assert!(err.contains("at least 2 classes"), "{err}");

    // An unreadable image is named.
    let broken = tmp.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG but not really").unwrap();
    let line = format!("{}\t1", broken.display());
    let labels = subset_labels(tmp.path(), &[3, 3], &[&line]);
    let err = pixel_probe_error(&labels, "1", &[]);
    assert!(err.contains("broken.png"), "{err}");

    // Unknown method, and a model or --pixels is required.
    let labels = digit_labels();
    let err = pixel_probe_error(&labels, "1", &["--method", "svm"]);
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
