//! Helpers shared by the training tests: a tiny model, the tokenizer, reading weights back.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use clip_model::{ClipConfig, TextConfig, VisionConfig};
use clip_train::Observer;

pub fn tokenizer_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tokenizer.json")
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

/// A model directory's weights, sorted by name.
pub fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let t = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = t
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

/// Runs a training that [`KillAfterCheckpoint`] stops, and says whether it was stopped.
pub fn killed(run: impl FnOnce()) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err()
}
