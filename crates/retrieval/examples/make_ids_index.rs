//! Writes a large index of random vectors named by ids, cheaply, for `scripts/bench_open.sh`:
//!
//! `cargo run --release -p retrieval --example make_ids_index -- OUT N DIM`
//!
//! - `OUT/v2`: the index as this build writes it (f16 vectors, ids `id-00000000`… in the rows
//!   file);
//! - `OUT/v1`: the same vectors (hard-linked) with a format-1 manifest holding every id inline,
//!   as builds before the rows file wrote it;
//! - `OUT/query.safetensors`: one query vector (`embeddings`, `[1, DIM]`).
//!
//! Vectors are generated a block at a time, so memory holds the ids, not the vectors.

use std::io::{BufWriter, Write};
use std::path::Path;

use retrieval::testing::unit_rows;
use retrieval::{write_index, DType, Entries, IndexSpec, Metric};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// A format-1 manifest: the header and every row inline.
#[derive(serde::Serialize)]
struct ManifestV1<'a> {
    format: &'a str,
    format_version: u32,
    model: &'a str,
    dimension: usize,
    count: usize,
    metric: Metric,
    dtype: DType,
    vectors_file: &'a str,
    vectors_bytes: u64,
    vectors_crc32: u32,
    entries: &'a Entries,
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, n, dim] = &args[..] else {
        return Err("usage: make_ids_index OUT N DIM".into());
    };
    let (out, n, dim): (&Path, usize, usize) = (out.as_ref(), n.parse()?, dim.parse()?);
    std::fs::create_dir_all(out)?;
    let spec = IndexSpec {
        model: String::new(),
        dimension: dim,
        count: n,
        dtype: DType::F16,
        entries: Entries::Ids {
            ids: (0..n).map(|i| format!("id-{i:08}")).collect(),
        },
    };
    let v2 = out.join("v2");
    let m = write_index(&v2, &spec, |rows, buf| {
        buf.copy_from_slice(&unit_rows(rows.len(), dim, rows.start as u64 + 1));
        Ok(())
    })?;

    let v1 = out.join("v1");
    std::fs::create_dir_all(&v1)?;
    let linked = v1.join(&m.vectors_file);
    let _ = std::fs::remove_file(&linked);
    std::fs::hard_link(v2.join(&m.vectors_file), &linked)?;
    let manifest = ManifestV1 {
        format: &m.format,
        format_version: 1,
        model: &m.model,
        dimension: m.dimension,
        count: m.count,
        metric: m.metric,
        dtype: m.dtype,
        vectors_file: &m.vectors_file,
        vectors_bytes: m.vectors_bytes,
        vectors_crc32: m.vectors_crc32,
        entries: &spec.entries,
    };
    let mut w = BufWriter::new(std::fs::File::create(v1.join(retrieval::MANIFEST_FILE))?);
    serde_json::to_writer_pretty(&mut w, &manifest)?;
    w.flush()?;

    let q = unit_rows(1, dim, 0);
    let bytes: Vec<u8> = q.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, dim], &bytes)?;
    safetensors::serialize_to_file([("embeddings", view)], None, &out.join("query.safetensors"))?;
    eprintln!(
        "wrote {n} vectors of dimension {dim} to {} and {}",
        v2.display(),
        v1.display()
    );
    Ok(())
}
