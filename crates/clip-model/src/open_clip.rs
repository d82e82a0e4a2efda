//! Reading open_clip's layout: its config format and its tensor names.
//!
//! open_clip fuses q/k/v into `attn.in_proj_weight`, stores projections as `x @ W` (the
//! transpose of PyTorch `Linear`), and names blocks `resblocks.{i}`. We map all of it onto
//! the Hugging Face names so the rest of the project sees one layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Shape, Tensor};
use clip_nn::TensorMap;
use serde_json::Value;
use text_encoder::{Pooling, TextConfig};
use vision_encoder::{Preprocess, VisionConfig};

use crate::config::read_json;
use crate::header::{self, Shapes, WeightsFile};
use crate::{ClipConfig, ModelError, Result};

/// open_clip's config file name in a hub-style directory.
pub const CONFIG_FILE: &str = "open_clip_config.json";
/// open_clip's weights file name in a hub-style directory.
pub const WEIGHTS_FILE: &str = "open_clip_model.safetensors";

struct Cfg<'a> {
    path: &'a Path,
}

impl Cfg<'_> {
    fn unsupported(&self, field: &str, value: &Value) -> ModelError {
        ModelError::Unsupported {
            field: field.to_string(),
            value: value.to_string(),
            path: self.path.to_path_buf(),
        }
    }

    fn usize(&self, obj: &Value, field: &str, prefix: &str, default: usize) -> Result<usize> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| self.unsupported(&format!("{prefix}.{field}"), v)),
        }
    }

    fn f64(&self, obj: &Value, field: &str, prefix: &str, default: f64) -> Result<f64> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.unsupported(&format!("{prefix}.{field}"), v)),
        }
    }

    /// Rejects settings that change the architecture in ways we do not implement.
    fn reject(&self, obj: &Value, prefix: &str, allowed: &[(&str, Value)]) -> Result<()> {
        for (field, ok) in allowed {
            if let Some(v) = obj.get(*field) {
                if !v.is_null() && v != ok {
                    return Err(self.unsupported(&format!("{prefix}.{field}"), v));
                }
            }
        }
        Ok(())
    }
}

/// The model config and preprocessing of `open_clip_config.json` at `path`, bounded.
fn parse_config(path: &Path) -> Result<(ClipConfig, Preprocess)> {
    let root: Value = read_json(path)?;
    let c = Cfg { path };
    let model = root.get("model_cfg").unwrap_or(&root);
    let null = Value::Null;
    let vis = model.get("vision_cfg").unwrap_or(&null);
    let txt = model.get("text_cfg").unwrap_or(&null);
    reject_unsupported(&c, vis, txt)?;
    let act = if model
        .get("quick_gelu")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        "quick_gelu"
    } else {
        "gelu"
    };
    let vision_config = vision_config(&c, vis, act)?;
    let text_config = text_config(&c, txt, act)?;
    let config = ClipConfig {
        projection_dim: c.usize(model, "embed_dim", "model_cfg", 512)?,
        logit_scale_init_value: 2.6592,
        text_config,
        vision_config,
        image_only: false,
    };
    config
        .validate()
        .map_err(|e| rename_config_error(e, path))?;
    let pre = preprocess(&c, &root, config.vision_config.image_size)?;
    Ok((config, pre))
}

/// Rejects the towers' settings that change the architecture in ways we do not implement.
fn reject_unsupported(c: &Cfg, vis: &Value, txt: &Value) -> Result<()> {
    c.reject(
        vis,
        "vision_cfg",
        &[
            ("timm_model_name", Value::Null),
            ("attentional_pool", false.into()),
            ("no_ln_pre", false.into()),
            ("pool_type", "tok".into()),
            ("final_ln_after_pool", false.into()),
            ("ls_init_value", Value::Null),
        ],
    )?;
    c.reject(
        txt,
        "text_cfg",
        &[
            ("hf_model_name", Value::Null),
            ("pool_type", "argmax".into()),
            ("proj_bias", false.into()),
            ("embed_cls", false.into()),
            ("no_causal_mask", false.into()),
            ("ls_init_value", Value::Null),
            ("final_ln_after_pool", false.into()),
        ],
    )?;
    if let Some(v) = vis.get("layers").filter(|v| !v.is_u64()) {
        return Err(c.unsupported("vision_cfg.layers (ResNet towers)", v));
    }
    Ok(())
}

