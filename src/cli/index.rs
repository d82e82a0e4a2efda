//! `clip index`: build and inspect embedding indexes for `clip search`.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use rayon::prelude::*;
use retrieval::{DType, EmbeddingsFile, Entries, ImageEntry, Index, IndexSpec, OpenOptions};

use super::common::{self, DeviceArg, LoadedModel};

#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    #[command(subcommand)]
    command: IndexCommand,
}

#[derive(Debug, clap::Subcommand)]
enum IndexCommand {
    /// Build or update an index of images, captions or precomputed embeddings.
    Build(BuildArgs),
    /// Describe an index and check its files.
    Info(InfoArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["images", "texts", "embeddings"])))]
struct BuildArgs {
    /// Folder of images (png, jpg, jpeg, webp; searched recursively). Re-running on the same
    /// folder embeds only new or changed files and drops deleted ones.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Text file with one caption per line, for image→text search.
    #[arg(long)]
    texts: Option<PathBuf>,
    /// Precomputed vectors: a safetensors file with an `[N, D]` tensor (see --key) and
    /// optionally an `ids` JSON list in its metadata.
    #[arg(long)]
    embeddings: Option<PathBuf>,
    /// Tensor to read from --embeddings.
    #[arg(long, default_value = "embeddings", requires = "embeddings")]
    key: String,
    /// Model directory or cached Hub repo id; recorded in the index so that `clip search`
    /// embeds queries with it. Optional with --embeddings.
    #[arg(long, required_unless_present = "embeddings")]
    model: Option<String>,
    /// Index directory to create or update.
    #[arg(long)]
    out: PathBuf,
    /// Store vectors as 16-bit floats (half the size; scores change by ~1e-3).
    #[arg(long)]
    half: bool,
    /// Items per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Device to run the model on.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
}

#[derive(Debug, clap::Args)]
struct InfoArgs {
    /// Index directory.
    index: PathBuf,
}

pub fn run(a: IndexArgs) -> Result<()> {
    match a.command {
        IndexCommand::Build(b) => build(b),
        IndexCommand::Info(i) => info(i),
    }
}

fn build(a: BuildArgs) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    // Refuse a bad destination before any slow work.
    retrieval::check_destination(&a.out)?;
    let dtype = if a.half { DType::F16 } else { DType::F32 };
    if let Some(folder) = &a.images {
        build_images(&a, folder, dtype)
    } else if let Some(texts) = &a.texts {
        build_texts(&a, texts, dtype)
    } else if let Some(file) = &a.embeddings {
        build_embeddings(&a, file, dtype)
    } else {
        unreachable!("clap requires one source")
    }
}

/// The model as recorded in the manifest: an absolute directory (so that searches work from
/// any working directory) or the Hub id as given.
fn model_id(spec: &str) -> String {
    let p = Path::new(spec);
    if p.is_dir() {
        if let Ok(abs) = p.canonicalize() {
            return abs.display().to_string();
        }
    }
    spec.to_string()
}

