//! Building search indexes: image folders (refreshed in place), webdataset shards (local or
//! remote, streamed), caption lists and precomputed vectors. Opening and searching is
//! [`Index`] (also [`crate::Index`]), with the options and files of the `retrieval` crate
//! re-exported here.

use std::borrow::Borrow;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

mod journal;
mod shards;

use rayon::prelude::*;
use retrieval::{Entries, ImageEntry, IndexSpec};

pub use retrieval::{
    check_destination, AnnMethod, AnnParams, DType, EmbeddingsFile, EntriesKind, Hit, Index,
    OpenOptions, SampleEntry, SearchMode, SearchOptions, ANN_FILE, MANIFEST_FILE,
};
pub use shards::{build_shards, ShardSource};

use clip_data::error_chain;
use journal::Journal;

use crate::error::io_at;
use crate::files::{scan_images, write_atomically, Skipped};
use crate::{Clip, Embeddings, Error, Features, Progress, Result};

/// How vectors are stored and how many items go through the model at once.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    /// f32, or f16 (half the size; scores change by ~1e-3).
    pub dtype: DType,
    /// Items per forward pass.
    pub batch_size: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            batch_size: crate::DEFAULT_BATCH,
        }
    }
}

/// What a build did.
#[derive(Debug, Default)]
pub struct BuildReport {
    /// Rows in the index now.
    pub count: usize,
    /// Floats per row.
    pub dim: usize,
    /// Rows embedded in this build (not counting [`BuildReport::resumed`] ones).
    pub embedded: usize,
    /// Rows copied from the previous index (unchanged files).
    pub reused: usize,
    /// Rows read back from the journal of an interrupted build (embedded by it, not again).
    pub resumed: usize,
    /// Entries dropped because their files are gone.
    pub removed: usize,
    /// True when nothing changed and the index was left as it was.
    pub up_to_date: bool,
    /// Files that could not be used, with why.
    pub skipped: Skipped,
    /// Things the caller should know (e.g. an unusable old index that was rebuilt).
    pub warnings: Vec<String>,
    /// True when an existing index was replaced by a build that read everything again
    /// ([`build_shards`]).
    pub rebuilt: bool,
}

/// The model as recorded in a manifest: an absolute folder (so that searches work from any
/// working directory) or the Hub id as given.
pub fn model_id(spec: &str) -> String {
    let p = Path::new(spec);
    if p.is_dir() {
        if let Ok(abs) = p.canonicalize() {
            return abs.display().to_string();
        }
    }
    spec.to_string()
}