/// The image tower of `vision_cfg`, with open_clip's defaults.
fn vision_config(c: &Cfg, vis: &Value, act: &str) -> Result<VisionConfig> {
    let image_size = match vis.get("image_size") {
        Some(Value::Array(a)) if a.len() == 2 && a[0] == a[1] => {
            a[0].as_u64().unwrap_or(0) as usize
        }
        Some(Value::Array(_)) => {
            return Err(c.unsupported("vision_cfg.image_size", &vis["image_size"]))
        }
        _ => c.usize(vis, "image_size", "vision_cfg", 224)?,
    };
    let width = c.usize(vis, "width", "vision_cfg", 768)?;
    let head_width = c.usize(vis, "head_width", "vision_cfg", 64)?;
    let mlp = c.f64(vis, "mlp_ratio", "vision_cfg", 4.0)?;
    Ok(VisionConfig {
        hidden_size: width,
        intermediate_size: (width as f64 * mlp) as usize,
        num_attention_heads: width / head_width.max(1),
        num_hidden_layers: c.usize(vis, "layers", "vision_cfg", 12)?,
        image_size,
        patch_size: c.usize(vis, "patch_size", "vision_cfg", 16)?,
        num_channels: 3,
        hidden_act: act.into(),
        layer_norm_eps: 1e-5,
        projection_head: None,
    })
}

/// The text tower of `text_cfg`, with open_clip's defaults.
fn text_config(c: &Cfg, txt: &Value, act: &str) -> Result<TextConfig> {
    let width = c.usize(txt, "width", "text_cfg", 512)?;
    let mlp = c.f64(txt, "mlp_ratio", "text_cfg", 4.0)?;
    Ok(TextConfig {
        vocab_size: c.usize(txt, "vocab_size", "text_cfg", 49408)?,
        hidden_size: width,
        intermediate_size: (width as f64 * mlp) as usize,
        num_attention_heads: c.usize(txt, "heads", "text_cfg", 8)?,
        num_hidden_layers: c.usize(txt, "layers", "text_cfg", 12)?,
        max_position_embeddings: c.usize(txt, "context_length", "text_cfg", 77)?,
        hidden_act: act.into(),
        layer_norm_eps: 1e-5,
        pad_token_id: 0,
        bos_token_id: 49406,
        eos_token_id: 49407,
    })
}

/// Preprocessing at `image_size` with the mean and std of `preprocess_cfg`, if given.
fn preprocess(c: &Cfg, root: &Value, image_size: usize) -> Result<Preprocess> {
    let mut pre = Preprocess {
        image_size,
        ..Preprocess::default()
    };
    if let Some(p) = root.get("preprocess_cfg") {
        for (field, slot) in [("mean", &mut pre.mean), ("std", &mut pre.std)] {
            if let Some(v) = p.get(field) {
                let arr: Vec<f32> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_f64())
                            .map(|x| x as f32)
                            .collect()
                    })
                    .unwrap_or_default();
                if arr.len() != 3 {
                    return Err(c.unsupported(&format!("preprocess_cfg.{field}"), v));
                }
                slot.copy_from_slice(&arr);
            }
        }
    }
    Ok(pre)
}

/// open_clip names outside the blocks (`visual.` for the image tower) and their Hugging Face
/// names.
const DIRECT: &[(&str, &str)] = &[
    (
        "visual.conv1.weight",
        "vision_model.embeddings.patch_embedding.weight",
    ),
    (
        "visual.class_embedding",
        "vision_model.embeddings.class_embedding",
    ),
    (
        "visual.positional_embedding",
        "vision_model.embeddings.position_embedding.weight",
    ),
    ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"),
    ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"),
    (
        "visual.ln_post.weight",
        "vision_model.post_layernorm.weight",
    ),
    ("visual.ln_post.bias", "vision_model.post_layernorm.bias"),
    (
        "token_embedding.weight",
        "text_model.embeddings.token_embedding.weight",
    ),
    (
        "positional_embedding",
        "text_model.embeddings.position_embedding.weight",
    ),
    ("ln_final.weight", "text_model.final_layer_norm.weight"),
    ("ln_final.bias", "text_model.final_layer_norm.bias"),
    ("logit_scale", "logit_scale"),
];