fn build_images(a: &BuildArgs, folder: &Path, dtype: DType) -> Result<()> {
    let spec = a
        .model
        .as_deref()
        .expect("clap requires --model with --images");
    if !folder.is_dir() {
        bail!("--images {} is not a folder", folder.display());
    }
    let root = folder
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", folder.display()))?;
    let (entries, mut skipped) = scan_images(&root)?;
    if entries.is_empty() && skipped.is_empty() {
        bail!("no png/jpg/jpeg/webp files under {}", folder.display());
    }
    let model = model_id(spec);
    let old = open_previous(&a.out);
    let plan = retrieval::plan_refresh(old.as_ref(), &model, &root, &entries);
    let dim_old = old.as_ref().map(Index::dim);
    if plan.to_embed() == 0
        && plan.removed == 0
        && old
            .as_ref()
            .is_some_and(|o| o.len() == entries.len() && o.manifest().dtype == dtype)
    {
        eprintln!(
            "{} is up to date ({} images)",
            a.out.display(),
            entries.len()
        );
        report_skipped(&skipped);
        return Ok(());
    }

    // Embed what is new or changed; vectors of unchanged files are copied from the old index.
    let todo: Vec<usize> = (0..entries.len())
        .filter(|&i| plan.reuse[i].is_none())
        .collect();
    let mut fresh: Vec<Option<Vec<f32>>> = vec![None; entries.len()];
    let reusing = plan.reuse.iter().any(Option::is_some);
    let mut dim = if reusing { dim_old } else { None };
    if !todo.is_empty() {
        let device = a.device.device()?;
        let m = common::load_model(spec, &device)?;
        let d = m.model.config().projection_dim;
        if let Some(old) = dim.filter(|&old| old != d) {
            bail!(
                "the index {} has dimension {old} but model {spec} makes vectors of dimension {d}; \
                 remove the index or choose another --out",
                a.out.display()
            );
        }
        dim = Some(d);
        let pb = common::progress(todo.len(), "images");
        for chunk in todo.chunks(a.batch_size) {
            let loaded: Vec<(usize, std::result::Result<Vec<f32>, String>)> = chunk
                .par_iter()
                .map(|&i| {
                    let path = root.join(&entries[i].path);
                    let px = vision_encoder::load_image(&path)
                        .map(|img| vision_encoder::preprocess(&img, &m.preprocess))
                        .map_err(|e| error_chain(&e));
                    (i, px)
                })
                .collect();
            let mut ok_rows = Vec::new();
            let mut pixels = Vec::new();
            for (i, px) in loaded {
                match px {
                    Ok(p) => {
                        ok_rows.push(i);
                        pixels.push(p);
                    }
                    Err(e) => skipped.push((entries[i].path.clone(), e)),
                }
            }
            if !pixels.is_empty() {
                for (i, v) in ok_rows.into_iter().zip(embed_pixels(&m, pixels)?) {
                    fresh[i] = Some(v);
                }
            }
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
    }
    let dim = match dim {
        Some(d) => d,
        None => bail!(
            "none of the {} images under {} could be read",
            skipped.len(),
            folder.display()
        ),
    };

    // Rows in folder order: reused or freshly embedded; unreadable files are left out.
    enum Src {
        Old(usize),
        New(Vec<f32>),
    }
    let mut files = Vec::new();
    let mut rows = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        let src = match (plan.reuse[i], fresh[i].take()) {
            (Some(r), _) => Src::Old(r),
            (None, Some(v)) => Src::New(v),
            (None, None) => continue,
        };
        files.push(e);
        rows.push(src);
    }
    let (reused, embedded) = (
        rows.iter().filter(|r| matches!(r, Src::Old(_))).count(),
        rows.iter().filter(|r| matches!(r, Src::New(_))).count(),
    );
    if embedded == 0
        && plan.removed == 0
        && old
            .as_ref()
            .is_some_and(|o| o.len() == rows.len() && o.manifest().dtype == dtype)
    {
        // Only files that still cannot be read were retried: nothing to rewrite.
        eprintln!("{} is up to date ({} images)", a.out.display(), rows.len());
        report_skipped(&skipped);
        return Ok(());
    }
    let spec = IndexSpec {
        model,
        dimension: dim,
        count: rows.len(),
        dtype,
        entries: Entries::Images { root, files },
    };
    retrieval::write_index(&a.out, &spec, |range, out| {
        for (k, r) in range.enumerate() {
            let dst = &mut out[k * dim..(k + 1) * dim];
            match &rows[r] {
                Src::Old(row) => dst.copy_from_slice(
                    &old.as_ref()
                        .expect("reuse implies an old index")
                        .vector(*row),
                ),
                Src::New(v) => dst.copy_from_slice(v),
            }
        }
        Ok(())
    })
    .with_context(|| format!("cannot write index {}", a.out.display()))?;
    eprintln!(
        "indexed {} images into {} ({embedded} embedded, {reused} unchanged, {} removed)",
        spec.count,
        a.out.display(),
        plan.removed
    );
    report_skipped(&skipped);
    Ok(())
}

