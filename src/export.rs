//! Writing vectors in the layouts other tools read as they are: clip-retrieval's folders of
//! `.npy` embeddings with `.parquet` metadata (autofaiss, embedding-reader, numpy), or
//! `.parquet` files holding the embeddings beside the metadata (LanceDB, DuckDB, pandas).
//!
//! An export of an index is one folder. Its vectors go to `img_emb/` (an image index),
//! `text_emb/` (captions) or `emb/` (precomputed vectors), in shards `img_emb_N.npy` or
//! `img_emb_N.parquet`; each row is named by one string column: `image_path`, `caption` or
//! `id`. [`Format::Npy`] adds `metadata/metadata_N.parquet` holding that column.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use retrieval::{DType, EntriesKind, Index};

use crate::{Embeddings, Error, Result};

/// Rows per shard unless told otherwise (what clip-retrieval writes per file too).
pub const DEFAULT_SHARD_ROWS: usize = 1_000_000;
/// Rows read and encoded at a time, so memory stays small whatever the shard size.
const CHUNK_ROWS: usize = 4096;
/// The folders an export consists of: the only things `--force` replaces.
const EXPORT_DIRS: [&str; 4] = ["img_emb", "text_emb", "emb", "metadata"];

/// The files written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// clip-retrieval's layout: `.npy` arrays `[n, D]` in the index's dtype, and `.parquet`
    /// metadata.
    Npy,
    /// `.parquet` tables: an `embedding` column (fixed-size list of float32) beside the
    /// metadata column.
    Parquet,
}

/// How [`export_index`] lays out its files.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Which files.
    pub format: Format,
    /// Rows per file (the last file holds the rest).
    pub shard_rows: usize,
    /// Replace an earlier export at the destination (never a folder holding anything else).
    pub force: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            format: Format::Npy,
            shard_rows: DEFAULT_SHARD_ROWS,
            force: false,
        }
    }
}

/// What an export wrote.
#[derive(Debug)]
pub struct ExportReport {
    /// Rows exported.
    pub rows: usize,
    /// Floats per row.
    pub dim: usize,
    /// The files, relative to the destination.
    pub files: Vec<PathBuf>,
}

/// The folder (and file stem) of an index's vectors and the metadata column naming each row:
/// clip-retrieval's names for images and captions, `emb`/`id` for precomputed vectors.
fn layout(kind: &EntriesKind) -> (&'static str, &'static str) {
    match kind {
        EntriesKind::Images { .. } => ("img_emb", "image_path"),
        EntriesKind::Captions => ("text_emb", "caption"),
        EntriesKind::Ids => ("emb", "id"),
        // Images named SHARD#KEY.
        EntriesKind::Samples { .. } => ("img_emb", "image_path"),
    }
}

/// Exports `index` to the folder `out` as `opts.format`, in shards of `opts.shard_rows` rows
/// numbered from 0 (zero-padded to the width of the shard count, as clip-retrieval does).
/// The folder is written beside `out` and renamed into place, so readers never see half an
/// export. An existing non-empty `out` is refused unless `opts.force` is set and it holds
/// nothing but an earlier export's folders.
pub fn export_index(index: &Index, out: &Path, opts: &ExportOptions) -> Result<ExportReport> {
    if opts.shard_rows == 0 {
        return Err(Error::Config {
            field: "shard_rows",
            reason: "must be at least 1".into(),
        });
    }
    check_destination(out, opts.force)?;
    let (stem, column) = layout(index.entries().kind());
    let (n, dim) = (index.len(), index.dim());
    let vectors = |rows: Range<usize>, buf: &mut [f32]| {
        for (k, i) in rows.enumerate() {
            buf[k * dim..(k + 1) * dim].copy_from_slice(&index.vector(i));
        }
    };
    // Rows are read from the index's rows file as they are written; a damaged one fails.
    let label = |i: usize| index.label(i).map_err(io::Error::other);
    let table = Table {
        dim,
        column,
        vectors: &vectors,
        label: &label,
    };
    let shards = n.div_ceil(opts.shard_rows).max(1);
    let width = shards.to_string().len();
    let ext = match opts.format {
        Format::Npy => "npy",
        Format::Parquet => "parquet",
    };
    let mut files = Vec::new();
    clip_model::replace_dir_atomically(out, |tmp| {
        for s in 0..shards {
            let rows = s * opts.shard_rows..((s + 1) * opts.shard_rows).min(n);
            let emb = Path::new(stem).join(format!("{stem}_{s:0width$}.{ext}"));
            let meta = Path::new("metadata").join(format!("metadata_{s:0width$}.parquet"));
            let written = match opts.format {
                Format::Npy => vec![
                    (emb, write_npy(&table, rows.clone(), index.manifest().dtype)),
                    (meta, write_parquet(&table, rows, false)),
                ],
                Format::Parquet => vec![(emb, write_parquet(&table, rows, true))],
            };
            for (rel, write) in written {
                let path = tmp.join(&rel);
                std::fs::create_dir_all(path.parent().expect("a folder in the export"))
                    .and_then(|()| write_file(&path, write))
                    .map_err(|source| clip_model::ModelError::Io {
                        action: "cannot write",
                        path: out.join(&rel),
                        source,
                    })?;
                files.push(rel);
            }
        }
        Ok(())
    })?;
    Ok(ExportReport {
        rows: n,
        dim,
        files,
    })
}

