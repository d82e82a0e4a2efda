//! Starting a training run: the model it begins from (a bundled preset, fresh, or a
//! checkpoint to fine-tune) turned into the [`RunSetup`] that [`crate::train`] takes.
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
use clip_model::{ClipConfig, ClipTokenizer, Preprocess};
use clip_nn::TensorMap;
use clip_train::{RunSetup, TrainConfig};

use crate::error::io_at;
use crate::model::load_checkpoint;
use crate::{resolve_model_dir, Result, BUNDLED_TOKENIZER};

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

    /// The weights, preprocessing and tokenizer of the model `spec` (a folder in either
    /// layout, or a cached Hub id), to fine-tune.
    pub fn checkpoint(spec: &str, device: &Device) -> Result<Self> {
        let dir = resolve_model_dir(spec)?;
        let ckpt = load_checkpoint(&dir, device)?;
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
                let p = out.join("tokenizer.json");
                std::fs::write(&p, BUNDLED_TOKENIZER).map_err(io_at(&p))?;
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
