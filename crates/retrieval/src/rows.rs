//! The rows file of a version-2 (or 3) index: what each row stands for (image path, size and
//! modification time; caption; id; or shard sample), memory-mapped and read one row at a time.
//!
//! Layout (all integers little-endian; every array starts 8-byte aligned):
//!
//! | bytes                 | what                                                       |
//! |-----------------------|------------------------------------------------------------|
//! | 8                     | magic `CLIPROWS`                                           |
//! | 4                     | layout version, 1                                          |
//! | 4                     | kind: 0 images, 1 captions, 2 ids, 3 samples               |
//! | 8                     | `count`, the number of rows                                |
//! | 8                     | `text_bytes`, the length of the text blob                  |
//! | 8 × (`F`×`count` + 1) | `u64` offsets: field `j` of row `i` is                     |
//! |                       | `text[off[F*i+j]..off[F*i+j+1]]`                           |
//! | 8 × `count`           | images: `u64` file sizes; samples: image member offsets    |
//! | 8 × `count`           | images: `i64` modification times, ns since the epoch;      |
//! |                       | samples: image member lengths                              |
//! | `text_bytes`          | UTF-8 text of all rows' fields, back to back               |
//!
//! A row has `F` text fields: one (the image path relative to the root, the caption or the
//! id) for kinds 0–2, four for samples (shard, key, image extension, caption). Kind 3 came
//! with manifest version 3; the layout of kinds 0–2 is unchanged.
//!
//! Opening checks the length against the manifest and the header against itself (and the
//! whole file's CRC-32 unless told not to); a row's offsets and UTF-8 are checked when it is
//! read, so a damaged row is an error naming the file, never a panic or garbage.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::invalid;
use crate::files::{map_recorded, ChecksummedWriter};
use crate::guard::{FileId, GuardedMap};
use crate::manifest::{Entries, EntriesKind, ImageEntry, SampleEntry};
use crate::{Result, RetrievalError};

const MAGIC: &[u8; 8] = b"CLIPROWS";
const LAYOUT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 32;

/// Kind codes in the header.
fn kind_code(kind: &EntriesKind) -> u32 {
    match kind {
        EntriesKind::Images { .. } => 0,
        EntriesKind::Captions => 1,
        EntriesKind::Ids => 2,
        EntriesKind::Samples { .. } => 3,
    }
}

/// Text fields per row.
fn fields(kind: &EntriesKind) -> usize {
    match kind {
        EntriesKind::Samples { .. } => SAMPLE_FIELDS,
        _ => 1,
    }
}

/// A sample row's fields: shard, key, extension, caption.
const SAMPLE_FIELDS: usize = 4;

/// Whether rows of `kind` carry the two `u64` arrays.
fn has_numbers(kind: &EntriesKind) -> bool {
    matches!(
        kind,
        EntriesKind::Images { .. } | EntriesKind::Samples { .. }
    )
}

/// Text field `j` of row `i` of `entries` as stored in the blob.
fn row_text(entries: &Entries, i: usize, j: usize) -> Result<&str> {
    Ok(match entries {
        Entries::Images { files, .. } => {
            let p = &files[i].path;
            p.to_str().ok_or_else(|| {
                invalid(
                    "image path",
                    p.display(),
                    "is not valid UTF-8 and cannot be stored",
                )
            })?
        }
        Entries::Captions { captions } => &captions[i],
        Entries::Ids { ids } => &ids[i],
        Entries::Samples { samples, .. } => {
            let s = &samples[i];
            [&s.shard, &s.key, &s.ext, &s.caption][j]
        }
    })
}

/// The two `u64` arrays of `entries`, if its kind has them.
fn numbers(entries: &Entries) -> Option<(Vec<u64>, Vec<u64>)> {
    match entries {
        Entries::Images { files, .. } => {
            Some(files.iter().map(|f| (f.size, f.mtime_ns as u64)).unzip())
        }
        Entries::Samples { samples, .. } => Some(samples.iter().map(|s| (s.offset, s.len)).unzip()),
        Entries::Captions { .. } | Entries::Ids { .. } => None,
    }
}

/// Writes the rows of `entries` (`count` of them) to `file`; returns its length and CRC-32.
pub(crate) fn write_rows(
    file: &mut File,
    path: &Path,
    entries: &Entries,
    count: usize,
) -> Result<(u64, u32)> {
    let kind = EntriesKind::of(entries);
    let f = fields(&kind);
    let mut offsets = Vec::with_capacity(f * count + 1);
    let mut at = 0u64;
    offsets.push(at);
    for i in 0..count {
        for j in 0..f {
            at += row_text(entries, i, j)?.len() as u64;
            offsets.push(at);
        }
    }
    let mut w = ChecksummedWriter::new(file, path);
    let mut put = |bytes: &[u8]| w.put(bytes);
    put(MAGIC)?;
    put(&LAYOUT_VERSION.to_le_bytes())?;
    put(&kind_code(&kind).to_le_bytes())?;
    put(&(count as u64).to_le_bytes())?;
    put(&at.to_le_bytes())?;
    for o in &offsets {
        put(&o.to_le_bytes())?;
    }
    if let Some((a, b)) = numbers(entries) {
        for x in a.iter().chain(&b) {
            put(&x.to_le_bytes())?;
        }
    }
    for i in 0..count {
        for j in 0..f {
            put(row_text(entries, i, j)?.as_bytes())?;
        }
    }
    w.finish()
}

/// A validated, memory-mapped rows file.
pub(crate) struct MappedRows {
    map: GuardedMap,
    /// The file's identity when opened.
    id: FileId,
    count: usize,
    /// Text fields per row.
    fields: usize,
    /// Whether rows carry the two `u64` arrays.
    numbers: bool,
    /// Byte offset of the text blob.
    text_at: usize,
}