/// Builds or refreshes the index at `out` over the images under `folder` (recursively).
/// Re-running on the same folder embeds only new or changed files (by size and modification
/// time) and drops deleted ones; unreadable files are skipped and listed. `load` is called
/// only when something needs embedding (a refresh with nothing new loads no model); `model`
/// is what the manifest records for queries.
///
/// ```no_run
/// # fn main() -> clip::Result<()> {
/// use clip::{index, Clip, Index};
/// let report = index::build_images(
///     "photos/".as_ref(),
///     "photos.index".as_ref(),
///     "runs/emoji/final",
///     || Clip::from_dir("runs/emoji/final"),
///     &index::BuildOptions::default(),
///     &(),
/// )?;
/// let index = Index::open("photos.index".as_ref())?;
/// # Ok(()) }
/// ```
pub fn build_images<C: Borrow<Clip>>(
    folder: &Path,
    out: &Path,
    model: &str,
    load: impl FnOnce() -> Result<C>,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport> {
    check_batch(opts)?;
    retrieval::check_destination(out)?;
    if !folder.is_dir() {
        return Err(Error::Config {
            field: "images",
            reason: format!("{} is not a folder", folder.display()),
        });
    }
    let root = folder.canonicalize().map_err(io_at(folder))?;
    let (entries, skipped) = scan_images(&root)?;
    if entries.is_empty() && skipped.is_empty() {
        return Err(Error::Input(format!(
            "no png/jpg/jpeg/webp files under {}",
            folder.display()
        )));
    }
    let model = model_id(model);
    let mut report = BuildReport {
        skipped,
        ..BuildReport::default()
    };
    let old = open_previous(out, &mut report.warnings);
    let plan = retrieval::plan_refresh(old.as_ref(), &model, &root, &entries);
    let unchanged = |rows: usize| {
        old.as_ref()
            .is_some_and(|o| o.len() == rows && o.manifest().dtype == opts.dtype)
    };
    if plan.to_embed() == 0 && plan.removed == 0 && unchanged(entries.len()) {
        // A journal left by an interrupted build holds nothing this index needs.
        journal::remove_in(out);
        report.count = entries.len();
        report.dim = old.as_ref().map_or(0, Index::dim);
        report.up_to_date = true;
        return list_skipped(out, report);
    }

    // Embed what is new or changed; vectors of unchanged files are copied from the old index,
    // and those an interrupted build already embedded are read back from its journal.
    let reusing = plan.reuse.iter().any(Option::is_some);
    let mut build = Build {
        out,
        model,
        root,
        entries,
        dim: old.as_ref().map(Index::dim).filter(|_| reusing),
        journal: None,
        at: Vec::new(),
        todo: (0..plan.reuse.len())
            .filter(|&i| plan.reuse[i].is_none())
            .collect(),
        embed: Vec::new(),
    };
    build.resume_journal(&mut report.warnings)?;
    if !build.embed.is_empty() {
        build.embed_new(load, opts, progress, &mut report)?;
    }
    let Some(dim) = build.dim.or(build.journal.as_ref().map(Journal::dim)) else {
        return Err(Error::Input(format!(
            "none of the {} images under {} could be read",
            report.skipped.len(),
            folder.display()
        )));
    };
    let report = build.write(old.as_ref(), &plan, dim, opts, report, unchanged)?;
    list_skipped(out, report)
}

/// File in an index directory listing everything its last build skipped, a
/// `name<TAB>reason` line each under a header: the terminal shows the first few, and a
/// build over millions of files or samples may skip more than a terminal should hold. A
/// build that skips nothing removes it.
pub const SKIPPED_FILE: &str = "skipped.tsv";

/// Lists `report`'s skips in `out`/[`SKIPPED_FILE`] (whole or not at all), or removes the
/// previous build's list when nothing was skipped.
fn list_skipped(out: &Path, report: BuildReport) -> Result<BuildReport> {
    let path = out.join(SKIPPED_FILE);
    if report.skipped.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_at(&path)(e)),
            _ => Ok(report),
        };
    }
    let field = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    write_atomically(&path, |f| {
        let mut w = BufWriter::new(f);
        writeln!(w, "name\treason")?;
        for (name, why) in &report.skipped {
            writeln!(w, "{}\t{}", field(&name.to_string_lossy()), field(why))?;
        }
        w.flush()
    })?;
    Ok(report)
}

/// An image index being built: what is to be embedded, and where each new vector lies.
struct Build<'a> {
    out: &'a Path,
    model: String,
    root: PathBuf,
    entries: Vec<ImageEntry>,
    /// Dimension of the vectors so far (the old index's when reusing rows).
    dim: Option<usize>,
    journal: Option<Journal>,
    /// Where each entry's new vector lies in the journal.
    at: Vec<Option<u64>>,
    /// Entries without a reusable row.
    todo: Vec<usize>,
    /// Those of `todo` the journal does not hold either.
    embed: Vec<usize>,
}

