//! Black-box tests of image-only training (`clip train --objective images`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{clip, digits};

/// A labels file listing the first `per_class` bundled digits of each class.
fn digit_subset(dir: &Path, per_class: usize) -> PathBuf {
    let text = std::fs::read_to_string(digits().join("labels.tsv")).unwrap();
    let mut counts = [0usize; 10];
    let mut out = String::from("filepath\tlabel\n");
    for line in text.lines().skip(1) {
        let (path, label) = line.split_once('\t').unwrap();
        let c: usize = label.parse().unwrap();
        if counts[c] < per_class {
            counts[c] += 1;
            out.push_str(&format!("{}\t{label}\n", digits().join(path).display()));
        }
    }
    let p = dir.join("labels.tsv");
    std::fs::write(&p, out).unwrap();
    p
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn image_only_training_ends_with_a_linear_probe() {
    let tmp = tempfile::tempdir().unwrap();
    let labels = digit_subset(tmp.path(), 6);
    let run = tmp.path().join("run");
    let l = labels.to_str().unwrap();
    let out = clip(&[
        "train",
        "--objective",
        "images",
        "--preset",
        "micro",
        "--data",
        l,
        "--labels",
        l,
        "--loss",
        "debiased",
        "--steps",
        "3",
        "--batch-size",
        "16",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr(&out).contains("training data: 60 images"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout.contains("linear probe (60 images, 10 classes")
            && stdout.contains("image embeddings")
            && stdout.contains("raw pixels"),
        "{stdout}"
    );
    assert!(run.join("final/model.safetensors").is_file());
    let state = std::fs::read_to_string(run.join("final/train_state.json")).unwrap();
    assert!(
        state.contains("\"objective\": \"images\"") && state.contains("\"debiased\""),
        "{state}"
    );
}

#[test]
fn image_only_mistakes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let labels = digit_subset(tmp.path(), 2);
    let l = labels.to_str().unwrap();
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    let base = [
        "train",
        "--objective",
        "images",
        "--steps",
        "1",
        "--out",
        r,
        "--data",
        l,
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        clip(&args)
    };
    let out = with(&["--loss", "clip"]);
    assert!(
        !out.status.success() && stderr(&out).contains("nt-xent"),
        "{}",
        stderr(&out)
    );
    let out = with(&["--val-data", l]);
    assert!(
        !out.status.success() && stderr(&out).contains("--labels"),
        "{}",
        stderr(&out)
    );
    let out = with(&["--loss", "oracle"]);
    assert!(
        !out.status.success() && stderr(&out).contains("label"),
        "{}",
        stderr(&out)
    );
    let out = with(&["--temperature", "0"]);
    assert!(
        !out.status.success() && stderr(&out).contains("temperature"),
        "{}",
        stderr(&out)
    );
    // A labels file naming a missing image: the error gives the file and line.
    let bad = tmp.path().join("bad.tsv");
    std::fs::write(&bad, "filepath\tlabel\nnot-there.png\t3\n").unwrap();
    let out = with(&["--labels", bad.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("bad.tsv:2") && err.contains("not-there.png"),
        "{err}"
    );
    // Nothing was trained by any of these.
    assert!(!run.join("final").exists());
}
