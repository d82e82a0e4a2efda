//! `clip index`: build and inspect embedding indexes for `clip search`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clip::index::{self, AnnParams, DType, EntriesKind, Index, OpenOptions};
use clip::{Clip, DeviceKind};

use super::common::{self, PrecisionArg};

#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    #[command(subcommand)]
    command: IndexCommand,
}

#[derive(Debug, clap::Subcommand)]
enum IndexCommand {
    /// Build or update an index of images, captions or precomputed embeddings.
    Build(Box<BuildArgs>),
    /// Describe an index and check its files.
    Info(InfoArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["images", "data", "texts", "embeddings"])))]
struct BuildArgs {
    /// Folder of images (png, jpg, jpeg, webp; searched recursively). Re-running on the same
    /// folder embeds only new or changed files and drops deleted ones.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Webdataset shards, in any `clip train --data` form (local, pipe:, http(s), s3/gs/az,
    /// braces, `::`); repeat to combine. Each shard is streamed once; entries are named
    /// SHARD#KEY with the sample's caption. Re-running reads every shard again, except those
    /// a killed build finished.
    #[arg(long)]
    data: Vec<PathBuf>,
    /// S3-compatible endpoint for s3:// shards (as `clip train --data-endpoint`); recorded
    /// in the index for `clip serve`'s thumbnails.
    #[arg(long, requires = "data")]
    data_endpoint: Option<String>,
    /// Shards read at once with --data (as `clip train --data-workers`; default: the cores,
    /// 2 to 8).
    #[arg(long, requires = "data", default_value_t = index::ShardSource::default().workers)]
    data_workers: usize,
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
    #[arg(long, value_enum, default_value_t)]
    device: DeviceKind,
    #[command(flatten)]
    precision: PrecisionArg,
    /// Also cluster the vectors into IVF lists and save them beside the index
    /// (ivf.safetensors), so that `clip search --ann` loads them instead of clustering in
    /// every process. Rebuilding the index with new vectors deletes them.
    #[arg(long)]
    ann: bool,
    /// Number of IVF lists for --ann (default: √N).
    #[arg(long, requires = "ann")]
    ann_lists: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct InfoArgs {
    /// Index directory.
    index: PathBuf,
}

pub fn run(a: IndexArgs) -> Result<()> {
    match a.command {
        IndexCommand::Build(b) => build(*b),
        IndexCommand::Info(i) => info(i),
    }
}

fn build(a: BuildArgs) -> Result<()> {
    // Refuse a bad destination before any slow work.
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    index::check_destination(&a.out)?;
    let opts = index::BuildOptions {
        dtype: if a.half { DType::F16 } else { DType::F32 },
        batch_size: a.batch_size,
    };
    let bar = common::Bar::default();
    let load = |spec: &str| -> clip::Result<Clip> { a.precision.open(spec, &a.device.device()?) };
    let written = || format!("cannot write index {}", a.out.display());
    if !a.data.is_empty() {
        let spec = a
            .model
            .as_deref()
            .expect("clap requires --model with --data");
        let source = index::ShardSource {
            data: a.data.clone(),
            endpoint: a.data_endpoint.clone(),
            workers: a.data_workers,
        };
        let r = index::build_shards(&source, &a.out, spec, || load(spec), &opts, &bar)
            .with_context(written)?;
        report_shards(&r, &a.out);
    } else if let Some(folder) = &a.images {
        let spec = a
            .model
            .as_deref()
            .expect("clap requires --model with --images");
        let r = index::build_images(folder, &a.out, spec, || load(spec), &opts, &bar)
            .with_context(written)?;
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
        if r.up_to_date {
            eprintln!("{} is up to date ({} images)", a.out.display(), r.count);
        } else {
            eprintln!(
                "indexed {} images into {} ({} embedded, {} unchanged, {} removed)",
                r.count,
                a.out.display(),
                r.embedded,
                r.reused,
                r.removed
            );
            if r.resumed > 0 {
                eprintln!(
                    "resumed {} images embedded by an interrupted build",
                    r.resumed
                );
            }
        }
        report_skipped(&r.skipped, &a.out);
    } else if let Some(path) = &a.texts {
        let spec = a
            .model
            .as_deref()
            .expect("clap requires --model with --texts");
        let captions = clip::files::read_captions(path)?;
        if captions.is_empty() {
            bail!("{} has no captions", path.display());
        }
        let m = load(spec)?;
        let r =
            index::build_captions(captions, &a.out, &m, spec, &opts, &bar).with_context(written)?;
        eprintln!("indexed {} captions into {}", r.count, a.out.display());
    } else if let Some(file) = &a.embeddings {
        let r = index::build_vectors(file, &a.key, &a.out, a.model.as_deref(), &opts, &bar)
            .with_context(written)?;
        eprintln!(
            "indexed {} vectors of dimension {} from {} into {}",
            r.count,
            r.dim,
            file.display(),
            a.out.display()
        );
    } else {
        unreachable!("clap requires one source")
    }
    if a.ann {
        save_ann(&a.out, a.ann_lists.unwrap_or(0)).with_context(written)?;
    }
    Ok(())
}

/// Saves the IVF lists of the index at `dir` (`lists`: 0 for √N), unless fitting ones are.
fn save_ann(dir: &Path, lists: usize) -> Result<()> {
    let idx = Index::open_with(
        dir,
        OpenOptions {
            verify_checksum: false,
        },
    )?;
    if idx.is_empty() {
        return Ok(());
    }
    let params = AnnParams {
        lists,
        ..AnnParams::default()
    };
    let (p, verb) = match idx.load_saved_ann(&params) {
        Ok(Some(p)) => (p, "kept"),
        _ => (idx.save_ann(&params)?, "saved"),
    };
    let path = dir.join(index::ANN_FILE);
    eprintln!("{verb} {} IVF lists in {}", p.lists, path.display());
    Ok(())
}

fn report_shards(r: &index::BuildReport, out: &Path) {
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if r.rebuilt {
        eprintln!(
            "rebuilt {}: an index of shards is rebuilt by every run",
            out.display()
        );
    }
    let resumed = match r.resumed {
        0 => String::new(),
        n => format!(", {n} resumed from an interrupted build"),
    };
    eprintln!(
        "indexed {} samples into {} ({} embedded{resumed})",
        r.count,
        out.display(),
        r.embedded
    );
    report_skipped(&r.skipped, out);
}

/// The first few skips; all of them are in the index's `skipped.tsv`.
fn report_skipped(skipped: &[(PathBuf, String)], out: &Path) {
    if skipped.is_empty() {
        return;
    }
    eprintln!("skipped {} unreadable file(s):", skipped.len());
    for (p, e) in skipped.iter().take(5) {
        eprintln!("  {}: {e}", p.display());
    }
    if skipped.len() > 5 {
        eprintln!(
            "  … and {} more (all listed in {})",
            skipped.len() - 5,
            out.join(index::SKIPPED_FILE).display()
        );
    }
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
        EntriesKind::Images { root } => format!("images under {}", root.display()),
        EntriesKind::Captions => "captions".to_string(),
        EntriesKind::Ids if idx.entries().is_numbered() => "vectors (row numbers)".to_string(),
        EntriesKind::Ids => "vectors with ids".to_string(),
        EntriesKind::Samples { endpoint: None } => "samples of webdataset shards".to_string(),
        EntriesKind::Samples { endpoint: Some(e) } => {
            format!("samples of webdataset shards (endpoint {e})")
        }
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
    match &m.rows {
        Some(r) => println!("rows:      {} ({} bytes, checksum ok)", r.file, r.bytes),
        None if m.format_version == 1 => {
            println!("rows:      inline in {}", index::MANIFEST_FILE)
        }
        None => println!("rows:      none (ids are row numbers)"),
    }
    println!("format:    version {}", m.format_version);
    // Only when a file is there, so that the output of an index without one is unchanged.
    let ann = index::ANN_FILE;
    match idx.load_saved_ann(&AnnParams::default()) {
        Ok(Some(p)) => println!("ann:       {ann} ({} IVF lists, up to date)", p.lists),
        Ok(None) => {}
        Err(e) => println!("ann:       not used: {e}"),
    }
    Ok(())
}
