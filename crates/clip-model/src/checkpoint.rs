//! Model directories: the Hugging Face layout (read and written) and open_clip's (read).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use candle_core::{Device, Tensor};
use clip_nn::quant::{Int8Weight, Precision};
use clip_nn::{Params, TensorMap};
use text_encoder::Pooling;
use vision_encoder::Preprocess;

use crate::config::{read_json, ClipConfig};
use crate::error::io_err;
use crate::header::{self, Shapes, WeightsFile};
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

/// Reads every tensor of a safetensors file through a memory map.
///
/// A truncated or damaged file is an error naming it; nothing is read past a bad header.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    WeightsFile::open(path)?.load(device)?.floats_only(path)
}

/// `dir/tokenizer.json`, if there is one.
fn tokenizer_in(dir: &Path) -> Option<PathBuf> {
    Some(dir.join("tokenizer.json")).filter(|p| p.exists())
}

impl Checkpoint {
    /// Detects the layout of `dir` and reads it: the config is parsed and bounded, then
    /// checked against the safetensors headers, before any tensor is read.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            let source = std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory");
            return Err(io_err("cannot open model directory", dir)(source));
        }
        let hf_files = if dir.join("config.json").exists() {
            hf_weight_files(dir)?
        } else {
            None
        };
        if let Some(files) = hf_files {
            Self::load_hf(dir, &files, device)
        } else if dir.join(open_clip::CONFIG_FILE).exists()
            && dir.join(open_clip::WEIGHTS_FILE).exists()
        {
            let o = open_clip::load(dir, device)?;
            Ok(Self {
                dir: dir.to_path_buf(),
                layout: Layout::OpenClip,
                config: o.config,
                preprocess: o.preprocess,
                pooling: open_clip::POOLING,
                tokenizer: tokenizer_in(dir),
                weights: o.weights,
                weights_path: o.weights_path,
            })
        } else {
            Err(ModelError::UnknownLayout {
                path: dir.to_path_buf(),
            })
        }
    }

    fn load_hf(dir: &Path, files: &[PathBuf], device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config = ClipConfig::from_file(&config_path)?;
        let files = files
            .iter()
            .map(|f| WeightsFile::open(f))
            .collect::<Result<Vec<_>>>()?;
        let mut shapes = Shapes::new();
        for f in &files {
            shapes.extend(f.shapes()?);
        }
        let weights_path = files[0].path().to_path_buf();
        header::check_config(
            &config,
            &shapes,
            &config_path,
            &weights_path,
            str::to_string,
        )?;
        header::check_shapes(&config, &shapes, &weights_path)?;
        let (mut tensors, mut int8) = (HashMap::new(), HashMap::new());
        for f in &files {
            let loaded = f.load(device)?;
            tensors.extend(loaded.tensors);
            int8.extend(loaded.int8);
        }
        check_int8_places(&config, &int8, &weights_path)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            layout: Layout::HuggingFace,
            preprocess: load_preprocess_config(dir, config.vision_config.image_size)?,
            pooling: config.text_config.pooling(),
            tokenizer: tokenizer_in(dir),
            weights: TensorMap::new(tensors, device.clone()).with_int8(int8),
            weights_path,
            config,
        })
    }

    /// The precision the weights are stored in: int8 for a quantized checkpoint (`clip
    /// convert --precision int8`), f32 otherwise (f16 and bf16 files load as f32).
    pub fn precision(&self) -> Precision {
        if self.weights.int8_weights().is_empty() {
            Precision::F32
        } else {
            Precision::Int8
        }
    }

    /// The checkpoint with the linear weights the model packs ([`ClipModel::packable_weights`])
    /// quantized to int8 by the rule packing at load uses ([`Int8Weight::quantize`]), so a
    /// model loaded from the result computes exactly what this one does packed in int8.
    /// Everything else stays as it is.
    pub fn quantized(self) -> Result<Self> {
        let mut tensors = self.weights.tensors().clone();
        let mut int8 = self.weights.int8_weights().clone();
        for name in ClipModel::packable_weights(&self.config)? {
            let Some(t) = tensors.remove(&name) else {
                continue;
            };
            let (n, k) = t.dims2()?;
            let values = t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            int8.insert(name, Int8Weight::quantize(&values, n, k));
        }
        let device = clip_nn::ParamSource::device(&self.weights).clone();
        Ok(Self {
            weights: TensorMap::new(tensors, device).with_int8(int8),
            ..self
        })
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

/// Int8 weights only where the model packs a linear layer ([`ClipModel::packable_weights`]):
/// anywhere else the model would find no f32 weight, so say which key is out of place.
fn check_int8_places(
    config: &ClipConfig,
    int8: &HashMap<String, Int8Weight>,
    path: &Path,
) -> Result<()> {
    if int8.is_empty() {
        return Ok(());
    }
    let packable: std::collections::HashSet<String> =
        ClipModel::packable_weights(config)?.into_iter().collect();
    let stray = int8.keys().filter(|k| !packable.contains(*k)).min();
    match stray {
        None => Ok(()),
        Some(key) => Err(ModelError::Quantized {
            key: key.clone(),
            path: path.to_path_buf(),
            reason: "only the transformer blocks' linear weights may be int8".into(),
        }),
    }
}

/// `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
///
/// Shard names must stay inside `dir`: plain relative names, not absolute, no `..`, and not
/// symlinks that resolve elsewhere — except, for a Hugging Face cache snapshot
/// (`…/snapshots/<rev>/`), into that repository's `blobs/`, where the hub keeps the files
/// its snapshots link to.
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
    let mut names: Vec<&String> = idx.weight_map.values().collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(bad("its weight_map lists no shard".into()));
    }
    let allowed = allowed_roots(dir)?;
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let plain = Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !plain || name.is_empty() {
            return Err(bad(format!(
                "its weight_map names shard {name:?}, which is not a file name inside the model directory"
            )));
        }
        let file = dir.join(name);
        if !file.is_file() {
            return Err(bad(format!(
                "its weight_map names {}, which does not exist",
                file.display()
            )));
        }
        let real = file
            .canonicalize()
            .map_err(io_err("cannot resolve shard", &file))?;
        if !allowed.iter().any(|root| real.starts_with(root)) {
            return Err(bad(format!(
                "its weight_map names shard {name:?}, a link to {}, outside the model directory",
                real.display()
            )));
        }
        files.push(file);
    }
    Ok(Some(files))
}

