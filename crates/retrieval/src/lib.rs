//! Embedding indexes, nearest-neighbour search and retrieval evaluation for CLIP embeddings.
//!
//! - [`Index`]: unit vectors `[N, D]` (f32 or f16) with what each row stands for (image files,
//!   captions, ids or webdataset shard samples), stored as a directory with a JSON manifest, a safetensors vectors file
//!   and a rows file read a row at a time ([`write_index`], [`Index::open`]), searched by inner
//!   product.
//! - Exact search streams over the index in blocks with a cache-blocked kernel and per-query
//!   bounded top-k selection on all threads; approximate search uses cluster lists (IVF) or an
//!   HNSW graph.
//! - [`retrieval_metrics`] and [`zero_shot`]: the evaluation math behind `clip eval` and
//!   validation during training.
//!
//! Nothing here depends on a tensor library: everything is plain row-major `f32` slices.

mod ann;
mod embeddings;
mod entries;
mod error;
mod eval;
mod exact;
mod files;
mod guard;
mod index;
mod ivf;
mod kernel;
mod manifest;
mod normalize;
mod rows;
mod store;
#[doc(hidden)]
pub mod testing;
mod topk;
mod zeroshot;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use ann::{AnnMethod, AnnParams};
pub use embeddings::EmbeddingsFile;
pub use entries::IndexEntries;
pub use error::{Result, RetrievalError};
pub use eval::{
    group_captions, retrieval_metrics, CaptionGroups, DirectionMetrics, RetrievalMetrics,
};
pub use index::{Index, SearchMode, SearchOptions};
pub use manifest::{
    DType, Entries, EntriesKind, ImageEntry, IndexSpec, Manifest, Metric, RowsFile, SampleEntry,
    ANN_FILE, FORMAT_VERSION, MANIFEST_FILE, SAMPLES_FORMAT_VERSION,
};
pub use normalize::{normalize_rows, normalize_rows_from};
pub use store::{check_destination, write_index, FillError, OpenOptions};
pub use topk::Hit;
pub use zeroshot::{class_embeddings, zero_shot, ClassReport, Confusion, ZeroShotReport};

/// Exact top-k of `queries` (`[q, dim]`) among `base` (`[n, dim]`), best first, ties to the
/// lower row: the same kernel [`Index`] uses, for callers holding plain vectors.
pub fn exact_search(base: &[f32], queries: &[f32], dim: usize, k: usize) -> Result<Vec<Vec<Hit>>> {
    error::rows_of(base.len(), dim, "base")?;
    error::rows_of(queries.len(), dim, "query")?;
    Ok(exact::top_k(kernel::Rows::F32(base), dim, queries, k))
}

/// How to bring an image index up to date with the files in its folder now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshPlan {
    /// For each current file, in the order given: the old row holding its vector, or `None`
    /// when it is new or changed and must be embedded.
    pub reuse: Vec<Option<usize>>,
    /// Old entries whose files are gone.
    pub removed: usize,
}

impl RefreshPlan {
    /// Number of files to embed.
    pub fn to_embed(&self) -> usize {
        self.reuse.iter().filter(|r| r.is_none()).count()
    }
}

/// Matches `current` files under `root` against `old`'s entries by path, size and modification
/// time. Nothing is reused when `old` is absent, is not an image index of the same `root`, or
/// was made by another `model` (its vectors would not be comparable).
pub fn plan_refresh(
    old: Option<&Index>,
    model: &str,
    root: &Path,
    current: &[ImageEntry],
) -> RefreshPlan {
    // A row that cannot be read (damage the checksum did not catch) makes nothing reusable.
    let previous: HashMap<PathBuf, (usize, ImageEntry)> = match old {
        Some(o) if o.model() == model && o.entries().kind() == &kind_of(root) => o
            .entries()
            .images()
            .enumerate()
            .map(|(i, e)| e.map(|e| (e.path.clone(), (i, e))))
            .collect::<Result<_>>()
            .unwrap_or_default(),
        _ => HashMap::new(),
    };
    let reuse: Vec<Option<usize>> = current
        .iter()
        .map(|e| match previous.get(e.path.as_path()) {
            Some(&(row, ref p)) if p.size == e.size && p.mtime_ns == e.mtime_ns => Some(row),
            _ => None,
        })
        .collect();
    let kept: std::collections::HashSet<&Path> = current.iter().map(|e| e.path.as_path()).collect();
    let removed = previous
        .keys()
        .filter(|p| !kept.contains(p.as_path()))
        .count();
    RefreshPlan { reuse, removed }
}

fn kind_of(root: &Path) -> EntriesKind {
    EntriesKind::Images {
        root: root.to_path_buf(),
    }
}
