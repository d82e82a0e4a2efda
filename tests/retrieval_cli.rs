//! Black-box tests of `clip index` and `clip search` with the tiny fixture model.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{clip, fixture, fixtures, ok, ok_stderr, s};
use serde_json::Value;

/// Asserts a clean failure (exit 1, no panic); returns stderr.
fn fails(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "should fail cleanly:\n{err}");
    common::fail(o)
}

/// `clip index build --out idx` with `args`.
fn index_build(idx: &Path, args: &[&str]) -> Output {
    clip(&[&["index", "build", "--out", s(idx)], args].concat())
}

/// `clip index build --out idx` with `args`, which must succeed; returns its stderr.
fn build(idx: &Path, args: &[&str]) -> String {
    ok_stderr(&index_build(idx, args))
}

/// [`build`] with the fixture model.
fn build_with_model(idx: &Path, args: &[&str]) -> String {
    build(idx, &[&["--model", &fixture("hf_tiny")], args].concat())
}

/// `clip search --index idx` with `args`.
fn search(idx: &Path, args: &[&str]) -> Output {
    clip(&[&["search", "--index", s(idx)], args].concat())
}

/// `clip search --index idx` with `args` and `--json`, which must succeed: one object per
/// query.
fn search_json(idx: &Path, args: &[&str]) -> Vec<Value> {
    serde_json::from_str(&ok(&search(idx, &[args, &["--json"]].concat()))).unwrap()
}

/// A copy of the fixture images in a fresh temp dir.
fn image_folder() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("photos");
    std::fs::create_dir(&imgs).unwrap();
    for e in std::fs::read_dir(fixtures().join("images")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), imgs.join(e.file_name())).unwrap();
    }
    (dir, imgs)
}

fn hit_paths(result: &Value) -> Vec<String> {
    result["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["path"].as_str().unwrap().to_string())
        .collect()
}

struct Raw(Vec<usize>, Vec<u8>);
impl safetensors::View for Raw {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.1).into()
    }
    fn data_len(&self) -> usize {
        self.1.len()
    }
}

fn write_vectors(path: &Path, key: &str, rows: &[Vec<f32>], ids: Option<&[String]>) {
    let data: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let meta =
        ids.map(|ids| HashMap::from([("ids".to_string(), serde_json::to_string(ids).unwrap())]));
    let shape = vec![rows.len(), rows.first().map_or(0, Vec::len)];
    safetensors::serialize_to_file([(key, Raw(shape, data))], meta, path).unwrap();
}

/// `rows` as the `embeddings` tensor of `dir/name`, without ids.
fn embeddings(dir: &Path, name: &str, rows: &[Vec<f32>]) -> PathBuf {
    let path = dir.join(name);
    write_vectors(&path, "embeddings", rows, None);
    path
}

/// `dir/base.safetensors` holding `rows`, and an index `dir/idx` built from it.
fn embeddings_index(dir: &Path, rows: &[Vec<f32>]) -> (PathBuf, PathBuf) {
    let (base, idx) = (embeddings(dir, "base.safetensors", rows), dir.join("idx"));
    build(&idx, &["--embeddings", s(&base)]);
    (base, idx)
}