/// Where the files of model directory `dir` may resolve to: `dir` itself, and for a Hugging
/// Face cache snapshot the repository's `blobs/` (see [`hf_weight_files`]).
fn allowed_roots(dir: &Path) -> Result<Vec<PathBuf>> {
    let root = dir
        .canonicalize()
        .map_err(io_err("cannot resolve model directory", dir))?;
    let mut roots = vec![root.clone()];
    let repo = root
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))
        .and_then(Path::parent);
    if let Some(blobs) = repo.map(|r| r.join("blobs")).filter(|b| b.is_dir()) {
        roots.extend(blobs.canonicalize().ok());
    }
    Ok(roots)
}

/// Writes a model directory in the Hugging Face layout, atomically (see
/// [`replace_dir_atomically`]): `config.json`, `model.safetensors`,
/// `preprocessor_config.json`, and the tokenizer files when `tokenizer` is given, so that
/// `transformers.CLIPModel.from_pretrained(dir)` and `CLIPProcessor` load it.
///
/// int8 weights in `weights` (a quantized model) are stored as `I8` tensors under their
/// names, each with its per-channel f32 scales under `<name>_scale`, and `config.json`
/// says so in `quantization_config`; such a directory is for this project's loader
/// (transformers refuses it, naming the unknown quantization method).
pub fn save_hf(
    dir: &Path,
    config: &ClipConfig,
    preprocess: &Preprocess,
    weights: &TensorMap,
    tokenizer: Option<&Path>,
) -> Result<()> {
    replace_dir_atomically(dir, |tmp| {
        write_hf_files(tmp, config, preprocess, weights, tokenizer)
    })
}