impl Build<'_> {
    /// Opens an interrupted build's journal (if it fits) and finds what it already holds.
    fn resume_journal(&mut self, warnings: &mut Vec<String>) -> Result<()> {
        let mut journal = Journal::resume(self.out, &self.model, &self.root, warnings)?;
        let dim = self.dim;
        if let Some(j) = journal.take_if(|j| dim.is_some_and(|d| d != j.dim())) {
            warnings.push(format!(
                "discarding the build journal {}: its vectors have dimension {}, the index {}",
                j.path().display(),
                j.dim(),
                dim.unwrap_or_default()
            ));
            j.remove();
        }
        self.at = (self.entries.iter())
            .map(|e| journal.as_ref().and_then(|j| j.find(e)))
            .collect();
        self.embed = (self.todo.iter().copied())
            .filter(|&i| self.at[i].is_none())
            .collect();
        self.journal = journal;
        Ok(())
    }

    /// Embeds the entries of `embed` with the model `load` gives, a batch at a time, each
    /// batch journalled; unreadable files are added to the report's skipped.
    fn embed_new<C: Borrow<Clip>>(
        &mut self,
        load: impl FnOnce() -> Result<C>,
        opts: &BuildOptions,
        progress: &dyn Progress,
        report: &mut BuildReport,
    ) -> Result<()> {
        let loaded = load()?;
        let clip: &Clip = loaded.borrow();
        let (d, model) = (clip.dim(), &self.model);
        if let Some(old) = self.dim.filter(|&old| old != d) {
            return Err(Error::Config {
                field: "out",
                reason: format!(
                    "the index {} has dimension {old} but model {model} makes vectors of \
                     dimension {d}; remove the index or choose another",
                    self.out.display()
                ),
            });
        }
        if let Some(j) = self.journal.take_if(|j| j.dim() != d) {
            report.warnings.push(format!(
                "discarding the build journal {}: its vectors have dimension {}, model {model} \
                 makes {d}",
                j.path().display(),
                j.dim()
            ));
            j.remove();
            self.at.fill(None);
            self.embed.clone_from(&self.todo);
        }
        self.dim = Some(d);
        if self.journal.is_none() {
            self.journal = Some(Journal::create(self.out, model, &self.root, d)?);
        }
        let resumed = self.todo.len() - self.embed.len();
        let what = match resumed {
            0 => "images".to_string(),
            n => format!("images ({n} resumed)"),
        };
        progress.start(self.embed.len(), &what);
        for chunk in self.embed.clone().chunks(opts.batch_size) {
            self.embed_batch(clip, chunk, &mut report.skipped)?;
            progress.advance(chunk.len());
        }
        progress.finish();
        Ok(())
    }

    /// Embeds the entries `chunk` and journals their unit vectors.
    fn embed_batch(&mut self, clip: &Clip, chunk: &[usize], skipped: &mut Skipped) -> Result<()> {
        let loaded: Vec<_> = chunk
            .par_iter()
            .map(|&i| {
                vision_encoder::load_image(&self.root.join(&self.entries[i].path))
                    .map(|img| vision_encoder::preprocess(&img, clip.preprocess()))
                    .map_err(|e| error_chain(&e))
            })
            .collect();
        let (mut rows, mut pixels) = (Vec::new(), Vec::new());
        for (&i, px) in chunk.iter().zip(loaded) {
            match px {
                Ok(p) => {
                    rows.push(i);
                    pixels.push(p);
                }
                Err(e) => skipped.push((self.entries[i].path.clone(), e)),
            }
        }
        if pixels.is_empty() {
            return Ok(());
        }
        let e = clip.encode_pixels(pixels, Features::Embeds)?;
        let e = Embeddings::from_tensor(&e)?.normalized()?;
        let journal = self
            .journal
            .as_mut()
            .expect("opened or created before embedding");
        let written = journal.append(rows.iter().map(|&i| &self.entries[i]).zip(e.rows()))?;
        for (i, offset) in rows.into_iter().zip(written) {
            self.at[i] = Some(offset);
        }
        Ok(())
    }

    /// Writes the index: rows in folder order, reused, resumed or freshly embedded
    /// (unreadable files are left out); nothing when only unreadable files were retried.
    fn write(
        self,
        old: Option<&Index>,
        plan: &retrieval::RefreshPlan,
        dim: usize,
        opts: &BuildOptions,
        mut report: BuildReport,
        unchanged: impl Fn(usize) -> bool,
    ) -> Result<BuildReport> {
        enum Src {
            Old(usize),
            Journal(u64),
        }
        let Build {
            out,
            model,
            root,
            entries,
            journal,
            at,
            todo,
            embed,
            ..
        } = self;
        let (mut files, mut rows) = (Vec::new(), Vec::new());
        for (i, e) in entries.into_iter().enumerate() {
            let src = match (plan.reuse[i], at[i]) {
                (Some(r), _) => Src::Old(r),
                (None, Some(offset)) => Src::Journal(offset),
                (None, None) => continue,
            };
            files.push(e);
            rows.push(src);
        }
        report.reused = rows.iter().filter(|r| matches!(r, Src::Old(_))).count();
        report.resumed = todo.len() - embed.len();
        report.embedded = rows.len() - report.reused - report.resumed;
        report.removed = plan.removed;
        report.count = rows.len();
        report.dim = dim;
        if report.embedded == 0 && report.resumed == 0 && plan.removed == 0 && unchanged(rows.len())
        {
            if let Some(j) = journal {
                j.remove();
            }
            report.up_to_date = true;
            return Ok(report);
        }
        let spec = IndexSpec {
            model,
            dimension: dim,
            count: rows.len(),
            dtype: opts.dtype,
            entries: Entries::Images { root, files },
        };
        write_by_row(out, &spec, |r, dst, bytes| match &rows[r] {
            Src::Old(row) => {
                dst.copy_from_slice(&old.expect("reuse implies an old index").vector(*row));
                Ok(())
            }
            Src::Journal(offset) => journal
                .as_ref()
                .expect("journal offsets imply a journal")
                .vector(*offset, dst, bytes),
        })?;
        // Only now that the new manifest is in place is the embedding work safe to forget.
        if let Some(j) = journal {
            j.remove();
        }
        Ok(report)
    }
}

