//! The manifest of an index directory and the names of the files beside it.
//!
//! `manifest.json` holds only a header: model, dimension, count, element type, what the rows
//! are (image files under a root, captions, ids, or samples of webdataset shards), and the
//! name, byte length and CRC-32 of each data file. Version-1 manifests, which hold every row
//! inline under `entries`, are still read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{invalid, io_err, json_err};
use crate::files::read_regular;
use crate::{Result, RetrievalError};

/// File name of the manifest inside an index directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the saved IVF lists inside an index directory (`clip index build --ann`);
/// deleted by every write of new vectors.
pub const ANN_FILE: &str = "ivf.safetensors";
/// The manifest format this build writes for images, captions and ids.
pub const FORMAT_VERSION: u32 = 2;
/// The manifest format of an index of shard samples ([`EntriesKind::Samples`]), the newest
/// this build reads: version 2 and a new kind of rows, numbered apart so that a build that
/// predates the kind refuses the index with a version error instead of calling it damaged.
pub const SAMPLES_FORMAT_VERSION: u32 = 3;
/// The oldest manifest format this build reads: version 1, with every row inline.
const OLDEST_FORMAT_VERSION: u32 = 1;
/// The `format` of a manifest (and the vectors file's metadata).
pub(crate) const FORMAT_NAME: &str = "clip-index";
/// Largest vector dimension: far above any embedding model's, and low enough that scratch
/// sized by the dimension (a kernel panel is 32 rows) stays small whatever a manifest says.
const MAX_DIMENSION: usize = 1 << 16;
/// Largest manifest read (a version-1 manifest holds every row inline).
const MAX_MANIFEST_BYTES: u64 = 4 << 30;

/// How scores are computed. Only inner product exists; on unit vectors it is the cosine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Inner product of unit-length vectors.
    #[default]
    InnerProduct,
}

/// Element type of the stored vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    /// 32-bit floats.
    #[default]
    F32,
    /// 16-bit floats: half the disk and memory traffic, scores within ~1e-3 of f32.
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        self.safetensors().bitsize() / 8
    }

    pub(crate) fn safetensors(self) -> safetensors::Dtype {
        match self {
            DType::F32 => safetensors::Dtype::F32,
            DType::F16 => safetensors::Dtype::F16,
        }
    }
}

/// An indexed image file, with what is needed to tell whether it changed since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// Path relative to the indexed folder.
    pub path: PathBuf,
    /// Size in bytes when embedded.
    pub size: u64,
    /// Modification time when embedded, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// A sample of a webdataset shard: its name, caption, and where its image member lies in
/// the shard (so that the image can be read again alone, e.g. for a thumbnail).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleEntry {
    /// The shard as given (a local path, `pipe:` command, http(s) URL or s3/gs/az object).
    pub shard: String,
    /// The sample's key in the shard (webdataset's: member name up to its first dot).
    pub key: String,
    /// The image member's extension (`jpg`, `x.png`): its last suffix says what it is.
    pub ext: String,
    /// The caption (the `.txt` member, trimmed); empty when the sample has none.
    pub caption: String,
    /// Byte offset of the image member's data in the shard.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

impl SampleEntry {
    /// `SHARD#KEY`: what a search prints for it.
    pub fn name(&self) -> String {
        format!("{}#{}", self.shard, self.key)
    }
}

/// What each row of an index stands for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entries {
    /// Image files under `root` (row `i` is `files[i]`).
    Images {
        /// The indexed folder (absolute when built by `clip index build`).
        root: PathBuf,
        /// One entry per row.
        files: Vec<ImageEntry>,
    },
    /// Captions (row `i` is `captions[i]`), for image→text search.
    Captions {
        /// One caption per row.
        captions: Vec<String>,
    },
    /// Caller-chosen ids, e.g. from precomputed embeddings; empty means "the row number".
    Ids {
        /// One id per row, or none at all.
        #[serde(default)]
        ids: Vec<String>,
    },
    /// Images of webdataset shard samples (row `i` is `samples[i]`).
    Samples {
        /// The S3-compatible endpoint the shards were read through, if one was given.
        endpoint: Option<String>,
        /// One sample per row.
        samples: Vec<SampleEntry>,
    },
}

