//! The build journal: what `clip index build` has embedded so far, appended batch by batch to a
//! file inside the index directory, so that a killed build resumes where it stopped instead of
//! embedding everything again, and so that the new vectors never have to be held in memory.
//!
//! Layout (little-endian): the 8-byte magic [`MAGIC`], then records of
//! `[u32 payload length][u32 CRC-32 of the payload][payload]`. The first payload is the JSON
//! [`Header`] (which model, folder and dimension the vectors are for); each later one is one
//! image: `[u64 size][i64 mtime_ns][u32 path length][path, UTF-8][dim × f32]`, the unit vector
//! exactly as it goes into the index. Every batch is written with one `write` and synced, so a
//! kill can tear at most the records of the batch in flight: a record of plausible length that
//! runs past the end of the file, a last record that fails its CRC, or a tail of zeros is such a
//! tear and is cut off; any other record that fails its checks (an impossible length, a CRC
//! mismatch with records after it) makes the whole journal unusable: it is deleted with a
//! warning and its images are embedded again. No unchecked byte is ever read as a vector.
//!
//! The open journal holds an exclusive advisory lock (`flock`) for the whole build: two builds
//! into one directory would interleave their appends, so the second stops with an error naming
//! the journal instead. The kernel drops the lock with the process, so a killed build's journal
//! is free for the next one.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use retrieval::ImageEntry;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::io_at;
use crate::{Error, Result};

/// File name inside the index directory. A dot name ending in `.tmp` is what `retrieval`
/// treats as a leftover of an interrupted write: `check_destination` accepts a directory
/// holding only it (a killed first build), and a successful `write_index` deletes it.
pub(super) const FILE: &str = ".build-journal.tmp";

/// The first bytes of a journal: what it is and the layout's version.
const MAGIC: &[u8; 8] = b"clipjnl1";

/// The first bytes of a journal of a build from shards ([`SampleJournal`]).
const SAMPLES_MAGIC: &[u8; 8] = b"clipjns1";

/// Size of `[length][crc]` before each payload.
const FRAME: u64 = 8;

/// Fixed part of an image payload: size, mtime, path length.
const FIXED: usize = 8 + 8 + 4;

/// Longest path a record may hold; a longer length field is damage, not data.
const MAX_PATH: usize = 1 << 16;

/// What the journalled vectors were made for; a journal for anything else is discarded.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Header {
    /// The model as recorded in manifests ([`super::model_id`]).
    model: String,
    /// The indexed folder (canonical); record paths are relative to it.
    root: PathBuf,
    /// Floats per vector.
    dim: usize,
}

/// Where a journalled vector lies and which version of its file it is for.
struct Row {
    size: u64,
    mtime_ns: i64,
    /// Byte offset of the vector's first float.
    offset: u64,
}

/// An open journal of a build from an image folder, positioned for appending.
pub(super) struct Journal {
    file: JournalFile,
    dim: usize,
    /// The latest record of each path (later records win).
    rows: HashMap<PathBuf, Row>,
}

