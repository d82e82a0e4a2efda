//! The on-disk index: round trips, damage detection, interrupted writes, search equivalence.

use std::path::{Path, PathBuf};

use retrieval::testing::{brute_force, unit_rows};
use retrieval::{
    exact_search, plan_refresh, write_index, AnnMethod, AnnParams, DType, Entries, ImageEntry,
    Index, IndexSpec, OpenOptions, RetrievalError, SearchMode, SearchOptions, ANN_FILE,
};

fn spec(n: usize, dim: usize, dtype: DType) -> IndexSpec {
    IndexSpec {
        model: "test-model".into(),
        dimension: dim,
        count: n,
        dtype,
        entries: Entries::Captions {
            captions: (0..n).map(|i| format!("caption {i}")).collect(),
        },
    }
}

fn build(dir: &Path, v: &[f32], dim: usize, dtype: DType) -> Index {
    let n = v.len() / dim;
    Index::from_vectors(spec(n, dim, dtype), v.to_vec())
        .unwrap()
        .save(dir)
        .unwrap();
    Index::open(dir).unwrap()
}

fn vectors_file(dir: &Path) -> PathBuf {
    let unchecked = OpenOptions {
        verify_checksum: false,
    };
    dir.join(
        &Index::open_with(dir, unchecked)
            .unwrap()
            .manifest()
            .vectors_file,
    )
}

/// The ids of the `k` best rows for one query `q`, by brute force.
fn brute_force_ids(base: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<usize> {
    brute_force(base, dim, q, k)[0]
        .iter()
        .map(|x| x.0)
        .collect()
}

#[test]
fn saved_index_searches_like_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let (n, dim) = (5000, 64);
    let base = unit_rows(n, dim, 1);
    let idx = build(&dir.path().join("idx"), &base, dim, DType::F32);
    assert_eq!((idx.len(), idx.dim(), idx.model()), (n, dim, "test-model"));
    let queries = unit_rows(50, dim, 2);
    let hits = idx.search(&queries, dim, 10).unwrap();
    for (q, h) in queries.chunks(dim).zip(&hits) {
        let got: Vec<usize> = h.iter().map(|h| h.id).collect();
        assert_eq!(got, brute_force_ids(&base, dim, q, 10));
        assert!(h.windows(2).all(|w| w[0].score >= w[1].score));
    }
    assert_eq!(exact_search(&base, &queries, dim, 10).unwrap(), hits);
    assert_eq!(
        idx.entries().label(hits[0][0].id),
        format!("caption {}", hits[0][0].id)
    );
}

#[test]
fn f16_index_is_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let (n, dim) = (2000, 32);
    let base = unit_rows(n, dim, 3);
    let idx = build(dir.path(), &base, dim, DType::F16);
    assert_eq!(idx.manifest().dtype, DType::F16);
    let len = std::fs::metadata(vectors_file(dir.path())).unwrap().len() as usize;
    assert!(
        len < n * dim * 2 + 1024,
        "stored as 2 bytes per element: {len}"
    );
    let q = unit_rows(1, dim, 4);
    let hits = idx.search(&q, dim, 5).unwrap().remove(0);
    let want = brute_force_ids(&base, dim, &q, 5);
    assert_eq!(hits[0].id, want[0]);
    for h in &hits {
        let exact: f32 = base[h.id * dim..(h.id + 1) * dim]
            .iter()
            .zip(&q)
            .map(|(a, b)| a * b)
            .sum();
        assert!((h.score - exact).abs() < 2e-3);
    }
}

#[test]
fn wrong_query_dimension_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let idx = build(dir.path(), &unit_rows(10, 8, 5), 8, DType::F32);
    let err = idx.search(&[0.5; 6], 6, 3).unwrap_err();
    assert!(matches!(
        err,
        RetrievalError::DimensionMismatch {
            got: 6,
            expected: 8,
            ..
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains('6') && msg.contains('8') && msg.contains("query"),
        "{msg}"
    );
    assert!(idx.search(&[f32::NAN; 8], 8, 3).is_err());
}

#[test]
fn truncated_or_corrupted_vectors_are_reported_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), &unit_rows(100, 16, 6), 16, DType::F32);
    let vf = vectors_file(dir.path());
    let bytes = std::fs::read(&vf).unwrap();

    // Truncation: caught by the length check even without the checksum.
    std::fs::write(&vf, &bytes[..bytes.len() - 7]).unwrap();
    for verify_checksum in [true, false] {
        let err = Index::open_with(dir.path(), OpenOptions { verify_checksum }).unwrap_err();
        assert!(matches!(err, RetrievalError::Damaged { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("damaged") && msg.contains("vectors-"), "{msg}");
    }

    // One flipped byte in the data: caught by the checksum.
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 0x40;
    std::fs::write(&vf, &flipped).unwrap();
    let err = Index::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("CRC-32"), "{err}");

    // Garbage of the right length with checksum verification off: the header check catches it.
    std::fs::write(&vf, vec![0xAB; bytes.len()]).unwrap();
    let err = Index::open_with(
        dir.path(),
        OpenOptions {
            verify_checksum: false,
        },
    )
    .unwrap_err();
    assert!(matches!(err, RetrievalError::Damaged { .. }), "{err}");
}

