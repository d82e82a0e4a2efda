//! The rows file of a version-2 index: what each row stands for (image path, size and
//! modification time; caption; or id), memory-mapped and read one row at a time.
//!
//! Layout (all integers little-endian; every array starts 8-byte aligned):
//!
//! | bytes                 | what                                                       |
//! |-----------------------|------------------------------------------------------------|
//! | 8                     | magic `CLIPROWS`                                           |
//! | 4                     | layout version, 1                                          |
//! | 4                     | kind: 0 images, 1 captions, 2 ids                          |
//! | 8                     | `count`, the number of rows                                |
//! | 8                     | `text_bytes`, the length of the text blob                  |
//! | 8 × (`count` + 1)     | `u64` offsets: row `i`'s text is `text[off[i]..off[i+1]]`  |
//! | 8 × `count`           | images only: `u64` file sizes                              |
//! | 8 × `count`           | images only: `i64` modification times, ns since the epoch  |
//! | `text_bytes`          | UTF-8 text of all rows: image paths relative to the root,  |
//! |                       | captions or ids, back to back                              |
//!
//! Opening checks the length against the manifest and the header against itself (and the
//! whole file's CRC-32 unless told not to); a row's offsets and UTF-8 are checked when it is
//! read, so a damaged row is an error naming the file, never a panic or garbage.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::invalid;
use crate::files::{map_recorded, ChecksummedWriter};
use crate::guard::{FileId, GuardedMap};
use crate::manifest::{Entries, EntriesKind, ImageEntry};
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
    }
}

/// The text of row `i` of `entries` as stored in the blob.
fn row_text(entries: &Entries, i: usize) -> Result<&str> {
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
    })
}

/// Writes the rows of `entries` (`count` of them) to `file`; returns its length and CRC-32.
pub(crate) fn write_rows(
    file: &mut File,
    path: &Path,
    entries: &Entries,
    count: usize,
) -> Result<(u64, u32)> {
    let kind = EntriesKind::of(entries);
    let mut offsets = Vec::with_capacity(count + 1);
    let mut at = 0u64;
    offsets.push(at);
    for i in 0..count {
        at += row_text(entries, i)?.len() as u64;
        offsets.push(at);
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
    if let Entries::Images { files, .. } = entries {
        for f in files {
            put(&f.size.to_le_bytes())?;
        }
        for f in files {
            put(&f.mtime_ns.to_le_bytes())?;
        }
    }
    for i in 0..count {
        put(row_text(entries, i)?.as_bytes())?;
    }
    w.finish()
}

/// A validated, memory-mapped rows file.
pub(crate) struct MappedRows {
    map: GuardedMap,
    /// The file's identity when opened.
    id: FileId,
    count: usize,
    images: bool,
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
        let images = matches!(kind, EntriesKind::Images { .. });
        let text_bytes = u64_at(24);
        let arrays = (count as u64 + 1) * 8 + if images { count as u64 * 16 } else { 0 };
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
            images,
            text_at: text_at as usize,
        };
        let spanned = rows.offset(0) == 0 && rows.offset(count) == text_bytes;
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

    /// The text of row `i < count`: image path, caption or id.
    pub(crate) fn text(&self, i: usize) -> Result<&str> {
        let (a, b) = (self.offset(i), self.offset(i + 1));
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

    /// Row `i < count` of an image index.
    pub(crate) fn image(&self, i: usize) -> Result<ImageEntry> {
        debug_assert!(self.images);
        let sizes = HEADER_BYTES + 8 * (self.count + 1);
        let mtimes = sizes + 8 * self.count;
        let entry = ImageEntry {
            path: PathBuf::from(self.text(i)?),
            size: self.u64_at(sizes + 8 * i),
            mtime_ns: self.u64_at(mtimes + 8 * i) as i64,
        };
        self.map.check()?;
        Ok(entry)
    }
}
