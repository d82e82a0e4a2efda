//! The journal of a build from shards (`clip index build --data`): the same file, framing,
//! lock and tear handling as the image journal ([`super`]), with its own magic and two kinds
//! of record, told apart by their first byte:
//!
//! - `0`, a sample: `[shard][key][ext][caption]` (each `[u32 length][UTF-8]`), `[u64 offset]
//!   [u64 length]` of its image member, then its `dim × f32` unit vector;
//! - `1`, a finished shard: JSON `{"shard": …, "skipped": [[name, reason], …]}`, written
//!   after the shard's last sample, and only when the shard was read to its end.
//!
//! A resumed build keeps the samples of finished shards and reads every other shard again
//! from its start (samples journalled for a shard that was being read are dropped), so no
//! sample is indexed twice and none is lost.

use std::collections::HashMap;
use std::path::Path;

use retrieval::SampleEntry;
use serde::{Deserialize, Serialize};

use super::{frame, read_records, JournalFile, Unusable, FRAME, SAMPLES_MAGIC};
use crate::Result;

const SAMPLE: u8 = 0;
const FINISHED: u8 = 1;

/// Longest record besides its vector: four strings of at most a caption's size.
const MAX_FIELDS: usize = 4 << 20;

/// What the journalled vectors were made for.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Header {
    /// The model as recorded in manifests.
    model: String,
    /// Floats per vector.
    dim: usize,
}

/// A finished shard as journalled.
#[derive(Debug, Serialize, Deserialize)]
struct Finished {
    shard: String,
    skipped: Vec<(String, String)>,
}

/// The samples of one finished shard: each with where its vector lies, and what was skipped.
#[derive(Debug, Default)]
pub(in crate::index) struct ShardRows {
    pub rows: Vec<(SampleEntry, u64)>,
    pub skipped: Vec<(String, String)>,
}

/// An open journal of a build from shards, positioned for appending.
pub(in crate::index) struct SampleJournal {
    file: JournalFile,
    dim: usize,
    /// Shards read to their end, by name.
    done: HashMap<String, ShardRows>,
}

impl SampleJournal {
    /// The journal an interrupted build from shards into `dir` left for `model`; `None` when
    /// there is none or it cannot be used (then deleted, with a warning saying why).
    pub(in crate::index) fn resume(
        dir: &Path,
        model: &str,
        warnings: &mut Vec<String>,
    ) -> Result<Option<SampleJournal>> {
        // Samples of the shard being read, until its `FINISHED` record moves them to `done`.
        let (mut open, mut done) = (HashMap::<String, ShardRows>::new(), HashMap::new());
        let again = "every shard is read again";
        let found = JournalFile::resume(dir, warnings, again, |file| {
            let check = |h: &Header| {
                if h.model != model {
                    let m = &h.model;
                    return Err(Unusable::Other(format!(
                        "for model {m} (this build: {model})"
                    )));
                }
                Ok((MAX_FIELDS + h.dim * 4) as u64)
            };
            read_records(file, SAMPLES_MAGIC, check, |h: &Header, at, payload| {
                match *payload.first()? {
                    SAMPLE => {
                        let (e, vector_at) = parse_sample(payload, h.dim * 4)?;
                        let rows = &mut open.entry(e.shard.clone()).or_default().rows;
                        rows.push((e, at + vector_at as u64));
                    }
                    FINISHED => {
                        let f: Finished = serde_json::from_slice(&payload[1..]).ok()?;
                        let mut rows = open.remove(&f.shard).unwrap_or_default();
                        rows.skipped = f.skipped;
                        done.insert(f.shard, rows);
                    }
                    _ => return None,
                }
                Some(())
            })
        })?;
        Ok(found.map(|(file, header)| SampleJournal {
            file,
            dim: header.dim,
            done,
        }))
    }

