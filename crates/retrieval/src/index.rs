//! [`Index`]: vectors plus what they stand for, searchable exactly or approximately.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use half::f16;

use crate::ann::{AnnGraph, AnnMethod, AnnParams};
use crate::entries::IndexEntries;
use crate::error::invalid;
use crate::guard::FileId;
use crate::ivf::IvfLists;
use crate::kernel::Rows;
use crate::manifest::{self, DType, Entries, IndexSpec, Manifest};
use crate::normalize::check_unit_rows;
use crate::rows::MappedRows;
use crate::store::{self, MappedVectors, OpenOptions};
use crate::{exact, Hit, Result, RetrievalError};

/// Where the vectors live.
enum Storage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Mapped(MappedVectors),
}

/// How to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchMode {
    /// Brute force over every vector: always the true top-k.
    Exact,
    /// The approximate structure of [`SearchOptions::ann`] (built on first use): recall
    /// below 1, far less work per query.
    Ann,
    /// Approximate for indexes of at least [`SearchOptions::auto_ann_min_rows`] vectors once
    /// the structure pays off: when it is already built (see [`Index::build_ann`]) or the batch
    /// has at least [`SearchOptions::auto_ann_min_queries`] queries. Building costs far more
    /// than one exact pass (for a million 256-d vectors on two cores: ~10 s for IVF lists, ~17
    /// min for an HNSW graph, against ~2 ms per query exact in a batch), so a one-shot search of
    /// a few queries stays exact.
    #[default]
    Auto,
}

/// Search settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchOptions {
    /// Exact, approximate, or chosen by size.
    pub mode: SearchMode,
    /// Index size from which [`SearchMode::Auto`] may go approximate.
    pub auto_ann_min_rows: usize,
    /// Batch size from which [`SearchMode::Auto`] builds the approximate structure rather than
    /// search exactly.
    pub auto_ann_min_queries: usize,
    /// Graph parameters used when the graph is built.
    pub ann: AnnParams,
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self {
            mode: SearchMode::Auto,
            auto_ann_min_rows: 200_000,
            auto_ann_min_queries: 10_000,
            ann: AnnParams::default(),
        }
    }
}

/// Unit vectors `[count, dimension]` with their entries, searchable by inner product.
///
/// Loaded indexes are memory-mapped: opening costs a checksum pass, not a copy, and several
/// processes searching the same index share one copy in the page cache. What the rows stand
/// for is read a row at a time ([`Index::entries`]).
pub struct Index {
    manifest: Manifest,
    storage: Storage,
    entries: IndexEntries,
    dir: Option<PathBuf>,
    /// The manifest's identity just before it was read (`None` in memory, or if unreadable).
    manifest_id: Option<FileId>,
    ann: OnceLock<AnnGraph>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("dir", &self.dir)
            .field("model", &self.manifest.model)
            .field("dimension", &self.manifest.dimension)
            .field("count", &self.manifest.count)
            .field("dtype", &self.manifest.dtype)
            .finish_non_exhaustive()
    }
}

impl Index {
    /// An in-memory index of `vectors` (`[count, dimension]`, unit-length rows), stored as
    /// `spec.dtype`.
    pub fn from_vectors(spec: IndexSpec, vectors: Vec<f32>) -> Result<Self> {
        if spec.dimension == 0 || vectors.len() != spec.count * spec.dimension {
            return Err(RetrievalError::Shape(format!(
                "{} floats are not {} vectors of dimension {}",
                vectors.len(),
                spec.count,
                spec.dimension
            )));
        }
        store::validate_spec(&spec)?;
        check_unit_rows(&vectors, spec.dimension, 0, "index vector")?;
        let storage = match spec.dtype {
            DType::F32 => Storage::F32(vectors),
            DType::F16 => Storage::F16(vectors.iter().map(|&v| f16::from_f32(v)).collect()),
        };
        Ok(Self {
            manifest: Manifest::new(&spec, String::new(), 0, 0, None),
            storage,
            entries: IndexEntries::inline(spec.entries, spec.count),
            dir: None,
            manifest_id: None,
            ann: OnceLock::new(),
        })
    }

