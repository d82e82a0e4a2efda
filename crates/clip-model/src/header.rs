//! Safetensors headers, read before any tensor: the shapes a config is checked against, so
//! that no config value sizes an allocation the weights on disk do not back.
//!
//! Loading runs: parse the config → its bounds (`ClipConfig::validate`) → the config's sizes
//! against the header shapes ([`check_config`]) → every parameter's shape against the header
//! ([`check_shapes`]) → only then copy tensors out and build the model.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{Device, Shape, Tensor};
use clip_nn::quant::Int8Weight;
use clip_nn::NnError;

use crate::error::io_err;
use crate::{ClipConfig, ClipModel, ModelError, Result};

/// Tensor shapes by name, as the headers give them.
pub(crate) type Shapes = HashMap<String, Shape>;

/// Buffers that some checkpoints carry but that are not parameters.
fn is_ignored_buffer(key: &str) -> bool {
    key.ends_with("position_ids") || key.ends_with("attn_mask")
}

/// A safetensors file mapped into memory; its header is parsed (and its offsets checked
/// against the file's length by the safetensors crate) before any tensor is read.
pub(crate) struct WeightsFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
}

impl WeightsFile {
    /// Maps `path`.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(io_err("cannot open", path))?;
        // SAFETY: the map is read-only and lives only while a checkpoint is being loaded;
        // tensors are copied out of it. It does not guard against another process
        // truncating the file meanwhile (that faults the reading thread, as with any map).
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err("cannot map", path))?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn parse(&self) -> Result<safetensors::SafeTensors<'_>> {
        safetensors::SafeTensors::deserialize(&self.mmap).map_err(|source| {
            ModelError::Safetensors {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// Every tensor's shape from the header alone (non-parameter buffers and the scales of
    /// int8 weights left out).
    pub(crate) fn shapes(&self) -> Result<Shapes> {
        let st = self.parse()?;
        let scales = int8_scale_keys(&st);
        Ok(st
            .tensors()
            .into_iter()
            .filter(|(name, _)| !is_ignored_buffer(name) && !scales.contains(name))
            .map(|(name, view)| (name, Shape::from(view.shape().to_vec())))
            .collect())
    }

    /// Every tensor (non-parameter buffers left out), copied out of the map in file order;
    /// int8 weights (a quantized checkpoint) come out with their scales, as stored.
    ///
    /// Pages already copied are handed back to the kernel as the copy goes on, so loading
    /// holds the model about once in memory rather than twice (map + copy).
    pub(crate) fn load(&self, device: &Device) -> Result<Loaded> {
        let st = self.parse()?;
        let scales = int8_scale_keys(&st);
        let mut views = st.tensors();
        views.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
        let mut out = Loaded::default();
        let mut released = 0;
        for (name, view) in views {
            if is_ignored_buffer(&name) || scales.contains(&name) {
                continue;
            }
            if view.dtype() == safetensors::Dtype::I8 {
                let w = self.int8_weight(&st, &name, &view)?;
                out.int8.insert(name, w);
            } else {
                out.tensors.insert(name, view.load(device)?);
            }
            let end =
                view.data().as_ptr() as usize + view.data().len() - self.mmap.as_ptr() as usize;
            released = self.release_pages(released, end);
        }
        Ok(out)
    }

    /// The int8 weight `name` and its `name_scale`, checked: a 2-D weight, one f32 scale
    /// per output channel, every scale a positive number.
    fn int8_weight(
        &self,
        st: &safetensors::SafeTensors<'_>,
        name: &str,
        view: &safetensors::tensor::TensorView<'_>,
    ) -> Result<Int8Weight> {
        let bad = |reason: String| ModelError::Quantized {
            key: name.to_string(),
            path: self.path.clone(),
            reason,
        };
        let &[n, k] = view.shape() else {
            return Err(bad(format!(
                "shape {:?}: only 2-D linear weights are stored as int8",
                view.shape()
            )));
        };
        let scale_key = int8_scale_key(name);
        let scale = st
            .tensor(&scale_key)
            .map_err(|_| bad(format!("its scales `{scale_key}` are missing")))?;
        if scale.dtype() != safetensors::Dtype::F32 || scale.shape() != [n] {
            return Err(bad(format!(
                "its scales `{scale_key}` are {:?} {:?}, not F32 [{n}]",
                scale.dtype(),
                scale.shape()
            )));
        }
        let w = Int8Weight {
            n,
            k,
            values: view.data().iter().map(|&b| b as i8).collect(),
            scales: scale
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        };
        w.check().map_err(bad)?;
        Ok(w)
    }

    /// Drops this process's copy of the map's whole pages in `from..to` (byte offsets), all
    /// of them already copied out; returns where the next release starts.
    #[cfg(unix)]
    fn release_pages(&self, from: usize, to: usize) -> usize {
        const PAGE: usize = 4096;
        let to = to / PAGE * PAGE;
        if to <= from {
            return from;
        }
        // SAFETY: the map is a read-only, shared mapping of a file, so `DontNeed` discards
        // no data: a page touched again is read back from the file. Nothing touches these
        // bytes again anyway (each tensor is copied once, in file order, and the header's
        // views are not read after their tensor), and `from..to` lies inside the map.
        let _ = unsafe {
            self.mmap
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from)
        };
        to
    }

    #[cfg(not(unix))]
    fn release_pages(&self, from: usize, _to: usize) -> usize {
        from
    }
}

/// What a weights file holds: floating-point tensors, and int8 weights with their scales.
#[derive(Default)]
pub(crate) struct Loaded {
    pub(crate) tensors: HashMap<String, Tensor>,
    pub(crate) int8: HashMap<String, Int8Weight>,
}

impl Loaded {
    /// The tensors of a file that may hold no int8 weight (open_clip's layout, optimizer
    /// state); an int8 weight there is an error naming it.
    pub(crate) fn floats_only(self, path: &Path) -> Result<HashMap<String, Tensor>> {
        match self.int8.keys().min() {
            None => Ok(self.tensors),
            Some(key) => Err(ModelError::Quantized {
                key: key.clone(),
                path: path.to_path_buf(),
                reason: "int8 weights are read only from a Hugging Face layout checkpoint \
                         written by `clip convert --precision int8`"
                    .into(),
            }),
        }
    }
}

/// Where a quantized checkpoint stores the per-channel scales of int8 weight `name`.
pub(crate) fn int8_scale_key(name: &str) -> String {
    format!("{name}_scale")
}

/// The scale tensors of the file's int8 weights (not parameters of the model themselves).
fn int8_scale_keys(st: &safetensors::SafeTensors<'_>) -> HashSet<String> {
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::I8)
        .map(|(name, _)| int8_scale_key(&name))
        .collect()
}

