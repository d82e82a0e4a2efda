//! The library facade against PyTorch's numbers and against brute force: what a Rust
//! program calling `clip` gets.

mod common;

use candle_core::Tensor;
use clip::{index, Clip, Embeddings, Error, Index};
use common::*;

/// `t`'s rows scaled to unit length, as a `[n, d]` tensor.
fn unit(t: &Tensor) -> Tensor {
    tensor(&Embeddings::from_tensor(t).unwrap().normalized().unwrap())
}

fn tensor(e: &Embeddings) -> Tensor {
    Tensor::from_vec(
        e.as_slice().to_vec(),
        (e.len(), e.dim()),
        &candle_core::Device::Cpu,
    )
    .unwrap()
}

#[test]
fn embeddings_of_files_and_texts_match_transformers() {
    let exp = expected();
    let clip = Clip::from_dir(fixtures().join("hf_tiny")).unwrap();
    let images = clip.embed_images(&image_paths()).unwrap();
    assert_eq!((images.len(), images.dim()), (12, 12));
    let want = unit(&exp["hf.image_embeds"]);
    for (i, path) in image_paths().iter().enumerate() {
        let row = |t: &Tensor| t.narrow(0, i, 1).unwrap();
        let err = max_rel_l2(&row(&tensor(&images)), &row(&want));
        // JPEG decoders round differently by up to two 8-bit levels; the rest is exact.
        let tol = if path.extension().is_some_and(|e| e == "jpg") {
            1e-2
        } else {
            1e-5
        };
        assert!(
            err <= tol,
            "{}: image embedding rel L2 {err}",
            path.display()
        );
    }
    let texts = clip.embed_texts(&captions()).unwrap();
    let err = max_rel_l2(&tensor(&texts), &unit(&exp["hf.text_embeds"]));
    assert!(err <= 1e-5, "text embeddings rel L2 {err}");
    // Decoded images give what their files give.
    let decoded: Vec<_> = image_paths()
        .iter()
        .map(|p| vision_encoder::load_image(p).unwrap())
        .collect();
    assert_eq!(clip.embed_decoded(&decoded).unwrap(), images);
}

#[test]
fn an_index_built_and_searched_through_the_library_ranks_like_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    let clip = Clip::from_dir(fixtures().join("hf_tiny")).unwrap();
    let folder = fixtures().join("images");
    let model = clip.dir().display().to_string();
    let opts = index::BuildOptions::default();
    let r = index::build_images(&folder, &out, &model, || Ok(&clip), &opts, &()).unwrap();
    assert_eq!(
        (r.count, r.embedded, r.reused, r.up_to_date),
        (12, 12, 0, false)
    );
    // Unchanged folder: nothing embedded, and the model is not even loaded.
    let again = index::build_images(
        &folder,
        &out,
        &model,
        || -> clip::Result<Clip> { panic!("an up-to-date index must not load the model") },
        &opts,
        &(),
    )
    .unwrap();
    assert!(again.up_to_date && again.count == 12);

    let index = Index::open(&out).unwrap();
    let caps = captions();
    let hits = clip.search_texts(&index, &caps, 12).unwrap();
    let images = clip.embed_images(&image_paths()).unwrap();
    let texts = clip.embed_texts(&caps).unwrap();
    for (q, row) in hits.iter().enumerate() {
        assert_eq!(row.len(), 12);
        let mut brute: Vec<(usize, f32)> = images
            .rows()
            .enumerate()
            .map(|(i, v)| (i, clip::dot(v, texts.row(q))))
            .collect();
        brute.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for (h, (id, score)) in row.iter().zip(&brute) {
            assert!(
                (h.score - score).abs() < 1e-5,
                "query {q}: {h:?} vs {score}"
            );
            assert!(h.id == *id || (h.score - score).abs() < 1e-6, "query {q}");
        }
        assert_eq!(
            index::hit_path(&index, row[0].id).unwrap(),
            folder
                .canonicalize()
                .unwrap()
                .join(image_paths()[row[0].id].file_name().unwrap())
        );
    }
}

#[test]
fn bad_models_and_inputs_are_errors_that_name_them() {
    let missing = match Clip::from_dir("no/such/model") {
        Err(e) => e,
        Ok(_) => panic!("a missing folder loaded"),
    };
    assert!(missing.to_string().contains("no/such/model"), "{missing}");
    let err = clip::Clip::open("no/such/model", &clip::Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(err, Error::ModelNotFound(ref s) if s == "no/such/model"));
    let clip = Clip::from_dir(fixtures().join("hf_tiny")).unwrap();
    let err = clip.embed_images(&["no/such/image.png"]).unwrap_err();
    assert!(err.to_string().contains("no/such/image.png"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = index::build_images(
        empty.path(),
        &empty.path().join("idx"),
        "m",
        || Ok(&clip),
        &index::BuildOptions::default(),
        &(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("no png/jpg/jpeg/webp files"),
        "{err}"
    );
    assert!(matches!(clip::preset("huge"), Err(Error::UnknownPreset(_))));
}
