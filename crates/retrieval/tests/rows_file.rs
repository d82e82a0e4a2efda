//! The rows file of format version 2: lazy reads, version-1 manifests, damage.

use std::path::{Path, PathBuf};

use retrieval::testing::unit_rows;
use retrieval::{
    plan_refresh, DType, Entries, EntriesKind, ImageEntry, Index, IndexSpec, OpenOptions,
    RetrievalError, FORMAT_VERSION, SAMPLES_FORMAT_VERSION,
};

const UNCHECKED: OpenOptions = OpenOptions {
    verify_checksum: false,
};

fn spec(n: usize, dim: usize, entries: Entries) -> IndexSpec {
    IndexSpec {
        model: "m".into(),
        dimension: dim,
        count: n,
        dtype: DType::F32,
        entries,
    }
}

fn images(n: usize) -> Entries {
    Entries::Images {
        root: PathBuf::from("/photos"),
        files: (0..n)
            .map(|i| ImageEntry {
                path: format!("d{}/img {i}.png", i % 3).into(),
                size: 1000 + i as u64,
                mtime_ns: -5 + 1_700_000_000_000_000_000 * (i as i64 % 2),
            })
            .collect(),
    }
}

fn captions(n: usize) -> Entries {
    // Multi-byte characters and an empty caption: offsets are in bytes.
    Entries::Captions {
        captions: (0..n)
            .map(|i| match i {
                1 => String::new(),
                _ => format!("a café № {i} 🐱"),
            })
            .collect(),
    }
}

fn ids(n: usize) -> Entries {
    Entries::Ids {
        ids: (0..n).map(|i| format!("id-{i:05}")).collect(),
    }
}

/// Saves `entries` over `n` random rows at `dir`; returns the in-memory index and the vectors.
fn save(dir: &Path, n: usize, entries: Entries) -> (Index, Vec<f32>) {
    let v = unit_rows(n, 8, 21);
    let idx = Index::from_vectors(spec(n, 8, entries), v.clone()).unwrap();
    idx.save(dir).unwrap();
    (idx, v)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn rows_path(dir: &Path) -> PathBuf {
    let idx = Index::open_with(dir, UNCHECKED).unwrap();
    dir.join(&idx.manifest().rows.as_ref().unwrap().file)
}

#[test]
fn every_kind_round_trips_through_the_rows_file() {
    let n = 40;
    for entries in [images(n), captions(n), ids(n)] {
        let dir = tempfile::tempdir().unwrap();
        let (mem, _) = save(dir.path(), n, entries.clone());
        assert_eq!(
            names_in(dir.path()),
            ["manifest.json", "rows-1.bin", "vectors-1.safetensors"]
        );
        let text = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
        assert!(
            !text.contains("id-00007") && !text.contains("café") && !text.contains("img 7"),
            "rows are not in the manifest: {text}"
        );
        let idx = Index::open(dir.path()).unwrap();
        assert_eq!(idx.manifest().format_version, FORMAT_VERSION);
        assert_eq!(idx.entries().kind(), &EntriesKind::of(&entries));
        assert_eq!(idx.entries().len(), n);
        assert_eq!(idx.entries().to_entries().unwrap(), entries);
        for i in 0..n {
            assert_eq!(idx.label(i).unwrap(), entries.label(i));
            assert_eq!(idx.entries().label(i), mem.entries().label(i));
        }
        let e = idx.entries();
        match &entries {
            Entries::Images { root, files } => {
                assert_eq!(e.image(7).unwrap().as_ref(), Some(&files[7]));
                assert_eq!(e.image_path(7).unwrap(), Some(root.join(&files[7].path)));
                assert_eq!(e.caption(7).unwrap(), None);
                assert_eq!(e.images().collect::<Result<Vec<_>, _>>().unwrap(), *files);
            }
            Entries::Captions { captions } => {
                assert_eq!(e.caption(1).unwrap(), Some(""));
                assert_eq!(e.caption(7).unwrap(), Some(captions[7].as_str()));
                assert_eq!((e.id(7).unwrap(), e.image(7).unwrap()), (None, None));
            }
            Entries::Ids { ids } => {
                assert_eq!(e.id(7).unwrap(), Some(ids[7].as_str()));
                assert_eq!(e.image_path(7).unwrap(), None);
            }
            Entries::Samples { .. } => unreachable!("samples are tests/samples_rows.rs's"),
        }
        // Out of range is an error, not a panic.
        assert!(idx.label(n).is_err() && e.caption(n).is_err() && e.image(n).is_err());
    }
}

#[test]
fn row_numbers_need_no_rows_file() {
    let dir = tempfile::tempdir().unwrap();
    save(dir.path(), 5, Entries::Ids { ids: Vec::new() });
    assert_eq!(
        names_in(dir.path()),
        ["manifest.json", "vectors-1.safetensors"]
    );
    let idx = Index::open(dir.path()).unwrap();
    assert!(idx.manifest().rows.is_none() && idx.entries().is_numbered());
    assert_eq!(idx.label(3).unwrap(), "3");
    assert_eq!(idx.entries().id(3).unwrap(), None);
    // Named rows are not numbered.
    let named = tempfile::tempdir().unwrap();
    save(named.path(), 5, ids(5));
    assert!(!Index::open(named.path()).unwrap().entries().is_numbered());
}

#[test]
fn refresh_plan_reads_the_rows_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mem, _) = save(dir.path(), 6, images(6));
    let opened = Index::open(dir.path()).unwrap();
    let Entries::Images { root, mut files } = images(6) else {
        unreachable!()
    };
    files[2].mtime_ns += 1;
    files.remove(4);
    files.push(ImageEntry {
        path: "new.png".into(),
        size: 1,
        mtime_ns: 1,
    });
    let plan = plan_refresh(Some(&opened), "m", &root, &files);
    assert_eq!(plan, plan_refresh(Some(&mem), "m", &root, &files));
    assert_eq!(plan.reuse, [Some(0), Some(1), None, Some(3), Some(5), None]);
    assert_eq!(plan.removed, 1);
}