/// The existing index at `dir`, if any and readable; a damaged one is rebuilt from scratch.
fn open_previous(dir: &Path) -> Option<Index> {
    if !dir.join(retrieval::MANIFEST_FILE).exists() {
        return None;
    }
    match Index::open(dir) {
        Ok(i) => Some(i),
        Err(e) => {
            eprintln!("warning: re-embedding everything: the existing index is unusable: {e}");
            None
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn report_skipped(skipped: &[(PathBuf, String)]) {
    if skipped.is_empty() {
        return;
    }
    eprintln!("skipped {} unreadable file(s):", skipped.len());
    for (p, e) in skipped.iter().take(5) {
        eprintln!("  {}: {e}", p.display());
    }
    if skipped.len() > 5 {
        eprintln!("  … and {} more", skipped.len() - 5);
    }
}

/// Files that could not be used, with the reason.
type Skipped = Vec<(PathBuf, String)>;

/// Image files under `root`, recursively, in sorted relative-path order, with size and mtime.
/// Files whose name is not UTF-8 (the manifest is JSON) are returned as skipped.
fn scan_images(root: &Path) -> Result<(Vec<ImageEntry>, Skipped)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd =
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in rd.filter_map(|e| e.ok()) {
            let path = entry.path();
            // Not following directory links keeps a link cycle from looping forever.
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(path);
            } else if common::is_image_file(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    let mut entries = Vec::with_capacity(found.len());
    let mut skipped = Vec::new();
    for path in found {
        let rel = path
            .strip_prefix(root)
            .expect("walked from root")
            .to_path_buf();
        if rel.to_str().is_none() {
            skipped.push((rel, "file name is not valid UTF-8".to_string()));
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(md) if md.is_file() => {
                let mtime_ns = md
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos() as i64);
                entries.push(ImageEntry {
                    path: rel,
                    size: md.len(),
                    mtime_ns,
                });
            }
            Ok(_) => {}
            Err(e) => skipped.push((rel, e.to_string())),
        }
    }
    Ok((entries, skipped))
}

fn embed_pixels(m: &LoadedModel, pixels: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>> {
    let t = vision_encoder::pixels_to_tensor(pixels, m.preprocess.image_size, m.model.device())?;
    unit_rows(&m.model.encode_image(&t)?)
}

/// Tensor rows as unit-length vectors.
pub(super) fn unit_rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let mut rows: Vec<Vec<f32>> = t.to_device(&candle_core::Device::Cpu)?.to_vec2()?;
    for r in &mut rows {
        let dim = r.len().max(1);
        retrieval::normalize_rows(r, dim)?;
    }
    Ok(rows)
}

fn build_texts(a: &BuildArgs, path: &Path, dtype: DType) -> Result<()> {
    let spec = a
        .model
        .as_deref()
        .expect("clap requires --model with --texts");
    let captions = common::read_captions(path)?;
    if captions.is_empty() {
        bail!("{} has no captions", path.display());
    }
    let device = a.device.device()?;
    let m = common::load_model(spec, &device)?;
    let vectors = unit_rows(&common::embed_texts(&m, &captions, a.batch_size)?)?;
    let dim = m.model.config().projection_dim;
    let spec = IndexSpec {
        model: model_id(spec),
        dimension: dim,
        count: captions.len(),
        dtype,
        entries: Entries::Captions { captions },
    };
    retrieval::write_index(&a.out, &spec, |range, out| {
        for (k, r) in range.enumerate() {
            out[k * dim..(k + 1) * dim].copy_from_slice(&vectors[r]);
        }
        Ok(())
    })
    .with_context(|| format!("cannot write index {}", a.out.display()))?;
    eprintln!("indexed {} captions into {}", spec.count, a.out.display());
    Ok(())
}

fn build_embeddings(a: &BuildArgs, path: &Path, dtype: DType) -> Result<()> {
    let src = EmbeddingsFile::open(path, &a.key)?;
    let model = match &a.model {
        Some(m) => model_id(m),
        None => src.metadata("model").unwrap_or_default().to_string(),
    };
    let dim = src.dim();
    let spec = IndexSpec {
        model,
        dimension: dim,
        count: src.rows(),
        dtype,
        entries: Entries::Ids {
            ids: src.ids().map(<[String]>::to_vec).unwrap_or_default(),
        },
    };
    let pb = common::progress(src.rows(), "vectors");
    retrieval::write_index(&a.out, &spec, |range, out| {
        let (first, n) = (range.start, range.len());
        src.read_rows(range, out);
        retrieval::normalize_rows_from(out, dim, first)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        pb.inc(n as u64);
        Ok(())
    })
    .with_context(|| format!("cannot write index {}", a.out.display()))?;
    pb.finish_and_clear();
    eprintln!(
        "indexed {} vectors of dimension {dim} from {} into {}",
        spec.count,
        path.display(),
        a.out.display()
    );
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let idx = Index::open_with(
        &a.index,
        OpenOptions {
            verify_checksum: true,
        },
    )?;
    let m = idx.manifest();
    let kind = match &m.entries {
        Entries::Images { root, .. } => format!("images under {}", root.display()),
        Entries::Captions { .. } => "captions".to_string(),
        Entries::Ids { ids } if ids.is_empty() => "vectors (row numbers)".to_string(),
        Entries::Ids { .. } => "vectors with ids".to_string(),
    };
    println!("index:     {}", a.index.display());
    println!("entries:   {} {kind}", m.count);
    println!("dimension: {} ({:?}, {:?})", m.dimension, m.dtype, m.metric);
    println!(
        "model:     {}",
        if m.model.is_empty() {
            "(none recorded)"
        } else {
            &m.model
        }
    );
    println!(
        "vectors:   {} ({} bytes, checksum ok)",
        m.vectors_file, m.vectors_bytes
    );
    Ok(())
}
