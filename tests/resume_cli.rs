//! `clip train --resume` reads back both forms of `run.json`: the training config this
//! version saves, and the command line that earlier versions saved (the command line is a
//! contract, and so is a run directory they wrote).

mod common;

use std::path::Path;

use common::*;

/// The options `tests/fixtures/old_run/run.json` was written with (by `clip train` before
/// run.json held the library's config), paths relative to the package root.
const OLD_RUN: [&str; 22] = [
    "train",
    "--init",
    "tests/fixtures/hf_tiny",
    "--data",
    "data/emoji-noto",
    "--steps",
    "4",
    "--batch-size",
    "8",
    "--save-every",
    "2",
    "--log-every",
    "1",
    "--loss",
    "debiased",
    "--schedule",
    "constant",
    "--aug-scale",
    "0.8,1",
    "--hflip",
    "0.5",
    "--examples=2",
];

fn weights(run: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    let t = candle_core::safetensors::load(
        run.join("final/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    t.into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// The run interrupted after its first checkpoint: `run.json` replaced by `json`, the newer
/// checkpoint and the final model gone.
fn interrupted(whole: &Path, into: &Path, json: &str) {
    run_as_of(whole, into, "checkpoint-2");
    std::fs::write(into.join("run.json"), json).unwrap();
}

#[test]
fn old_and_new_run_json_resume_to_the_uninterrupted_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    // The package root, where the fixture's relative paths point.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_clip"))
            .args(args)
            .current_dir(root)
            .env("RAYON_NUM_THREADS", "2")
            .output()
            .unwrap();
        ok_stderr(&out)
    };
    // The image–text default lr was 1e-3 when the fixture was written (it is 5e-4 since); the
    // old file resumes with the meaning it had.
    let then = ["--lr", "0.001", "--cache", "off", "--out", s(&whole)];
    run(&[&OLD_RUN[..], &then].concat());
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("run.json")).unwrap()).unwrap();
    assert_eq!(saved["train"]["steps"], 4, "{saved}");
    assert_eq!(saved["train"]["loss"], "debiased", "{saved}");
    let want = weights(&whole);

    let old = std::fs::read_to_string(root.join("tests/fixtures/old_run/run.json")).unwrap();
    let new = serde_json::to_string_pretty(&saved).unwrap();
    for (name, json) in [("old", old), ("new", new)] {
        let dir = tmp.path().join(name);
        interrupted(&whole, &dir, &json);
        let err = run(&["train", "--resume", s(&dir)]);
        assert!(err.contains("step 3/4"), "{name}: {err}");
        let got = weights(&dir);
        assert_eq!(got.len(), want.len());
        for (k, w) in &want {
            assert!(
                got[k] == *w,
                "{name} run.json: {k} differs from the uninterrupted run"
            );
        }
    }
}