/// The manifest `clip` 0.x wrote before rows files: every row inline, version 1.
fn write_v1_manifest(dir: &Path, entries: &Entries) {
    let m = Index::open(dir).unwrap().manifest().clone();
    let v1 = serde_json::json!({
        "format": "clip-index",
        "format_version": 1,
        "model": m.model,
        "dimension": m.dimension,
        "count": m.count,
        "metric": "inner_product",
        "dtype": "f32",
        "vectors_file": m.vectors_file,
        "vectors_bytes": m.vectors_bytes,
        "vectors_crc32": m.vectors_crc32,
        "entries": entries,
    });
    if let Some(r) = &m.rows {
        std::fs::remove_file(dir.join(&r.file)).unwrap();
    }
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&v1).unwrap(),
    )
    .unwrap();
}

#[test]
fn version_1_manifests_still_open_and_search() {
    let n = 30;
    for entries in [
        images(n),
        captions(n),
        ids(n),
        Entries::Ids { ids: Vec::new() },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (mem, v) = save(dir.path(), n, entries.clone());
        write_v1_manifest(dir.path(), &entries);
        let text = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
        assert!(text.contains("\"format_version\": 1"), "{text}");

        let idx = Index::open(dir.path()).unwrap();
        assert_eq!(idx.manifest().format_version, 1);
        assert!(idx.manifest().rows.is_none() && idx.entries().rows_file().is_none());
        let q = unit_rows(3, 8, 22);
        assert_eq!(idx.search(&q, 8, 5).unwrap(), mem.search(&q, 8, 5).unwrap());
        assert_eq!(idx.vector(4), v[4 * 8..5 * 8]);
        assert_eq!(idx.entries().to_entries().unwrap(), entries);
        for i in 0..n {
            assert_eq!(idx.label(i).unwrap(), entries.label(i));
        }
        if let Entries::Images { root, files } = &entries {
            assert_eq!(
                plan_refresh(Some(&idx), "m", root, files).to_embed(),
                0,
                "a version-1 image index is reused by refresh"
            );
        }

        // Saving it writes the current format.
        let out = tempfile::tempdir().unwrap();
        idx.save(out.path()).unwrap();
        let again = Index::open(out.path()).unwrap();
        assert_eq!(again.manifest().format_version, FORMAT_VERSION);
        assert_eq!(again.entries().to_entries().unwrap(), entries);
    }
}