#[test]
fn damaged_manifest_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), &unit_rows(4, 4, 7), 4, DType::F32);
    let mpath = dir.path().join("manifest.json");
    let text = std::fs::read_to_string(&mpath).unwrap();
    std::fs::write(&mpath, &text[..text.len() / 2]).unwrap();
    let err = Index::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("manifest.json"), "{err}");

    std::fs::write(
        &mpath,
        text.replace("\"format_version\": 2", "\"format_version\": 99"),
    )
    .unwrap();
    let err = Index::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, RetrievalError::UnsupportedVersion { found: 99, .. }),
        "{err}"
    );
    let err = err.to_string();
    assert!(err.contains("99") && err.contains("manifest.json"), "{err}");

    std::fs::remove_file(&mpath).unwrap();
    let err = Index::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("not an index") && err.contains("manifest.json"),
        "{err}"
    );
    assert!(Index::open(&dir.path().join("nope")).is_err());
}

#[test]
fn failed_write_keeps_the_previous_index() {
    let dir = tempfile::tempdir().unwrap();
    let base = unit_rows(300, 8, 8);
    let before = build(dir.path(), &base, 8, DType::F32);
    let q = unit_rows(3, 8, 9);
    let want = before.search(&q, 8, 5).unwrap();
    drop(before);

    // The row source fails half-way through (an embedding error, a full disk, a kill…).
    let err = write_index(dir.path(), &spec(9000, 8, DType::F32), |rows, out| {
        if rows.start >= 4096 {
            return Err("simulated failure".into());
        }
        out.copy_from_slice(&unit_rows(rows.len(), 8, 10));
        Ok(())
    })
    .unwrap_err();
    assert!(matches!(err, RetrievalError::Fill { .. }));

    // Rows that are not unit length abort the write too.
    let err = write_index(dir.path(), &spec(2, 8, DType::F32), |_, out| {
        out.fill(1.0);
        Ok(())
    })
    .unwrap_err();
    assert!(err.to_string().contains("norm"), "{err}");

    let after = Index::open(dir.path()).unwrap();
    assert_eq!(after.len(), 300);
    assert_eq!(after.search(&q, 8, 5).unwrap(), want);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        3,
        "only the manifest, one vectors file and one rows file remain: {names:?}"
    );
}

#[test]
fn leftovers_of_a_killed_write_are_ignored_then_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let base = unit_rows(50, 4, 11);
    build(dir.path(), &base, 4, DType::F32);
    // What a kill between the two renames leaves: a temp file and an unreferenced generation.
    std::fs::write(
        dir.path().join(".vectors-7.safetensors.999.tmp"),
        b"half a file",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("vectors-7.safetensors"),
        b"complete but never referenced",
    )
    .unwrap();
    std::fs::write(dir.path().join(".manifest.json.999.tmp"), b"{").unwrap();
    let idx = Index::open(dir.path()).unwrap();
    assert_eq!(idx.len(), 50);
    idx.save(dir.path()).unwrap();
    drop(idx);
    let idx = Index::open(dir.path()).unwrap();
    assert_eq!(idx.manifest().vectors_file, "vectors-8.safetensors");
    assert_eq!(idx.manifest().rows.as_ref().unwrap().file, "rows-8.bin");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn refuses_to_write_over_unrelated_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("holiday.jpg"), b"x").unwrap();
    let err = Index::from_vectors(spec(1, 2, DType::F32), vec![1.0, 0.0])
        .unwrap()
        .save(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("holiday.jpg") && err.contains("refusing"),
        "{err}"
    );
    let file = dir.path().join("holiday.jpg");
    assert!(Index::from_vectors(spec(1, 2, DType::F32), vec![1.0, 0.0])
        .unwrap()
        .save(&file)
        .is_err());
}