/// Builds the index at `out` over `captions` (for image→text search), embedded by `clip`
/// and recorded as `model`.
pub fn build_captions(
    captions: Vec<String>,
    out: &Path,
    clip: &Clip,
    model: &str,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport> {
    check_batch(opts)?;
    retrieval::check_destination(out)?;
    if captions.is_empty() {
        return Err(Error::Input("no captions to index".to_string()));
    }
    let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
    let t = clip.text_features(&refs, opts.batch_size, Features::Embeds, progress)?;
    let vectors = Embeddings::from_tensor(&t)?.normalized()?;
    let dim = vectors.dim();
    let spec = IndexSpec {
        model: model_id(model),
        dimension: dim,
        count: captions.len(),
        dtype: opts.dtype,
        entries: Entries::Captions { captions },
    };
    retrieval::write_index(out, &spec, |range, buf| {
        let v = &vectors.as_slice()[range.start * dim..range.end * dim];
        buf[..v.len()].copy_from_slice(v);
        Ok(())
    })?;
    let report = BuildReport {
        count: spec.count,
        dim,
        embedded: spec.count,
        ..BuildReport::default()
    };
    // A list of an earlier build's skips into this directory would no longer be true.
    list_skipped(out, report)
}

/// Builds the index at `out` from the `[N, D]` tensor `key` of a safetensors file (rows are
/// normalised; an `ids` JSON list in its metadata names them). `model` (default: the file's
/// `model` metadata) is recorded for queries.
pub fn build_vectors(
    file: &Path,
    key: &str,
    out: &Path,
    model: Option<&str>,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport> {
    retrieval::check_destination(out)?;
    let src = EmbeddingsFile::open(file, key)?;
    let model = match model {
        Some(m) => model_id(m),
        None => src.metadata("model").unwrap_or_default().to_string(),
    };
    let dim = src.dim();
    let spec = IndexSpec {
        model,
        dimension: dim,
        count: src.rows(),
        dtype: opts.dtype,
        entries: Entries::Ids {
            ids: src.ids().map(<[String]>::to_vec).unwrap_or_default(),
        },
    };
    progress.start(src.rows(), "vectors");
    retrieval::write_index(out, &spec, |range, buf| {
        let (first, n) = (range.start, range.len());
        src.read_rows(range, buf)?;
        retrieval::normalize_rows_from(buf, dim, first)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        progress.advance(n);
        Ok(())
    })?;
    progress.finish();
    let report = BuildReport {
        count: spec.count,
        dim,
        ..BuildReport::default()
    };
    // A list of an earlier build's skips into this directory would no longer be true.
    list_skipped(out, report)
}

/// Writes the index `spec` describes at `out`, filling one row's vector at a time with
/// `row(r, vector, scratch)` (a journal read's buffer), so that only a chunk of rows is held.
fn write_by_row(
    out: &Path,
    spec: &IndexSpec,
    mut row: impl FnMut(usize, &mut [f32], &mut Vec<u8>) -> Result<()>,
) -> Result<()> {
    let dim = spec.dimension;
    let mut scratch = Vec::new();
    retrieval::write_index(out, spec, |range, buf| {
        for (k, r) in range.enumerate() {
            row(r, &mut buf[k * dim..(k + 1) * dim], &mut scratch)?;
        }
        Ok(())
    })?;
    Ok(())
}

fn check_batch(opts: &BuildOptions) -> Result<()> {
    if opts.batch_size == 0 {
        return Err(Error::Config {
            field: "batch_size",
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

/// The existing index at `dir`, if any and readable; a damaged one is rebuilt from scratch.
fn open_previous(dir: &Path, warnings: &mut Vec<String>) -> Option<Index> {
    if !dir.join(retrieval::MANIFEST_FILE).exists() {
        return None;
    }
    Index::open(dir)
        .map_err(|e| {
            warnings.push(format!(
                "re-embedding everything: the existing index is unusable: {e}"
            ))
        })
        .ok()
}

/// The images a search hit, as paths on disk (image indexes only; `None` also for a row
/// that cannot be read from a damaged rows file).
pub fn hit_path(index: &Index, id: usize) -> Option<PathBuf> {
    index.entries().image_path(id).ok().flatten()
}
