//! `clip export`: an index in the files other tools read (clip-retrieval's layout, Parquet).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clip::export::{self, ExportOptions, Format};
use clip::Index;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Layouts (N = shard number, zero-padded to the width of the shard count):
  npy      clip-retrieval's: img_emb/img_emb_N.npy (text_emb/ for a caption index, emb/ for
           precomputed vectors), [rows, dim] in the index's dtype (float32, or float16 for
           --half indexes), and metadata/metadata_N.parquet with one column naming each row
           (image_path, caption or id). autofaiss, embedding-reader and numpy read it as is.
  parquet  img_emb/img_emb_N.parquet (or text_emb/, emb/) holding an `embedding` column
           (fixed-size list of float32) beside that metadata column, one table per shard, as
           LanceDB, DuckDB, pandas and Polars ingest it.
The folder is written beside --out and renamed into place when complete."
)]
pub struct ExportArgs {
    /// Index directory (from `clip index build`).
    #[arg(long)]
    index: PathBuf,
    /// Which files to write.
    #[arg(long, value_enum)]
    format: Format,
    /// Folder to create; an existing non-empty one is refused unless --force.
    #[arg(long)]
    out: PathBuf,
    /// Rows per file.
    #[arg(long, default_value_t = export::DEFAULT_SHARD_ROWS)]
    shard_rows: usize,
    /// Replace an earlier export in --out (a folder holding anything else is still refused).
    #[arg(long)]
    force: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let index = Index::open(&a.index)
        .with_context(|| format!("cannot open index {}", a.index.display()))?;
    let opts = ExportOptions {
        format: a.format,
        shard_rows: a.shard_rows,
        force: a.force,
    };
    let report = export::export_index(&index, &a.out, &opts)?;
    for f in &report.files {
        println!("{}", a.out.join(f).display());
    }
    eprintln!(
        "exported {} rows (dim {}) to {} ({} files)",
        report.rows,
        report.dim,
        a.out.display(),
        report.files.len()
    );
    Ok(())
}
