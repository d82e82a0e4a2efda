//! Helpers shared by the training tests: a tiny model, the tokenizer, reading weights back.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use clip_data::SampleSet;
use clip_model::{ClipConfig, ClipTokenizer, Preprocess, TextConfig, VisionConfig};
use clip_train::{train, Observer, RunSetup, Summary, TrainConfig};

pub fn tokenizer_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tokenizer.json")
}

/// The tokenizer at the context of [`model_config`]'s captions.
pub fn tokenizer() -> ClipTokenizer {
    ClipTokenizer::from_file(&tokenizer_file(), 8).unwrap()
}

/// A run of [`model_config`] from scratch on 16×16 images into `out`.
pub fn run_setup(out: &Path, train: TrainConfig, resume: bool) -> RunSetup {
    RunSetup {
        out: out.to_path_buf(),
        preprocess: Preprocess {
            image_size: 16,
            ..Preprocess::default()
        },
        model: model_config(),
        init: None,
        tokenizer_file: tokenizer_file(),
        tokenizer: tokenizer(),
        train,
        resume,
        labels: None,
    }
}

/// Trains `setup` on `data` on the CPU, showing nothing.
pub fn train_quietly(setup: RunSetup, data: Arc<SampleSet>) -> clip_train::Result<Summary> {
    train(setup, data, &Device::Cpu, &mut Quiet)
}

/// Two 32-wide one-layer towers on 16×16 images and 8-token captions.
pub fn model_config() -> ClipConfig {
    ClipConfig {
        projection_dim: 16,
        logit_scale_init_value: 2.6592,
        text_config: TextConfig {
            hidden_size: 32,
            intermediate_size: 64,
            num_attention_heads: 2,
            num_hidden_layers: 1,
            max_position_embeddings: 8,
            hidden_act: "gelu".into(),
            pad_token_id: 49407,
            ..TextConfig::default()
        },
        vision_config: VisionConfig {
            hidden_size: 32,
            intermediate_size: 64,
            num_attention_heads: 2,
            num_hidden_layers: 1,
            image_size: 16,
            patch_size: 8,
            hidden_act: "gelu".into(),
            ..VisionConfig::default()
        },
        image_only: false,
    }
}

/// An observer that shows nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// A model directory's tensors.
pub fn tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

/// A model directory's weights, sorted by name.
pub fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> = tensors(dir)
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// An observer that panics once checkpoint `step` is on disk: a kill -9 right after it.
pub struct KillAfterCheckpoint(pub usize);
impl Observer for KillAfterCheckpoint {
    fn on_checkpoint(&mut self, dir: &Path) {
        if dir.ends_with(format!("checkpoint-{}", self.0)) {
            panic!("simulated kill");
        }
    }
}

/// Trains `setup` on `data` until checkpoint `step` is on disk, then stops it as a kill -9
/// would; asserts that it was stopped.
pub fn train_killed_after(step: usize, setup: RunSetup, data: Arc<SampleSet>) {
    let run = || {
        let _ = train(setup, data, &Device::Cpu, &mut KillAfterCheckpoint(step));
    };
    let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err();
    assert!(killed, "the run was not stopped at checkpoint {step}");
}

/// Asserts `a ≈ b` within `rel` of `b`'s largest magnitude (at least 1e-3), after checking
/// shapes and finiteness: a NaN or misshapen result fails instead of vanishing in a `max`.
pub fn assert_close(a: &Tensor, b: &Tensor, rel: f32, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let flat = |t: &Tensor| -> Vec<f32> {
        let t = t.flatten_all().unwrap().to_dtype(DType::F32).unwrap();
        t.to_vec1().unwrap()
    };
    let (x, y) = (flat(a), flat(b));
    let bad = x.iter().chain(&y).position(|v| !v.is_finite());
    assert!(
        bad.is_none(),
        "{what}: non-finite value at flat index {bad:?}"
    );
    let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = x
        .iter()
        .zip(&y)
        .fold(0f32, |m, (u, v)| m.max((u - v).abs()));
    assert!(
        diff <= rel * scale.max(1e-3),
        "{what}: max diff {diff} (scale {scale})"
    );
}

#[test]
fn assert_close_fails_on_nan_misshapen_and_distant_input() {
    let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
    let good = t(&[1.0, -2.0]);
    assert_close(&t(&[1.0, -2.0001]), &good, 1e-4, "within 5e-5 of scale 2");
    for bad in [t(&[f32::NAN, -2.0]), t(&[1.0]), t(&[1.0, -2.001])] {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_close(&bad, &good, 1e-4, "x")
        }))
        .is_err();
        assert!(caught, "{bad} passed as close to {good}");
    }
}