/// A tensor whose whole shape the config fixes: each dimension with the config key (and
/// value) that sets it, and the key to blame when the tensor is absent.
struct Witness {
    tensor: String,
    if_missing: (&'static str, usize),
    dims: Vec<(&'static str, usize, usize)>,
}

/// For each size in the config, a tensor whose shape shows it. Whole shapes are compared
/// (a zero-sized dimension costs no bytes on disk), so once these match, every tensor the
/// config implies is bounded by tensors the file really holds.
fn witnesses(cfg: &ClipConfig) -> Vec<Witness> {
    let v = &cfg.vision_config;
    let t = &cfg.text_config;
    let vw = ("vision_config.hidden_size", v.hidden_size, v.hidden_size);
    let tw = ("text_config.hidden_size", t.hidden_size, t.hidden_size);
    let proj = ("projection_dim", cfg.projection_dim, cfg.projection_dim);
    let patch = ("vision_config.patch_size", v.patch_size, v.patch_size);
    let w = |tensor: &str, dims: Vec<(&'static str, usize, usize)>| Witness {
        tensor: tensor.to_string(),
        if_missing: (dims[0].0, dims[0].1),
        dims,
    };
    let mut out = vec![
        w("vision_model.embeddings.class_embedding", vec![vw]),
        Witness {
            if_missing: (patch.0, patch.1),
            ..w(
                "vision_model.embeddings.patch_embedding.weight",
                vec![
                    vw,
                    ("vision_config.num_channels", v.num_channels, v.num_channels),
                    patch,
                    patch,
                ],
            )
        },
        w(
            "vision_model.embeddings.position_embedding.weight",
            vec![
                (
                    "vision_config.image_size",
                    v.image_size,
                    v.grid() * v.grid() + 1,
                ),
                vw,
            ],
        ),
        w(
            "text_model.embeddings.token_embedding.weight",
            vec![("text_config.vocab_size", t.vocab_size, t.vocab_size), tw],
        ),
        w(
            "text_model.embeddings.position_embedding.weight",
            vec![
                (
                    "text_config.max_position_embeddings",
                    t.max_position_embeddings,
                    t.max_position_embeddings,
                ),
                tw,
            ],
        ),
        w("text_projection.weight", vec![proj, tw]),
    ];
    let towers = [
        (
            "vision_model",
            ("vision_config.num_hidden_layers", v.num_hidden_layers),
            ("vision_config.intermediate_size", v.intermediate_size),
            vw,
        ),
        (
            "text_model",
            ("text_config.num_hidden_layers", t.num_hidden_layers),
            ("text_config.intermediate_size", t.intermediate_size),
            tw,
        ),
    ];
    for (tower, (layers_key, layers), (mlp_key, mlp), width) in towers {
        if layers == 0 {
            continue;
        }
        let layer = |i: usize, rest: &str| format!("{tower}.encoder.layers.{i}.{rest}");
        out.push(Witness {
            if_missing: (layers_key, layers),
            ..w(&layer(layers - 1, "layer_norm1.weight"), vec![width])
        });
        out.push(w(
            &layer(0, "mlp.fc1.weight"),
            vec![(mlp_key, mlp, mlp), width],
        ));
    }
    match v.projection_head {
        None => out.push(w("visual_projection.weight", vec![proj, vw])),
        Some(h) => {
            let hidden = (
                "vision_config.projection_head.hidden_size",
                h.hidden_size,
                h.hidden_size,
            );
            out.push(Witness {
                if_missing: ("vision_config.projection_head.layers", h.layers),
                ..w(
                    &format!("visual_projection_head.{}.weight", h.layers - 1),
                    vec![proj, hidden],
                )
            });
            out.push(w(
                "visual_projection_head.0.linear.weight",
                vec![hidden, vw],
            ));
        }
    }
    out
}

/// Checks the config's sizes against the header shapes, naming the config key, its value
/// and what the weights hold; `key_name` renames keys for configs in another layout.
pub(crate) fn check_config(
    cfg: &ClipConfig,
    shapes: &Shapes,
    config_path: &Path,
    weights_path: &Path,
    key_name: impl Fn(&str) -> String,
) -> Result<()> {
    for w in witnesses(cfg) {
        let ((key, value), found) = match shapes.get(&w.tensor) {
            None => (w.if_missing, format!("there is no `{}`", w.tensor)),
            Some(s) => {
                let found = s.dims();
                let bad = if found.len() != w.dims.len() {
                    w.dims.first()
                } else {
                    w.dims
                        .iter()
                        .zip(found)
                        .map(|(d, f)| (d, *f))
                        .find(|(d, f)| d.2 != *f)
                        .map(|(d, _)| d)
                };
                let Some(&(key, value, _)) = bad else {
                    continue;
                };
                let expected: Vec<usize> = w.dims.iter().map(|d| d.2).collect();
                let found = format!("`{}` is {found:?}, not {expected:?}", w.tensor);
                ((key, value), found)
            }
        };
        return Err(ModelError::ConfigMismatch {
            path: config_path.to_path_buf(),
            key: key_name(key),
            value,
            weights: weights_path.to_path_buf(),
            found,
        });
    }
    Ok(())
}

/// Every parameter the config implies present with its shape, and nothing it has no place
/// for; run after [`check_config`], so building the shape list is bounded by the file.
pub(crate) fn check_shapes(cfg: &ClipConfig, shapes: &Shapes, weights_path: &Path) -> Result<()> {
    let expected = ClipModel::parameter_shapes(cfg)?;
    let wrap = |source| ModelError::Weights {
        path: weights_path.to_path_buf(),
        source,
    };
    for (key, shape) in &expected {
        match shapes.get(key) {
            None => {
                return Err(wrap(NnError::MissingTensor {
                    key: key.clone(),
                    expected: shape.clone(),
                }))
            }
            Some(found) if found != shape => {
                return Err(wrap(NnError::ShapeMismatch {
                    key: key.clone(),
                    expected: shape.clone(),
                    found: found.clone(),
                }))
            }
            Some(_) => {}
        }
    }
    let known: HashSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    let extra = shapes.keys().filter(|k| !known.contains(k.as_str())).min();
    if let Some(key) = extra {
        return Err(ModelError::UnexpectedTensor {
            key: key.clone(),
            path: weights_path.to_path_buf(),
        });
    }
    Ok(())
}
