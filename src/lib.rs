//! Train CLIP-style dual encoders and search with them, from Rust.
//!
//! The `clip` binary is a thin layer over this library: each command parses its arguments,
//! then makes one call here. The pieces:
//!
//! - [`Clip`]: a loaded model ([`Clip::from_dir`], [`Clip::from_hub`]) that embeds image
//!   files, decoded images and captions into unit vectors ([`Embeddings`]).
//! - [`Index`]: vectors on disk with what each row stands for, built by [`index`]
//!   (image folders refresh in place), opened with [`Index::open`] and searched with
//!   [`Index::search`] or [`Clip::search_texts`].
//! - [`training::RunConfig`]: a whole training run as `clip train` makes it (data listed,
//!   validation with chance levels and example searches, `run.json` for resuming), with
//!   progress reported to an [`Observer`]; or its pieces: [`train`] with a [`TrainConfig`]
//!   and a [`training::Start`] from a [`preset`] or a checkpoint. [`validation::ValSet`]
//!   scores retrieval on held-out pairs, [`probe`] fits linear probes on frozen features.
//! - [`export`]: an index written in the files other tools read (clip-retrieval's `.npy` +
//!   `.parquet` layout, or Parquet alone).
//! - [`serve::Server`]: indexes and their models loaded once, answering searches over HTTP.
//!
//! Search a folder of photos by text:
//!
//! ```
//! # fn main() -> clip::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let index_dir = dir.path().join("index");
//! use clip::{index, Clip, Index};
//!
//! let model = "tests/fixtures/hf_tiny";
//! let clip = Clip::from_dir(model)?;
//! index::build_images(
//!     "tests/fixtures/images".as_ref(),
//!     &index_dir,
//!     model,
//!     || Ok(&clip),
//!     &index::BuildOptions::default(),
//!     &(),
//! )?;
//! let index = Index::open(&index_dir)?;
//! let hits = clip.search_texts(&index, &["a red circle"], 3)?;
//! assert_eq!(hits[0].len(), 3);
//! for h in &hits[0] {
//!     println!("{:.3} {}", h.score, index.entries().label(h.id));
//! }
//! # Ok(()) }
//! ```

mod assets;
mod convert;
mod device;
mod embeddings;
mod error;
pub mod export;
pub mod files;
pub mod hub;
pub mod index;
mod model;
pub mod probe;
pub mod serve;
pub mod training;
pub mod validation;

pub use assets::{bundled_tokenizer, preset, BUNDLED_TOKENIZER, PRESETS};
pub use convert::{convert, convert_to_hf};
pub use device::DeviceKind;
pub use embeddings::{dot, Embeddings};
pub use error::{Error, Result};
pub use model::{resolve_model_dir, Clip, Features, Progress, DEFAULT_BATCH};

pub use candle_core::{Device, Tensor};
pub use clip_data::shard_source::ShardError;
pub use clip_data::{DataError, SampleSet, ShardStream, Source, StreamSpec};
pub use clip_model::{ClipConfig, ClipModel};
pub use clip_nn::quant::Precision;
/// For a process whose large allocations are frequent and short-lived (training, a batch
/// command): freed memory stays in the process for reuse instead of going back to the system.
pub use clip_nn::runtime::reuse_freed_memory;
pub use clip_train::{train, Observer, RunSetup, StepStats, Summary, TrainConfig, TrainData};
/// Scales each row to unit length in place; a zero or non-finite row is an error naming it
/// (the one row normalisation: [`Embeddings::normalized`] is this too).
pub use retrieval::normalize_rows;
pub use retrieval::{Hit, Index};

impl Clip {
    /// The `k` nearest entries of `index` for each text query, best first.
    pub fn search_texts<S: AsRef<str>>(
        &self,
        index: &Index,
        queries: &[S],
        k: usize,
    ) -> Result<Vec<Vec<Hit>>> {
        let q = self.embed_texts(queries)?;
        Ok(index.search(q.as_slice(), q.dim(), k)?)
    }
}
