//! The on-disk index: a directory with `manifest.json`, one `vectors-<generation>.safetensors`
//! and (format version 2) one `rows-<generation>.bin`.
//!
//! The manifest holds only a header: model, dimension, count, element type, what the rows are
//! (image files under a root, captions or ids), and the name, byte length and CRC-32 of each
//! data file. What each row stands for (image path, size and modification time; caption; or
//! id) is in the rows file ([`crate::rows`] describes its layout), memory-mapped and read one
//! row at a time, so opening an index of ten million images parses a few hundred bytes of JSON
//! and labelling a hit reads one row. An index of ids that are just row numbers has no rows
//! file. Version-1 manifests, which hold every row inline under `entries`, are still read.
//!
//! Writes never touch a file a reader may have open: each build writes its vectors and rows
//! files under a new generation name (each via a temporary name and a rename), then replaces
//! `manifest.json` the same way, and only then deletes the previous generation. A crash at any
//! point leaves the old manifest pointing at the old, complete files. The manifest records each
//! file's byte length and CRC-32, so a truncated or overwritten file is reported as damaged
//! instead of being searched as garbage. An optional `ivf.safetensors` holds IVF lists for the
//! current vectors; every write deletes it, and readers check the vectors identity it records.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

#[cfg(target_endian = "big")]
compile_error!(
    "index files are little-endian and memory-mapped as is; big-endian targets are not supported"
);

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{invalid, io_err, json_err};
use crate::guard::{FileId, GuardedMap};
use crate::{Result, RetrievalError};

/// File name of the manifest inside an index directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the saved IVF lists inside an index directory (`clip index build --ann`);
/// deleted by every write of new vectors.
pub const ANN_FILE: &str = "ivf.safetensors";
/// The manifest format this build writes (it reads this and every earlier one).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest manifest format this build reads: version 1, with every row inline.
const OLDEST_FORMAT_VERSION: u32 = 1;
const FORMAT_NAME: &str = "clip-index";
/// The tensor holding the vectors inside the vectors file.
const VECTORS_KEY: &str = "vectors";
/// Largest vector dimension: far above any embedding model's, and low enough that scratch
/// sized by the dimension (a kernel panel is 32 rows) stays small whatever a manifest says.
const MAX_DIMENSION: usize = 1 << 16;
/// Tolerated deviation of a row's norm from 1 (f16 storage alone moves it by ~1e-3).
const UNIT_TOLERANCE: f32 = 1e-2;

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

    fn safetensors(self) -> safetensors::Dtype {
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
}

impl Entries {
    /// Rows described, or `None` for ids that default to row numbers.
    pub(crate) fn len(&self) -> Option<usize> {
        match self {
            Entries::Images { files, .. } => Some(files.len()),
            Entries::Captions { captions } => Some(captions.len()),
            Entries::Ids { ids } if ids.is_empty() => None,
            Entries::Ids { ids } => Some(ids.len()),
        }
    }