impl Journal {
    /// The journal a previous, interrupted build into `dir` left for `model` over `root`, with
    /// a torn tail cut off; `None` when there is none, or when it cannot be used (it is then
    /// deleted and a warning naming it says why). An error when another build holds it.
    pub(super) fn resume(
        dir: &Path,
        model: &str,
        root: &Path,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Journal>> {
        let mut rows = HashMap::new();
        let again = "its images are embedded again";
        let found = JournalFile::resume(dir, warnings, again, |file| {
            let check = |h: &Header| {
                if h.model != model {
                    return Err(Unusable::Other(format!(
                        "for model {} (this build: {model})",
                        h.model
                    )));
                }
                if h.root != root {
                    return Err(Unusable::Other(format!(
                        "for images under {} (this build: {})",
                        h.root.display(),
                        root.display()
                    )));
                }
                Ok((FIXED + MAX_PATH + h.dim * 4) as u64)
            };
            read_records(file, MAGIC, check, |h: &Header, at, payload| {
                let (entry, vector_at) = parse_image(payload, h.dim * 4)?;
                let row = Row {
                    size: entry.size,
                    mtime_ns: entry.mtime_ns,
                    offset: at + vector_at as u64,
                };
                rows.insert(entry.path, row);
                Some(())
            })
        })?;
        Ok(found.map(|(file, header)| Journal {
            file,
            dim: header.dim,
            rows,
        }))
    }

    /// Starts a new journal in `dir` (created if missing) for vectors of `dim` floats made by
    /// `model` from the images under `root`, replacing any journal there.
    pub(super) fn create(dir: &Path, model: &str, root: &Path, dim: usize) -> Result<Journal> {
        let header = Header {
            model: model.to_string(),
            root: root.to_path_buf(),
            dim,
        };
        Ok(Journal {
            file: JournalFile::create(dir, MAGIC, &header)?,
            dim,
            rows: HashMap::new(),
        })
    }

    /// Floats per vector.
    pub(super) fn dim(&self) -> usize {
        self.dim
    }

    /// The file on disk.
    pub(super) fn path(&self) -> &Path {
        &self.file.path
    }

    /// Where the vector of `e` lies, if it was journalled for this very version of the file
    /// (same size and modification time).
    pub(super) fn find(&self, e: &ImageEntry) -> Option<u64> {
        self.rows
            .get(&e.path)
            .filter(|r| r.size == e.size && r.mtime_ns == e.mtime_ns)
            .map(|r| r.offset)
    }

    /// Appends one batch of `(file, unit vector)` in a single write and syncs it, so that it
    /// survives a kill; returns where each vector lies.
    pub(super) fn append<'a>(
        &mut self,
        batch: impl IntoIterator<Item = (&'a ImageEntry, &'a [f32])>,
    ) -> Result<Vec<u64>> {
        let end = self.file.end()?;
        let mut bytes = Vec::new();
        let mut at = Vec::new();
        let mut payload = Vec::new();
        for (e, v) in batch {
            assert_eq!(v.len(), self.dim, "vector of the journal's dimension");
            let p = e.path.to_str().ok_or_else(|| {
                // `scan_images` skips such names; this is a guard, not an expected path.
                Error::Input(format!("{} is not valid UTF-8", e.path.display()))
            })?;
            payload.clear();
            payload.extend_from_slice(&e.size.to_le_bytes());
            payload.extend_from_slice(&e.mtime_ns.to_le_bytes());
            payload.extend_from_slice(&(p.len() as u32).to_le_bytes());
            payload.extend_from_slice(p.as_bytes());
            let vector_at = payload.len();
            payload.extend(v.iter().flat_map(|x| x.to_le_bytes()));
            let offset = end + bytes.len() as u64 + FRAME + vector_at as u64;
            frame(&mut bytes, &payload);
            self.rows.insert(
                e.path.clone(),
                Row {
                    size: e.size,
                    mtime_ns: e.mtime_ns,
                    offset,
                },
            );
            at.push(offset);
        }
        self.file.write(&bytes)?;
        Ok(at)
    }

    /// Reads the vector at `offset` (from [`Journal::find`] or [`Journal::append`]) into `out`.
    pub(super) fn vector(&self, offset: u64, out: &mut [f32], buf: &mut Vec<u8>) -> Result<()> {
        self.file.vector(offset, out, buf)
    }

    /// Deletes the journal (once what it held is safely in the index).
    pub(super) fn remove(self) {
        self.file.remove();
    }
}

/// Why a journal could not be read.
enum Unusable {
    /// Written for another model, folder, dimension or kind of build.
    Other(String),
    /// Damaged beyond a torn tail, or not a journal.
    Damaged(String),
    /// Could not be read at all.
    Io(std::io::Error),
}

impl From<std::io::Error> for Unusable {
    fn from(e: std::io::Error) -> Self {
        Unusable::Io(e)
    }
}

/// The journal file of either kind, open and locked: its framing, appends and vector reads.
/// What the records mean is the kind's ([`Journal`], [`SampleJournal`]).
struct JournalFile {
    path: PathBuf,
    file: File,
}

impl JournalFile {
    /// Starts a new journal in `dir` (created if missing) with `magic` and `header`,
    /// replacing any journal there.
    fn create(dir: &Path, magic: &[u8; 8], header: &impl Serialize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let path = dir.join(FILE);
        let mut bytes = magic.to_vec();
        frame(
            &mut bytes,
            &serde_json::to_vec(header).expect("a header serialises"),
        );
        // Readable too: the index is written from it. Emptied only once locked, so that
        // another build's journal is never truncated under it.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_at(&path))?;
        lock(&file, &path)?;
        file.set_len(0)
            .and_then(|()| file.write_all(&bytes))
            .and_then(|()| file.sync_all())
            .map_err(io_at(&path))?;
        // Makes the new name durable; best-effort, as not every platform can sync a directory.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(JournalFile { path, file })
    }

