//! Black-box tests of `clip train` (fine-tuning the tiny fixture model) and `clip eval`.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The label names of [`folder_dataset`]: seven, so that zero-shot top-5 can miss.
const CLASSES: [&str; 7] = ["cat", "dog", "bird", "fish", "frog", "horse", "mouse"];

/// The caption of fixture image `i` in [`folder_dataset`]: six of their own, six share one.
fn caption(i: usize) -> String {
    if i.is_multiple_of(2) {
        format!("picture number {i}")
    } else {
        "a shared caption".to_string()
    }
}

/// The fixture images, each with a caption file, plus a labels.tsv.
fn folder_dataset(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut labels = String::from("filepath\tlabel\n");
    for (i, p) in image_paths().iter().enumerate() {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        std::fs::copy(p, data.join(&name)).unwrap();
        std::fs::write(data.join(&name).with_extension("txt"), caption(i)).unwrap();
        labels.push_str(&format!("{name}\t{}\n", CLASSES[i % CLASSES.len()]));
    }
    std::fs::write(data.join("labels.tsv"), labels).unwrap();
    data
}

#[test]
fn fine_tune_writes_a_loadable_hf_model_metrics_and_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let data = folder_dataset(tmp.path());
    let run = tmp.path().join("run");
    let init = fixtures().join("hf_tiny");
    let out = ok(&clip(&[
        "train",
        "--init",
        init.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--val-data",
        data.to_str().unwrap(),
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--log-every",
        "1",
        "--save-every",
        "2",
        "--out",
        run.to_str().unwrap(),
        "--examples",
        "2",
    ]));
    assert!(
        out.contains("image_to_text_R@1") && out.contains("text_to_image_median_rank"),
        "{out}"
    );
    assert!(out.contains("example text→image searches"), "{out}");
    for f in [
        "final/config.json",
        "final/model.safetensors",
        "final/tokenizer.json",
        "checkpoint-4/optimizer.safetensors",
        "metrics.svg",
        "run.json",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"loss\"")).count(),
        4
    );
    assert!(metrics.lines().any(|l| l.contains("\"val\"")));
    // The trained model is a normal model directory.
    let emb = tmp.path().join("e.safetensors");
    ok(&clip(&[
        "embed",
        "--model",
        run.join("final").to_str().unwrap(),
        "--texts",
        fixtures().join("captions.txt").to_str().unwrap(),
        "--out",
        emb.to_str().unwrap(),
    ]));
}

