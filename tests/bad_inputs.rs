//! Damaged and mismatched inputs produce errors that name the file, key or value at fault.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use clip_model::Checkpoint;
use common::*;

/// Copies the HF fixture model into a temporary directory for tampering.
fn hf_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_hf_tiny(tmp.path());
    tmp
}

/// The HF fixture model with `t` added (or replaced) as weight `name`.
fn with_tensor(name: &str, t: Tensor) -> tempfile::TempDir {
    let dir = hf_copy();
    rewrite_weights(dir.path(), |w| {
        w.insert(name.into(), t);
    });
    dir
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, &path).unwrap();
}

fn load_err(dir: &Path) -> String {
    // The whole chain, as the CLI prints it.
    clip_data::error_chain(&Checkpoint::load(dir, &Device::Cpu).unwrap_err())
}

#[test]
fn truncated_safetensors_is_reported_with_its_path() {
    let dir = hf_copy();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("model.safetensors"), "{msg}");
    assert!(msg.contains("cannot read safetensors"), "{msg}");
}

#[test]
fn missing_tensor_names_key_and_expected_shape() {
    let dir = hf_copy();
    rewrite_weights(dir.path(), |t| {
        t.remove("vision_model.post_layernorm.bias");
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("missing tensor `vision_model.post_layernorm.bias`"),
        "{msg}"
    );
    assert!(msg.contains("[32]"), "{msg}");
}

#[test]
fn wrong_shape_names_key_expected_and_found() {
    let zeros = Tensor::zeros((12, 17), candle_core::DType::F32, &Device::Cpu).unwrap();
    let dir = with_tensor("text_projection.weight", zeros);
    let msg = load_err(dir.path());
    assert!(msg.contains("`text_projection.weight`"), "{msg}");
    assert!(
        msg.contains("[12, 17]") && msg.contains("[12, 16]"),
        "{msg}"
    );
}

#[test]
fn extra_layers_in_the_checkpoint_do_not_load_silently() {
    let ones = Tensor::ones(32, candle_core::DType::F32, &Device::Cpu).unwrap();
    let dir = with_tensor("vision_model.encoder.layers.2.layer_norm1.weight", ones);
    let msg = load_err(dir.path());
    assert!(
        msg.contains("unexpected tensor `vision_model.encoder.layers.2.layer_norm1.weight`"),
        "{msg}"
    );
}

#[test]
fn old_checkpoints_with_position_ids_and_half_precision_load() {
    let dir = hf_copy();
    rewrite_weights(dir.path(), |t| {
        t.insert(
            "text_model.embeddings.position_ids".into(),
            Tensor::arange(0i64, 20, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        );
        let w = t["logit_scale"].to_dtype(candle_core::DType::F16).unwrap();
        t.insert("logit_scale".into(), w);
    });
    Checkpoint::load(dir.path(), &Device::Cpu)
        .unwrap()
        .into_model()
        .unwrap();
}

#[test]
fn bad_config_value_is_named() {
    let dir = hf_copy();
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"patch_size\": 8", "\"patch_size\": 7");
    std::fs::write(&path, text).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("patch_size = 7"), "{msg}");
    std::fs::write(&path, "{ not json").unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn unknown_directory_layout_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("not a model directory"), "{msg}");
    let msg = load_err(&dir.path().join("nope"));
    assert!(msg.contains("nope"), "{msg}");
}

#[test]
fn unsupported_open_clip_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("openclip_tiny");
    std::fs::copy(
        src.join("open_clip_model.safetensors"),
        dir.path().join("open_clip_model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(src.join("open_clip_config.json"))
        .unwrap()
        .replace(
            "\"layers\": 2\n    },\n    \"text_cfg\"",
            "\"layers\": 2, \"attentional_pool\": true\n    },\n    \"text_cfg\"",
        );
    assert!(cfg.contains("attentional_pool"));
    std::fs::write(dir.path().join("open_clip_config.json"), cfg).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("vision_cfg.attentional_pool"), "{msg}");
}