    /// The journal an interrupted build left in `dir`, locked and read by `read`; `None` when
    /// there is none or `read` finds it unusable (it is then deleted, with a warning naming it
    /// that says why and ends in `again`). An error when another build holds it.
    fn resume<T>(
        dir: &Path,
        warnings: &mut Vec<String>,
        again: &str,
        read: impl FnOnce(&File) -> std::result::Result<T, Unusable>,
    ) -> Result<Option<(Self, T)>> {
        let path = dir.join(FILE);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                warnings.push(format!(
                    "cannot resume from the build journal {}: {e}; {again}",
                    path.display()
                ));
                return Ok(None);
            }
        };
        lock(&file, &path)?;
        Ok(match read(&file) {
            Ok(t) => Some((JournalFile { path, file }, t)),
            Err(why) => {
                let why = match why {
                    Unusable::Other(s) => format!("it was written {s}"),
                    Unusable::Damaged(s) => format!("it is damaged ({s})"),
                    Unusable::Io(e) => format!("it cannot be read ({e})"),
                };
                warnings.push(format!(
                    "discarding the build journal {}: {why}; {again}",
                    path.display()
                ));
                let _ = std::fs::remove_file(&path);
                None
            }
        })
    }

    /// Where the next append lands.
    fn end(&mut self) -> Result<u64> {
        self.file.seek(SeekFrom::End(0)).map_err(io_at(&self.path))
    }

    /// Appends `bytes` (whole records) in one write and syncs them, so that they survive a
    /// kill.
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .seek(SeekFrom::End(0))
            .and_then(|_| self.file.write_all(bytes))
            .and_then(|()| self.file.sync_data())
            .map_err(io_at(&self.path))
    }

    /// Reads the vector at `offset` into `out`.
    fn vector(&self, offset: u64, out: &mut [f32], buf: &mut Vec<u8>) -> Result<()> {
        let mut file = &self.file;
        buf.resize(out.len() * 4, 0);
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(buf))
            .map_err(io_at(&self.path))?;
        for (x, b) in out.iter_mut().zip(buf.chunks_exact(4)) {
            *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(())
    }

    /// Deletes the journal.
    fn remove(self) {
        let JournalFile { path, file } = self;
        drop(file);
        let _ = std::fs::remove_file(path);
    }
}

/// The kinds of journal by their magic, each named by the flag of the build that writes it.
const KINDS: [(&[u8; 8], &str); 2] = [(MAGIC, "--images"), (SAMPLES_MAGIC, "--data")];

/// Reads a journal of the kind `magic`: its JSON header, which `check` accepts by returning
/// the longest record it allows, then each record, handed to `record` with the header and
/// where its payload starts (`None` from it: the record is malformed). A torn tail is cut off.
fn read_records<H: DeserializeOwned>(
    file: &File,
    magic: &[u8; 8],
    check: impl FnOnce(&H) -> std::result::Result<u64, Unusable>,
    mut record: impl FnMut(&H, u64, &[u8]) -> Option<()>,
) -> std::result::Result<H, Unusable> {
    let len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 16, file);
    let mut found = [0u8; 8];
    if len < 8 || r.read_exact(&mut found).is_err() || &found != magic {
        if let Some((_, flag)) = KINDS.iter().find(|(m, _)| **m == found) {
            return Err(Unusable::Other(format!("by a build from {flag}")));
        }
        return Err(Unusable::Damaged("not a clip build journal".into()));
    }
    let mut pos = 8u64;
    let mut payload = Vec::new();
    let header: H = match next_record(&mut r, pos, len, 1 << 20, &mut payload)? {
        Next::Record(n) => {
            pos += FRAME + n;
            serde_json::from_slice(&payload)
                .map_err(|e| Unusable::Damaged(format!("header: {e}")))?
        }
        Next::End | Next::Torn => {
            return Err(Unusable::Damaged("the header is incomplete".into()));
        }
    };
    let max = check(&header)?;
    loop {
        match next_record(&mut r, pos, len, max, &mut payload)? {
            Next::End => break,
            Next::Torn => {
                drop(r);
                // The last batch was cut short by a kill: keep what came before it.
                file.set_len(pos)?;
                file.sync_data()?;
                break;
            }
            Next::Record(n) => {
                record(&header, pos + FRAME, &payload).ok_or_else(|| {
                    Unusable::Damaged(format!("record at byte {pos} is malformed"))
                })?;
                pos += FRAME + n;
            }
        }
    }
    Ok(header)
}

