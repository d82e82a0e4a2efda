//! The dual-encoder configuration in Hugging Face's `CLIPConfig` layout.

use std::path::Path;

use clip_nn::{BadConfig, EncoderSpec};
use serde::{Deserialize, Serialize};
use text_encoder::{TextConfig, TextError};
use vision_encoder::{Preprocess, VisionConfig, VisionError};

use crate::error::io_err;
use crate::{ModelError, Result};

/// Both towers and the shared embedding size, as in a Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    /// Size of the shared embedding space.
    pub projection_dim: usize,
    /// Initial `logit_scale` (ln of the inverse temperature); ln(1/0.07) ≈ 2.6592.
    pub logit_scale_init_value: f64,
    /// Text tower.
    pub text_config: TextConfig,
    /// Vision tower.
    pub vision_config: VisionConfig,
    /// Trained on images alone (two augmented views, no captions; not a transformers field):
    /// the text tower is untrained, and `clip probe` / `clip embed` read the pooled features
    /// before the projection head by default.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub image_only: bool,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
            text_config: TextConfig::default(),
            vision_config: VisionConfig::default(),
            image_only: false,
        }
    }
}

impl ClipConfig {
    /// Reads and validates a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path)?;
        cfg.validate().map_err(|e| e.in_file(path))?;
        Ok(cfg)
    }

    /// Checks both towers and the projection size against each other and their bounds
    /// (see [`EncoderSpec`]'s, [`VisionConfig::validate`]'s and [`TextConfig::validate`]'s
    /// constants), before any tensor exists; errors name the key as in `config.json`.
    pub fn validate(&self) -> Result<()> {
        let named = |section: &str, bad: BadConfig| ModelError::Config {
            path: None,
            key: format!("{section}{}", bad.field),
            value: bad.value,
            reason: bad.reason.into_owned(),
        };
        self.text_config.validate().map_err(|e| match e {
            TextError::Config(bad) => named("text_config.", bad),
            other => other.into(),
        })?;
        self.vision_config.validate().map_err(|e| match e {
            VisionError::Config(bad) => named("vision_config.", bad),
            other => other.into(),
        })?;
        if self.projection_dim == 0 {
            return Err(named(
                "",
                BadConfig::new("projection_dim", 0, "must be positive"),
            ));
        }
        BadConfig::at_most(
            "projection_dim",
            self.projection_dim,
            EncoderSpec::MAX_WIDTH,
        )
        .map_err(|bad| named("", bad))?;
        Ok(())
    }

    /// The `config.json` transformers' `CLIPModel.from_pretrained` expects.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        let obj = v.as_object_mut().expect("object");
        obj.insert("architectures".into(), serde_json::json!(["CLIPModel"]));
        obj.insert("model_type".into(), "clip".into());
        obj.insert("torch_dtype".into(), "float32".into());
        for (key, model_type) in [
            ("text_config", "clip_text_model"),
            ("vision_config", "clip_vision_model"),
        ] {
            let sub = obj
                .get_mut(key)
                .and_then(|s| s.as_object_mut())
                .expect("sub-config");
            sub.insert("model_type".into(), model_type.into());
            sub.insert("projection_dim".into(), self.projection_dim.into());
        }
        v
    }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io_err("cannot read", path))?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The parts of a `preprocessor_config.json` (transformers' `CLIPImageProcessor`) we honour.
#[derive(Debug, Deserialize)]
struct HfImageProcessor {
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
}

/// Preprocessing for a model directory: the image size from the config and the mean/std from
/// `preprocessor_config.json` when present, else OpenAI's.
pub fn load_preprocess_config(dir: &Path, image_size: usize) -> Result<Preprocess> {
    let mut pre = Preprocess {
        image_size,
        ..Preprocess::default()
    };
    let path = dir.join("preprocessor_config.json");
    if path.exists() {
        let hf: HfImageProcessor = read_json(&path)?;
        if let Some(m) = hf.image_mean {
            pre.mean = m;
        }
        if let Some(s) = hf.image_std {
            pre.std = s;
        }
    }
    Ok(pre)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_text_configs_keep_transformers_keys_and_image_only_ones_round_trip() {
        let plain = ClipConfig::default().to_hf_json();
        assert!(plain.get("image_only").is_none(), "{plain}");
        assert!(plain["vision_config"].get("projection_head").is_none());
        let mut cfg = ClipConfig {
            image_only: true,
            ..ClipConfig::default()
        };
        cfg.vision_config.projection_head = Some(vision_encoder::ProjectionHead {
            layers: 3,
            hidden_size: 256,
        });
        let json = cfg.to_hf_json();
        assert_eq!(json["image_only"], true);
        let back: ClipConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, cfg);
    }
}