/// Writes the Hugging Face layout files into an existing directory `tmp` (see [`save_hf`]);
/// for callers that add their own files before an atomic rename.
pub fn write_hf_files(
    tmp: &Path,
    config: &ClipConfig,
    preprocess: &Preprocess,
    weights: &TensorMap,
    tokenizer: Option<&Path>,
) -> Result<()> {
    {
        let mut config_json = config.to_hf_json();
        if !weights.int8_weights().is_empty() {
            config_json["quantization_config"] = serde_json::json!({
                "quant_method": "clip-int8",
                "weights": "int8, symmetric per output channel; f32 scales in <name>_scale",
                "activations": "uint8 per row, quantized at run time",
            });
        }
        write_json(&tmp.join("config.json"), &config_json)?;
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
        let mut entries: Vec<(String, Entry)> = weights
            .tensors()
            .iter()
            .map(|(name, t)| (name.clone(), Entry::Tensor(t)))
            .collect();
        for (name, w) in weights.int8_weights() {
            entries.push((name.clone(), Entry::Int8(w, [w.n, w.k])));
            entries.push((header::int8_scale_key(name), Entry::Scales(w)));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(entries, Some(metadata), &path).map_err(|source| {
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

/// One tensor of a written checkpoint: a candle tensor, or an int8 weight's values or scales.
enum Entry<'a> {
    Tensor(&'a Tensor),
    Int8(&'a Int8Weight, [usize; 2]),
    Scales(&'a Int8Weight),
}

impl safetensors::View for Entry<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self {
            Self::Tensor(t) => safetensors::View::dtype(*t),
            Self::Int8(..) => safetensors::Dtype::I8,
            Self::Scales(_) => safetensors::Dtype::F32,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            Self::Tensor(t) => t.dims(),
            Self::Int8(_, shape) => shape,
            Self::Scales(w) => std::slice::from_ref(&w.n),
        }
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Self::Tensor(t) => safetensors::View::data(*t),
            Self::Int8(w, _) => w.values.iter().map(|&v| v as u8).collect(),
            Self::Scales(w) => w.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        }
    }

    fn data_len(&self) -> usize {
        match self {
            Self::Tensor(t) => safetensors::View::data_len(*t),
            Self::Int8(w, _) => w.values.len(),
            Self::Scales(w) => w.scales.len() * 4,
        }
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
        index_error(dir.path(), weight_map)
    }

    /// Writes `config.json` and an index holding `weight_map` into `dir`: the load's error,
    /// checked to be about the index.
    fn index_error(dir: &Path, weight_map: serde_json::Value) -> String {
        let cfg = ClipConfig::default().to_hf_json();
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, index.to_string()).unwrap();
        let err = Checkpoint::load(dir, &Device::Cpu).unwrap_err();
        assert!(
            matches!(&err, ModelError::ShardIndex { path: p, .. } if *p == path),
            "{err}"
        );
        err.to_string()
    }

    fn hf_tiny() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf_tiny")
    }

    #[cfg(unix)]
    #[test]
    fn shard_names_may_not_leave_the_model_directory() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("x.safetensors");
        std::fs::copy(hf_tiny().join("model.safetensors"), &outside).unwrap();
        let dir = root.path().join("model");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link.safetensors")).unwrap();
        let absolute = outside.to_str().unwrap();
        for shard in ["../x.safetensors", absolute, "link.safetensors", ""] {
            let err = index_error(&dir, serde_json::json!({ "logit_scale": shard }));
            assert!(
                err.contains(&format!("shard {shard:?}")) && err.contains("model directory"),
                "{err}"
            );
        }
    }

    /// The Hugging Face cache keeps a snapshot's files in the repository's `blobs/`, linked
    /// from `snapshots/<rev>/`: those links stay allowed.
    #[cfg(unix)]
    #[test]
    fn shards_linked_into_a_hub_cache_blobs_folder_load() {
        let repo = tempfile::tempdir().unwrap();
        let blobs = repo.path().join("blobs");
        let snap = repo.path().join("snapshots").join("0123abc");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::copy(hf_tiny().join("model.safetensors"), blobs.join("e3b0c442")).unwrap();
        std::fs::copy(hf_tiny().join("config.json"), snap.join("config.json")).unwrap();
        let shard = "model-00001-of-00001.safetensors";
        std::os::unix::fs::symlink("../../blobs/e3b0c442", snap.join(shard)).unwrap();
        let index = serde_json::json!({ "weight_map": { "logit_scale": shard } });
        std::fs::write(snap.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let ckpt = Checkpoint::load(&snap, &Device::Cpu).unwrap();
        assert_eq!(ckpt.weights_path, snap.join(shard));
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
