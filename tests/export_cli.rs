//! Black-box tests of `clip export` and `clip embed --out x.npy|x.parquet`: the files are read
//! back with the `parquet` crate's reader and an `.npy` parser written here, and compared with
//! the index's own vectors and entries.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::RecordBatch;
use arrow_schema::DataType;
use common::{clip, fixtures, s};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn model() -> PathBuf {
    fixtures().join("hf_tiny")
}

fn ok(args: &[&str]) -> String {
    common::ok(&clip(args))
}

/// `clip export --index idx --format format --out out`, which must succeed.
fn export(idx: &Path, format: &str, out: &Path) -> String {
    ok(&[
        "export",
        "--index",
        s(idx),
        "--format",
        format,
        "--out",
        s(out),
    ])
}

fn fails(args: &[&str]) -> String {
    common::fail(&clip(args))
}

/// An index of the fixture images (or, with `texts`, of the fixture captions).
fn build(dir: &Path, texts: bool, half: bool) -> (PathBuf, clip::Index) {
    let idx = dir.join(if texts {
        "captions.index"
    } else {
        "images.index"
    });
    let src = fixtures().join(if texts { "captions.txt" } else { "images" });
    let m = model();
    let mut args = vec!["index", "build", "--model", s(&m), "--out", s(&idx)];
    args.extend([if texts { "--texts" } else { "--images" }, s(&src)]);
    if half {
        args.push("--half");
    }
    ok(&args);
    let index = clip::Index::open(&idx).unwrap();
    (idx, index)
}

/// Every row of `index`, flattened.
fn index_rows(index: &clip::Index) -> Vec<f32> {
    (0..index.len()).flat_map(|i| index.vector(i)).collect()
}

fn index_labels(index: &clip::Index) -> Vec<String> {
    (0..index.len()).map(|i| index.entries().label(i)).collect()
}

/// An `.npy` file parsed by hand from its documented layout: magic, version 1.0, a u16
/// header length, a dict literal; returns (descr, shape, data bytes).
fn read_npy(path: &Path) -> (String, Vec<usize>, Vec<u8>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00", "{}", path.display());
    let end = 10 + u16::from_le_bytes([b[8], b[9]]) as usize;
    assert_eq!(end % 64, 0, "data should start 64-byte aligned");
    let dict = std::str::from_utf8(&b[10..end]).unwrap();
    assert!(
        dict.ends_with('\n') && dict.contains("'fortran_order': False"),
        "{dict}"
    );
    let field = |key: &str, close: char| {
        let at = dict.find(key).unwrap() + key.len();
        dict[at..at + dict[at..].find(close).unwrap()].to_string()
    };
    let descr = field("'descr': '", '\'');
    let shape = field("'shape': (", ')')
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .map(|d| d.trim().parse().unwrap())
        .collect();
    (descr, shape, b[end..].to_vec())
}

/// An `.npy` file of f32 rows: (shape, values).
fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let (descr, shape, data) = read_npy(path);
    assert_eq!(descr, "<f4");
    assert_eq!(data.len(), shape.iter().product::<usize>() * 4);
    let v = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, v)
}

fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn column_names(batches: &[RecordBatch]) -> Vec<String> {
    let schema = batches[0].schema();
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name(column).unwrap().as_string::<i32>();
            c.iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>()
        })
        .collect()
}

/// The `embedding` column: (dimension, flattened rows).
fn embeddings(batches: &[RecordBatch]) -> (usize, Vec<f32>) {
    let mut dim = 0;
    let mut rows = Vec::new();
    for b in batches {
        let c = b.column_by_name("embedding").unwrap().as_fixed_size_list();
        assert_eq!(c.value_type(), DataType::Float32);
        dim = c.value_length() as usize;
        rows.extend(c.values().as_primitive::<Float32Type>().values().iter());
    }
    (dim, rows)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn npy_layout_holds_the_index_vectors_and_image_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (idx, index) = build(dir.path(), false, false);
    let out = dir.path().join("export");
    let listed = export(&idx, "npy", &out);
    assert_eq!(files_in(&out), ["img_emb", "metadata"]);
    assert_eq!(files_in(&out.join("img_emb")), ["img_emb_0.npy"]);
    assert_eq!(files_in(&out.join("metadata")), ["metadata_0.parquet"]);
    assert!(listed.contains("img_emb_0.npy"), "{listed}");

    let (shape, rows) = read_npy_f32(&out.join("img_emb/img_emb_0.npy"));
    assert_eq!(shape, [12, index.dim()]);
    assert_eq!(rows, index_rows(&index));
    let meta = read_parquet(&out.join("metadata/metadata_0.parquet"));
    assert_eq!(column_names(&meta), ["image_path"]);
    let paths = strings(&meta, "image_path");
    assert_eq!(paths, index_labels(&index));
    let want: Vec<PathBuf> = common::image_paths()
        .iter()
        .map(|p| p.canonicalize().unwrap())
        .collect();
    assert_eq!(paths.iter().map(PathBuf::from).collect::<Vec<_>>(), want);
}