    /// A human-readable name of row `i`: the full image path, the caption, or the id.
    pub fn label(&self, i: usize) -> String {
        match self {
            Entries::Images { root, files } => root.join(&files[i].path).display().to_string(),
            Entries::Captions { captions } => captions[i].clone(),
            Entries::Ids { ids } => ids.get(i).cloned().unwrap_or_else(|| i.to_string()),
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
}

impl EntriesKind {
    /// The kind of `entries`.
    pub fn of(entries: &Entries) -> Self {
        match entries {
            Entries::Images { root, .. } => EntriesKind::Images { root: root.clone() },
            Entries::Captions { .. } => EntriesKind::Captions,
            Entries::Ids { .. } => EntriesKind::Ids,
        }
    }

    /// `images`, `captions` or `ids`, as in the manifest.
    pub fn name(&self) -> &'static str {
        match self {
            EntriesKind::Images { .. } => "images",
            EntriesKind::Captions => "captions",
            EntriesKind::Ids => "ids",
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
    /// [`FORMAT_VERSION`] when written by this build; 1 for an index with its rows inline.
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
        Manifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            model: spec.model.clone(),
            dimension: spec.dimension,
            count: spec.count,
            metric: Metric::InnerProduct,
            dtype: spec.dtype,
            vectors_file,
            vectors_bytes: bytes,
            vectors_crc32: crc32,
            entries: EntriesKind::of(&spec.entries),
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

/// Whether `spec` needs a rows file: everything but ids that are row numbers.
fn needs_rows_file(entries: &Entries) -> bool {
    !matches!(entries, Entries::Ids { ids } if ids.is_empty())
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

/// Error a row source may return to abort a write.
pub type FillError = Box<dyn std::error::Error + Send + Sync>;

/// Rows handed to the row source per call.
const FILL_ROWS: usize = 4096;

/// Writes an index directory at `dir`, asking `fill(rows, out)` for the vectors of `rows` (f32,
/// unit length, `out.len() == rows.len() * dimension`) a block at a time, so that an index
/// larger than memory can be written from a memory-mapped source.
///
/// Any failure, including an error from `fill`, leaves the previous index in `dir` (if any)
/// intact and readable; only temporary files are removed.
pub fn write_index(
    dir: &Path,
    spec: &IndexSpec,
    mut fill: impl FnMut(std::ops::Range<usize>, &mut [f32]) -> std::result::Result<(), FillError>,
) -> Result<Manifest> {
    validate_spec(spec)?;
    prepare_dir(dir)?;
    let gen = next_generation(dir)?;
    let vectors_file = vectors_file_name(gen);
    let final_vectors = dir.join(&vectors_file);
    let (bytes, crc) = write_atomically(&final_vectors, |file, tmp| {
        write_vectors(file, tmp, spec, &mut fill)
    })?;
    // Written after the vectors and before the manifest, like the vectors: until the manifest
    // names them, both new files are unreferenced leftovers.
    let rows = if needs_rows_file(&spec.entries) {
        let file = rows_file_name(gen);
        let res = write_atomically(&dir.join(&file), |f, tmp| {
            crate::rows::write_rows(f, tmp, &spec.entries, spec.count)
        });
        match res {
            Ok((bytes, crc32)) => Some(RowsFile { file, bytes, crc32 }),
            Err(e) => {
                let _ = std::fs::remove_file(&final_vectors);
                return Err(e);
            }
        }
    } else {
        None
    };
    let manifest = Manifest::new(spec, vectors_file.clone(), bytes, crc, rows);
    let manifest_path = dir.join(MANIFEST_FILE);
    let res = write_atomically(&manifest_path, |f, tmp| {
        let json = serde_json::to_vec_pretty(&manifest).map_err(json_err(&manifest_path))?;
        f.write_all(&json).map_err(io_err("cannot write", tmp))
    });
    if let Err(e) = res {
        // The new files are unreferenced; the old manifest still points at the old ones.
        let _ = std::fs::remove_file(&final_vectors);
        if let Some(r) = &manifest.rows {
            let _ = std::fs::remove_file(dir.join(&r.file));
        }
        return Err(e);
    }
    sync_dir(dir);
    remove_stale_files(dir, gen);
    Ok(manifest)
}

/// Checks what can be checked of `spec` before any vector is written.
pub(crate) fn validate_spec(spec: &IndexSpec) -> Result<()> {
    check_shape(spec.dimension, spec.count, spec.entries.len())
}

/// Checks a dimension and count, and that `rows` entries (if given) describe `count` vectors.
fn check_shape(dimension: usize, count: usize, rows: Option<usize>) -> Result<()> {
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

/// Creates `dir`, or checks that an existing one is an index (or empty), never clobbering
/// unrelated files.
fn prepare_dir(dir: &Path) -> Result<()> {
    check_destination(dir)?;
    std::fs::create_dir_all(dir).map_err(io_err("cannot create directory", dir))
}

/// Checks that an index may be written at `dir`: it does not exist, or it is a directory that
/// holds an index, or nothing but leftovers of one. Lets a caller fail before slow work.
pub fn check_destination(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(RetrievalError::NotAnIndex {
            path: dir.to_path_buf(),
            reason: "it is a file, not an index directory".into(),
        });
    }
    if dir.join(MANIFEST_FILE).exists() {
        return Ok(());
    }
    let foreign: Vec<String> = list_dir(dir)?
        .into_iter()
        .filter(|n| !is_own_file(n))
        .take(3)
        .collect();
    if !foreign.is_empty() {
        return Err(RetrievalError::NotAnIndex {
            path: dir.to_path_buf(),
            reason: format!(
                "the directory exists without {MANIFEST_FILE} and holds other files ({}); refusing to write an index into it",
                foreign.join(", ")
            ),
        });
    }
    Ok(())
}

fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(io_err("cannot list", dir))?;
    Ok(rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

fn vectors_file_name(gen: u64) -> String {
    format!("vectors-{gen}.safetensors")
}

fn rows_file_name(gen: u64) -> String {
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
fn generation(name: &str) -> Option<u64> {
    vectors_generation(name).or_else(|| rows_generation(name))
}

fn is_own_file(name: &str) -> bool {
    name == MANIFEST_FILE || name == ANN_FILE || generation(name).is_some() || is_temp_file(name)
}

/// A leftover of an interrupted [`write_atomically`]: `.NAME.<random>.tmp`.
fn is_temp_file(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// The temporary sibling [`write_atomically`] writes `final_name` through; a kill leaves it
/// behind under a name [`is_temp_file`] recognises. Readable like a file made with
/// `File::create` (`tempfile` defaults to owner-only).
fn temp_file_in(dir: &Path, final_name: &str) -> std::io::Result<tempfile::NamedTempFile> {
    let prefix = format!(".{final_name}.");
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    b.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    b.tempfile_in(dir)
}

/// Writes `path` whole or not at all: `write(file, temp_path)` fills a temporary sibling,
/// which is synced and renamed over `path` only if it succeeds, and deleted otherwise.
pub(crate) fn write_atomically<T>(
    path: &Path,
    write: impl FnOnce(&mut File, &Path) -> Result<T>,
) -> Result<T> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut tmp = temp_file_in(dir, &name).map_err(io_err("cannot create a file in", dir))?;
    let tmp_path = tmp.path().to_path_buf();
    let out = write(tmp.as_file_mut(), &tmp_path)?;
    tmp.as_file()
        .sync_all()
        .map_err(io_err("cannot sync", &tmp_path))?;
    tmp.persist(path)
        .map_err(|e| io_err("cannot rename into place", path)(e.error))?;
    Ok(out)
}

fn next_generation(dir: &Path) -> Result<u64> {
    Ok(list_dir(dir)?
        .iter()
        .filter_map(|n| generation(n))
        .max()
        .map_or(1, |g| g + 1))
}

/// Deletes earlier generations (every vectors and rows file but those of `keep`), the IVF
/// lists of earlier vectors and leftovers of interrupted writes.
fn remove_stale_files(dir: &Path, keep: u64) {
    for name in list_dir(dir).unwrap_or_default() {
        let stale =
            generation(&name).is_some_and(|g| g != keep) || name == ANN_FILE || is_temp_file(&name);
        if stale {
            let _ = std::fs::remove_file(dir.join(&name));
        }
    }
}

fn sync_dir(dir: &Path) {
    // Makes the renames durable; not supported everywhere (e.g. Windows), hence best-effort.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes the vectors as a one-tensor safetensors file; returns its length and CRC-32.
fn write_vectors(
    file: &mut File,
    path: &Path,
    spec: &IndexSpec,
    fill: &mut impl FnMut(std::ops::Range<usize>, &mut [f32]) -> std::result::Result<(), FillError>,
) -> Result<(u64, u32)> {
    let (n, dim) = (spec.count, spec.dimension);
    let data_bytes = n * dim * spec.dtype.size();
    let header = serde_json::json!({
        "__metadata__": { "format": FORMAT_NAME },
        VECTORS_KEY: {
            "dtype": spec.dtype.safetensors(),
            "shape": [n, dim],
            "data_offsets": [0, data_bytes],
        }
    });
    let mut header = serde_json::to_vec(&header).expect("a JSON value serialises");
    // safetensors pads the header with spaces so that the data is 8-byte aligned.
    header.resize(header.len().next_multiple_of(8), b' ');

    let mut w = ChecksummedWriter::new(file, path);
    let mut put = |bytes: &[u8]| w.put(bytes);
    put(&(header.len() as u64).to_le_bytes())?;
    put(&header)?;

    let mut block = vec![0f32; FILL_ROWS.min(n.max(1)) * dim];
    let mut half_block: Vec<half::f16> = Vec::new();
    let mut r0 = 0;
    while r0 < n {
        let r1 = (r0 + FILL_ROWS).min(n);
        let out = &mut block[..(r1 - r0) * dim];
        fill(r0..r1, out).map_err(|source| RetrievalError::Fill { source })?;
        check_unit_rows(out, dim, r0, "index vector")?;
        let bytes: &[u8] = match spec.dtype {
            DType::F32 => bytemuck::cast_slice(out),
            DType::F16 => {
                use half::slice::HalfFloatSliceExt;
                half_block.resize(out.len(), half::f16::ZERO);
                half_block.convert_from_f32_slice(out);
                bytemuck::cast_slice(&half_block)
            }
        };
        put(bytes)?;
        r0 = r1;
    }
    let (len, crc) = w.finish()?;
    debug_assert_eq!(len, (8 + header.len() + data_bytes) as u64);
    Ok((len, crc))
}

/// A buffered writer of a whole file that keeps its length and CRC-32 as it goes, so that what
/// the manifest records is what was written.
pub(crate) struct ChecksummedWriter<'a> {
    w: BufWriter<&'a mut File>,
    path: &'a Path,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<'a> ChecksummedWriter<'a> {
    pub(crate) fn new(file: &'a mut File, path: &'a Path) -> Self {
        Self {
            w: BufWriter::with_capacity(1 << 20, file),
            path,
            crc: crc32fast::Hasher::new(),
            len: 0,
        }
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        self.w
            .write_all(bytes)
            .map_err(io_err("cannot write", self.path))
    }

    /// Flushes; returns the length and CRC-32 of everything put.
    pub(crate) fn finish(self) -> Result<(u64, u32)> {
        let path = self.path;
        self.w
            .into_inner()
            .map_err(|e| io_err("cannot write", path)(e.into_error()))?;
        Ok((self.len, self.crc.finalize()))
    }
}

/// Checks that every row is finite and of unit length; `first_row` numbers the rows in errors.
pub(crate) fn check_unit_rows(
    data: &[f32],
    dim: usize,
    first_row: usize,
    what: &'static str,
) -> Result<()> {
    for (i, row) in data.chunks_exact(dim).enumerate() {
        checked_norm(row, what, first_row + i, |n| {
            (n - 1.0).abs() <= UNIT_TOLERANCE
        })?;
    }
    Ok(())
}

/// The Euclidean norm of `row`, row `r` of `what`; an error naming the row if it is not finite
/// (the row holds NaN or infinity) or `ok` rejects it.
pub(crate) fn checked_norm(
    row: &[f32],
    what: &'static str,
    r: usize,
    ok: impl Fn(f32) -> bool,
) -> Result<f32> {
    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
    if !norm.is_finite() {
        return Err(RetrievalError::NonFinite { what, row: r });
    }
    if !ok(norm) {
        return Err(RetrievalError::NotUnitLength { what, row: r, norm });
    }
    Ok(norm)
}

/// Options for opening an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// Check the CRC-32 of the whole vectors file (reads it once, in parallel). Without it only
    /// the length and the header are checked: a truncated file is still caught, an overwritten
    /// byte is not.
    pub verify_checksum: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            verify_checksum: true,
        }
    }
}

/// A validated, memory-mapped vectors file.
pub(crate) struct MappedVectors {
    pub(crate) map: GuardedMap,
    /// Byte offset of the first element.
    pub(crate) offset: usize,
    /// The file's identity when opened.
    pub(crate) id: FileId,
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
    // Look at the version before the full structure, so that a newer format gets a version error.
    #[derive(Deserialize)]
    struct Head {
        format: Option<String>,
        format_version: Option<u32>,
    }
    let head: Head = serde_json::from_slice(&bytes).map_err(json_err(&path))?;
    if head.format.as_deref() != Some(FORMAT_NAME) {
        return Err(RetrievalError::NotAnIndex {
            path: path.clone(),
            reason: format!("its `format` is {:?}, not \"{FORMAT_NAME}\"", head.format),
        });
    }
    // A manifest without a version predates versioning: version 1.
    let version = head.format_version.unwrap_or(OLDEST_FORMAT_VERSION);
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(RetrievalError::UnsupportedVersion {
            path,
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let (m, inline) = if version == 1 {
        let v1: ManifestV1 = serde_json::from_slice(&bytes).map_err(json_err(&path))?;
        let m = Manifest {
            format: FORMAT_NAME.into(),
            format_version: version,
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
        (m, Some(v1.entries))
    } else {
        let m: Manifest = serde_json::from_slice(&bytes).map_err(json_err(&path))?;
        (m, None)
    };
    let bad = |reason: String| RetrievalError::Damaged {
        path: path.clone(),
        reason,
    };
    // Version 2 keeps its rows elsewhere: they are checked when the rows file is opened.
    check_shape(m.dimension, m.count, inline.as_ref().and_then(Entries::len))
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
    Ok((m, inline))
}

/// Maps and validates the vectors file `m` names.
pub(crate) fn map_vectors(dir: &Path, m: &Manifest, opts: OpenOptions) -> Result<MappedVectors> {
    let path = dir.join(&m.vectors_file);
    let file = File::open(&path).map_err(io_err("cannot open", &path))?;
    let md = file.metadata().map_err(io_err("cannot stat", &path))?;
    let (len, id) = (md.len(), FileId::of(&md));
    let damaged = |reason: String| RetrievalError::Damaged {
        path: path.clone(),
        reason,
    };
    if !md.is_file() {
        return Err(damaged("it is not a regular file".into()));
    }
    if len != m.vectors_bytes {
        return Err(damaged(format!(
            "it is {len} bytes long but the manifest records {} (truncated or overwritten)",
            m.vectors_bytes
        )));
    }
    let map = GuardedMap::map(&file, &path, true).map_err(io_err("cannot memory-map", &path))?;
    if opts.verify_checksum {
        let crc = parallel_crc32(&map);
        map.check()?;
        if crc != m.vectors_crc32 {
            return Err(damaged(format!(
                "its CRC-32 is {crc:08x} but the manifest records {:08x}",
                m.vectors_crc32
            )));
        }
    }
    let st = safetensors::SafeTensors::deserialize(&map)
        .map_err(|e| damaged(format!("bad safetensors header: {e}")))?;
    let view = st
        .tensor(VECTORS_KEY)
        .map_err(|_| damaged(format!("no `{VECTORS_KEY}` tensor")))?;
    if view.dtype() != m.dtype.safetensors() || view.shape() != [m.count, m.dimension] {
        return Err(damaged(format!(
            "it holds {:?} {:?} but the manifest says {:?} [{}, {}]",
            view.dtype(),
            view.shape(),
            m.dtype,
            m.count,
            m.dimension
        )));
    }
    let offset = view.data().as_ptr() as usize - map.as_ptr() as usize;
    map.check()?;
    if !offset.is_multiple_of(m.dtype.size()) {
        return Err(damaged(format!(
            "its data starts at unaligned offset {offset}"
        )));
    }
    Ok(MappedVectors { map, offset, id })
}

/// Largest manifest read (a version-1 manifest holds every row inline).
const MAX_MANIFEST_BYTES: u64 = 4 << 30;

/// The whole of `path` if it is a regular file of at most `max` bytes (a FIFO or device in an
/// index directory would block or never end); a non-blocking open, so the check is made on
/// what was opened.
pub(crate) fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(target_os = "linux")]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_NONBLOCK);
    let f = o.open(path)?;
    let md = f.metadata()?;
    let bad = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
    if !md.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if md.len() > max {
        return Err(bad(format!(
            "{} bytes is more than the {max} expected",
            md.len()
        )));
    }
    let mut buf = Vec::with_capacity(md.len() as usize);
    f.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(bad(format!("it grew past the {max} bytes expected")));
    }
    Ok(buf)
}

/// CRC-32 of `bytes`, computed on all threads and combined.
pub(crate) fn parallel_crc32(bytes: &[u8]) -> u32 {
    const CHUNK: usize = 8 << 20;
    bytes
        .par_chunks(CHUNK)
        .map(|c| {
            let mut h = crc32fast::Hasher::new();
            h.update(c);
            h
        })
        .reduce_with(|mut a, b| {
            a.combine(&b);
            a
        })
        .map_or(0, |h| h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_crc_equals_serial() {
        let data: Vec<u8> = (0..20_000_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761) as u8)
            .collect();
        assert_eq!(parallel_crc32(&data), crc32fast::hash(&data));
        assert_eq!(parallel_crc32(&[]), crc32fast::hash(&[]));
    }

    #[test]
    fn own_file_names() {
        assert!(is_own_file("manifest.json"));
        assert!(is_own_file("vectors-12.safetensors"));
        assert!(is_own_file(".vectors-3.safetensors.77.tmp"));
        assert!(!is_own_file("vectors-x.safetensors"));
        assert!(!is_own_file("photo.jpg"));
        // What a write killed before its rename leaves behind.
        let dir = tempfile::tempdir().unwrap();
        let (_, left) = temp_file_in(dir.path(), "vectors-3.safetensors")
            .unwrap()
            .keep()
            .unwrap();
        let left = left.file_name().unwrap().to_str().unwrap();
        assert!(is_own_file(left) && is_temp_file(left), "{left}");
        assert!(!is_temp_file("vectors-3.safetensors") && !is_temp_file("manifest.json"));
    }
}
