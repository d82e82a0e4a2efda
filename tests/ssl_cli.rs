//! Black-box tests of image-only training (`clip train --objective images`).

mod common;

use std::path::Path;
use std::process::Output;

use common::{clip, digit_subset, fail, ok, ok_stderr, s};

#[test]
fn image_only_training_ends_with_a_linear_probe() {
    let tmp = tempfile::tempdir().unwrap();
    let labels = digit_subset(tmp.path(), &[6; 10], &[]);
    let run = tmp.path().join("run");
    let out = train_images(
        &labels,
        &run,
        &["--labels", s(&labels), "--loss", "debiased"],
    );
    let (stdout, stderr) = (ok(&out), ok_stderr(&out));
    assert!(stderr.contains("training data: 60 images"), "{stderr}");
    assert!(
        stdout.contains("linear probe (60 images, 10 classes")
            && stdout.contains("pooled features")
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
    let labels = digit_subset(tmp.path(), &[2; 10], &[]);
    let (l, run) = (s(&labels), tmp.path().join("run"));
    let base = ["train", "--objective", "images", "--steps", "1"];
    let paths = ["--out", s(&run), "--data", l];
    let fails = |extra: &[&str]| fail(&clip(&[&base[..], &paths, extra].concat()));
    for (extra, named) in [
        (["--loss", "clip"], "nt-xent"),
        (["--val-data", l], "--labels"),
        (["--loss", "oracle"], "label"),
        (["--temperature", "0"], "temperature"),
    ] {
        let err = fails(&extra);
        assert!(err.contains(named), "{err}");
    }
    // A labels file naming a missing image: the error gives the file and line.
    let bad = tmp.path().join("bad.tsv");
    std::fs::write(&bad, "filepath\tlabel\nnot-there.png\t3\n").unwrap();
    let err = fails(&["--labels", s(&bad)]);
    assert!(
        err.contains("bad.tsv:2") && err.contains("not-there.png"),
        "{err}"
    );
    // Nothing was trained by any of these.
    assert!(!run.join("final").exists());
}

/// Trains a few image-only steps on `labels` into `run` with `extra` options.
fn train_images(labels: &Path, run: &Path, extra: &[&str]) -> Output {
    let args = ["train", "--objective", "images", "--preset", "micro"];
    let data = ["--data", s(labels), "--steps", "2", "--batch-size", "16"];
    clip(&[&args[..], &data, &["--out", s(run)], extra].concat())
}

fn read_config(model: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap()
}

/// `clip embed`'s `image_embeds` for the labelled images with `extra` options.
fn embed_images(model: &Path, labels: &Path, out: &Path, extra: &[&str]) -> Vec<Vec<f32>> {
    let images: Vec<String> = std::fs::read_to_string(labels)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    let mut args = vec!["embed", "--model", s(model), "--out", s(out), "--images"];
    args.extend(images.iter().map(String::as_str));
    args.extend_from_slice(extra);
    ok(&clip(&args));
    let t = candle_core::safetensors::load(out, &candle_core::Device::Cpu).unwrap();
    let e = &t["image_embeds"];
    assert_eq!(e.dim(0).unwrap(), images.len());
    let rows: Vec<Vec<f32>> = e.to_vec2().unwrap();
    assert!(rows.iter().flatten().all(|v| v.is_finite()));
    rows
}

fn probe_json(model: &Path, labels: &Path, extra: &[&str]) -> serde_json::Value {
    let args = ["probe", "--train-per-class", "2", "--json"];
    let paths = ["--model", s(model), "--labels", s(labels)];
    let out = ok(&clip(&[&args[..], &paths, extra].concat()));
    serde_json::from_str(&out).unwrap()
}

/// An image-only model's pooled features are the tower's output before the projection: the
/// embeddings are exactly those features times the saved projection, and they differ from
/// them. `clip probe` and `clip embed` read the pooled features by default and say so.
#[test]
fn the_probe_reads_an_image_only_model_before_its_projection() {
    let tmp = tempfile::tempdir().unwrap();
    let labels = digit_subset(tmp.path(), &[3; 10], &[]);
    let run = tmp.path().join("run");
    ok(&train_images(&labels, &run, &[]));
    let model = run.join("final");
    assert_eq!(read_config(&model)["image_only"], true);

    let pooled = embed_images(&model, &labels, &tmp.path().join("p.safetensors"), &[]);
    let embeds = embed_images(
        &model,
        &labels,
        &tmp.path().join("e.safetensors"),
        &["--features", "embeds"],
    );
    // micro: width 128 and projection_dim 128, so both have 128 columns.
    assert_eq!((pooled[0].len(), embeds[0].len()), (128, 128));
    let weights =
        candle_core::safetensors::load(model.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let w: Vec<Vec<f32>> = weights["visual_projection.weight"].to_vec2().unwrap();
    for (p, e) in pooled.iter().zip(&embeds) {
        let projected: Vec<f32> = w
            .iter()
            .map(|row| row.iter().zip(p).map(|(a, b)| a * b).sum())
            .collect();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let diff =
            |a: &[f32], b: &[f32]| norm(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>());
        assert!(diff(&projected, e) <= 1e-5 * norm(e), "embeds ≠ pooled·Wᵀ");
        assert!(
            diff(p, e) > 0.1 * norm(e),
            "pooled features equal the embeddings"
        );
    }

    let default = probe_json(&model, &labels, &[]);
    assert!(
        default["features"].as_str().unwrap().contains("pooled"),
        "{default}"
    );
    let explicit = probe_json(&model, &labels, &["--features", "embeds"]);
    assert!(
        explicit["features"]
            .as_str()
            .unwrap()
            .ends_with("image embeddings"),
        "{explicit}"
    );
    // Different features, so different probe accuracies or penalties are expected; the
    // point is that both ran on 128 columns from different places.
    assert_eq!(default["feature_dim"], 128);
    assert_eq!(explicit["feature_dim"], 128);
}

/// `--projection mlp` saves its head with the model (outside transformers' names), `--resume`
/// and `clip probe` find it again, and an image–text run refuses it.
#[test]
fn an_mlp_head_saves_resumes_and_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    let labels = digit_subset(tmp.path(), &[3; 10], &[]);
    let run = tmp.path().join("run");
    let head = [
        "--projection",
        "mlp",
        "--projection-layers",
        "3",
        "--projection-hidden",
        "48",
        "--projection-dim",
        "24",
        "--save-every",
        "1",
    ];
    ok(&train_images(&labels, &run, &head));
    let model = run.join("final");
    let config = read_config(&model);
    assert_eq!(config["projection_dim"], 24);
    assert_eq!(
        config["vision_config"]["projection_head"],
        serde_json::json!({"layers": 3, "hidden_size": 48})
    );
    let weights =
        candle_core::safetensors::load(model.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(!weights.contains_key("visual_projection.weight"));
    for (name, shape) in [
        ("visual_projection_head.0.linear.weight", vec![48, 128]),
        ("visual_projection_head.1.norm.weight", vec![48]),
        ("visual_projection_head.2.weight", vec![24, 48]),
        ("text_projection.weight", vec![24, 128]),
    ] {
        assert_eq!(weights[name].dims(), shape.as_slice(), "{name}");
    }

    // Resume from the first checkpoint: the head comes back from run.json and the weights.
    let _ = std::fs::remove_dir_all(run.join("checkpoint-2"));
    std::fs::remove_dir_all(&model).unwrap();
    ok(&clip(&["train", "--resume", s(&run)]));
    let resumed =
        candle_core::safetensors::load(model.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(resumed.len(), weights.len());
    for (name, t) in &weights {
        let (a, b) = (
            t.flatten_all().unwrap(),
            resumed[name].flatten_all().unwrap(),
        );
        let (a, b): (Vec<f32>, Vec<f32>) = (a.to_vec1().unwrap(), b.to_vec1().unwrap());
        assert!(a == b, "{name} differs after --resume");
    }

    // The probe reloads it: pooled (128 columns) by default, 24 with --features embeds.
    assert_eq!(probe_json(&model, &labels, &[])["feature_dim"], 128);
    let embeds = probe_json(&model, &labels, &["--features", "embeds"]);
    assert_eq!(embeds["feature_dim"], 24);
    let e = embed_images(
        &model,
        &labels,
        &tmp.path().join("e.safetensors"),
        &["--features", "embeds"],
    );
    assert_eq!(e[0].len(), 24);

    // An image–text model keeps transformers' layout.
    let it = tmp.path().join("it");
    let err = fail(&clip(&[
        "train",
        "--projection",
        "mlp",
        "--steps",
        "1",
        "--out",
        s(&it),
    ]));
    assert!(err.contains("--objective images"), "{err}");
}
