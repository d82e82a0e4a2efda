//! Starting a training run: its [`defaults`], the [`bundled`] sample, and the model it
//! begins from (a bundled preset, fresh with a [`Head`], or a checkpoint to fine-tune) turned
//! into the [`RunSetup`] that [`crate::train`] takes.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use clip::training::Start;
//!
//! let start = Start::checkpoint("runs/latest/final", &clip::Device::Cpu)?;
//! let config = clip::TrainConfig { steps: 200, lr: 1e-4, ..Default::default() };
//! let setup = start.into_setup("runs/fine-tuned".as_ref(), config)?;
//! let data = clip::SampleSet::scan(&[clip::Source::Folder("my-pairs/".into())])?;
//! let summary = clip::train(setup, Arc::new(data), &clip::Device::Cpu, &mut ())?;
//! println!("model in {}", summary.final_dir.display());
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use candle_core::Device;
use clip_data::AugmentConfig;
use clip_model::{ClipConfig, ClipTokenizer, Preprocess, ProjectionHead};
use clip_nn::TensorMap;
use clip_train::{LossKind, Objective, RunSetup, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::error::io_at;
use crate::model::load_checkpoint;
use crate::{resolve_model_dir, Error, Precision, Result, BUNDLED_TOKENIZER};

/// The defaults of a run of `objective` with `loss` (`None`: the objective's own):
/// [`TrainConfig::default`] with NT-Xent and SimCLR-like strong augmentations for images
/// alone (where augmentation defines the task), and each image-only loss at the setting that
/// measured best in docs/SSL.md (the spectral loss at μ = 4, not 1). `bundled`: the bundled
/// sample's run (see [`demo`]).
pub fn defaults(objective: Objective, loss: Option<LossKind>, bundled: bool) -> TrainConfig {
    let mut c = TrainConfig {
        objective,
        ..TrainConfig::default()
    };
    if objective == Objective::Images {
        c.loss = LossKind::NtXent;
        c.augment = AugmentConfig {
            scale: [0.3, 1.0],
            color_jitter: 0.4,
            grayscale: 0.2,
            blur: 0.5,
            rotation: 10.0,
            ..c.augment
        };
        // docs/SSL.md, the sweep over μ: 0.896 at 10 labels per class against 0.848 at μ = 1.
        c.spectral_mu = 4.0;
    }
    c.loss = loss.unwrap_or(c.loss);
    if bundled {
        let d = demo(objective);
        (c.steps, c.batch_size, c.lr, c.val_every) = (d.steps, d.batch_size, d.lr, d.val_every);
        c.augment = (d.augment)(c.augment);
    }
    c
}

/// What `clip train` with no `--data` trains: a preset and a schedule sized so that the run
/// takes a few minutes on two cores and shows what the objective learns (measured in the
/// README's first section and docs/SSL.md).
#[derive(Debug, Clone, Copy)]
pub struct Demo {
    /// Architecture preset (see [`crate::preset`]).
    pub preset: &'static str,
    /// Optimiser steps.
    pub steps: usize,
    /// Pairs (or images) per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Validate every N steps.
    pub val_every: usize,
    /// The objective's augmentations as the bundled data wants them.
    pub augment: fn(AugmentConfig) -> AugmentConfig,
}

/// The bundled run of `objective`.
pub fn demo(objective: Objective) -> Demo {
    match objective {
        // The Noto emoji, validated on Twemoji: colour jitter, greyscale and blur push the
        // towers off the drawing style (R@10 on Twemoji 0.45 → 0.54 at 500 steps), caption
        // runs teach short queries; 1500 steps (2.6 minutes on two cores) put four of the six
        // example queries in the top 3 where 1000 put three; scripts/first_run.sh measures it.
        Objective::ImageText => Demo {
            preset: "micro",
            steps: 1500,
            batch_size: 256,
            lr: 1e-3,
            val_every: 250,
            augment: |a| AugmentConfig {
                color_jitter: 0.3,
                grayscale: 0.2,
                blur: 0.5,
                caption_span: 0.5,
                ..a
            },
        },
        // docs/SSL.md's runs: 300 steps of 128 digits at lr 1e-3; a crop below half of an
        // 8×8 digit often loses its identity.
        Objective::Images => Demo {
            preset: "micro",
            steps: 300,
            batch_size: 128,
            lr: 1e-3,
            val_every: 0,
            augment: |a| AugmentConfig {
                scale: [0.5, 1.0],
                ..a
            },
        },
    }
}

/// The sample bundled in the package's `data/` for `objective`: training data, validation
/// data and labels. Noto emoji validated on Twemoji (a style never seen), or handwritten
/// digits with the labels of the probe after an image-only run.
pub fn bundled(objective: Objective) -> (PathBuf, Option<PathBuf>, Option<PathBuf>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    match objective {
        Objective::ImageText => (
            root.join("emoji-noto"),
            Some(root.join("emoji-twemoji")),
            None,
        ),
        Objective::Images => {
            let digits = root.join("digits/labels.tsv");
            (digits.clone(), None, Some(digits))
        }
    }
}

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
                return Err(Error::Input(
                    "--projection mlp is for --objective images (an image–text model keeps \
                     transformers' linear projection)"
                        .into(),
                ));
            }
            if self.projection_layers < 2 {
                return Err(Error::Input(format!(
                    "--projection-layers must be at least 2, got {}",
                    self.projection_layers
                )));
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
            return Err(Error::Input(format!(
                "--projection-dim {d} differs from the --init checkpoint's projection_dim {}",
                config.projection_dim
            )));
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
            return Err(Error::Input(format!(
                "--projection {asked} differs from the --init checkpoint's head ({has})"
            )));
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
        std::fs::create_dir_all(out).map_err(io_at(out))?;
        let tokenizer_file = match self.tokenizer_file {
            Some(p) => p,
            None => {
                // Through a temporary file and a rename: the ranks of a data-parallel run all
                // get here, and none may read a half-written file.
                let p = out.join("tokenizer.json");
                if std::fs::read(&p).ok().as_deref() != Some(BUNDLED_TOKENIZER) {
                    let mut tmp = tempfile::NamedTempFile::new_in(out).map_err(io_at(out))?;
                    std::io::Write::write_all(&mut tmp, BUNDLED_TOKENIZER).map_err(io_at(&p))?;
                    tmp.persist(&p).map_err(|e| e.error).map_err(io_at(&p))?;
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