#[test]
fn eval_reports_retrieval_and_zero_shot() {
    let tmp = tempfile::tempdir().unwrap();
    let data = folder_dataset(tmp.path());
    let model = fixtures().join("hf_tiny");
    let out = ok(&clip(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
        "--labels",
        data.join("labels.tsv").to_str().unwrap(),
        "--templates",
        "a photo of a {}.",
        "a {}",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["images"], 12);
    // 6 distinct "picture number" captions + 1 shared one.
    assert_eq!(v["distinct_captions"], 7);
    assert_eq!(v["zero_shot_images"], 12);
    // Fractions of the 12 images: a wrong denominator or a count past 12 fails.
    let of_12 = |k: &str| {
        let x = v[k].as_f64().unwrap() * 12.0;
        assert!(
            (x - x.round()).abs() < 1e-9 && (0.0..=12.0).contains(&x),
            "{k}: {x}/12"
        );
        x.round()
    };
    of_12("zero_shot_top1");
    for k in [
        "image_to_text_R@1",
        "image_to_text_R@10",
        "text_to_image_mean_rank",
        "text_to_image_median_rank",
    ] {
        assert!(v[k].is_number(), "{k}");
    }
    let (r1, r5) = (of_12("image_to_text_R@1"), of_12("image_to_text_R@5"));
    assert!(r1 <= r5, "R@1 {r1}/12 > R@5 {r5}/12");

    // The same numbers by brute force from what `clip embed` writes for the same inputs.
    let distinct: Vec<String> = (0..12).step_by(2).chain([1]).map(caption).collect();
    let prompts: Vec<String> = CLASSES
        .iter()
        .flat_map(|c| [format!("a photo of a {c}."), format!("a {c}")])
        .collect();
    let texts = tmp.path().join("texts.txt");
    std::fs::write(&texts, [distinct.clone(), prompts].concat().join("\n")).unwrap();
    // A folder's images in file-name order: the fixture order, image i has caption(i).
    let emb = tmp.path().join("e.safetensors");
    ok(&clip(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--normalize",
        "--images",
        data.to_str().unwrap(),
        "--texts",
        texts.to_str().unwrap(),
        "--out",
        emb.to_str().unwrap(),
    ]));
    let t = candle_core::safetensors::load(&emb, &candle_core::Device::Cpu).unwrap();
    let rows = |k: &str| t[k].to_vec2::<f32>().unwrap();
    let (images, texts) = (rows("image_embeds"), rows("text_embeds"));
    assert_eq!(images.len(), 12);
    let (captions, prompts) = texts.split_at(distinct.len());
    let dot = clip::dot;
    // 1-based rank of `scores[right]` among `scores`, highest first.
    let rank = |scores: &[f32], right: f32| 1 + scores.iter().filter(|&&s| s > right).count();
    let caption_of: Vec<usize> = (0..12)
        .map(|i| distinct.iter().position(|c| *c == caption(i)).unwrap())
        .collect();
    let i2t: Vec<usize> = images
        .iter()
        .zip(&caption_of)
        .map(|(img, &c)| {
            let s: Vec<f32> = captions.iter().map(|t| dot(img, t)).collect();
            rank(&s, s[c])
        })
        .collect();
    let t2i: Vec<usize> = captions
        .iter()
        .enumerate()
        .map(|(c, txt)| {
            let s: Vec<f32> = images.iter().map(|i| dot(i, txt)).collect();
            let best = (0..12).filter(|&i| caption_of[i] == c).map(|i| s[i]);
            rank(&s, best.fold(f32::MIN, f32::max))
        })
        .collect();
    for (dir, mut ranks) in [("image_to_text", i2t), ("text_to_image", t2i)] {
        ranks.sort();
        let n = ranks.len() as f64;
        let median = ((ranks[(ranks.len() - 1) / 2] + ranks[ranks.len() / 2]) as f64 / 2.0).floor();
        let within = |k: usize| ranks.iter().filter(|&&r| r <= k).count() as f64 / n;
        for (name, want) in [
            ("mean_rank", ranks.iter().sum::<usize>() as f64 / n),
            ("median_rank", median),
            ("R@1", within(1)),
            ("R@5", within(5)),
            ("R@10", within(10)),
        ] {
            let got = v[format!("{dir}_{name}")].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-9,
                "{dir}_{name}: {got}, brute force {want}"
            );
        }
    }
    // Zero-shot: each class the normalised mean of its two unit prompt embeddings.
    let classes: Vec<Vec<f32>> = prompts
        .chunks(2)
        .map(|p| {
            let mean: Vec<f32> = p[0].iter().zip(&p[1]).map(|(a, b)| a + b).collect();
            let norm = dot(&mean, &mean).sqrt();
            mean.iter().map(|x| x / norm).collect()
        })
        .collect();
    let class_ranks: Vec<usize> = images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let s: Vec<f32> = classes.iter().map(|c| dot(img, c)).collect();
            rank(&s, s[i % CLASSES.len()])
        })
        .collect();
    for (k, top) in [("zero_shot_top1", 1), ("zero_shot_top5", 5)] {
        let want = class_ranks.iter().filter(|&&r| r <= top).count() as f64;
        assert_eq!(of_12(k), want, "{k}: brute force {want}/12");
    }
}