/// Deletes the journal in `dir`, if any (when the index turned out to be up to date), unless
/// a running build holds it.
pub(super) fn remove_in(dir: &Path) {
    let path = dir.join(FILE);
    if let Ok(file) = File::open(&path) {
        if lock(&file, &path).is_ok() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Takes the build's exclusive lock on the journal `file` at `path`, without waiting: held by
/// another build, it is an error naming the journal. A file system without locks (some network
/// mounts) builds unlocked, as before locks existed.
fn lock(file: &File, path: &Path) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Input(format!(
            "another `clip index build` is writing into {} (it holds {}); wait for it to \
             finish, or stop it and build again to resume what it embedded",
            path.parent().unwrap_or(path).display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            Ok(())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io_at(path)(e)),
    }
}

/// Appends `[len][crc][payload]` to `out`.
fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What follows a record boundary.
enum Next {
    /// A whole record whose payload (now in the buffer) has this many bytes.
    Record(u64),
    /// The end of the file.
    End,
    /// The tail of a write cut short: a record running past the end, or only zeros.
    Torn,
}

/// Reads the record at `pos` of a file of `len` bytes into `payload`, checking its CRC.
fn next_record(
    r: &mut impl Read,
    pos: u64,
    len: u64,
    max: u64,
    payload: &mut Vec<u8>,
) -> std::result::Result<Next, Unusable> {
    let left = len - pos;
    if left == 0 {
        return Ok(Next::End);
    }
    if left < FRAME {
        return Ok(Next::Torn);
    }
    let mut head = [0u8; FRAME as usize];
    r.read_exact(&mut head)?;
    let n = u64::from(u32::from_le_bytes(head[..4].try_into().expect("4 bytes")));
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if n == 0 || n > max {
        // No record is empty: a zero frame followed by zeros is space the file system
        // allocated for a write that never landed.
        if n == 0 && crc == 0 && zeros_to_end(r)? {
            return Ok(Next::Torn);
        }
        return Err(Unusable::Damaged(format!(
            "record at byte {pos} claims {n} bytes"
        )));
    }
    if FRAME + n > left {
        return Ok(Next::Torn);
    }
    payload.resize(n as usize, 0);
    r.read_exact(payload)?;
    if crc32fast::hash(payload) == crc {
        return Ok(Next::Record(n));
    }
    // A length that landed before its payload did.
    if payload.iter().all(|&b| b == 0) && zeros_to_end(r)? {
        return Ok(Next::Torn);
    }
    if FRAME + n == left {
        // The last record, written whole but wrong: the batch in flight when power failed.
        return Ok(Next::Torn);
    }
    Err(Unusable::Damaged(format!(
        "record at byte {pos} fails its CRC-32 check"
    )))
}

/// Whether everything left in `r` is zero bytes.
fn zeros_to_end(r: &mut impl Read) -> std::result::Result<bool, Unusable> {
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf)? {
            0 => return Ok(true),
            n if buf[..n].iter().any(|&b| b != 0) => return Ok(false),
            _ => {}
        }
    }
}

/// The file and the vector's offset within an image record's payload, if it is well formed.
fn parse_image(p: &[u8], vector_bytes: usize) -> Option<(ImageEntry, usize)> {
    let size = u64::from_le_bytes(p.get(..8)?.try_into().ok()?);
    let mtime_ns = i64::from_le_bytes(p.get(8..16)?.try_into().ok()?);
    let n = u32::from_le_bytes(p.get(16..20)?.try_into().ok()?) as usize;
    let path = std::str::from_utf8(p.get(FIXED..FIXED + n)?).ok()?;
    if p.len() != FIXED + n + vector_bytes || path.is_empty() {
        return None;
    }
    let entry = ImageEntry {
        path: PathBuf::from(path),
        size,
        mtime_ns,
    };
    Some((entry, FIXED + n))
}

mod samples;
pub(super) use samples::{SampleJournal, ShardRows};

#[cfg(test)]
mod tests;