fn random_rows(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut st = seed;
    (0..n)
        .map(|_| {
            (0..dim)
                .map(|_| {
                    st = st
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((st >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect()
        })
        .collect()
}

#[test]
fn text_search_returns_ranked_image_paths() {
    let (dir, imgs) = image_folder();
    let idx = dir.path().join("idx");
    let err = build_with_model(&idx, &["--images", s(&imgs)]);
    assert!(err.contains("indexed 12 images"), "{err}");

    let cat = ["a photo of a cat", "-k", "5"];
    let res = search_json(&idx, &cat);
    assert_eq!(res.len(), 1);
    assert_eq!(res[0]["query"], "a photo of a cat");
    let hits = res[0]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 5);
    for (i, h) in hits.iter().enumerate() {
        assert_eq!(h["rank"], i + 1);
        assert!(Path::new(h["path"].as_str().unwrap()).starts_with(imgs.canonicalize().unwrap()));
        if i > 0 {
            assert!(hits[i - 1]["score"].as_f64() >= h["score"].as_f64());
        }
    }
    // An image finds itself first.
    let res = search_json(&idx, &["--image", s(&imgs.join("img03.png")), "-k", "3"]);
    assert!(hit_paths(&res[0])[0].ends_with("img03.png"));

    // The human-readable listing names the same files in the same order.
    let out = ok(&search(&idx, &cat));
    let listed: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(listed, hit_paths(&search_json(&idx, &cat)[0]));
}

#[test]
fn reindexing_embeds_only_new_files_and_drops_deleted_ones() {
    let (dir, imgs) = image_folder();
    let idx = dir.path().join("idx");
    let build = || build_with_model(&idx, &["--images", s(&imgs)]);
    build();
    let dogs = ["a dog", "-k", "12"];
    let before = search_json(&idx, &dogs);

    // Add a file in a subfolder (indexing is recursive), remove one, add an unreadable one.
    std::fs::create_dir(imgs.join("more")).unwrap();
    std::fs::copy(imgs.join("img00.png"), imgs.join("more/copy.png")).unwrap();
    std::fs::remove_file(imgs.join("img07.png")).unwrap();
    std::fs::write(imgs.join("broken.jpg"), b"not a jpeg").unwrap();
    let err = build();
    assert!(
        err.contains("indexed 12 images") && err.contains("1 embedded, 11 unchanged, 1 removed"),
        "{err}"
    );
    assert!(
        err.contains("skipped 1 unreadable") && err.contains("broken.jpg"),
        "{err}"
    );

    let after = search_json(&idx, &dogs);
    let paths = hit_paths(&after[0]);
    assert!(paths.iter().any(|p| p.ends_with("more/copy.png")));
    assert!(!paths.iter().any(|p| p.ends_with("img07.png")));
    // Unchanged files kept their vectors: same scores as before.
    let score = |res: &Value, name: &str| {
        res["hits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["path"].as_str().unwrap().ends_with(name))
            .unwrap()["score"]
            .as_f64()
    };
    assert_eq!(
        score(&before[0], "img03.png"),
        score(&after[0], "img03.png")
    );
    // The copy embeds like its original.
    let (a, b) = (
        score(&after[0], "img00.png").unwrap(),
        score(&after[0], "copy.png").unwrap(),
    );
    assert!((a - b).abs() < 1e-5);

    // Nothing changed: nothing rewritten. Every skip is in the index's list.
    let err = build();
    assert!(err.contains("up to date"), "{err}");
    let listed = std::fs::read_to_string(idx.join("skipped.tsv")).unwrap();
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert_eq!(lines[0], "name\treason");
    let (name, why) = lines[1].split_once('\t').unwrap();
    assert!(name.ends_with("broken.jpg") && !why.is_empty(), "{listed}");

    // Without the broken file the list goes: it names the last build's skips only.
    std::fs::remove_file(imgs.join("broken.jpg")).unwrap();
    let err = build();
    assert!(!err.contains("skipped"), "{err}");
    assert!(!idx.join("skipped.tsv").exists());
}

#[test]
fn caption_index_serves_image_to_text() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("captions");
    let texts = fixtures().join("captions.txt");
    build_with_model(&idx, &["--texts", s(&texts), "--half"]);
    let img = fixtures().join("images/img00.png");
    let res = search_json(&idx, &["--image", s(&img), "-k", "3"]);
    let captions: Vec<String> = std::fs::read_to_string(&texts)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let hits = res[0]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 3.min(captions.len()));
    for h in hits {
        let id = h["id"].as_u64().unwrap() as usize;
        assert_eq!(h["caption"].as_str().unwrap(), captions[id]);
    }
    // A caption finds itself first (text→text over a caption index).
    let res = search_json(&idx, &[&captions[1], "-k", "1"]);
    assert_eq!(res[0]["hits"][0]["id"], 1);
}

#[test]
fn embeddings_index_search_equals_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let (n, dim, nq, k) = (700, 16, 9, 7);
    let base = random_rows(n, dim, 1);
    let ids: Vec<String> = (0..n).map(|i| format!("item-{i}")).collect();
    let base_file = dir.path().join("base.safetensors");
    write_vectors(&base_file, "embeddings", &base, Some(&ids));
    let queries = random_rows(nq, dim, 2);
    let q_file = embeddings(dir.path(), "q.safetensors", &queries);
    let idx = dir.path().join("idx");
    build(&idx, &["--embeddings", s(&base_file)]);

    let by_q = ["--query-embeddings", s(&q_file)];
    let res = search_json(&idx, &[&by_q[..], &["-k", &k.to_string()]].concat());
    assert_eq!(res.len(), nq, "one object per query");
    let unit = |v: &[f32]| {
        let n = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        v.iter().map(|x| *x as f64 / n).collect::<Vec<f64>>()
    };
    for (q, r) in queries.iter().zip(&res) {
        let q = unit(q);
        let mut all: Vec<(usize, f64)> = base
            .iter()
            .map(|b| unit(b))
            .enumerate()
            .map(|(i, b)| (i, b.iter().zip(&q).map(|(x, y)| x * y).sum()))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let want: Vec<usize> = all[..k].iter().map(|x| x.0).collect();
        let got: Vec<usize> = r["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got, want);
        for h in r["hits"].as_array().unwrap() {
            let id = h["id"].as_u64().unwrap() as usize;
            assert_eq!(h["name"], ids[id]);
            assert!(
                (h["score"].as_f64().unwrap() - all.iter().find(|x| x.0 == id).unwrap().1).abs()
                    < 1e-5
            );
        }
    }
    // Approximate search over this small index (both structures) finds the true first hit.
    let first = |res: &[Value]| -> Vec<u64> {
        res.iter()
            .map(|r| r["hits"][0]["id"].as_u64().unwrap())
            .collect()
    };
    let exact_first = first(&res);
    let search =
        |extra: &[&str]| search_json(&idx, &[&by_q[..], &["-k", "1", "--ann"], extra].concat());
    // Probing every list is exhaustive.
    assert_eq!(first(&search(&["--probes", "1000"])), exact_first);
    let hnsw = first(&search(&["--ann-method", "hnsw"]));
    let agree = hnsw
        .iter()
        .zip(&exact_first)
        .filter(|(a, b)| a == b)
        .count();
    assert!(agree >= nq - 1, "{hnsw:?} vs {exact_first:?}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (base_file, idx) = embeddings_index(dir.path(), &random_rows(50, 16, 3));

    // Missing tensor: names the file, the key and what is there.
    let other = dir.path().join("other.safetensors");
    write_vectors(&other, "image_embeds", &random_rows(3, 16, 4), None);
    let err = fails(&search(&idx, &["--query-embeddings", s(&other)]));
    assert!(
        err.contains("other.safetensors")
            && err.contains("`embeddings`")
            && err.contains("image_embeds"),
        "{err}"
    );
    let err = fails(&index_build(
        &dir.path().join("x"),
        &["--embeddings", s(&other)],
    ));
    assert!(err.contains("`embeddings`"), "{err}");

    // Dimension mismatch: names both dimensions.
    let small = embeddings(dir.path(), "small.safetensors", &random_rows(2, 8, 5));
    let err = fails(&search(&idx, &["--query-embeddings", s(&small)]));
    assert!(
        err.contains("dimension 8") && err.contains("dimension 16"),
        "{err}"
    );
    // The fixture model makes 12-dimensional text vectors.
    let err = fails(&search(&idx, &["--model", &fixture("hf_tiny"), "a cat"]));
    assert!(
        err.contains("dimension 12") && err.contains("dimension 16"),
        "{err}"
    );
    // No model recorded for a text query.
    let err = fails(&search(&idx, &["a cat"]));
    assert!(
        err.contains("records no model") && err.contains("--model"),
        "{err}"
    );

    // A zero query vector cannot be normalised.
    let zero = embeddings(dir.path(), "zero.safetensors", &[vec![0.0; 16]]);
    let err = fails(&search(&idx, &["--query-embeddings", s(&zero)]));
    assert!(
        err.contains("zero.safetensors") && err.contains("row 0"),
        "{err}"
    );

    // Not an index.
    let err = fails(&search(dir.path(), &["--query-embeddings", s(&small)]));
    assert!(err.contains("not an index"), "{err}");
    // Refuses to build over unrelated files.
    let err = fails(&index_build(dir.path(), &["--embeddings", s(&base_file)]));
    assert!(err.contains("refusing"), "{err}");
    assert!(base_file.exists());
}

#[test]
fn damaged_index_is_reported_not_searched() {
    let dir = tempfile::tempdir().unwrap();
    let (_, idx) = embeddings_index(dir.path(), &random_rows(40, 8, 6));
    let q = embeddings(dir.path(), "q.safetensors", &random_rows(1, 8, 7));
    let by_q = ["--query-embeddings", s(&q)];
    let vf = idx.join("vectors-1.safetensors");
    let bytes = std::fs::read(&vf).unwrap();

    std::fs::write(&vf, &bytes[..bytes.len() - 100]).unwrap();
    let err = fails(&search(&idx, &by_q));
    assert!(
        err.contains("damaged")
            && err.contains("vectors-1.safetensors")
            && err.contains("truncated"),
        "{err}"
    );

    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    std::fs::write(&vf, &flipped).unwrap();
    let err = fails(&search(&idx, &by_q));
    assert!(err.contains("damaged") && err.contains("CRC-32"), "{err}");
    let err = fails(&clip(&["index", "info", s(&idx)]));
    assert!(err.contains("damaged"), "{err}");

    std::fs::write(idx.join("manifest.json"), b"{ not json").unwrap();
    let err = fails(&search(&idx, &by_q));
    assert!(err.contains("manifest.json"), "{err}");
}

#[test]
fn interrupted_build_leaves_the_previous_index_usable() {
    let dir = tempfile::tempdir().unwrap();
    let (base_file, idx) = embeddings_index(dir.path(), &random_rows(30, 8, 8));
    let q = embeddings(dir.path(), "q.safetensors", &random_rows(2, 8, 9));
    let by_q = ["--query-embeddings", s(&q), "--json"];
    let before = ok(&search(&idx, &by_q));

    // A rebuild that fails part-way: row 6000 of 9000 is zero and cannot be normalised, after
    // more than one block of rows has been written to the temporary file.
    let mut rows = random_rows(9000, 8, 10);
    rows[6000] = vec![0.0; 8];
    let bad = embeddings(dir.path(), "bad.safetensors", &rows);
    let err = fails(&index_build(&idx, &["--embeddings", s(&bad)]));
    assert!(
        err.contains("row 6000") && err.contains("bad.safetensors"),
        "{err}"
    );

    // What a kill mid-write leaves behind: a temporary file.
    std::fs::write(idx.join(".vectors-5.safetensors.4242.tmp"), vec![0u8; 1000]).unwrap();
    assert_eq!(before, ok(&search(&idx, &by_q)));

    // The next successful build cleans up.
    build(&idx, &["--embeddings", s(&base_file)]);
    let mut names: Vec<String> = std::fs::read_dir(&idx)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["manifest.json", "vectors-2.safetensors"]);
}

#[test]
fn saved_ivf_lists_serve_ann_search_until_the_vectors_change() {
    let dir = tempfile::tempdir().unwrap();
    let (n, dim) = (400, 16);
    let q_file = embeddings(dir.path(), "q.safetensors", &random_rows(12, dim, 2));
    let (base, idx) = embeddings_index(dir.path(), &random_rows(n, dim, 1));
    let ann_file = idx.join("ivf.safetensors");
    let ids = |args: &[&str]| -> Vec<Vec<u64>> {
        let by_q = ["--query-embeddings", s(&q_file), "-k", "5"];
        let res = search_json(&idx, &[&by_q[..], args].concat());
        let hits = |r: &Value| r["hits"].as_array().unwrap().clone();
        let id = |h: &Value| h["id"].as_u64().unwrap();
        res.iter()
            .map(|r| hits(r).iter().map(id).collect())
            .collect()
    };
    let exact = ids(&["--exact"]);
    let in_memory = ids(&["--ann", "--probes", "4"]);
    assert_ne!(
        in_memory, exact,
        "4 of √400 = 20 lists should miss a neighbour"
    );
    assert!(!ann_file.exists());

    // Default lists (√N): the saved ones search exactly like those built in memory.
    let err = build(&idx, &["--embeddings", s(&base), "--ann"]);
    assert!(err.contains("saved 20 IVF lists"), "{err}");
    assert!(ann_file.exists());
    assert_eq!(ids(&["--ann", "--probes", "4"]), in_memory);
    let info = ok(&clip(&["index", "info", s(&idx)]));
    assert!(
        info.contains("ivf.safetensors (20 IVF lists, up to date)"),
        "{info}"
    );

    // 4 saved lists, all probed, are exhaustive: search used the file, not 20 new lists.
    build(
        &idx,
        &["--embeddings", s(&base), "--ann", "--ann-lists", "4"],
    );
    assert_eq!(ids(&["--ann", "--probes", "4"]), exact);
    let stale = std::fs::read(&ann_file).unwrap();

    // New vectors: the file is deleted; put back, it is ignored with a warning.
    let other = embeddings(dir.path(), "other.safetensors", &random_rows(n, dim, 3));
    build(&idx, &["--embeddings", s(&other)]);
    assert!(!ann_file.exists());
    let want = ids(&["--ann", "--probes", "4"]);
    std::fs::write(&ann_file, &stale).unwrap();
    let by_q = ["--query-embeddings", s(&q_file), "-k", "5"];
    let err = ok_stderr(&search(
        &idx,
        &[&by_q[..], &["--ann", "--probes", "4"]].concat(),
    ));
    assert!(err.contains("built for other vectors"), "{err}");
    assert_eq!(ids(&["--ann", "--probes", "4"]), want);
    let info = ok(&clip(&["index", "info", s(&idx)]));
    assert!(info.contains("not used"), "{info}");
}
