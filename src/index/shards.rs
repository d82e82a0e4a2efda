//! Building an index from webdataset shards (`clip index build --data`): local, `pipe:`,
//! http(s) or s3/gs/az shards, each streamed once from start to end by one of a few reader
//! threads while the samples read so far are embedded. Shards are never listed: a spec names
//! exactly the shards it expands to, as for `clip train --data`.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};

use clip_data::shard_source::{Opener, ShardUrl};
use clip_data::{error_chain, tar_samples, OrderConfig, RawSample};
use rayon::prelude::*;
use retrieval::{Entries, IndexSpec, SampleEntry};

use super::journal::{SampleJournal, ShardRows};
use super::{check_batch, list_skipped, model_id, write_by_row, BuildOptions, BuildReport};
use crate::files::{self, CsvColumns};
use crate::{Clip, Embeddings, Error, Features, Progress, Result};

/// The shards to index and how to reach them.
#[derive(Debug, Clone)]
pub struct ShardSource {
    /// Specs in any `clip train --data` form (local shards or patterns, `pipe:` commands,
    /// http(s) URLs, s3/gs/az objects, brace patterns, `::`-joined parts), naming tar shards.
    pub data: Vec<PathBuf>,
    /// An S3-compatible endpoint (`--data-endpoint`); recorded in the index, so that
    /// `clip serve` reads thumbnails through it too.
    pub endpoint: Option<String>,
    /// Shards read at once (`--data-workers`; default as for training: the cores, 2 to 8).
    /// Reading is I/O: a distant server's or an object store's per-connection throughput is
    /// multiplied by it, while decoding and embedding stay on the rayon pool.
    pub workers: usize,
}

impl Default for ShardSource {
    fn default() -> Self {
        ShardSource {
            data: Vec::new(),
            endpoint: None,
            workers: OrderConfig::default().workers,
        }
    }
}

/// From the reader thread: a sample of shard `i`, or the end of shard `i` (`Err`: why the
/// rest of it is lost).
enum Msg {
    Sample(usize, RawSample),
    Done(usize, std::result::Result<(), String>),
}

/// Builds the index at `out` over the images of the samples of `source`'s shards, embedded
/// by the model `load` gives (called once something needs embedding) and recorded as
/// `model`. Each row is a [`SampleEntry`]: `SHARD#KEY`, the caption if the sample has one,
/// and where its image member lies in the shard. A sample that cannot be used and a shard
/// that cannot be read (or breaks off for good) are skipped and listed; no usable sample
/// at all is an error naming the shards, and leaves an existing index as it was.
///
/// Every run reads every shard (shards cannot be checked for changes without reading them):
/// an existing index is rebuilt, and replaced only once the new one is written. A killed
/// build resumes: shards it read to their end are not read again.
pub fn build_shards<C: Borrow<Clip>>(
    source: &ShardSource,
    out: &Path,
    model: &str,
    load: impl FnOnce() -> Result<C>,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport> {
    check_batch(opts)?;
    retrieval::check_destination(out)?;
    let mut report = BuildReport {
        rebuilt: out.join(retrieval::MANIFEST_FILE).exists(),
        ..BuildReport::default()
    };
    let shards = shard_list(&source.data, &mut report.warnings)?;
    let model = model_id(model);
    let mut journal = SampleJournal::resume(out, &model, &mut report.warnings)?;
    let mut per_shard: Vec<ShardRows> = Vec::with_capacity(shards.len());
    let mut todo = Vec::new();
    for (i, url) in shards.iter().enumerate() {
        let done = journal
            .as_mut()
            .and_then(|j| j.take_finished(&url.to_string()));
        if done.is_none() {
            todo.push(i);
        }
        per_shard.push(done.unwrap_or_default());
    }
    report.resumed = per_shard.iter().map(|s| s.rows.len()).sum();
    let mut b = ShardBuild {
        out,
        model,
        shards: &shards,
        journal,
        per_shard,
    };
    let opener = files::opener(source.endpoint.as_deref());
    b.stream(&todo, &opener, source.workers, load, opts, progress)?;
    let report = b.write(source.endpoint.clone(), opts, report)?;
    list_skipped(out, report)
}

/// The shards `data` names, in order, each once; local ones as absolute paths, so that the
/// index names them from any working directory.
fn shard_list(data: &[PathBuf], warnings: &mut Vec<String>) -> Result<Vec<ShardUrl>> {
    let mut out: Vec<ShardUrl> = Vec::new();
    for url in files::shard_urls(data, &CsvColumns::default())? {
        let url = match url {
            ShardUrl::Local(p) => ShardUrl::Local(p.canonicalize().unwrap_or(p)),
            other => other,
        };
        if out.contains(&url) {
            warnings.push(format!("shard {url} is named more than once; indexed once"));
        } else {
            out.push(url);
        }
    }
    Ok(out)
}

/// A build from shards: the rows of each shard so far, and the journal that holds their
/// vectors.
struct ShardBuild<'a> {
    out: &'a Path,
    model: String,
    shards: &'a [ShardUrl],
    journal: Option<SampleJournal>,
    /// Rows (with where their vectors lie in the journal) and skips of each shard.
    per_shard: Vec<ShardRows>,
}