    /// Opens the index directory `dir`, verifying its checksum.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, OpenOptions::default())
    }

    /// Opens the index directory `dir`.
    pub fn open_with(dir: &Path, opts: OpenOptions) -> Result<Self> {
        let manifest_path = dir.join(manifest::MANIFEST_FILE);
        let id = FileId::now(&manifest_path);
        let (manifest, inline) = manifest::read_manifest(dir)?;
        match map_files(dir, manifest, inline, opts, id).map_err(|b| *b) {
            Ok(index) => Ok(index),
            // A writer may have swapped in a new generation between our reads: retry once.
            Err((RetrievalError::Io { source, path, .. }, first))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let id = FileId::now(&manifest_path);
                let (again, inline) = manifest::read_manifest(dir)?;
                if again.vectors_file == first.vectors_file && again.rows == first.rows {
                    return Err(RetrievalError::Damaged {
                        path,
                        reason: "the file named by the manifest is missing".into(),
                    });
                }
                map_files(dir, again, inline, opts, id).map_err(|b| b.0)
            }
            Err((e, _)) => Err(e),
        }
    }

    /// Writes this index to the directory `dir` (see [`store::write_index`] for the guarantees).
    pub fn save(&self, dir: &Path) -> Result<Manifest> {
        let spec = self.spec()?;
        let dim = self.dim();
        let rows = self.rows();
        store::write_index(dir, &spec, |range, out| {
            rows.copy_f32(range, dim, out);
            self.check_vectors().map_err(Into::into)
        })
    }

    /// `Ok` while every mapped file of this index is whole; [`RetrievalError::ChangedWhileMapped`]
    /// naming the file once another process truncated one under it (searches and row reads
    /// then fail the same way: reopen the index).
    pub fn check_intact(&self) -> Result<()> {
        self.check_vectors()?;
        self.entries.check_intact()
    }

    fn check_vectors(&self) -> Result<()> {
        match &self.storage {
            Storage::Mapped(m) => m.map.check(),
            _ => Ok(()),
        }
    }

    /// Whether this index is still what its directory holds: its manifest, vectors and rows
    /// files are the very files opened (same device, inode, length and modification time) and
    /// none was truncated under its mapping. `false` after a rebuild (which renames new files
    /// into place) or damage: a long-running process should then open the index again. An
    /// index built in memory is always current.
    pub fn is_current(&self) -> bool {
        let Some(dir) = &self.dir else {
            return true;
        };
        let Storage::Mapped(v) = &self.storage else {
            return true;
        };
        let same = |path: &Path, id: &FileId| FileId::now(path).as_ref() == Some(id);
        self.check_intact().is_ok()
            && self
                .manifest_id
                .as_ref()
                .is_some_and(|id| same(&dir.join(manifest::MANIFEST_FILE), id))
            && same(&dir.join(&self.manifest.vectors_file), &v.id)
            && self
                .entries
                .rows_file_id()
                .is_none_or(|(path, id)| same(path, id))
    }

    /// The spec this index would be written with (reads every row).
    pub fn spec(&self) -> Result<IndexSpec> {
        Ok(IndexSpec {
            model: self.manifest.model.clone(),
            dimension: self.manifest.dimension,
            count: self.manifest.count,
            dtype: self.manifest.dtype,
            entries: self.entries.to_entries()?,
        })
    }

    /// The manifest (for a loaded index, as read from disk).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The directory it was opened from, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.manifest.count
    }

    /// Whether the index holds no vectors.
    pub fn is_empty(&self) -> bool {
        self.manifest.count == 0
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.manifest.dimension
    }

    /// The model that made the vectors.
    pub fn model(&self) -> &str {
        &self.manifest.model
    }

    /// What the rows are, read a row at a time.
    pub fn entries(&self) -> &IndexEntries {
        &self.entries
    }

    /// A human-readable name of row `i`: the full image path, the caption, or the id.
    pub fn label(&self, i: usize) -> Result<String> {
        self.entries.try_label(i)
    }

    /// Row `i` as f32.
    pub fn vector(&self, i: usize) -> Vec<f32> {
        let mut v = vec![0f32; self.dim()];
        self.rows().copy_f32(i..i + 1, self.dim(), &mut v);
        v
    }

    pub(crate) fn rows(&self) -> Rows<'_> {
        match &self.storage {
            Storage::F32(v) => Rows::F32(v),
            Storage::F16(v) => Rows::F16(v),
            Storage::Mapped(m) => {
                let n = self.manifest.count * self.manifest.dimension;
                let bytes = &m.map[m.offset..m.offset + n * self.manifest.dtype.size()];
                // Alignment and length were checked when the file was opened.
                match self.manifest.dtype {
                    DType::F32 => Rows::F32(bytemuck::cast_slice(bytes)),
                    DType::F16 => Rows::F16(bytemuck::cast_slice(bytes)),
                }
            }
        }
    }

    /// The `k` best rows for each query, best first, with [`SearchOptions::default`].
    ///
    /// `queries` is `[q, dim]` row-major; `dim` must equal the index's dimension.
    pub fn search(&self, queries: &[f32], dim: usize, k: usize) -> Result<Vec<Vec<Hit>>> {
        self.search_with(queries, dim, k, &SearchOptions::default())
    }

    /// The `k` best rows for each query, best first (ties: lower row first).
    pub fn search_with(
        &self,
        queries: &[f32],
        dim: usize,
        k: usize,
        opts: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>> {
        self.check_queries(queries, dim)?;
        self.check_vectors()?;
        let hits = if self.uses_ann(opts, queries.len() / dim) {
            let graph = self.ann_graph(&opts.ann)?;
            graph.search(self.rows(), queries, k, &opts.ann)
        } else {
            exact::top_k(self.rows(), dim, queries, k)
        };
        // Scores read from a file truncated meanwhile are scores of zeros: not results.
        self.check_vectors()?;
        Ok(hits)
    }

    /// Whether `opts` would make [`Index::search_with`] of `queries` queries approximate.
    pub fn uses_ann(&self, opts: &SearchOptions, queries: usize) -> bool {
        match opts.mode {
            SearchMode::Exact => false,
            SearchMode::Ann => true,
            SearchMode::Auto => {
                self.len() >= opts.auto_ann_min_rows
                    && (self.ann.get().is_some() || queries >= opts.auto_ann_min_queries)
            }
        }
    }

    /// Builds the approximate structure now (searches build it on first approximate use
    /// otherwise). Returns the parameters in use: a structure built earlier is kept, whatever
    /// `params` says.
    pub fn build_ann(&self, params: &AnnParams) -> Result<AnnParams> {
        Ok(self.ann_graph(params)?.params())
    }

    /// Builds the IVF lists (unless already built) and saves them beside the index
    /// ([`crate::ANN_FILE`]), so that later processes load them with [`Index::load_saved_ann`]
    /// instead of clustering again. HNSW graphs are not saved.
    pub fn save_ann(&self, params: &AnnParams) -> Result<AnnParams> {
        let Some(dir) = &self.dir else {
            return Err(invalid("index", "in memory", "save it first"));
        };
        if params.method != AnnMethod::Ivf {
            return Err(invalid("method", "hnsw", "only IVF lists are saved"));
        }
        match self.ann_graph(params)? {
            g @ AnnGraph::Ivf(ivf, _) => {
                ivf.save(&dir.join(manifest::ANN_FILE), &self.manifest)?;
                Ok(g.params())
            }
            AnnGraph::Hnsw(_) => Err(invalid("method", "hnsw", "an HNSW graph is built")),
        }
    }

    /// Loads the IVF lists saved beside the index for the approximate searches that follow, if
    /// they fit `params` (its `lists`, unless 0). `Ok(None)`: none saved, or unfit, or `params`
    /// asks for HNSW. An error when the file is stale or damaged: it is not used, and
    /// approximate search builds the structure in memory. A structure already built is kept.
    pub fn load_saved_ann(&self, params: &AnnParams) -> Result<Option<AnnParams>> {
        if let Some(g) = self.ann.get() {
            return Ok(Some(g.params()));
        }
        let (Some(dir), AnnMethod::Ivf) = (&self.dir, params.method) else {
            return Ok(None);
        };
        params.validate()?;
        let path = dir.join(manifest::ANN_FILE);
        let loaded = IvfLists::load(&path, &self.manifest, self.rows());
        self.check_vectors()?;
        let Some(ivf) = loaded? else {
            return Ok(None);
        };
        if params.lists != 0 && params.lists != ivf.lists() {
            return Ok(None);
        }
        Ok(Some(
            self.ann
                .get_or_init(|| AnnGraph::Ivf(ivf, *params))
                .params(),
        ))
    }

    fn ann_graph(&self, params: &AnnParams) -> Result<&AnnGraph> {
        if let Some(g) = self.ann.get() {
            return Ok(g);
        }
        let g = AnnGraph::build(self.rows(), self.dim(), params);
        self.check_vectors()?;
        let g = g?;
        Ok(self.ann.get_or_init(|| g))
    }

    fn check_queries(&self, queries: &[f32], dim: usize) -> Result<()> {
        if dim != self.dim() {
            return Err(RetrievalError::DimensionMismatch {
                what: "the query".into(),
                got: dim,
                expected_what: match &self.dir {
                    Some(d) => format!("the index {}", d.display()),
                    None => "the index".into(),
                },
                expected: self.dim(),
            });
        }
        crate::error::rows_of(queries.len(), dim, "query")?;
        if let Some(row) = queries
            .chunks_exact(dim)
            .position(|r| !r.iter().all(|v| v.is_finite()))
        {
            return Err(RetrievalError::NonFinite { what: "query", row });
        }
        Ok(())
    }
}

