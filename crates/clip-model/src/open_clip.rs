//! Reading open_clip's layout: its config format and its tensor names.
//!
//! open_clip fuses q/k/v into `attn.in_proj_weight`, stores projections as `x @ W` (the
//! transpose of PyTorch `Linear`), and names blocks `resblocks.{i}`. We map all of it onto
//! the Hugging Face names so the rest of the project sees one layout.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use clip_nn::TensorMap;
use serde_json::Value;
use text_encoder::{Pooling, TextConfig};
use vision_encoder::{Preprocess, VisionConfig};

use crate::checkpoint::{read_safetensors, Checkpoint, Layout};
use crate::config::read_json;
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

fn parse_config(path: &Path) -> Result<(ClipConfig, Preprocess)> {
    let root: Value = read_json(path)?;
    let c = Cfg { path };
    let model = root.get("model_cfg").unwrap_or(&root);
    let null = Value::Null;
    let vis = model.get("vision_cfg").unwrap_or(&null);
    let txt = model.get("text_cfg").unwrap_or(&null);
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
    let act = if model
        .get("quick_gelu")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        "quick_gelu"
    } else {
        "gelu"
    };
    let image_size = match vis.get("image_size") {
        Some(Value::Array(a)) if a.len() == 2 && a[0] == a[1] => {
            a[0].as_u64().unwrap_or(0) as usize
        }
        Some(Value::Array(_)) => {
            return Err(c.unsupported("vision_cfg.image_size", &vis["image_size"]))
        }
        _ => c.usize(vis, "image_size", "vision_cfg", 224)?,
    };
    let v_width = c.usize(vis, "width", "vision_cfg", 768)?;
    let head_width = c.usize(vis, "head_width", "vision_cfg", 64)?;
    let v_mlp = c.f64(vis, "mlp_ratio", "vision_cfg", 4.0)?;
    let t_width = c.usize(txt, "width", "text_cfg", 512)?;
    let t_mlp = c.f64(txt, "mlp_ratio", "text_cfg", 4.0)?;
    let vision_config = VisionConfig {
        hidden_size: v_width,
        intermediate_size: (v_width as f64 * v_mlp) as usize,
        num_attention_heads: v_width / head_width.max(1),
        num_hidden_layers: c.usize(vis, "layers", "vision_cfg", 12)?,
        image_size,
        patch_size: c.usize(vis, "patch_size", "vision_cfg", 16)?,
        num_channels: 3,
        hidden_act: act.into(),
        layer_norm_eps: 1e-5,
        projection_head: None,
    };
    let text_config = TextConfig {
        vocab_size: c.usize(txt, "vocab_size", "text_cfg", 49408)?,
        hidden_size: t_width,
        intermediate_size: (t_width as f64 * t_mlp) as usize,
        num_attention_heads: c.usize(txt, "heads", "text_cfg", 8)?,
        num_hidden_layers: c.usize(txt, "layers", "text_cfg", 12)?,
        max_position_embeddings: c.usize(txt, "context_length", "text_cfg", 77)?,
        hidden_act: act.into(),
        layer_norm_eps: 1e-5,
        pad_token_id: 0,
        bos_token_id: 49406,
        eos_token_id: 49407,
    };
    let config = ClipConfig {
        projection_dim: c.usize(model, "embed_dim", "model_cfg", 512)?,
        logit_scale_init_value: 2.6592,
        text_config,
        vision_config,
        image_only: false,
    };
    config.validate()?;
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
    Ok((config, pre))
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

/// Converts open_clip tensors to Hugging Face names and layouts.
fn convert(src: HashMap<String, Tensor>, weights_path: &Path) -> Result<HashMap<String, Tensor>> {
    let unexpected = |key| ModelError::UnexpectedTensor {
        key,
        path: weights_path.to_path_buf(),
    };
    let mut out = HashMap::new();
    for (key, t) in src {
        if let Some(name) = lookup(DIRECT, &key) {
            out.insert(name.to_string(), t);
            continue;
        }
        if let Some(name) = lookup(TRANSPOSED, &key) {
            out.insert(name.to_string(), t.t()?.contiguous()?);
            continue;
        }
        let (tower, rest) = match key.strip_prefix("visual.") {
            Some(r) => ("vision_model", r),
            None => ("text_model", key.as_str()),
        };
        let block = rest
            .strip_prefix("transformer.resblocks.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(i, r)| i.parse::<usize>().ok().map(|i| (i, r)));
        let Some((i, inner)) = block else {
            if rest.ends_with("attn_mask") {
                continue;
            }
            return Err(unexpected(key));
        };
        let prefix = format!("{tower}.encoder.layers.{i}.");
        if let Some(kind) = inner.strip_prefix("attn.in_proj_") {
            // Rows [0, w), [w, 2w), [2w, 3w) are q, k, v.
            let w = t.dim(0)? / 3;
            for (j, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                out.insert(
                    format!("{prefix}self_attn.{name}.{kind}"),
                    t.narrow(0, j * w, w)?.contiguous()?,
                );
            }
        } else if let Some(name) = lookup(BLOCK, inner) {
            out.insert(format!("{prefix}{name}"), t);
        } else {
            return Err(unexpected(key));
        }
    }
    Ok(out)
}

/// Reads an open_clip directory (`open_clip_config.json` + `open_clip_model.safetensors`).
pub(crate) fn load(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let (config, preprocess) = parse_config(&dir.join(CONFIG_FILE))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let tensors = convert(read_safetensors(&weights_path, device)?, &weights_path)?;
    let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.exists());
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        layout: Layout::OpenClip,
        preprocess,
        pooling: Pooling::Argmax,
        tokenizer,
        weights: TensorMap::new(tensors, device.clone()),
        weights_path,
        config,
    })
}