impl ShardBuild<'_> {
    /// Reads the shards `todo` on `workers` reader threads and embeds their samples a batch
    /// of one shard at a time (a shard's last batch may be short, so that a finished shard is
    /// journalled whole). The index lists shards in the order named whatever order they
    /// finish in.
    fn stream<C: Borrow<Clip>>(
        &mut self,
        todo: &[usize],
        opener: &Opener,
        workers: usize,
        load: impl FnOnce() -> Result<C>,
        opts: &BuildOptions,
        progress: &dyn Progress,
    ) -> Result<()> {
        if todo.is_empty() {
            return Ok(());
        }
        let (mut load, mut held) = (Some(load), None::<C>);
        // Loads the model when the first batch is ready (nothing to load if no shard reads).
        let mut embed = |b: &mut Self, i: usize, batch: &mut Vec<RawSample>| -> Result<()> {
            if held.is_none() {
                let loaded = (load.take().expect("loaded once"))()?;
                b.start_journal(loaded.borrow())?;
                held = Some(loaded);
            }
            b.embed(i, batch, held.as_ref().expect("loaded above").borrow())
        };
        progress.start(todo.len(), "shards");
        let (shards, next) = (self.shards, AtomicUsize::new(0));
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = sync_channel(opts.batch_size.saturating_mul(2).max(2));
            for _ in 0..workers.clamp(1, todo.len()) {
                let (tx, next) = (tx.clone(), &next);
                scope.spawn(move || read_shards(opener, shards, todo, next, &tx));
            }
            drop(tx);
            // Samples read but not embedded yet, by shard.
            let mut pending: HashMap<usize, Vec<RawSample>> = HashMap::new();
            for msg in rx {
                match msg {
                    Msg::Sample(i, raw) => {
                        let batch = pending.entry(i).or_default();
                        batch.push(raw);
                        if batch.len() >= opts.batch_size {
                            embed(self, i, batch)?;
                        }
                    }
                    Msg::Done(i, read) => {
                        if let Some(mut batch) = pending.remove(&i).filter(|b| !b.is_empty()) {
                            embed(self, i, &mut batch)?;
                        }
                        self.finish(i, read)?;
                        progress.advance(1);
                    }
                }
            }
            Ok(())
        })?;
        progress.finish();
        Ok(())
    }

    /// Opens a journal for `clip`'s vectors, unless a resumed one fits them.
    fn start_journal(&mut self, clip: &Clip) -> Result<()> {
        let d = clip.dim();
        match &self.journal {
            Some(j) if j.dim() != d => Err(Error::Input(format!(
                "the build journal {} holds vectors of dimension {} but model {} makes {d}; \
                 delete it to build again",
                j.path().display(),
                j.dim(),
                self.model
            ))),
            Some(_) => Ok(()),
            None => {
                self.journal = Some(SampleJournal::create(self.out, &self.model, d)?);
                Ok(())
            }
        }
    }

    /// Embeds `batch` (samples of shard `i`, emptied) and journals the unit vectors of those
    /// that decode; the others are listed among the shard's skips.
    fn embed(&mut self, i: usize, batch: &mut Vec<RawSample>, clip: &Clip) -> Result<()> {
        let pre = clip.preprocess();
        let decoded: Vec<_> = batch
            .par_iter()
            .map(|raw| {
                raw.decode(u32::MAX, false)
                    .map(|s| vision_encoder::preprocess(&s.image, pre))
            })
            .collect();
        let shard = self.shards[i].to_string();
        let (mut entries, mut pixels) = (Vec::new(), Vec::new());
        let rows = &mut self.per_shard[i];
        for (raw, px) in batch.drain(..).zip(decoded) {
            let name = format!("{shard}#{}", raw.key());
            match (px, raw.image_member()) {
                (Ok(p), Some((ext, offset, len))) => {
                    entries.push(SampleEntry {
                        shard: shard.clone(),
                        key: raw.key().to_string(),
                        ext: ext.to_string(),
                        caption: raw.caption().unwrap_or_default(),
                        offset,
                        len,
                    });
                    pixels.push(p);
                }
                (Err(why), _) => rows.skipped.push((name, why.to_string())),
                (Ok(_), None) => rows.skipped.push((name, "no image member".into())),
            }
        }
        if pixels.is_empty() {
            return Ok(());
        }
        let e = clip.encode_pixels(pixels, Features::Embeds)?;
        let e = Embeddings::from_tensor(&e)?.normalized()?;
        let journal = self.journal.as_mut().expect("started before embedding");
        let at = journal.append(entries.iter().zip(e.rows()))?;
        rows.rows.extend(entries.into_iter().zip(at));
        Ok(())
    }

    /// Shard `i` is over: journalled as finished if it was read to its end (then a resumed
    /// build does not read it again), listed as skipped if not.
    fn finish(&mut self, i: usize, read: std::result::Result<(), String>) -> Result<()> {
        let shard = self.shards[i].to_string();
        let rows = &mut self.per_shard[i];
        match read {
            Ok(()) => {
                if let Some(j) = self.journal.as_mut() {
                    j.finish_shard(&shard, &rows.skipped)?;
                }
            }
            Err(why) => {
                // The byte layer's errors start with the URL, which the listing gives anyway.
                let why = why
                    .strip_prefix(&format!("{shard}: "))
                    .unwrap_or(&why)
                    .to_string();
                rows.skipped.push((shard, why));
            }
        }
        Ok(())
    }

    /// Writes the index: every shard's rows in the order the shards were named.
    fn write(
        self,
        endpoint: Option<String>,
        opts: &BuildOptions,
        mut report: BuildReport,
    ) -> Result<BuildReport> {
        let ShardBuild {
            out,
            model,
            shards,
            journal,
            per_shard,
        } = self;
        let (mut samples, mut offsets) = (Vec::new(), Vec::new());
        for s in per_shard {
            report.skipped.extend(
                s.skipped
                    .into_iter()
                    .map(|(n, why)| (PathBuf::from(n), why)),
            );
            for (e, at) in s.rows {
                samples.push(e);
                offsets.push(at);
            }
        }
        let Some(journal) = journal.filter(|_| !samples.is_empty()) else {
            return Err(nothing_read(shards, &report.skipped));
        };
        let dim = journal.dim();
        report.count = samples.len();
        report.dim = dim;
        report.embedded = report.count - report.resumed;
        let spec = IndexSpec {
            model,
            dimension: dim,
            count: samples.len(),
            dtype: opts.dtype,
            entries: Entries::Samples { endpoint, samples },
        };
        write_by_row(out, &spec, |r, dst, bytes| {
            journal.vector(offsets[r], dst, bytes)
        })?;
        // Only now that the new manifest is in place is the embedding work safe to forget.
        journal.remove();
        Ok(report)
    }
}