/// The `x @ W` projections, which become PyTorch-Linear `[out, in]` weights (transposed).
const TRANSPOSED: &[(&str, &str)] = &[
    ("visual.proj", "visual_projection.weight"),
    ("text_projection", "text_projection.weight"),
];

/// Block-internal tensors (after `resblocks.{i}.`); q/k/v are split apart separately.
const BLOCK: &[(&str, &str)] = &[
    ("ln_1.weight", "layer_norm1.weight"),
    ("ln_1.bias", "layer_norm1.bias"),
    ("ln_2.weight", "layer_norm2.weight"),
    ("ln_2.bias", "layer_norm2.bias"),
    ("attn.out_proj.weight", "self_attn.out_proj.weight"),
    ("attn.out_proj.bias", "self_attn.out_proj.bias"),
    ("mlp.c_fc.weight", "mlp.fc1.weight"),
    ("mlp.c_fc.bias", "mlp.fc1.bias"),
    ("mlp.c_proj.weight", "mlp.fc2.weight"),
    ("mlp.c_proj.bias", "mlp.fc2.bias"),
];

/// The Hugging Face name `table` gives `key`.
fn lookup(table: &[(&str, &'static str)], key: &str) -> Option<&'static str> {
    table.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// Where one open_clip tensor goes among the Hugging Face names: the one mapping that both
/// the header shapes (checked first) and the tensors (copied after) follow.
enum Target {
    /// Kept as it is, renamed.
    Direct(String),
    /// Transposed from `x @ W` into a PyTorch-Linear weight, renamed.
    Transposed(String),
    /// A fused `in_proj_{kind}` split by rows into q, k, v under this block prefix.
    SplitQkv { prefix: String, kind: String },
    /// A buffer that is not a parameter.
    Skip,
}

/// The target of open_clip tensor `key`, or `None` for a name open_clip does not use here.
fn target(key: &str) -> Option<Target> {
    if let Some(name) = lookup(DIRECT, key) {
        return Some(Target::Direct(name.to_string()));
    }
    if let Some(name) = lookup(TRANSPOSED, key) {
        return Some(Target::Transposed(name.to_string()));
    }
    let (tower, rest) = match key.strip_prefix("visual.") {
        Some(r) => ("vision_model", r),
        None => ("text_model", key),
    };
    let block = rest
        .strip_prefix("transformer.resblocks.")
        .and_then(|r| r.split_once('.'))
        .and_then(|(i, r)| i.parse::<usize>().ok().map(|i| (i, r)));
    let Some((i, inner)) = block else {
        return rest.ends_with("attn_mask").then_some(Target::Skip);
    };
    let prefix = format!("{tower}.encoder.layers.{i}.");
    if let Some(kind) = inner.strip_prefix("attn.in_proj_") {
        return Some(Target::SplitQkv {
            prefix,
            kind: kind.to_string(),
        });
    }
    lookup(BLOCK, inner).map(|name| Target::Direct(format!("{prefix}{name}")))
}

/// The Hugging Face names of q, k, v for a fused projection.
fn qkv_names(prefix: &str, kind: &str) -> [String; 3] {
    ["q_proj", "k_proj", "v_proj"].map(|name| format!("{prefix}self_attn.{name}.{kind}"))
}

/// Renames and reshapes open_clip's entries to Hugging Face names and layouts: the one walk
/// over [`target`] that the header's shapes (checked first) and the tensors (copied after)
/// both take. `transpose` and `split` say what a transposition and a q/k/v split (rows
/// `[0, w)`, `[w, 2w)`, `[2w, 3w)`) do to an entry.
fn to_hf<T>(
    src: HashMap<String, T>,
    weights_path: &Path,
    transpose: impl Fn(T) -> Result<T>,
    split: impl Fn(T) -> Result<[T; 3]>,
) -> Result<HashMap<String, T>> {
    let mut out = HashMap::new();
    for (key, entry) in src {
        match target(&key) {
            None => {
                return Err(ModelError::UnexpectedTensor {
                    key,
                    path: weights_path.to_path_buf(),
                })
            }
            Some(Target::Skip) => {}
            Some(Target::Direct(name)) => {
                out.insert(name, entry);
            }
            Some(Target::Transposed(name)) => {
                out.insert(name, transpose(entry)?);
            }
            Some(Target::SplitQkv { prefix, kind }) => {
                out.extend(qkv_names(&prefix, &kind).into_iter().zip(split(entry)?));
            }
        }
    }
    Ok(out)
}

/// [`to_hf`] over header shapes; a shape that cannot be converted is kept as it is, for the
/// shape check to report.
fn convert_shapes(src: Shapes, weights_path: &Path) -> Result<Shapes> {
    let transpose = |shape: Shape| {
        Ok(match shape.dims() {
            &[a, b] => Shape::from((b, a)),
            _ => shape,
        })
    };
    let split = |shape: Shape| {
        let mut part = shape.dims().to_vec();
        if let Some(rows) = part.first_mut().filter(|r| **r % 3 == 0) {
            *rows /= 3;
        }
        Ok([(); 3].map(|_| Shape::from(part.clone())))
    };
    to_hf(src, weights_path, transpose, split)
}

/// [`to_hf`] over tensors.
fn convert(src: HashMap<String, Tensor>, weights_path: &Path) -> Result<HashMap<String, Tensor>> {
    let transpose = |t: Tensor| Ok(t.t()?.contiguous()?);
    let split = |t: Tensor| {
        let w = t.dim(0)? / 3;
        let part = |j: usize| t.narrow(0, j * w, w)?.contiguous();
        Ok([part(0)?, part(1)?, part(2)?])
    };
    to_hf(src, weights_path, transpose, split)
}

/// The open_clip config key behind a Hugging Face one, for error messages.
fn config_key(hf: &str) -> String {
    let key = match hf {
        "projection_dim" => "embed_dim",
        "vision_config.hidden_size" => "vision_cfg.width",
        "vision_config.intermediate_size" => "vision_cfg.width × vision_cfg.mlp_ratio",
        "vision_config.num_attention_heads" => "vision_cfg.width / vision_cfg.head_width",
        "vision_config.num_hidden_layers" => "vision_cfg.layers",
        "text_config.hidden_size" => "text_cfg.width",
        "text_config.intermediate_size" => "text_cfg.width × text_cfg.mlp_ratio",
        "text_config.num_attention_heads" => "text_cfg.heads",
        "text_config.num_hidden_layers" => "text_cfg.layers",
        "text_config.max_position_embeddings" => "text_cfg.context_length",
        other => {
            return other
                .replace("vision_config.", "vision_cfg.")
                .replace("text_config.", "text_cfg.")
        }
    };
    key.to_string()
}

/// A bounds error from [`ClipConfig::validate`], named by its key in `open_clip_config.json`.
fn rename_config_error(e: ModelError, path: &Path) -> ModelError {
    match e.in_file(path) {
        ModelError::Config {
            path,
            key,
            value,
            reason,
        } => ModelError::Config {
            path,
            key: config_key(&key),
            value,
            reason,
        },
        other => other,
    }
}

/// An open_clip directory read and converted to Hugging Face names: what
/// [`crate::Checkpoint::load`] makes a checkpoint of.
pub(crate) struct OpenClipDir {
    pub(crate) config: ClipConfig,
    pub(crate) preprocess: Preprocess,
    pub(crate) weights: TensorMap,
    pub(crate) weights_path: PathBuf,
}

/// Text pooling of open_clip's towers: the highest token id (end-of-text) in each row.
pub(crate) const POOLING: Pooling = Pooling::Argmax;

/// Reads an open_clip directory (`open_clip_config.json` + `open_clip_model.safetensors`):
/// config and bounds, then the header's shapes, then the tensors.
pub(crate) fn load(dir: &Path, device: &Device) -> Result<OpenClipDir> {
    let config_path = dir.join(CONFIG_FILE);
    let (config, preprocess) = parse_config(&config_path)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let file = WeightsFile::open(&weights_path)?;
    let shapes = convert_shapes(file.shapes()?, &weights_path)?;
    header::check_config(&config, &shapes, &config_path, &weights_path, config_key)?;
    header::check_shapes(&config, &shapes, &weights_path)?;
    let tensors = convert(
        file.load(device)?.floats_only(&weights_path)?,
        &weights_path,
    )?;
    Ok(OpenClipDir {
        config,
        preprocess,
        weights: TensorMap::new(tensors, device.clone()),
        weights_path,
    })
}