/// Writes `vectors` to `path` as one file: `Npy`, a float32 `[n, D]` array; `Parquet`, an
/// `embedding` column beside `column`, which holds `labels` (one per row).
pub fn write_embeddings(
    path: &Path,
    format: Format,
    vectors: &Embeddings,
    column: &str,
    labels: &[String],
) -> Result<()> {
    if labels.len() != vectors.len() {
        return Err(Error::Input(format!(
            "{} labels for {} vectors",
            labels.len(),
            vectors.len()
        )));
    }
    let dim = vectors.dim();
    let fill = |rows: Range<usize>, buf: &mut [f32]| {
        buf.copy_from_slice(&vectors.as_slice()[rows.start * dim..rows.end * dim]);
    };
    let label = |i: usize| Ok(labels[i].clone());
    let table = Table {
        dim,
        column,
        vectors: &fill,
        label: &label,
    };
    let rows = 0..vectors.len();
    let write = match format {
        Format::Npy => write_npy(&table, rows, DType::F32),
        Format::Parquet => write_parquet(&table, rows, true),
    };
    crate::files::write_atomically(path, |f| {
        let mut w = BufWriter::new(f.try_clone()?);
        write(&mut w)?;
        w.flush()
    })
}

/// Writes named `[n, dim]` rows and string `metadata` to `path` as one safetensors file
/// (whole or not at all), as `clip embed` writes them.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, &Embeddings)],
    metadata: std::collections::HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, e)| e.as_slice().iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, e), b)| {
            let shape = vec![e.len(), e.dim()];
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, b)
                .map_err(|err| Error::Input(format!("{name}: {err}")))?;
            Ok((name.to_string(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::serialize(views, Some(metadata))
        .map_err(|err| Error::Input(format!("{}: {err}", path.display())))?;
    crate::files::write_atomically(path, |f| f.write_all(&data))
}

/// Rows to write: vectors, and one string column naming each row.
struct Table<'a> {
    dim: usize,
    column: &'a str,
    /// Fills a `[rows.len(), dim]` buffer with the vectors of `rows`.
    vectors: &'a dyn Fn(Range<usize>, &mut [f32]),
    /// Names row `i` (an error when it cannot be read).
    label: &'a dyn Fn(usize) -> io::Result<String>,
}

/// Writes one file's contents into an open file.
type Writer<'a> = Box<dyn FnOnce(&mut BufWriter<File>) -> io::Result<()> + 'a>;

fn write_file(path: &Path, write: Writer<'_>) -> io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    write(&mut w)?;
    w.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()
}

/// `rows` in chunks of at most [`CHUNK_ROWS`].
fn chunks(rows: Range<usize>) -> impl Iterator<Item = Range<usize>> {
    rows.clone()
        .step_by(CHUNK_ROWS)
        .map(move |s| s..(s + CHUNK_ROWS).min(rows.end))
}

/// A `.npy` file (format 1.0) of the `[rows, dim]` vectors as little-endian `dtype`.
fn write_npy<'a>(table: &'a Table<'a>, rows: Range<usize>, dtype: DType) -> Writer<'a> {
    Box::new(move |w| {
        let dim = table.dim;
        let descr = match dtype {
            DType::F32 => "<f4",
            DType::F16 => "<f2",
        };
        w.write_all(&npy_header(descr, rows.len(), dim))?;
        let mut buf = Vec::new();
        for chunk in chunks(rows) {
            buf.resize(chunk.len() * dim, 0.0);
            (table.vectors)(chunk, &mut buf);
            let bytes: Vec<u8> = match dtype {
                DType::F32 => buf.iter().flat_map(|v| v.to_le_bytes()).collect(),
                DType::F16 => buf
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
            };
            w.write_all(&bytes)?;
        }
        Ok(())
    })
}

/// numpy's header for a C-order `[rows, dim]` array of `descr` (e.g. `<f4`): magic, version
/// 1.0, header length, then a Python dict literal padded with spaces to a newline so that the
/// data starts on a 64-byte boundary, as `numpy.save` writes it.
fn npy_header(descr: &str, rows: usize, dim: usize) -> Vec<u8> {
    let dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    let total = (10 + dict.len() + 1).div_ceil(64) * 64;
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    h.extend(
        u16::try_from(total - 10)
            .expect("a short header")
            .to_le_bytes(),
    );
    h.extend(dict.as_bytes());
    h.resize(total - 1, b' ');
    h.push(b'\n');
    h
}

/// A snappy-compressed `.parquet` file of `rows`: an `embedding` column (if asked) and
/// the table's string column.
fn write_parquet<'a>(table: &'a Table<'a>, rows: Range<usize>, embedding: bool) -> Writer<'a> {
    Box::new(move |w| {
        let dim = table.dim;
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let size = i32::try_from(dim).map_err(io::Error::other)?;
        let mut fields = Vec::new();
        if embedding {
            let list = DataType::FixedSizeList(item.clone(), size);
            fields.push(Field::new("embedding", list, false));
        }
        fields.push(Field::new(table.column, DataType::Utf8, false));
        let schema = Arc::new(Schema::new(fields));
        // Row groups bounded in bytes: the writer buffers one whole group in memory.
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_bytes(Some(128 << 20))
            .build();
        let mut writer = ArrowWriter::try_new(w, schema.clone(), Some(props))?;
        for chunk in chunks(rows) {
            let mut columns: Vec<ArrayRef> = Vec::new();
            if embedding {
                let mut buf = vec![0f32; chunk.len() * dim];
                (table.vectors)(chunk.clone(), &mut buf);
                let values = Arc::new(Float32Array::from(buf));
                let list = FixedSizeListArray::try_new(item.clone(), size, values, None)
                    .map_err(io::Error::other)?;
                columns.push(Arc::new(list));
            }
            let labels = chunk.map(table.label).collect::<io::Result<Vec<_>>>()?;
            columns.push(Arc::new(StringArray::from_iter_values(labels)));
            let batch = RecordBatch::try_new(schema.clone(), columns).map_err(io::Error::other)?;
            writer.write(&batch)?;
        }
        writer.close()?;
        Ok(())
    })
}

/// Refuses to write into a file or a non-empty folder, except with `force` over a folder that
/// holds only an earlier export.
fn check_destination(out: &Path, force: bool) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(Error::Config {
            field: "out",
            reason: format!("{} is a file, not a folder", out.display()),
        });
    }
    let mut names = Vec::new();
    for e in std::fs::read_dir(out).map_err(crate::error::io_at(out))? {
        let e = e.map_err(crate::error::io_at(out))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    if names.is_empty() {
        return Ok(());
    }
    if !force {
        return Err(Error::Config {
            field: "out",
            reason: format!(
                "{} exists and is not empty; set `force` to replace an earlier export",
                out.display()
            ),
        });
    }
    names.retain(|n| !EXPORT_DIRS.contains(&n.as_str()));
    if !names.is_empty() {
        names.sort();
        names.truncate(3);
        return Err(Error::Config {
            field: "out",
            reason: format!(
                "{} holds more than an export ({}); refusing to replace it even with `force`",
                out.display(),
                names.join(", ")
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a header the way numpy's `read_array_header_1_0` does, independently of
    /// [`npy_header`]: magic, version, length, then the dict literal.
    fn parse(h: &[u8]) -> (usize, String) {
        assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([h[8], h[9]]) as usize;
        (
            10 + len,
            String::from_utf8(h[10..10 + len].to_vec()).unwrap(),
        )
    }

    #[test]
    fn npy_header_is_aligned_and_names_dtype_and_shape() {
        for (descr, rows, dim, want) in [
            ("<f4", 3, 512, "'shape': (3, 512)"),
            ("<f2", 1_000_000, 768, "'shape': (1000000, 768)"),
            ("<f4", 0, 7, "'shape': (0, 7)"),
        ] {
            let h = npy_header(descr, rows, dim);
            let (data_start, dict) = parse(&h);
            assert_eq!(data_start, h.len());
            assert_eq!(data_start % 64, 0, "{dict:?}");
            assert!(dict.starts_with(&format!("{{'descr': '{descr}', 'fortran_order': False, ")));
            assert!(dict.contains(want), "{dict:?}");
            assert!(
                dict.ends_with('\n') && dict.trim_end().ends_with('}'),
                "{dict:?}"
            );
        }
    }

    #[test]
    fn chunks_cover_the_range_once() {
        let got: Vec<_> = chunks(5..5 + 2 * CHUNK_ROWS + 3).collect();
        assert_eq!(
            got,
            [
                5..5 + CHUNK_ROWS,
                5 + CHUNK_ROWS..5 + 2 * CHUNK_ROWS,
                5 + 2 * CHUNK_ROWS..5 + 2 * CHUNK_ROWS + 3
            ]
        );
        assert_eq!(chunks(4..4).count(), 0);
    }
}
