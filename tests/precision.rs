//! Reduced-precision inference (`--precision bf16|int8`) against the f32 reference, on the
//! fixture models, through the library and the command line.

mod common;

use clip::{Clip, Embeddings, Precision};
use common::*;

/// Per-row cosine of two unit-row embedding sets, after checking shapes and finiteness.
fn cosines(a: &Embeddings, b: &Embeddings, what: &str) -> Vec<f32> {
    assert_eq!((a.len(), a.dim()), (b.len(), b.dim()), "{what}: shapes");
    assert!(!a.is_empty(), "{what}: no rows");
    for e in [a, b] {
        assert!(
            e.as_slice().iter().all(|v| v.is_finite()),
            "{what}: non-finite"
        );
    }
    a.rows()
        .zip(b.rows())
        .map(|(x, y)| clip::dot(x, y))
        .collect()
}

/// Both fixture layouts, images and captions: bf16 within 1e-3 of f32 in cosine, int8
/// within 1e-2, and neither equal to f32 (so the packed kernels did run). A kernel that
/// drops one group of `k` or mixes up two columns lands far below these bounds.
#[test]
fn reduced_precision_embeddings_stay_near_f32() {
    let captions = captions();
    let captions: Vec<&str> = captions.iter().map(String::as_str).collect();
    for model in ["hf_tiny", "openclip_tiny"] {
        let dir = fixtures().join(model);
        let reference = Clip::from_dir(&dir).unwrap();
        let images = reference.embed_images(&image_paths()).unwrap();
        let texts = reference.embed_texts(&captions).unwrap();
        for (precision, min_cos) in [(Precision::Bf16, 0.999), (Precision::Int8, 0.99)] {
            let clip = Clip::from_dir(&dir)
                .unwrap()
                .with_precision(precision)
                .unwrap();
            assert_eq!(clip.precision(), precision);
            let got = [
                (
                    clip.embed_images(&image_paths()).unwrap(),
                    &images,
                    "images",
                ),
                (clip.embed_texts(&captions).unwrap(), &texts, "captions"),
            ];
            for (got, want, kind) in got {
                let what = format!("{model} {precision} {kind}");
                let cos = cosines(&got, want, &what);
                let worst = cos.iter().copied().fold(1.0f32, f32::min);
                assert!(worst >= min_cos, "{what}: worst cosine {worst} < {min_cos}");
                assert_ne!(got.as_slice(), want.as_slice(), "{what}: identical to f32");
            }
        }
    }
}

/// `clip embed --precision int8` writes what the library's int8 model gives, and an unknown
/// precision is refused with the accepted names.
#[test]
fn embed_takes_a_precision() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("e.safetensors");
    let model = fixtures().join("hf_tiny");
    let images = fixtures().join("images");
    ok(&clip(&[
        "embed",
        "--model",
        s(&model),
        "--images",
        s(&images),
        "--out",
        s(&out),
        "--normalize",
        "--precision",
        "int8",
    ]));
    let written = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    let written = Embeddings::from_tensor(&written["image_embeds"]).unwrap();
    let int8 = Clip::from_dir(&model)
        .unwrap()
        .with_precision(Precision::Int8)
        .unwrap()
        .embed_images(&image_paths())
        .unwrap();
    let cos = cosines(&written, &int8, "cli int8");
    assert!(
        cos.iter().all(|&c| c > 1.0 - 1e-5),
        "cli vs library: {cos:?}"
    );
    let err = fail(&clip(&[
        "embed",
        "--model",
        s(&model),
        "--images",
        s(&images),
        "--out",
        s(&out),
        "--precision",
        "fp8",
    ]));
    assert!(err.contains("fp8") && err.contains("int8"), "{err}");
}

