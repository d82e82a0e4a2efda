//! Indexes of webdataset shard samples (manifest version 3): rows written and read back
//! field by field, labels, and the manifest that names the kind; other kinds still write
//! version 2.

use retrieval::testing::unit_rows;
use retrieval::{
    DType, Entries, EntriesKind, Index, IndexSpec, OpenOptions, SampleEntry, FORMAT_VERSION,
    SAMPLES_FORMAT_VERSION,
};

fn samples(n: usize) -> Entries {
    Entries::Samples {
        endpoint: Some("http://127.0.0.1:9000".into()),
        samples: (0..n)
            .map(|i| SampleEntry {
                shard: format!("s3://bucket/shards/{:05}.tar", i / 3),
                key: format!("k{i}"),
                ext: if i % 2 == 0 { "jpg" } else { "x.png" }.into(),
                // Multi-byte text, and a sample without a caption.
                caption: if i == 1 {
                    String::new()
                } else {
                    format!("a café № {i}")
                },
                offset: 512 + 4096 * i as u64,
                len: 1000 + i as u64,
            })
            .collect(),
    }
}

fn save(dir: &std::path::Path, n: usize, entries: Entries) -> Index {
    let spec = IndexSpec {
        model: "m".into(),
        dimension: 8,
        count: n,
        dtype: DType::F32,
        entries,
    };
    let idx = Index::from_vectors(spec, unit_rows(n, 8, 5)).unwrap();
    idx.save(dir).unwrap();
    let opts = OpenOptions {
        verify_checksum: true,
    };
    Index::open_with(dir, opts).unwrap()
}

#[test]
fn sample_rows_round_trip_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let entries = samples(7);
    let idx = save(dir.path(), 7, entries.clone());
    assert_eq!(idx.manifest().format_version, SAMPLES_FORMAT_VERSION);
    assert_eq!(
        idx.entries().kind(),
        &EntriesKind::Samples {
            endpoint: Some("http://127.0.0.1:9000".into())
        }
    );
    let Entries::Samples { samples: want, .. } = &entries else {
        unreachable!()
    };
    for (i, w) in want.iter().enumerate() {
        let got = idx.entries().sample(i).unwrap().unwrap();
        assert_eq!(&got, w);
        assert_eq!(idx.label(i).unwrap(), format!("{}#{}", w.shard, w.key));
        assert_eq!(idx.entries().image_path(i).unwrap(), None);
    }
    assert_eq!(idx.entries().to_entries().unwrap(), entries);
    assert!(idx.entries().sample(7).is_err(), "a row past the end");
    let json = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
    assert!(json.contains("\"kind\": \"samples\""), "{json}");
}

#[test]
fn other_kinds_keep_writing_version_2_and_have_no_samples() {
    let dir = tempfile::tempdir().unwrap();
    let entries = Entries::Ids {
        ids: vec!["a".into(), "b".into()],
    };
    let idx = save(dir.path(), 2, entries);
    assert_eq!(idx.manifest().format_version, FORMAT_VERSION);
    assert_eq!(idx.entries().sample(0).unwrap(), None);
    // No endpoint: none recorded.
    let dir = tempfile::tempdir().unwrap();
    let Entries::Samples { samples: s, .. } = samples(2) else {
        unreachable!()
    };
    let entries = Entries::Samples {
        endpoint: None,
        samples: s,
    };
    save(dir.path(), 2, entries);
    let json = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
    assert!(!json.contains("endpoint"), "{json}");
}
