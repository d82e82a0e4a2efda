//! Model directories: the Hugging Face layout (read and written) and open_clip's (read).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use clip_nn::{Params, TensorMap};
use text_encoder::Pooling;
use vision_encoder::Preprocess;

use crate::config::{read_json, ClipConfig};
use crate::error::io_err;
use crate::{
    load_preprocess_config, open_clip, replace_dir_atomically, ClipModel, ModelError, Result,
};

/// Which file layout a model directory uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `config.json` + `model.safetensors` (transformers' `CLIPModel`).
    HuggingFace,
    /// `open_clip_config.json` + `open_clip_model.safetensors`.
    OpenClip,
}

/// A model directory read into memory: config, preprocessing and weights under HF names.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The directory it came from.
    pub dir: PathBuf,
    /// Its layout.
    pub layout: Layout,
    /// Model configuration.
    pub config: ClipConfig,
    /// Image preprocessing (size, mean, std).
    pub preprocess: Preprocess,
    /// Text pooling rule.
    pub pooling: Pooling,
    /// `tokenizer.json` in the directory, if any.
    pub tokenizer: Option<PathBuf>,
    /// Weights keyed by Hugging Face names.
    pub weights: TensorMap,
    /// The weights file, for error messages.
    pub weights_path: PathBuf,
}

/// Buffers that some checkpoints carry but that are not parameters.
fn is_ignored_buffer(key: &str) -> bool {
    key.ends_with("position_ids") || key.ends_with("attn_mask")
}

/// Reads every tensor of a safetensors file through a memory map.
///
/// A truncated or damaged file is an error naming it; nothing is read past a bad header.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let file = std::fs::File::open(path).map_err(io_err("cannot open", path))?;
    // SAFETY: the map is read-only and dropped before this function returns; tensors are
    // copied out of it. A concurrent truncation by another process would be a user error.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err("cannot map", path))?;
    let st =
        safetensors::SafeTensors::deserialize(&mmap).map_err(|source| ModelError::Safetensors {
            path: path.to_path_buf(),
            source,
        })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if is_ignored_buffer(&name) {
            continue;
        }
        out.insert(name, view.load(device)?);
    }
    Ok(out)
}

impl Checkpoint {
    /// Detects the layout of `dir` and reads it; tensors are checked against the config.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            let source = std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory");
            return Err(io_err("cannot open model directory", dir)(source));
        }
        let ckpt = if dir.join("config.json").exists() && hf_weight_files(dir)?.is_some() {
            Self::load_hf(dir, device)?
        } else if dir.join(open_clip::CONFIG_FILE).exists()
            && dir.join(open_clip::WEIGHTS_FILE).exists()
        {
            open_clip::load(dir, device)?
        } else {
            return Err(ModelError::UnknownLayout {
                path: dir.to_path_buf(),
            });
        };
        ckpt.check_tensors()?;
        Ok(ckpt)
    }

    fn load_hf(dir: &Path, device: &Device) -> Result<Self> {
        let config = ClipConfig::from_file(&dir.join("config.json"))?;
        let files = hf_weight_files(dir)?.expect("checked by caller");
        let mut tensors = HashMap::new();
        for f in &files {
            tensors.extend(read_safetensors(f, device)?);
        }
        let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.exists());
        Ok(Self {
            dir: dir.to_path_buf(),
            layout: Layout::HuggingFace,
            preprocess: load_preprocess_config(dir, config.vision_config.image_size)?,
            pooling: config.text_config.pooling(),
            tokenizer,
            weights: TensorMap::new(tensors, device.clone()),
            weights_path: files[0].clone(),
            config,
        })
    }

    /// Every parameter present with the right shape, and nothing the config has no place for.
    fn check_tensors(&self) -> Result<()> {
        let expected = ClipModel::parameter_shapes(&self.config)?;
        let have = self.weights.tensors();
        let wrap = |source| ModelError::Weights {
            path: self.weights_path.clone(),
            source,
        };
        for (key, shape) in &expected {
            self.weights.checked(key, shape).map_err(wrap)?;
        }
        let known: HashSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
        let mut extra: Vec<&String> = have
            .keys()
            .filter(|k| !known.contains(k.as_str()))
            .collect();
        extra.sort();
        if let Some(key) = extra.first() {
            return Err(ModelError::UnexpectedTensor {
                key: (*key).clone(),
                path: self.weights_path.clone(),
            });
        }
        Ok(())
    }

    /// Builds an inference model over these weights.
    pub fn into_model(self) -> Result<ClipModel> {
        ClipModel::new(&self.config, self.pooling, Params::new(&self.weights))
    }

    /// Loads `tokenizer.json` from the directory, or from `fallback` when it has none.
    pub fn tokenizer(&self, fallback: Option<&Path>) -> Result<text_encoder::ClipTokenizer> {
        let path = self.tokenizer.as_deref().or(fallback).ok_or_else(|| {
            let source =
                std::io::Error::new(std::io::ErrorKind::NotFound, "pass a tokenizer explicitly");
            io_err("no tokenizer.json in", &self.dir)(source)
        })?;
        Ok(text_encoder::ClipTokenizer::from_file(
            path,
            self.config.text_config.max_position_embeddings,
        )?)
    }
}

