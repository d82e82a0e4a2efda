//! The file primitives of an index directory: whole-or-nothing writes, checksummed writing,
//! bounded reads of regular files, and the CRC-32 of a mapped file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use atomic_write_file::AtomicWriteFile;
use rayon::prelude::*;

use crate::error::io_err;
use crate::guard::{FileId, GuardedMap};
use crate::{Result, RetrievalError};

/// Writes `path` whole or not at all: `write` fills a temporary sibling (`.NAME.<random>`, a
/// name [`crate::store`] recognises as a leftover), which `atomic-write-file` syncs and
/// renames over `path` (syncing the directory) only if `write` succeeds, and deletes otherwise.
pub(crate) fn write_atomically<T>(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<T>,
) -> Result<T> {
    let mut file =
        AtomicWriteFile::open(path).map_err(io_err("cannot create a temporary file for", path))?;
    let out = write(&mut file)?;
    file.commit()
        .map_err(io_err("cannot sync and rename into place", path))?;
    Ok(out)
}

/// Maps a data file the manifest records and checks it against the record before anything
/// reads it: a regular file exactly `bytes` long (and at least `min_len`), whose CRC-32 is
/// `crc32` when `verify` (read once, in parallel). Pages are pre-faulted when `populate`.
pub(crate) fn map_recorded(
    path: &Path,
    (bytes, crc32): (u64, u32),
    verify: bool,
    min_len: u64,
    populate: bool,
) -> Result<(GuardedMap, FileId)> {
    let file = File::open(path).map_err(io_err("cannot open", path))?;
    let md = file.metadata().map_err(io_err("cannot stat", path))?;
    let (len, id) = (md.len(), FileId::of(&md));
    let damaged = |reason: String| RetrievalError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    if !md.is_file() {
        return Err(damaged("it is not a regular file".into()));
    }
    if len != bytes {
        return Err(damaged(format!(
            "it is {len} bytes long but the manifest records {bytes} (truncated or overwritten)"
        )));
    }
    if len < min_len {
        return Err(damaged(format!("it is only {len} bytes long")));
    }
    let map = GuardedMap::map(&file, path, populate).map_err(io_err("cannot memory-map", path))?;
    if verify {
        let crc = parallel_crc32(&map);
        map.check()?;
        if crc != crc32 {
            return Err(damaged(format!(
                "its CRC-32 is {crc:08x} but the manifest records {crc32:08x}"
            )));
        }
    }
    Ok((map, id))
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
}
