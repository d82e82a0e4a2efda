//! Black-box tests of `clip embed`, `clip convert` and `clip download --offline`.

mod common;

use std::path::Path;
use std::process::Output;

use candle_core::Device;
use common::*;

/// `clip embed --model model --out out` with `args`.
fn embed(model: &str, out: &Path, args: &[&str]) -> Output {
    clip(&[&["embed", "--model", model, "--out", s(out)], args].concat())
}

#[test]
fn embed_matches_transformers_and_records_file_names() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emb.safetensors");
    let (model, texts) = (fixture("hf_tiny"), fixture("captions.txt"));
    let images = fixture("images");
    ok(&embed(
        &model,
        &out,
        &["--images", &images, "--texts", &texts, "--batch-size", "5"],
    ));
    let t = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let exp = expected();
    assert!(max_rel_l2(&t["text_embeds"], &exp["hf.text_embeds"]) <= 1e-4);
    assert_eq!(t["image_embeds"].dims(), &[12, 12]);
    // JPEGs decode slightly differently from Pillow; every other image is exact.
    let rows: Vec<u32> = (0..12).filter(|i| ![4, 8].contains(i)).collect();
    let idx = candle_core::Tensor::new(rows.as_slice(), &Device::Cpu).unwrap();
    let ours = t["image_embeds"].index_select(&idx, 0).unwrap();
    let theirs = exp["hf.image_embeds"].index_select(&idx, 0).unwrap();
    assert!(max_rel_l2(&ours, &theirs) <= 1e-4);
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let names: Vec<String> =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["image_files"]).unwrap();
    assert_eq!(names.len(), 12);
    assert!(names[0].ends_with("img00.png") && names[11].ends_with("img11.png"));
}

#[test]
fn normalize_writes_unit_rows_and_texts_alone_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("t.safetensors");
    let (model, texts) = (fixture("openclip_tiny"), fixture("captions.txt"));
    ok(&embed(&model, &out, &["--texts", &texts, "--normalize"]));
    let t = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert_eq!(t["image_embeds"].dims(), &[0, 12]);
    let norms: Vec<f32> = t["text_embeds"]
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(norms.len(), 12);
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
}

#[test]
fn unreadable_image_and_non_utf8_captions_are_named_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("e.safetensors");
    std::fs::write(&out, b"previous result").unwrap();
    let bad = tmp.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG but not really").unwrap();
    let model = fixture("hf_tiny");
    let err = fail(&embed(&model, &out, &["--images", s(&bad)]));
    assert!(err.contains("broken.png"), "{err}");
    let caps = tmp.path().join("caps.txt");
    std::fs::write(&caps, b"fine line\nbad \xff byte\n").unwrap();
    let err = fail(&embed(&model, &out, &["--texts", s(&caps)]));
    assert!(err.contains("caps.txt") && err.contains("line 2"), "{err}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        b"previous result",
        "earlier output untouched"
    );
    let err = fail(&embed(s(tmp.path()), &out, &["--texts", s(&caps)]));
    assert!(
        err.contains("not valid UTF-8") || err.contains("not a model directory"),
        "{err}"
    );
}

#[test]
fn convert_open_clip_then_embed_gives_open_clip_features() {
    let tmp = tempfile::tempdir().unwrap();
    let conv = tmp.path().join("hf");
    let (model, texts) = (fixture("openclip_tiny"), fixture("captions.txt"));
    ok(&clip(&["convert", "--model", &model, "--out", s(&conv)]));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        assert!(conv.join(f).exists(), "{f}");
    }
    let out = tmp.path().join("e.safetensors");
    ok(&embed(s(&conv), &out, &["--texts", &texts]));
    let t = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert!(max_rel_l2(&t["text_embeds"], &expected()["oc.text_embeds"]) <= 1e-4);
}

#[test]
fn download_offline_uses_the_cache_and_never_the_network() {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--someone--tiny-clip");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    copy_hf_tiny(&snap);
    let env = [("HF_HOME", home.path())];
    let out = clip_env(&["download", "someone/tiny-clip", "--offline"], &env);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout)
        .trim()
        .ends_with("0123abcd"));
    // A cached repo id works wherever a model directory does.
    let emb = home.path().join("e.safetensors");
    let texts = fixture("captions.txt");
    let args = [
        "embed",
        "--model",
        "someone/tiny-clip",
        "--texts",
        &texts,
        "--out",
        s(&emb),
    ];
    ok(&clip_env(&args, &env));
    let err = fail(&clip_env(
        &["download", "someone/absent", "--offline"],
        &env,
    ));
    assert!(
        err.contains("someone/absent") && err.contains("not in the Hugging Face cache"),
        "{err}"
    );
}