impl std::fmt::Debug for MappedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedRows")
            .field("path", &self.map.path())
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl MappedRows {
    /// Maps `path` and checks it against what the manifest records: `bytes` long, `crc32`
    /// (when `verify_checksum`), `count` rows of `kind`.
    pub(crate) fn open(
        path: &Path,
        bytes: u64,
        crc32: u32,
        kind: &EntriesKind,
        count: usize,
        verify_checksum: bool,
    ) -> Result<Self> {
        let checks = (bytes, crc32);
        let (map, id) = map_recorded(path, checks, verify_checksum, HEADER_BYTES as u64, false)?;
        let len = bytes;
        let damaged = |reason: String| RetrievalError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let u32_at = |at: usize| u32::from_le_bytes(map[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().expect("8 bytes"));
        if &map[..8] != MAGIC {
            return Err(damaged("it does not start with CLIPROWS".into()));
        }
        let version = u32_at(8);
        if version != LAYOUT_VERSION {
            return Err(damaged(format!(
                "its layout version is {version}, this build reads {LAYOUT_VERSION}"
            )));
        }
        let code = u32_at(12);
        if code != kind_code(kind) {
            return Err(damaged(format!(
                "it holds rows of kind {code} but the manifest says {}",
                kind.name()
            )));
        }
        let stored = u64_at(16);
        if stored != count as u64 {
            return Err(damaged(format!(
                "it holds {stored} rows but the manifest records {count}"
            )));
        }
        let (fields, numbers) = (fields(kind), has_numbers(kind));
        let text_bytes = u64_at(24);
        let arrays =
            (fields as u64 * count as u64 + 1) * 8 + if numbers { count as u64 * 16 } else { 0 };
        let text_at = HEADER_BYTES as u64 + arrays;
        if text_at.checked_add(text_bytes) != Some(len) {
            return Err(damaged(format!(
                "its header describes {count} rows and {text_bytes} bytes of text, which do not \
                 add up to its length {len}"
            )));
        }
        let rows = Self {
            map,
            id,
            count,
            fields,
            numbers,
            text_at: text_at as usize,
        };
        let spanned = rows.offset(0) == 0 && rows.offset(fields * count) == text_bytes;
        rows.map.check()?;
        if !spanned {
            return Err(damaged(format!(
                "its offsets do not span its {text_bytes} bytes of text"
            )));
        }
        Ok(rows)
    }

    pub(crate) fn path(&self) -> &Path {
        self.map.path()
    }

    /// The file's identity when it was opened.
    pub(crate) fn id(&self) -> &FileId {
        &self.id
    }

    /// Whether the file is still whole under the mapping (see [`GuardedMap::check`]).
    pub(crate) fn check(&self) -> Result<()> {
        self.map.check()
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.map[at..at + 8].try_into().expect("8 bytes"))
    }

    /// Entry `i` of the offsets array (`i <= count`, checked by callers).
    fn offset(&self, i: usize) -> u64 {
        self.u64_at(HEADER_BYTES + 8 * i)
    }

    fn damaged(&self, i: usize, reason: &str) -> RetrievalError {
        RetrievalError::Damaged {
            path: self.path().to_path_buf(),
            reason: format!("row {i} {reason}"),
        }
    }

    /// The text of row `i < count`: image path, caption or id (a sample's shard).
    pub(crate) fn text(&self, i: usize) -> Result<&str> {
        self.field(i, 0)
    }

    /// Text field `j < fields` of row `i < count`.
    fn field(&self, i: usize, j: usize) -> Result<&str> {
        let k = self.fields * i + j;
        let (a, b) = (self.offset(k), self.offset(k + 1));
        let text_len = (self.map.len() - self.text_at) as u64;
        if a > b || b > text_len {
            return Err(self.damaged(i, &format!("has bad offsets {a}..{b}")));
        }
        let bytes = &self.map[self.text_at + a as usize..self.text_at + b as usize];
        let text = std::str::from_utf8(bytes).map_err(|_| self.damaged(i, "is not valid UTF-8"));
        // Zeros read from a truncated file are valid UTF-8: only the mark tells them apart.
        self.map.check()?;
        text
    }

    /// Row `i < count`'s two numbers (image indexes: size and mtime; samples: offset and
    /// length).
    fn numbers(&self, i: usize) -> Result<(u64, u64)> {
        debug_assert!(self.numbers);
        let first = HEADER_BYTES + 8 * (self.fields * self.count + 1);
        let second = first + 8 * self.count;
        let got = (self.u64_at(first + 8 * i), self.u64_at(second + 8 * i));
        self.map.check()?;
        Ok(got)
    }

    /// Row `i < count` of an image index.
    pub(crate) fn image(&self, i: usize) -> Result<ImageEntry> {
        let (size, mtime) = self.numbers(i)?;
        Ok(ImageEntry {
            path: PathBuf::from(self.text(i)?),
            size,
            mtime_ns: mtime as i64,
        })
    }

    /// Row `i < count` of a samples index.
    pub(crate) fn sample(&self, i: usize) -> Result<SampleEntry> {
        debug_assert_eq!(self.fields, SAMPLE_FIELDS);
        let (offset, len) = self.numbers(i)?;
        Ok(SampleEntry {
            shard: self.field(i, 0)?.to_string(),
            key: self.field(i, 1)?.to_string(),
            ext: self.field(i, 2)?.to_string(),
            caption: self.field(i, 3)?.to_string(),
            offset,
            len,
        })
    }
}