#[test]
fn bad_training_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("lonely.txt"), "no image").unwrap();
    let init = fixtures().join("hf_tiny");
    let run = tmp.path().join("run");
    let o = clip(&[
        "train",
        "--init",
        init.to_str().unwrap(),
        "--data",
        empty.to_str().unwrap(),
        "--steps",
        "1",
        "--out",
        run.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no usable") && err.contains("lonely.txt"),
        "{err}"
    );
    let o = clip(&[
        "train",
        "--init",
        init.to_str().unwrap(),
        "--data",
        tmp.path().join("nope.tsv").to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("nope.tsv"), "{err}");
    let data = folder_dataset(tmp.path());
    let o = clip(&[
        "train",
        "--init",
        init.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--batch-size",
        "4",
        "--accum-steps",
        "3",
        "--out",
        run.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("accum-steps"), "{err}");
    let o = clip(&[
        "train",
        "--resume",
        tmp.path().join("no-run").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("run.json"), "{err}");
    assert!(!err.contains("panicked"));
}

/// Appends a tar member.
fn member(b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, data).unwrap();
}

#[test]
fn shard_patterns_stream_and_bad_samples_are_skipped_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    let images = image_paths();
    // Two img2dataset-style shards of the fixture images; the second has a corrupt image in
    // its middle, a Latin-1 caption and an image without a caption.
    for s in 0..2 {
        let mut b =
            tar::Builder::new(std::fs::File::create(shards.join(format!("{s:05}.tar"))).unwrap());
        for (i, p) in images.iter().enumerate().skip(s * 6).take(6) {
            let key = format!("{i:09}");
            let ext = p.extension().unwrap().to_string_lossy().to_string();
            let mut bytes = std::fs::read(p).unwrap();
            if s == 1 && i == 8 {
                bytes.truncate(40);
            }
            member(&mut b, &format!("{key}.{ext}"), &bytes);
            match (s, i) {
                (1, 9) => member(&mut b, &format!("{key}.txt"), b"caf\xe9 cr\xe8me"),
                (1, 10) => {}
                _ => member(
                    &mut b,
                    &format!("{key}.txt"),
                    format!("picture {i}").as_bytes(),
                ),
            }
            member(&mut b, &format!("{key}.json"), b"{\"status\": \"success\"}");
        }
        b.finish().unwrap();
    }
    // And a folder whose one Latin-1 caption used to stop the whole run.
    let folder = folder_dataset(tmp.path());
    std::fs::write(
        folder
            .join(image_paths()[0].file_name().unwrap())
            .with_extension("txt"),
        b"na\xefve",
    )
    .unwrap();
    let init = fixtures().join("hf_tiny");
    let run = tmp.path().join("run");
    let braces = format!("{}/{{00000..00001}}.tar", shards.display());
    let out = ok(&clip(&[
        "train",
        "--init",
        init.to_str().unwrap(),
        "--data",
        &braces,
        "--data",
        folder.to_str().unwrap(),
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--out",
        run.to_str().unwrap(),
        "--cache",
        "off",
    ]));
    assert!(out.contains("skipped 4 samples"), "{out}");
    let listed = std::fs::read_to_string(run.join("skipped.tsv")).unwrap();
    assert!(listed.starts_with("step\tsample\treason\n"), "{listed}");
    for (name, why) in [
        ("00001.tar:000000008", "unreadable image"),
        ("00001.tar:000000009", "not valid UTF-8"),
        ("00001.tar:000000010", "without a caption"),
        ("data/", "not valid UTF-8"),
    ] {
        assert!(
            listed.lines().any(|l| l.contains(name) && l.contains(why)),
            "{name}: {why} not in\n{listed}"
        );
    }
    // A glob and a folder of shards name the same data; a pattern matching nothing is named.
    let glob = format!("{}/*.tar", shards.display());
    for data in [glob.as_str(), shards.to_str().unwrap()] {
        let o = clip(&[
            "train",
            "--init",
            init.to_str().unwrap(),
            "--data",
            data,
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--out",
            tmp.path().join("run2").to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && err.contains("training data: 11 image–caption pairs"),
            "{err}"
        );
    }
    let missing = format!("{}/{{00000..00002}}.tar", shards.display());
    let o = clip(&[
        "train",
        "--init",
        init.to_str().unwrap(),
        "--data",
        &missing,
        "--steps",
        "1",
        "--out",
        tmp.path().join("run3").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("00002.tar"), "{err}");
}