#[test]
fn parquet_layout_holds_embeddings_beside_the_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let (idx, index) = build(dir.path(), false, false);
    let out = dir.path().join("export");
    export(&idx, "parquet", &out);
    assert_eq!(files_in(&out), ["img_emb"]);
    let t = read_parquet(&out.join("img_emb/img_emb_0.parquet"));
    assert_eq!(column_names(&t), ["embedding", "image_path"]);
    let (dim, rows) = embeddings(&t);
    assert_eq!(dim, index.dim());
    assert_eq!(rows, index_rows(&index));
    assert_eq!(strings(&t, "image_path"), index_labels(&index));
}

#[test]
fn shards_split_the_rows_in_order_and_are_numbered_to_one_width() {
    let dir = tempfile::tempdir().unwrap();
    let (idx, index) = build(dir.path(), false, false);
    let out = dir.path().join("five");
    let idx = s(&idx);
    ok(&[
        "export",
        "--index",
        idx,
        "--format",
        "npy",
        "--out",
        s(&out),
        "--shard-rows",
        "5",
    ]);
    assert_eq!(
        files_in(&out.join("img_emb")),
        ["img_emb_0.npy", "img_emb_1.npy", "img_emb_2.npy"]
    );
    let (mut rows, mut paths) = (Vec::new(), Vec::new());
    for (n, want) in [(0, 5), (1, 5), (2, 2)] {
        let (shape, r) = read_npy_f32(&out.join(format!("img_emb/img_emb_{n}.npy")));
        assert_eq!(shape, [want, index.dim()]);
        rows.extend(r);
        let meta = read_parquet(&out.join(format!("metadata/metadata_{n}.parquet")));
        paths.extend(strings(&meta, "image_path"));
    }
    assert_eq!(rows, index_rows(&index));
    assert_eq!(paths, index_labels(&index));

    // Twelve shards are numbered 00..11, so that file names sort in row order.
    let out = dir.path().join("ones");
    ok(&[
        "export",
        "--index",
        idx,
        "--format",
        "parquet",
        "--out",
        s(&out),
        "--shard-rows",
        "1",
    ]);
    let names = files_in(&out.join("img_emb"));
    let want: Vec<String> = (0..12).map(|n| format!("img_emb_{n:02}.parquet")).collect();
    assert_eq!(names, want);
    let mut rows = Vec::new();
    for n in &names {
        rows.extend(embeddings(&read_parquet(&out.join("img_emb").join(n))).1);
    }
    assert_eq!(rows, index_rows(&index));
}

#[test]
fn caption_index_goes_to_text_emb_with_captions_and_half_stays_half() {
    let dir = tempfile::tempdir().unwrap();
    let (idx, index) = build(dir.path(), true, true);
    let out = dir.path().join("export");
    export(&idx, "npy", &out);
    assert_eq!(files_in(&out), ["metadata", "text_emb"]);
    let (descr, shape, data) = read_npy(&out.join("text_emb/text_emb_0.npy"));
    assert_eq!(descr, "<f2");
    assert_eq!(shape, [12, index.dim()]);
    let rows: Vec<f32> = data
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    assert_eq!(rows, index_rows(&index));
    let meta = read_parquet(&out.join("metadata/metadata_0.parquet"));
    assert_eq!(column_names(&meta), ["caption"]);
    assert_eq!(strings(&meta, "caption"), common::captions());

    // Parquet holds float32 whatever the index's dtype.
    let out = dir.path().join("pq");
    export(&idx, "parquet", &out);
    let t = read_parquet(&out.join("text_emb/text_emb_0.parquet"));
    assert_eq!(column_names(&t), ["embedding", "caption"]);
    assert_eq!(embeddings(&t).1, rows);
    assert_eq!(strings(&t, "caption"), common::captions());
}

#[test]
fn vector_index_goes_to_emb_with_its_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (dim, n) = (4, 3);
    let raw: Vec<f32> = vec![3., 0., 0., 4., 0., 2., 0., 0., 1., 1., 1., 1.];
    let bytes: Vec<u8> = raw.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n, dim], &bytes)
        .unwrap();
    let ids = ["a", "b", "c"];
    let meta = HashMap::from([("ids".to_string(), serde_json::to_string(&ids).unwrap())]);
    let src = dir.path().join("vectors.safetensors");
    safetensors::serialize_to_file([("embeddings", view)], Some(meta), &src).unwrap();
    let idx = dir.path().join("vectors.index");
    ok(&["index", "build", "--embeddings", s(&src), "--out", s(&idx)]);
    let index = clip::Index::open(&idx).unwrap();

    let out = dir.path().join("export");
    export(&idx, "npy", &out);
    assert_eq!(files_in(&out), ["emb", "metadata"]);
    let (shape, rows) = read_npy_f32(&out.join("emb/emb_0.npy"));
    assert_eq!(shape, [n, dim]);
    assert_eq!(rows, index_rows(&index));
    assert_eq!(
        &rows[..4],
        [0.6, 0., 0., 0.8],
        "rows are the index's unit vectors"
    );
    let meta = read_parquet(&out.join("metadata/metadata_0.parquet"));
    assert_eq!(column_names(&meta), ["id"]);
    assert_eq!(strings(&meta, "id"), ids);
}