/// `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
fn hf_weight_files(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(Some(vec![single]));
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let idx: Index = read_json(&index)?;
    let bad = |reason: String| ModelError::ShardIndex {
        path: index.clone(),
        reason,
    };
    let mut files: Vec<PathBuf> = idx.weight_map.values().map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(bad("its weight_map lists no shard".into()));
    }
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(bad(format!(
            "its weight_map names {}, which does not exist",
            missing.display()
        )));
    }
    Ok(Some(files))
}

/// Writes a model directory in the Hugging Face layout, atomically (see
/// [`replace_dir_atomically`]): `config.json`, `model.safetensors`,
/// `preprocessor_config.json`, and the tokenizer files when `tokenizer` is given, so that
/// `transformers.CLIPModel.from_pretrained(dir)` and `CLIPProcessor` load it.
pub fn save_hf(
    dir: &Path,
    config: &ClipConfig,
    preprocess: &Preprocess,
    tensors: &HashMap<String, Tensor>,
    tokenizer: Option<&Path>,
) -> Result<()> {
    replace_dir_atomically(dir, |tmp| {
        write_hf_files(tmp, config, preprocess, tensors, tokenizer)
    })
}

/// Writes the Hugging Face layout files into an existing directory `tmp` (see [`save_hf`]);
/// for callers that add their own files before an atomic rename.
pub fn write_hf_files(
    tmp: &Path,
    config: &ClipConfig,
    preprocess: &Preprocess,
    tensors: &HashMap<String, Tensor>,
    tokenizer: Option<&Path>,
) -> Result<()> {
    {
        write_json(&tmp.join("config.json"), &config.to_hf_json())?;
        let s = preprocess.image_size;
        let processor = serde_json::json!({
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": true, "size": {"shortest_edge": s}, "resample": 3,
            "do_center_crop": true, "crop_size": {"height": s, "width": s},
            "do_rescale": true, "rescale_factor": 1.0 / 255.0,
            "do_normalize": true, "image_mean": preprocess.mean, "image_std": preprocess.std,
            "do_convert_rgb": true,
        });
        write_json(&tmp.join("preprocessor_config.json"), &processor)?;
        let path = tmp.join("model.safetensors");
        let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(sorted, Some(metadata), &path).map_err(|source| {
            ModelError::Safetensors {
                path: path.clone(),
                source,
            }
        })?;
        if let Some(tok) = tokenizer {
            let dest = tmp.join("tokenizer.json");
            std::fs::copy(tok, &dest).map_err(io_err("cannot copy tokenizer", tok))?;
            let eot = "<|endoftext|>";
            let tok_cfg = serde_json::json!({
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": config.text_config.max_position_embeddings,
                "bos_token": "<|startoftext|>", "eos_token": eot, "pad_token": eot, "unk_token": eot,
            });
            write_json(&tmp.join("tokenizer_config.json"), &tok_cfg)?;
        }
        Ok(())
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON serialises");
    std::fs::write(path, text + "\n").map_err(io_err("cannot write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sharded directory whose index holds `weight_map`, next to a valid `config.json`.
    fn load_with_index(weight_map: serde_json::Value) -> String {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ClipConfig::default().to_hf_json();
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
        let path = dir.path().join("model.safetensors.index.json");
        std::fs::write(&path, index.to_string()).unwrap();
        let err = Checkpoint::load(dir.path(), &Device::Cpu).unwrap_err();
        assert!(
            matches!(&err, ModelError::ShardIndex { path: p, .. } if *p == path),
            "{err}"
        );
        err.to_string()
    }

    #[test]
    fn empty_weight_map_is_an_error_naming_the_index() {
        let err = load_with_index(serde_json::json!({}));
        assert!(err.contains("lists no shard"), "{err}");
    }

    #[test]
    fn missing_shard_is_an_error_naming_it() {
        let err = load_with_index(
            serde_json::json!({ "logit_scale": "model-00001-of-00002.safetensors" }),
        );
        assert!(err.contains("model-00001-of-00002.safetensors"), "{err}");
    }
}