#[test]
fn reading_while_rewriting_keeps_the_open_generation() {
    let dir = tempfile::tempdir().unwrap();
    let old = build(dir.path(), &unit_rows(20, 4, 12), 4, DType::F32);
    let v0 = old.vector(0);
    build(dir.path(), &unit_rows(30, 4, 13), 4, DType::F32);
    // The old mapping stays valid after its file is replaced and unlinked.
    assert_eq!(old.vector(0), v0);
    assert_eq!(Index::open(dir.path()).unwrap().len(), 30);
}

#[test]
fn empty_index_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let idx = build(dir.path(), &[], 3, DType::F32);
    assert!(idx.is_empty());
    assert_eq!(idx.search(&[1.0, 0.0, 0.0], 3, 5).unwrap(), vec![vec![]]);
}

#[test]
fn ann_finds_nearly_all_true_neighbours() {
    let (n, dim) = (4000, 32);
    // Clustered data, as embeddings are.
    let centres = unit_rows(40, dim, 14);
    let noise = unit_rows(n, dim, 15);
    let mut base: Vec<f32> = (0..n * dim)
        .map(|i| centres[(i / dim % 40) * dim + i % dim] + 0.6 * noise[i])
        .collect();
    retrieval::normalize_rows(&mut base, dim).unwrap();
    let queries = unit_rows(100, dim, 16);
    for method in [AnnMethod::Ivf, AnnMethod::Hnsw] {
        let idx = Index::from_vectors(spec(n, dim, DType::F32), base.clone()).unwrap();
        let opts = SearchOptions {
            mode: SearchMode::Ann,
            ann: AnnParams {
                method,
                ..AnnParams::default()
            },
            ..SearchOptions::default()
        };
        assert!(idx.uses_ann(&opts, 1));
        let auto = SearchOptions {
            auto_ann_min_rows: 1000,
            auto_ann_min_queries: 500,
            ..opts
        };
        let auto = SearchOptions {
            mode: SearchMode::Auto,
            ..auto
        };
        assert!(
            !idx.uses_ann(&SearchOptions::default(), 1),
            "4000 rows is below the default threshold"
        );
        assert!(
            !idx.uses_ann(&auto, 100),
            "too few queries to pay for building the structure"
        );
        assert!(idx.uses_ann(&auto, 500));
        let approx = idx.search_with(&queries, dim, 10, &opts).unwrap();
        let exact = idx
            .search_with(
                &queries,
                dim,
                10,
                &SearchOptions {
                    mode: SearchMode::Exact,
                    ..opts
                },
            )
            .unwrap();
        assert!(
            idx.uses_ann(&auto, 1),
            "a built structure is used even for one query"
        );
        let mut found = 0;
        for (a, e) in approx.iter().zip(&exact) {
            assert_eq!(a.len(), 10);
            assert!(a.windows(2).all(|w| w[0].score >= w[1].score));
            for h in a {
                // Scores are exact even when the candidates are approximate.
                if let Some(x) = e.iter().find(|x| x.id == h.id) {
                    assert!((x.score - h.score).abs() < 1e-5);
                    found += 1;
                }
            }
        }
        let recall = found as f64 / 1000.0;
        assert!(recall >= 0.95, "{method:?}: recall@10 = {recall}");
        let built = idx.build_ann(&AnnParams::default()).unwrap();
        assert_eq!(built.method, method, "the structure built first is kept");
        if method == AnnMethod::Ivf {
            assert_eq!(built.lists, 63, "√4000 lists by default");
        }
    }
    let bad = AnnParams {
        max_connections: 1000,
        ..AnnParams::default()
    };
    let fresh = Index::from_vectors(
        spec(4, 2, DType::F32),
        vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0],
    )
    .unwrap();
    assert!(fresh.build_ann(&bad).is_err());
}