    /// Starts a new journal in `dir` (created if missing) for vectors of `dim` floats made by
    /// `model`, replacing any journal there.
    pub(in crate::index) fn create(dir: &Path, model: &str, dim: usize) -> Result<Self> {
        let header = Header {
            model: model.to_string(),
            dim,
        };
        Ok(Self {
            file: JournalFile::create(dir, SAMPLES_MAGIC, &header)?,
            dim,
            done: HashMap::new(),
        })
    }

    /// Floats per vector.
    pub(in crate::index) fn dim(&self) -> usize {
        self.dim
    }

    /// The file on disk.
    pub(in crate::index) fn path(&self) -> &Path {
        &self.file.path
    }

    /// The journalled rows of `shard`, if a build read it to its end.
    pub(in crate::index) fn take_finished(&mut self, shard: &str) -> Option<ShardRows> {
        self.done.remove(shard)
    }

    /// Appends one batch of `(sample, unit vector)` in a single synced write; returns where
    /// each vector lies.
    pub(in crate::index) fn append<'a>(
        &mut self,
        batch: impl IntoIterator<Item = (&'a SampleEntry, &'a [f32])>,
    ) -> Result<Vec<u64>> {
        let end = self.file.end()?;
        let (mut bytes, mut at, mut payload) = (Vec::new(), Vec::new(), Vec::new());
        for (e, v) in batch {
            assert_eq!(v.len(), self.dim, "vector of the journal's dimension");
            payload.clear();
            payload.push(SAMPLE);
            for s in [&e.shard, &e.key, &e.ext, &e.caption] {
                payload.extend_from_slice(&(s.len() as u32).to_le_bytes());
                payload.extend_from_slice(s.as_bytes());
            }
            payload.extend_from_slice(&e.offset.to_le_bytes());
            payload.extend_from_slice(&e.len.to_le_bytes());
            let vector_at = payload.len();
            payload.extend(v.iter().flat_map(|x| x.to_le_bytes()));
            at.push(end + bytes.len() as u64 + FRAME + vector_at as u64);
            frame(&mut bytes, &payload);
        }
        self.file.write(&bytes)?;
        Ok(at)
    }

    /// Records that `shard` was read to its end, with what of it was skipped (after its
    /// last sample's batch).
    pub(in crate::index) fn finish_shard(
        &mut self,
        shard: &str,
        skipped: &[(String, String)],
    ) -> Result<()> {
        let f = Finished {
            shard: shard.to_string(),
            skipped: skipped.to_vec(),
        };
        let mut payload = vec![FINISHED];
        serde_json::to_writer(&mut payload, &f).expect("a record serialises");
        let mut bytes = Vec::new();
        frame(&mut bytes, &payload);
        self.file.write(&bytes)
    }

    /// Reads the vector at `offset` into `out`.
    pub(in crate::index) fn vector(
        &self,
        offset: u64,
        out: &mut [f32],
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.file.vector(offset, out, buf)
    }

    /// Deletes the journal (once what it held is safely in the index).
    pub(in crate::index) fn remove(self) {
        self.file.remove();
    }
}

/// A sample record's entry and the vector's offset within the payload, if well formed.
fn parse_sample(p: &[u8], vector_bytes: usize) -> Option<(SampleEntry, usize)> {
    let mut at = 1;
    let mut text = || -> Option<String> {
        let n = u32::from_le_bytes(p.get(at..at + 4)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(p.get(at + 4..at + 4 + n)?).ok()?;
        at += 4 + n;
        Some(s.to_string())
    };
    let (shard, key, ext, caption) = (text()?, text()?, text()?, text()?);
    let offset = u64::from_le_bytes(p.get(at..at + 8)?.try_into().ok()?);
    let len = u64::from_le_bytes(p.get(at + 8..at + 16)?.try_into().ok()?);
    at += 16;
    if p.len() != at + vector_bytes || shard.is_empty() {
        return None;
    }
    let e = SampleEntry {
        shard,
        key,
        ext,
        caption,
        offset,
        len,
    };
    Some((e, at))
}