impl Entries {
    /// Rows described, or `None` for ids that default to row numbers.
    pub(crate) fn len(&self) -> Option<usize> {
        match self {
            Entries::Images { files, .. } => Some(files.len()),
            Entries::Captions { captions } => Some(captions.len()),
            Entries::Ids { ids } if ids.is_empty() => None,
            Entries::Ids { ids } => Some(ids.len()),
            Entries::Samples { samples, .. } => Some(samples.len()),
        }
    }

    /// A human-readable name of row `i`: the full image path, the caption, the id, or a
    /// sample's `SHARD#KEY`.
    pub fn label(&self, i: usize) -> String {
        match self {
            Entries::Images { root, files } => root.join(&files[i].path).display().to_string(),
            Entries::Captions { captions } => captions[i].clone(),
            Entries::Ids { ids } => ids.get(i).cloned().unwrap_or_else(|| i.to_string()),
            Entries::Samples { samples, .. } => samples[i].name(),
        }
    }
}

/// What the rows of an index are, as a version-2 manifest records it: the kind (and the root
/// of image files), without the rows themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntriesKind {
    /// Image files under `root`.
    Images {
        /// The indexed folder (absolute when built by `clip index build`).
        root: PathBuf,
    },
    /// Captions, for image→text search.
    Captions,
    /// Caller-chosen ids, or row numbers when the index has no rows file.
    Ids,
    /// Samples of webdataset shards (manifest version [`SAMPLES_FORMAT_VERSION`]).
    Samples {
        /// The S3-compatible endpoint the shards were read through, if one was given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
    },
}

impl EntriesKind {
    /// The kind of `entries`.
    pub fn of(entries: &Entries) -> Self {
        match entries {
            Entries::Images { root, .. } => EntriesKind::Images { root: root.clone() },
            Entries::Captions { .. } => EntriesKind::Captions,
            Entries::Ids { .. } => EntriesKind::Ids,
            Entries::Samples { endpoint, .. } => EntriesKind::Samples {
                endpoint: endpoint.clone(),
            },
        }
    }

    /// `images`, `captions`, `ids` or `samples`, as in the manifest.
    pub fn name(&self) -> &'static str {
        match self {
            EntriesKind::Images { .. } => "images",
            EntriesKind::Captions => "captions",
            EntriesKind::Ids => "ids",
            EntriesKind::Samples { .. } => "samples",
        }
    }

    /// The manifest version an index of this kind is written as.
    fn format_version(&self) -> u32 {
        match self {
            EntriesKind::Samples { .. } => SAMPLES_FORMAT_VERSION,
            _ => FORMAT_VERSION,
        }
    }
}

/// A data file the manifest points at, with what identifies its intact contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowsFile {
    /// File name, relative to the index directory.
    pub file: String,
    /// Its exact length in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the whole file.
    pub crc32: u32,
}

/// The JSON manifest of an index directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `clip-index`, so that a stray JSON file is not taken for a manifest.
    pub format: String,
    /// [`FORMAT_VERSION`] when written by this build ([`SAMPLES_FORMAT_VERSION`] for shard
    /// samples); 1 for an index with its rows inline.
    pub format_version: u32,
    /// The model that made the vectors (directory or Hub id); searches embed queries with it.
    pub model: String,
    /// Vector dimension.
    pub dimension: usize,
    /// Number of vectors.
    pub count: usize,
    /// Similarity.
    pub metric: Metric,
    /// Stored element type.
    pub dtype: DType,
    /// Vectors file name, relative to the index directory.
    pub vectors_file: String,
    /// Its exact length in bytes.
    pub vectors_bytes: u64,
    /// CRC-32 (IEEE) of the whole vectors file.
    pub vectors_crc32: u32,
    /// What the rows are.
    pub entries: EntriesKind,
    /// The rows file; absent for ids that are row numbers, and in version 1 (rows inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<RowsFile>,
}