/// Maps the files `manifest` names under `dir` (`inline`: the rows of a version-1 manifest);
/// on failure, also hands back the manifest.
fn map_files(
    dir: &Path,
    manifest: Manifest,
    inline: Option<Entries>,
    opts: OpenOptions,
    manifest_id: Option<FileId>,
) -> std::result::Result<Index, Box<(RetrievalError, Manifest)>> {
    let vectors = match store::map_vectors(dir, &manifest, opts) {
        Ok(v) => v,
        Err(e) => return Err(Box::new((e, manifest))),
    };
    let entries = match (inline, &manifest.rows) {
        (Some(e), _) => IndexEntries::inline(e, manifest.count),
        (None, None) => IndexEntries::inline(Entries::Ids { ids: Vec::new() }, manifest.count),
        (None, Some(r)) => {
            let opened = MappedRows::open(
                &dir.join(&r.file),
                r.bytes,
                r.crc32,
                &manifest.entries,
                manifest.count,
                opts.verify_checksum,
            );
            match opened {
                Ok(rows) => IndexEntries::mapped(manifest.entries.clone(), manifest.count, rows),
                Err(e) => return Err(Box::new((e, manifest))),
            }
        }
    };
    Ok(Index {
        manifest,
        storage: Storage::Mapped(vectors),
        entries,
        dir: Some(dir.to_path_buf()),
        manifest_id,
        ann: OnceLock::new(),
    })
}