#[test]
fn refresh_plan_reuses_unchanged_files_only() {
    let e = |p: &str, size, mtime_ns| ImageEntry {
        path: p.into(),
        size,
        mtime_ns,
    };
    let root = PathBuf::from("/photos");
    let old = Index::from_vectors(
        IndexSpec {
            model: "m".into(),
            dimension: 2,
            count: 3,
            dtype: DType::F32,
            entries: Entries::Images {
                root: root.clone(),
                files: vec![e("a.png", 1, 10), e("b.png", 2, 20), e("c.png", 3, 30)],
            },
        },
        vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0],
    )
    .unwrap();
    // b changed (mtime), c deleted, d new, a unchanged.
    let now = vec![e("a.png", 1, 10), e("b.png", 2, 21), e("d.png", 4, 40)];
    let plan = plan_refresh(Some(&old), "m", &root, &now);
    assert_eq!(plan.reuse, vec![Some(0), None, None]);
    assert_eq!((plan.removed, plan.to_embed()), (1, 2));
    // Another model or folder: everything is embedded again.
    assert_eq!(plan_refresh(Some(&old), "other", &root, &now).to_embed(), 3);
    assert_eq!(
        plan_refresh(Some(&old), "m", Path::new("/elsewhere"), &now).to_embed(),
        3
    );
    assert_eq!(plan_refresh(None, "m", &root, &now).to_embed(), 3);
}

#[test]
fn index_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Index>();
}

#[test]
fn saved_ivf_lists_are_loaded_until_the_vectors_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    let (n, dim) = (3000, 32);
    let idx = build(&path, &unit_rows(n, dim, 5), dim, DType::F32);
    let params = AnnParams {
        lists: 20,
        probes: 3,
        ..AnnParams::default()
    };
    let opts = SearchOptions {
        mode: SearchMode::Ann,
        ann: params,
        ..SearchOptions::default()
    };
    let queries = unit_rows(40, dim, 6);
    assert_eq!(
        idx.load_saved_ann(&params).unwrap(),
        None,
        "nothing saved yet"
    );
    assert_eq!(idx.save_ann(&params).unwrap().lists, 20);
    let in_memory = idx.search_with(&queries, dim, 10, &opts).unwrap();
    let saved = std::fs::read(path.join(ANN_FILE)).unwrap();

    // Another process loads the lists (20 of them, where building would make √3000 ≈ 55).
    let reopened = Index::open(&path).unwrap();
    let unfit = AnnParams { lists: 7, ..params };
    assert_eq!(reopened.load_saved_ann(&unfit).unwrap(), None);
    let any = AnnParams { lists: 0, ..params };
    assert_eq!(reopened.load_saved_ann(&any).unwrap().unwrap().lists, 20);
    assert_eq!(
        reopened.search_with(&queries, dim, 10, &opts).unwrap(),
        in_memory
    );

    // New vectors delete the file; put back, it is recognised as stale and not used.
    let new = build(&path, &unit_rows(n, dim, 7), dim, DType::F32);
    assert!(!path.join(ANN_FILE).exists());
    let want = new.search_with(&queries, dim, 10, &opts).unwrap();
    assert_ne!(want, in_memory);
    std::fs::write(path.join(ANN_FILE), &saved).unwrap();
    let reopened = Index::open(&path).unwrap();
    let err = reopened.load_saved_ann(&params).unwrap_err();
    assert!(matches!(err, RetrievalError::Stale { .. }), "{err}");
    assert_eq!(
        reopened.search_with(&queries, dim, 10, &opts).unwrap(),
        want
    );

    // Truncated or garbage: damaged, not used, searched all the same.
    for bad in [
        &saved[..saved.len() / 2],
        b"not a safetensors file at all".as_slice(),
    ] {
        std::fs::write(path.join(ANN_FILE), bad).unwrap();
        let reopened = Index::open(&path).unwrap();
        let err = reopened.load_saved_ann(&params).unwrap_err();
        assert!(matches!(err, RetrievalError::Damaged { .. }), "{err}");
        assert_eq!(
            reopened.search_with(&queries, dim, 10, &opts).unwrap(),
            want
        );
    }
}

#[test]
fn saved_ivf_lists_with_damaged_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    let dim = 8;
    let idx = build(&path, &unit_rows(100, dim, 1), dim, DType::F32);
    idx.save_ann(&AnnParams::default()).unwrap();
    let file = path.join(ANN_FILE);
    // The last tensor's last bytes are the last row id of the `order` list: point it past the end.
    let mut bytes = std::fs::read(&file).unwrap();
    let end = bytes.len();
    bytes[end - 4..].copy_from_slice(&1000u32.to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    let err = Index::open(&path)
        .unwrap()
        .load_saved_ann(&AnnParams::default())
        .unwrap_err();
    assert!(err.to_string().contains("exactly once"), "{err}");
}
