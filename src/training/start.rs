//! The model a run begins from: a preset made fresh with a [`Head`], or a checkpoint to
//! fine-tune, turned into the [`RunSetup`] the trainer takes.

use std::path::{Path, PathBuf};

use candle_core::Device;
use clip_model::{ClipConfig, ClipTokenizer, Preprocess, ProjectionHead};
use clip_nn::TensorMap;
use clip_train::{LossKind, Objective, RunSetup, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::files::write_atomically;
use crate::model::load_checkpoint;
use crate::{resolve_model_dir, Error, Precision, Result, BUNDLED_TOKENIZER};

/// The head between the image tower's pooled features and the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Projection {
    /// One bias-free linear layer (transformers' `visual_projection`).
    Linear,
    /// An MLP head (linear → layer norm → activation, ×(--projection-layers − 1), then
    /// linear), as SimCLR; `clip probe` reads the features before it. Images only.
    Mlp,
}

/// The projection a run asks for (`clip train`'s options); what it leaves out keeps the
/// preset's or the checkpoint's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct Head {
    /// Head between the image tower's pooled features and the loss (default: linear, or the
    /// --init checkpoint's).
    #[arg(long, value_enum)]
    pub projection: Option<Projection>,
    /// Linear layers of --projection mlp (2 or more).
    #[arg(long, default_value_t = Head::default().projection_layers)]
    pub projection_layers: usize,
    /// Hidden width of --projection mlp (default: the image tower's width).
    #[arg(long)]
    pub projection_hidden: Option<usize>,
    /// Embedding dimension the loss sees (default: the preset's projection_dim).
    #[arg(long)]
    pub projection_dim: Option<usize>,
}

impl Default for Head {
    fn default() -> Self {
        Self {
            projection: None,
            projection_layers: 2,
            projection_hidden: None,
            projection_dim: None,
        }
    }
}

impl Head {
    /// Gives a fresh architecture this head; an MLP is for image-only models only (an
    /// image–text model keeps transformers' layout).
    fn apply(&self, config: &mut ClipConfig) -> Result<()> {
        if let Some(d) = self.projection_dim {
            config.projection_dim = d;
        }
        config.vision_config.projection_head = None;
        if self.projection == Some(Projection::Mlp) {
            if !config.image_only {
                return Err(Error::Config {
                    field: "projection",
                    reason: "mlp is for `objective` images (an image–text model keeps \
                             transformers' linear projection)"
                        .into(),
                });
            }
            if self.projection_layers < 2 {
                return Err(Error::Config {
                    field: "projection_layers",
                    reason: format!("must be at least 2, got {}", self.projection_layers),
                });
            }
            config.vision_config.projection_head = Some(ProjectionHead {
                layers: self.projection_layers,
                hidden_size: self
                    .projection_hidden
                    .unwrap_or(config.vision_config.hidden_size),
            });
        }
        Ok(config.validate()?)
    }

    /// Fine-tuning keeps the checkpoint's head and embedding size (`config`): asking for
    /// another is an error rather than a silent mismatch.
    pub fn check(&self, config: &ClipConfig) -> Result<()> {
        if let Some(d) = self.projection_dim.filter(|&d| d != config.projection_dim) {
            return Err(Error::Config {
                field: "projection_dim",
                reason: format!(
                    "{d} differs from the `init` checkpoint's projection_dim {}",
                    config.projection_dim
                ),
            });
        }
        let has_mlp = config.vision_config.projection_head.is_some();
        if self
            .projection
            .is_some_and(|p| (p == Projection::Mlp) != has_mlp)
        {
            let [asked, has] = if has_mlp {
                ["linear", "mlp"]
            } else {
                ["mlp", "linear"]
            };
            return Err(Error::Config {
                field: "projection",
                reason: format!("{asked} differs from the `init` checkpoint's head ({has})"),
            });
        }
        Ok(())
    }
}

/// The model a run begins from.
#[derive(Debug)]
pub struct Start {
    /// Architecture; adjust before [`Start::into_setup`] (e.g. `image_only`).
    pub config: ClipConfig,
    /// Image preprocessing the model is trained with.
    pub preprocess: Preprocess,
    /// Weights to fine-tune (`None`: a fresh, seeded initialisation).
    pub init: Option<TensorMap>,
    /// The checkpoint's `tokenizer.json`, if it has one.
    pub tokenizer_file: Option<PathBuf>,
}

impl Start {
    /// A fresh model of architecture `config` (e.g. [`crate::preset`]), default preprocessing
    /// at its image size.
    pub fn fresh(config: ClipConfig) -> Self {
        let preprocess = Preprocess {
            image_size: config.vision_config.image_size,
            ..Preprocess::default()
        };
        Self {
            config,
            preprocess,
            init: None,
            tokenizer_file: None,
        }
    }

    /// A fresh model of architecture `config` (e.g. [`crate::preset`]) for a run of `train`:
    /// image-only for that objective, with `head`, and SigLIP's starting logit scale of 10.
    pub fn fresh_for(mut config: ClipConfig, head: &Head, train: &TrainConfig) -> Result<Self> {
        config.image_only = train.objective == Objective::Images;
        if train.loss == LossKind::Siglip {
            config.logit_scale_init_value = 10f64.ln();
        }
        head.apply(&mut config)?;
        Ok(Self::fresh(config))
    }

    /// The weights, preprocessing and tokenizer of the model `spec` (a folder in either
    /// layout, or a cached Hub id), to fine-tune.
    pub fn checkpoint(spec: &str, device: &Device) -> Result<Self> {
        let dir = resolve_model_dir(spec)?;
        let ckpt = load_checkpoint(&dir, device)?;
        if ckpt.precision() == Precision::Int8 {
            return Err(clip_model::ModelError::Precision {
                precision: Precision::Int8,
                reason: "an int8 checkpoint cannot be trained; fine-tune the f32 checkpoint \
                         it was converted from",
            }
            .into());
        }
        Ok(Self {
            config: ckpt.config.clone(),
            preprocess: ckpt.preprocess.clone(),
            init: Some(ckpt.weights.clone()),
            tokenizer_file: ckpt.tokenizer.clone(),
        })
    }

    /// The setup of a new run (not a resume) writing into `out`. A start without a tokenizer
    /// gets the bundled one, copied into `out` so that every checkpoint is complete.
    pub fn into_setup(self, out: &Path, train: TrainConfig) -> Result<RunSetup> {
        std::fs::create_dir_all(out).map_err(crate::error::io_at(out))?;
        let tokenizer_file = match self.tokenizer_file {
            Some(p) => p,
            None => {
                // Whole or not at all: the ranks of a data-parallel run all get here, and none
                // may read a half-written file.
                let p = out.join("tokenizer.json");
                if std::fs::read(&p).ok().as_deref() != Some(BUNDLED_TOKENIZER) {
                    write_atomically(&p, |f| std::io::Write::write_all(f, BUNDLED_TOKENIZER))?;
                }
                p
            }
        };
        let context = self.config.text_config.max_position_embeddings;
        let tokenizer = ClipTokenizer::from_file(&tokenizer_file, context)?;
        Ok(RunSetup {
            out: out.to_path_buf(),
            model: self.config,
            preprocess: self.preprocess,
            init: self.init,
            tokenizer_file,
            tokenizer,
            train,
            resume: false,
            labels: None,
        })
    }
}
