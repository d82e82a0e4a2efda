//! Writing an index directory and mapping its vectors: `manifest.json` ([`crate::manifest`]),
//! one `vectors-<generation>.safetensors` and (format version 2) one `rows-<generation>.bin`
//! ([`crate::rows`] describes its layout).
//!
//! Writes never touch a file a reader may have open: each build writes its vectors and rows
//! files under a new generation name (each via a temporary name and a rename), then replaces
//! `manifest.json` the same way, and only then deletes the previous generation. A crash at any
//! point leaves the old manifest pointing at the old, complete files. The manifest records each
//! file's byte length and CRC-32, so a truncated or overwritten file is reported as damaged
//! instead of being searched as garbage. An optional `ivf.safetensors` holds IVF lists for the
//! current vectors; every write deletes it, and readers check the vectors identity it records.

use std::fs::File;
use std::io::Write;
use std::path::Path;

#[cfg(target_endian = "big")]
compile_error!(
    "index files are little-endian and memory-mapped as is; big-endian targets are not supported"
);

use crate::error::{io_err, json_err};
use crate::files::{map_recorded, write_atomically, ChecksummedWriter};
use crate::guard::{FileId, GuardedMap};
use crate::manifest::{
    check_shape, generation, rows_file_name, vectors_file_name, DType, Entries, IndexSpec,
    Manifest, RowsFile, ANN_FILE, FORMAT_NAME, MANIFEST_FILE,
};
use crate::normalize::check_unit_rows;
use crate::{Result, RetrievalError};

/// The tensor holding the vectors inside the vectors file.
const VECTORS_KEY: &str = "vectors";

/// Whether `spec` needs a rows file: everything but ids that are row numbers.
fn needs_rows_file(entries: &Entries) -> bool {
    !matches!(entries, Entries::Ids { ids } if ids.is_empty())
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
    let (bytes, crc) = write_atomically(&final_vectors, |file| {
        write_vectors(file, &final_vectors, spec, &mut fill)
    })?;
    // Written after the vectors and before the manifest, like the vectors: until the manifest
    // names them, both new files are unreferenced leftovers.
    let rows = if needs_rows_file(&spec.entries) {
        let file = rows_file_name(gen);
        let path = dir.join(&file);
        let res = write_atomically(&path, |f| {
            crate::rows::write_rows(f, &path, &spec.entries, spec.count)
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
    let res = write_atomically(&manifest_path, |f| {
        let json = serde_json::to_vec_pretty(&manifest).map_err(json_err(&manifest_path))?;
        f.write_all(&json)
            .map_err(io_err("cannot write", &manifest_path))
    });
    if let Err(e) = res {
        // The new files are unreferenced; the old manifest still points at the old ones.
        let _ = std::fs::remove_file(&final_vectors);
        if let Some(r) = &manifest.rows {
            let _ = std::fs::remove_file(dir.join(&r.file));
        }
        return Err(e);
    }
    remove_stale_files(dir, gen);
    Ok(manifest)
}

/// Checks what can be checked of `spec` before any vector is written.
pub(crate) fn validate_spec(spec: &IndexSpec) -> Result<()> {
    check_shape(spec.dimension, spec.count, spec.entries.len())
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

fn is_own_file(name: &str) -> bool {
    name == MANIFEST_FILE || name == ANN_FILE || generation(name).is_some() || is_temp_file(name)
}

/// A leftover of an interrupted write: `.NAME.<6 random letters or digits>` from
/// [`write_atomically`] (NAME one of the index's files), or any dot name ending in `.tmp` (the
/// `clip` binary's build journal, and the temporaries of builds before `atomic-write-file`).
fn is_temp_file(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let atomic = rest.rsplit_once('.').is_some_and(|(base, random)| {
        random.len() == 6
            && random.bytes().all(|b| b.is_ascii_alphanumeric())
            && (base == MANIFEST_FILE || base == ANN_FILE || generation(base).is_some())
    });
    atomic || rest.ends_with(".tmp")
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

/// Maps and validates the vectors file `m` names.
pub(crate) fn map_vectors(dir: &Path, m: &Manifest, opts: OpenOptions) -> Result<MappedVectors> {
    let path = dir.join(&m.vectors_file);
    let checks = (m.vectors_bytes, m.vectors_crc32);
    let (map, id) = map_recorded(&path, checks, opts.verify_checksum, 0, true)?;
    let damaged = |reason: String| RetrievalError::Damaged {
        path: path.clone(),
        reason,
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use atomic_write_file::AtomicWriteFile;

    #[test]
    fn own_file_names() {
        assert!(is_own_file("manifest.json"));
        assert!(is_own_file("vectors-12.safetensors"));
        assert!(is_own_file(".vectors-3.safetensors.77.tmp"));
        assert!(!is_own_file("vectors-x.safetensors"));
        assert!(!is_own_file("photo.jpg"));
        // What a write killed before its rename leaves behind (forgetting the file skips the
        // deletion its drop would do).
        let dir = tempfile::tempdir().unwrap();
        let unfinished = AtomicWriteFile::open(dir.path().join("vectors-3.safetensors")).unwrap();
        std::mem::forget(unfinished);
        let left = list_dir(dir.path()).unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(is_own_file(&left[0]) && is_temp_file(&left[0]), "{left:?}");
        assert!(!is_temp_file("vectors-3.safetensors") && !is_temp_file("manifest.json"));
        assert!(!is_temp_file(".photo.jpg.abcdef") && !is_temp_file(".manifest.json.abc"));
    }
}