#[test]
fn existing_destination_is_refused_unless_forced_over_an_earlier_export() {
    let dir = tempfile::tempdir().unwrap();
    let (idx, _) = build(dir.path(), false, false);
    let idx = s(&idx);
    let out = dir.path().join("export");
    let o = s(&out);
    ok(&[
        "export",
        "--index",
        idx,
        "--format",
        "npy",
        "--out",
        o,
        "--shard-rows",
        "4",
    ]);
    let before = files_in(&out.join("img_emb"));

    let err = fails(&["export", "--index", idx, "--format", "npy", "--out", o]);
    assert!(
        err.contains("not empty") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(files_in(&out.join("img_emb")), before, "left as it was");

    // --force replaces the whole earlier export: no stale shard survives.
    ok(&[
        "export", "--index", idx, "--format", "parquet", "--out", o, "--force",
    ]);
    assert_eq!(files_in(&out), ["img_emb"]);
    assert_eq!(files_in(&out.join("img_emb")), ["img_emb_0.parquet"]);

    // A folder holding anything else is never replaced.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let err = fails(&[
        "export", "--index", idx, "--format", "npy", "--out", o, "--force",
    ]);
    assert!(err.contains("notes.txt"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );

    // An empty folder is fine; a file is not.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    ok(&[
        "export",
        "--index",
        idx,
        "--format",
        "npy",
        "--out",
        s(&empty),
    ]);
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let err = fails(&[
        "export",
        "--index",
        idx,
        "--format",
        "npy",
        "--out",
        s(&file),
    ]);
    assert!(err.contains("is a file"), "{err}");
}

#[test]
fn bad_arguments_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (idx, _) = build(dir.path(), false, false);
    let out = dir.path().join("export");
    let (idx, o) = (s(&idx), s(&out));
    let err = fails(&["export", "--index", idx, "--format", "csv", "--out", o]);
    assert!(err.contains("csv") && err.contains("npy"), "{err}");
    let missing = dir.path().join("no.index");
    let err = fails(&[
        "export",
        "--index",
        s(&missing),
        "--format",
        "npy",
        "--out",
        o,
    ]);
    assert!(err.contains("no.index"), "{err}");
    let err = fails(&[
        "export",
        "--index",
        idx,
        "--format",
        "npy",
        "--out",
        o,
        "--shard-rows",
        "0",
    ]);
    assert!(err.contains("--shard-rows"), "{err}");
    assert!(!out.exists(), "nothing written on failure");
}

#[test]
fn embed_writes_npy_and_parquet_with_the_safetensors_values() {
    let dir = tempfile::tempdir().unwrap();
    let (m, images, texts) = (
        model(),
        fixtures().join("images"),
        fixtures().join("captions.txt"),
    );
    let (m, images, texts) = (s(&m), s(&images), s(&texts));
    let st = dir.path().join("both.safetensors");
    ok(&[
        "embed",
        "--model",
        m,
        "--images",
        images,
        "--texts",
        texts,
        "--out",
        s(&st),
    ]);
    let reference = candle_core::safetensors::load(&st, &candle_core::Device::Cpu).unwrap();
    let flat = |k: &str| -> Vec<f32> { reference[k].flatten_all().unwrap().to_vec1().unwrap() };

    let npy = dir.path().join("images.npy");
    ok(&["embed", "--model", m, "--images", images, "--out", s(&npy)]);
    let (shape, rows) = read_npy_f32(&npy);
    assert_eq!(shape, reference["image_embeds"].dims());
    assert_eq!(rows, flat("image_embeds"));

    let pq = dir.path().join("captions.parquet");
    ok(&["embed", "--model", m, "--texts", texts, "--out", s(&pq)]);
    let t = read_parquet(&pq);
    assert_eq!(column_names(&t), ["embedding", "caption"]);
    assert_eq!(embeddings(&t).1, flat("text_embeds"));
    assert_eq!(strings(&t, "caption"), common::captions());

    let pq = dir.path().join("images.parquet");
    ok(&["embed", "--model", m, "--images", images, "--out", s(&pq)]);
    let t = read_parquet(&pq);
    assert_eq!(embeddings(&t).1, flat("image_embeds"));
    let paths: Vec<String> = common::image_paths()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(strings(&t, "image_path"), paths);

    let both = dir.path().join("both.npy");
    let err = fails(&[
        "embed",
        "--model",
        m,
        "--images",
        images,
        "--texts",
        texts,
        "--out",
        s(&both),
    ]);
    assert!(err.contains("one kind"), "{err}");
    assert!(!both.exists());
}