/// The error for shards that gave no usable sample: each named, with why (the first few).
fn nothing_read(shards: &[ShardUrl], skipped: &[(PathBuf, String)]) -> Error {
    let mut why: Vec<String> = (skipped.iter().take(5))
        .map(|(n, e)| format!("{}: {e}", n.display()))
        .collect();
    if skipped.len() > 5 {
        why.push(format!("… and {} more", skipped.len() - 5));
    }
    let mut names: Vec<String> = shards.iter().take(5).map(ToString::to_string).collect();
    if shards.len() > 5 {
        names.push(format!("… and {} more", shards.len() - 5));
    }
    Error::Input(format!(
        "no sample could be indexed from the {} shard(s) {}; skipped: {}",
        shards.len(),
        names.join(", "),
        why.join("; ")
    ))
}

/// A reader thread: streams the next shard of `todo` not yet taken (`next` counts them) into
/// `tx`, each from its start, until none is left; stops early when the receiver is gone.
fn read_shards(
    opener: &Opener,
    shards: &[ShardUrl],
    todo: &[usize],
    next: &AtomicUsize,
    tx: &SyncSender<Msg>,
) {
    while let Some(&i) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
        let name = shards[i].to_string();
        let read = match opener.open(&shards[i]) {
            Ok(r) => tar_samples(BufReader::with_capacity(1 << 20, r), &name, |raw| {
                tx.send(Msg::Sample(i, raw)).is_ok()
            }),
            Err(e) => Err(error_chain(&e)),
        };
        if tx.send(Msg::Done(i, read)).is_err() {
            return;
        }
    }
}