#[test]
fn newer_versions_and_inconsistent_manifests_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    save(dir.path(), 4, captions(4));
    let mpath = dir.path().join("manifest.json");
    let text = std::fs::read_to_string(&mpath).unwrap();
    // The newest version read is that of samples indexes; one past it is refused.
    let newest = SAMPLES_FORMAT_VERSION;
    let newer = text.replace(
        &format!("\"format_version\": {FORMAT_VERSION}"),
        &format!("\"format_version\": {}", newest + 1),
    );
    assert_ne!(newer, text);
    std::fs::write(&mpath, newer).unwrap();
    let err = Index::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, RetrievalError::UnsupportedVersion { found, .. } if found == newest + 1),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("manifest.json") && msg.contains(&(newest + 1).to_string()),
        "{msg}"
    );

    // Captions without a rows file.
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m.as_object_mut().unwrap().remove("rows");
    std::fs::write(&mpath, m.to_string()).unwrap();
    let err = Index::open(dir.path()).unwrap_err();
    assert!(matches!(err, RetrievalError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("no rows file"), "{err}");

    // A rows file name that is not one.
    m["rows"] = serde_json::json!({"file": "../etc/passwd", "bytes": 1, "crc32": 0});
    std::fs::write(&mpath, m.to_string()).unwrap();
    let err = Index::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("manifest.json") && err.contains("passwd"),
        "{err}"
    );
}

#[test]
fn damaged_rows_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let n = 10;
    save(dir.path(), n, ids(n));
    let rf = rows_path(dir.path());
    let bytes = std::fs::read(&rf).unwrap();
    let expect_damaged = |err: RetrievalError| {
        let msg = err.to_string();
        assert!(matches!(err, RetrievalError::Damaged { .. }), "{msg}");
        assert!(
            msg.contains("damaged") && msg.contains("rows-1.bin"),
            "{msg}"
        );
        msg
    };

    // Truncated: caught by the length check with or without the checksum.
    std::fs::write(&rf, &bytes[..bytes.len() - 3]).unwrap();
    for opts in [OpenOptions::default(), UNCHECKED] {
        let msg = expect_damaged(Index::open_with(dir.path(), opts).unwrap_err());
        assert!(msg.contains("truncated"), "{msg}");
    }
    std::fs::write(&rf, &bytes[..5]).unwrap();
    expect_damaged(Index::open_with(dir.path(), UNCHECKED).unwrap_err());

    // One byte of an id made invalid UTF-8: the checksum catches it at open; without it,
    // reading that row is an error (not a panic), and the other rows still read.
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() = 0xFF;
    std::fs::write(&rf, &flipped).unwrap();
    let msg = expect_damaged(Index::open(dir.path()).unwrap_err());
    assert!(msg.contains("CRC-32"), "{msg}");
    let idx = Index::open_with(dir.path(), UNCHECKED).unwrap();
    let msg = expect_damaged(idx.label(n - 1).unwrap_err());
    assert!(msg.contains("row 9") && msg.contains("UTF-8"), "{msg}");
    assert!(idx.entries().label(n - 1).contains("unreadable"));
    assert_eq!(idx.label(0).unwrap(), "id-00000");

    // A middle offset pointing past the text: only the two rows using it fail.
    let mut bad = bytes.clone();
    let at = 32 + 8 * 4;
    bad[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&rf, &bad).unwrap();
    let idx = Index::open_with(dir.path(), UNCHECKED).unwrap();
    expect_damaged(idx.label(3).unwrap_err());
    expect_damaged(idx.label(4).unwrap_err());
    assert_eq!(idx.label(5).unwrap(), "id-00005");
    assert!(idx.entries().to_entries().is_err());

    // Header damage: another row count, another kind, garbage.
    for (at, value) in [(16, 11u64), (12, 1)] {
        let mut bad = bytes.clone();
        bad[at..at + 4].copy_from_slice(&value.to_le_bytes()[..4]);
        std::fs::write(&rf, &bad).unwrap();
        expect_damaged(Index::open_with(dir.path(), UNCHECKED).unwrap_err());
    }
    std::fs::write(&rf, vec![0xAB; bytes.len()]).unwrap();
    expect_damaged(Index::open_with(dir.path(), UNCHECKED).unwrap_err());

    // Missing.
    std::fs::remove_file(&rf).unwrap();
    let msg = expect_damaged(Index::open(dir.path()).unwrap_err());
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn a_failed_write_leaves_no_rows_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    save(dir.path(), 3, ids(3));
    let before = names_in(dir.path());
    let err = retrieval::write_index(dir.path(), &spec(3, 8, captions(3)), |_, out| {
        out.fill(1.0);
        Ok(())
    })
    .unwrap_err();
    assert!(err.to_string().contains("norm"), "{err}");
    assert_eq!(names_in(dir.path()), before);
    assert_eq!(
        Index::open(dir.path()).unwrap().label(2).unwrap(),
        "id-00002"
    );
}