impl Manifest {
    /// The manifest of `spec` stored in `vectors_file` and `rows` (empty names for an index
    /// only in memory).
    pub(crate) fn new(
        spec: &IndexSpec,
        vectors_file: String,
        bytes: u64,
        crc32: u32,
        rows: Option<RowsFile>,
    ) -> Self {
        let entries = EntriesKind::of(&spec.entries);
        Manifest {
            format: FORMAT_NAME.into(),
            format_version: entries.format_version(),
            model: spec.model.clone(),
            dimension: spec.dimension,
            count: spec.count,
            metric: Metric::InnerProduct,
            dtype: spec.dtype,
            vectors_file,
            vectors_bytes: bytes,
            vectors_crc32: crc32,
            entries,
            rows,
        }
    }
}

/// A version-1 manifest: the same header with every row inline under `entries`.
#[derive(Deserialize)]
struct ManifestV1 {
    model: String,
    dimension: usize,
    count: usize,
    metric: Metric,
    dtype: DType,
    vectors_file: String,
    vectors_bytes: u64,
    vectors_crc32: u32,
    entries: Entries,
}

impl ManifestV1 {
    /// The header as a [`Manifest`] of version 1, and the rows it holds inline.
    fn into_parts(self) -> (Manifest, Entries) {
        let v1 = self;
        let m = Manifest {
            format: FORMAT_NAME.into(),
            format_version: OLDEST_FORMAT_VERSION,
            model: v1.model,
            dimension: v1.dimension,
            count: v1.count,
            metric: v1.metric,
            dtype: v1.dtype,
            vectors_file: v1.vectors_file,
            vectors_bytes: v1.vectors_bytes,
            vectors_crc32: v1.vectors_crc32,
            entries: EntriesKind::of(&v1.entries),
            rows: None,
        };
        (m, v1.entries)
    }
}

/// What to write, apart from the vectors themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSpec {
    /// The model that made the vectors.
    pub model: String,
    /// Vector dimension.
    pub dimension: usize,
    /// Number of vectors.
    pub count: usize,
    /// Element type to store.
    pub dtype: DType,
    /// What the rows are; its length must be `count` (or empty ids).
    pub entries: Entries,
}

/// Checks a dimension and count, and that `rows` entries (if given) describe `count` vectors.
pub(crate) fn check_shape(dimension: usize, count: usize, rows: Option<usize>) -> Result<()> {
    if dimension == 0 {
        return Err(invalid(
            "dimension",
            0,
            "vectors need at least one component",
        ));
    }
    if dimension > MAX_DIMENSION {
        return Err(invalid(
            "dimension",
            dimension,
            format!("at most {MAX_DIMENSION} components per vector"),
        ));
    }
    if count > u32::MAX as usize {
        return Err(invalid(
            "count",
            count,
            "at most 2^32 - 1 vectors per index",
        ));
    }
    if let Some(n) = rows.filter(|&n| n != count) {
        return Err(RetrievalError::Shape(format!(
            "{n} entries for {count} vectors"
        )));
    }
    Ok(())
}

/// The name of generation `gen`'s vectors file.
pub(crate) fn vectors_file_name(gen: u64) -> String {
    format!("vectors-{gen}.safetensors")
}

/// The name of generation `gen`'s rows file.
pub(crate) fn rows_file_name(gen: u64) -> String {
    format!("rows-{gen}.bin")
}

fn vectors_generation(name: &str) -> Option<u64> {
    name.strip_prefix("vectors-")?
        .strip_suffix(".safetensors")?
        .parse()
        .ok()
}