/// Rewrites `dir/model.safetensors` through `edit`, which gets every tensor as
/// (name, dtype, shape, bytes): the way to damage a quantized checkpoint in one place.
fn edit_weights(
    dir: &std::path::Path,
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut all: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut all);
    let views: Vec<(String, safetensors::tensor::TensorView)> = all
        .iter()
        .map(|(n, d, s, b)| {
            let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

/// `clip convert --precision int8` on both fixture layouts: the transformer blocks' linear
/// weights are stored as int8 (a quarter of their f32 bytes) with their scales, the model
/// loads in int8 without being asked, and its embeddings are bit-identical to quantizing
/// the f32 model at load. The converted model refuses f32, by library and command line.
#[test]
fn an_int8_checkpoint_round_trips() {
    let captions = captions();
    let captions: Vec<&str> = captions.iter().map(String::as_str).collect();
    let tmp = tempfile::tempdir().unwrap();
    for model in ["hf_tiny", "openclip_tiny"] {
        let src = fixtures().join(model);
        let out = tmp.path().join(format!("{model}-int8"));
        ok_stderr(&clip(&[
            "convert",
            "--model",
            s(&src),
            "--out",
            s(&out),
            "--precision",
            "int8",
        ]));
        let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let int8: Vec<_> = st
            .tensors()
            .into_iter()
            .filter(|(_, v)| v.dtype() == safetensors::Dtype::I8)
            .collect();
        let layers = clip::Clip::from_dir(&src).unwrap().model().config().clone();
        let blocks = layers.vision_config.num_hidden_layers + layers.text_config.num_hidden_layers;
        assert_eq!(
            int8.len(),
            6 * blocks,
            "{model}: six int8 weights per block"
        );
        for (name, v) in &int8 {
            let scale = st.tensor(&format!("{name}_scale")).unwrap();
            assert_eq!(scale.shape(), &v.shape()[..1], "{model}: {name} scales");
            assert!(name.contains(".encoder.layers."), "{model}: {name}");
        }

        let want = Clip::from_dir(&src)
            .unwrap()
            .with_precision(Precision::Int8)
            .unwrap();
        let got = Clip::from_dir(&out).unwrap();
        assert_eq!(got.precision(), Precision::Int8, "{model}: loads as int8");
        let pairs = [
            (
                got.embed_images(&image_paths()).unwrap(),
                want.embed_images(&image_paths()).unwrap(),
            ),
            (
                got.embed_texts(&captions).unwrap(),
                want.embed_texts(&captions).unwrap(),
            ),
        ];
        for (got, want) in pairs {
            cosines(&got, &want, model);
            assert_eq!(
                got.as_slice(),
                want.as_slice(),
                "{model}: not bit-identical"
            );
        }
        let Err(err) = Clip::from_dir(&out).unwrap().with_precision(Precision::F32) else {
            panic!("{model}: an int8 checkpoint ran in f32");
        };
        let err = err.to_string();
        assert!(err.contains("int8 weights"), "{err}");
    }
    let q8 = tmp.path().join("hf_tiny-int8");
    let emb = tmp.path().join("e.safetensors");
    let texts = tmp.path().join("captions.txt");
    std::fs::write(&texts, "a red circle\n").unwrap();
    let embed = |extra: &[&str]| {
        let mut args = vec!["embed", "--model", s(&q8), "--texts", s(&texts)];
        args.extend(["--out", s(&emb)]);
        args.extend(extra);
        clip(&args)
    };
    ok_stderr(&embed(&[]));
    let err = fail(&embed(&["--precision", "f32"]));
    assert!(err.contains("int8 weights"), "{err}");
    let run = tmp.path().join("run");
    let err = fail(&clip(&[
        "train",
        "--init",
        s(&q8),
        "--data",
        s(&fixtures().join("images")),
        "--steps",
        "1",
        "--out",
        s(&run),
    ]));
    assert!(err.contains("cannot be trained"), "{err}");
}

/// A damaged quantized checkpoint is an error naming the weight: scales missing, a scale
/// that is not a positive number, an int8 weight where the model has no packed layer.
#[test]
fn a_damaged_int8_checkpoint_is_an_error_naming_the_weight() {
    let tmp = tempfile::tempdir().unwrap();
    let q8 = tmp.path().join("q8");
    clip::convert(s(&fixtures().join("hf_tiny")), &q8, Precision::Int8).unwrap();
    let fc1 = "vision_model.encoder.layers.0.mlp.fc1.weight";
    type Edit = fn(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>);
    let cases: [(&str, Edit, &str); 3] = [
        (
            "missing scales",
            |all| all.retain(|t| t.0 != "vision_model.encoder.layers.0.mlp.fc1.weight_scale"),
            "are missing",
        ),
        (
            "zero scale",
            |all| {
                let t = all
                    .iter_mut()
                    .find(|t| t.0 == "vision_model.encoder.layers.0.mlp.fc1.weight_scale")
                    .unwrap();
                t.3[..4].copy_from_slice(&0f32.to_le_bytes());
            },
            "not a positive number",
        ),
        (
            "int8 out of place",
            |all| {
                let t = all
                    .iter_mut()
                    .find(|t| t.0 == "text_projection.weight")
                    .unwrap();
                let n = t.2[0];
                t.1 = safetensors::Dtype::I8;
                t.3 = vec![1u8; t.3.len() / 4];
                let scales = 1f32.to_le_bytes().repeat(n);
                all.push((
                    "text_projection.weight_scale".into(),
                    safetensors::Dtype::F32,
                    vec![n],
                    scales,
                ));
            },
            "only the transformer blocks",
        ),
    ];
    for (what, edit, says) in cases {
        let dir = tmp.path().join(what.replace(' ', "-"));
        copy_dir(&q8, &dir);
        edit_weights(&dir, edit);
        let err = match Clip::from_dir(&dir) {
            Ok(_) => panic!("{what}: loaded"),
            Err(e) => error_chain(&e),
        };
        let key = if what == "int8 out of place" {
            "text_projection.weight"
        } else {
            fc1
        };
        assert!(err.contains(key) && err.contains(says), "{what}: {err}");
    }
}

/// An error and its sources, one line each: what a user sees on the command line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out += &format!("\n  caused by: {s}");
        source = s.source();
    }
    out
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
