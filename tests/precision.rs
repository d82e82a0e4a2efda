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