fn rows_generation(name: &str) -> Option<u64> {
    name.strip_prefix("rows-")?
        .strip_suffix(".bin")?
        .parse()
        .ok()
}

/// The generation of a vectors or rows file name.
pub(crate) fn generation(name: &str) -> Option<u64> {
    vectors_generation(name).or_else(|| rows_generation(name))
}

/// Reads and checks `dir/manifest.json`; for a version-1 manifest, also the rows it holds
/// inline.
pub(crate) fn read_manifest(dir: &Path) -> Result<(Manifest, Option<Entries>)> {
    let path = dir.join(MANIFEST_FILE);
    if !dir.is_dir() {
        return Err(RetrievalError::NotAnIndex {
            path: dir.to_path_buf(),
            reason: if dir.exists() {
                "it is a file, not an index directory".into()
            } else {
                "no such directory".into()
            },
        });
    }
    let bytes = match read_regular(&path, MAX_MANIFEST_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RetrievalError::NotAnIndex {
                path: dir.to_path_buf(),
                reason: format!("it has no {MANIFEST_FILE} (build one with `clip index build`)"),
            })
        }
        Err(e) => return Err(io_err("cannot read", &path)(e)),
    };
    let (m, inline) = parse(&path, &bytes)?;
    check(&path, &m, inline.as_ref())?;
    Ok((m, inline))
}

/// The manifest in `bytes` (read from `path`), of any version this build reads.
fn parse(path: &Path, bytes: &[u8]) -> Result<(Manifest, Option<Entries>)> {
    // Look at the version before the full structure, so that a newer format gets a version error.
    #[derive(Deserialize)]
    struct Head {
        format: Option<String>,
        format_version: Option<u32>,
    }
    let head: Head = serde_json::from_slice(bytes).map_err(json_err(path))?;
    if head.format.as_deref() != Some(FORMAT_NAME) {
        return Err(RetrievalError::NotAnIndex {
            path: path.to_path_buf(),
            reason: format!("its `format` is {:?}, not \"{FORMAT_NAME}\"", head.format),
        });
    }
    // A manifest without a version predates versioning: version 1.
    let version = head.format_version.unwrap_or(OLDEST_FORMAT_VERSION);
    if !(OLDEST_FORMAT_VERSION..=SAMPLES_FORMAT_VERSION).contains(&version) {
        return Err(RetrievalError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: SAMPLES_FORMAT_VERSION,
        });
    }
    if version == OLDEST_FORMAT_VERSION {
        let v1: ManifestV1 = serde_json::from_slice(bytes).map_err(json_err(path))?;
        let (m, entries) = v1.into_parts();
        Ok((m, Some(entries)))
    } else {
        let m: Manifest = serde_json::from_slice(bytes).map_err(json_err(path))?;
        Ok((m, None))
    }
}

/// Checks what a manifest says against itself: its shape, its file names, and that rows other
/// than row numbers are somewhere (`inline` in version 1, a rows file in version 2, whose rows
/// are checked when it is opened).
fn check(path: &Path, m: &Manifest, inline: Option<&Entries>) -> Result<()> {
    let bad = |reason: String| RetrievalError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    check_shape(m.dimension, m.count, inline.and_then(Entries::len))
        .map_err(|e| bad(e.to_string()))?;
    if vectors_generation(&m.vectors_file).is_none() {
        return Err(bad(format!(
            "vectors_file {:?} is not a vectors file name",
            m.vectors_file
        )));
    }
    if let Some(r) = &m.rows {
        if rows_generation(&r.file).is_none() {
            return Err(bad(format!(
                "rows file {:?} is not a rows file name",
                r.file
            )));
        }
    } else if inline.is_none() && m.entries != EntriesKind::Ids {
        return Err(bad(format!(
            "it records {} entries but no rows file",
            m.entries.name()
        )));
    }
    Ok(())
}
