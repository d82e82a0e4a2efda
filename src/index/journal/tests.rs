//! The journal against torn tails, damage, other builds and locks.

use super::*;

fn entry(name: &str, size: u64) -> ImageEntry {
    ImageEntry {
        path: PathBuf::from(name),
        size,
        mtime_ns: 1_700_000_000_000_000_000,
    }
}

/// A journal in a fresh directory holding `n` images of dimension 3, one per batch.
fn written(n: usize) -> (tempfile::TempDir, Vec<(ImageEntry, Vec<f32>)>) {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::create(dir.path(), "m", Path::new("/r"), 3).unwrap();
    let rows: Vec<_> = (0..n)
        .map(|i| {
            (
                entry(&format!("d/{i}.png"), i as u64),
                vec![i as f32, 0.5, -1.0],
            )
        })
        .collect();
    for (e, v) in &rows {
        j.append([(e, v.as_slice())]).unwrap();
    }
    (dir, rows)
}

/// The vectors a resumed journal finds for `rows` (None where it finds none).
fn found(dir: &Path, rows: &[(ImageEntry, Vec<f32>)]) -> (Vec<Option<Vec<f32>>>, Vec<String>) {
    let mut warnings = Vec::new();
    let Some(j) = Journal::resume(dir, "m", Path::new("/r"), &mut warnings).unwrap() else {
        return (vec![None; rows.len()], warnings);
    };
    let mut buf = Vec::new();
    let got = rows
        .iter()
        .map(|(e, _)| {
            j.find(e).map(|at| {
                let mut v = vec![0.0; 3];
                j.vector(at, &mut v, &mut buf).unwrap();
                v
            })
        })
        .collect();
    (got, warnings)
}

#[test]
fn records_round_trip_and_a_changed_file_is_not_found() {
    let (dir, mut rows) = written(4);
    let (got, warnings) = found(dir.path(), &rows);
    assert!(warnings.is_empty(), "{warnings:?}");
    for ((_, want), got) in rows.iter().zip(&got) {
        assert_eq!(got.as_ref(), Some(want));
    }
    rows[1].0.mtime_ns += 1;
    rows[2].0.size += 1;
    let (got, _) = found(dir.path(), &rows);
    assert_eq!(
        got.iter().map(Option::is_some).collect::<Vec<_>>(),
        [true, false, false, true]
    );
}

#[test]
fn a_torn_or_zeroed_tail_is_cut_off_and_appending_continues() {
    for tail in [&[9u8, 0, 0][..], &[200, 0, 0, 0, 1, 2, 3, 4, 5], &[0; 300]] {
        let (dir, mut rows) = written(3);
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let whole = bytes.len() as u64;
        bytes.extend_from_slice(tail);
        std::fs::write(&path, &bytes).unwrap();
        let mut warnings = Vec::new();
        let mut j = Journal::resume(dir.path(), "m", Path::new("/r"), &mut warnings)
            .unwrap()
            .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            whole,
            "tail {tail:?}"
        );
        let e = entry("new.png", 9);
        j.append([(&e, &[1.0f32, 2.0, 3.0][..])]).unwrap();
        drop(j);
        rows.push((e, vec![1.0, 2.0, 3.0]));
        let (got, warnings) = found(dir.path(), &rows);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(got
            .iter()
            .zip(&rows)
            .all(|(g, (_, w))| g.as_ref() == Some(w)));
    }
}

#[test]
fn a_journal_in_use_is_refused_untouched_and_free_once_its_build_ends() {
    let (dir, rows) = written(2);
    let path = dir.path().join(FILE);
    let mut warnings = Vec::new();
    let held = Journal::resume(dir.path(), "m", Path::new("/r"), &mut warnings)
        .unwrap()
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let busy = |e: Error| {
        let msg = e.to_string();
        assert!(
            msg.contains("another `clip index build`") && msg.contains(&path.display().to_string()),
            "{msg}"
        );
    };
    busy(
        Journal::resume(dir.path(), "m", Path::new("/r"), &mut warnings)
            .err()
            .unwrap(),
    );
    // Another model would discard it, and a fresh build would empty it: neither may.
    busy(
        Journal::resume(dir.path(), "other", Path::new("/r"), &mut warnings)
            .err()
            .unwrap(),
    );
    busy(
        Journal::create(dir.path(), "m", Path::new("/r"), 3)
            .err()
            .unwrap(),
    );
    remove_in(dir.path());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    drop(held);
    let (got, warnings) = found(dir.path(), &rows);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(got.iter().all(Option::is_some));
    remove_in(dir.path());
    assert!(!path.exists());
}

#[test]
fn damage_in_the_middle_or_another_model_discards_the_journal() {
    let (dir, rows) = written(3);
    let path = dir.path().join(FILE);
    let good = std::fs::read(&path).unwrap();
    let mut warnings = Vec::new();
    assert!(
        Journal::resume(dir.path(), "other", Path::new("/r"), &mut warnings)
            .unwrap()
            .is_none()
    );
    assert!(
        warnings[0].contains("for model m (this build: other)"),
        "{warnings:?}"
    );
    assert!(!path.exists(), "a foreign journal is deleted");

    // A flipped vector byte of the second image, and a length field made implausible.
    let first_image =
        MAGIC.len() + 8 + u32::from_le_bytes(good[8..12].try_into().unwrap()) as usize;
    let record = 8 + FIXED + "d/0.png".len() + 12;
    for (at, what) in [
        (first_image + record + record - 1, "CRC-32"),
        (first_image + 2, "claims"),
    ] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let (got, warnings) = found(dir.path(), &rows);
        assert!(got.iter().all(Option::is_none));
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains(&path.display().to_string()) && warnings[0].contains(what),
            "{warnings:?}"
        );
    }
    std::fs::write(&path, b"not a journal at all").unwrap();
    let (_, warnings) = found(dir.path(), &rows);
    assert!(
        warnings[0].contains("not a clip build journal"),
        "{warnings:?}"
    );
}

#[test]
fn a_journal_of_the_other_kind_is_discarded_naming_the_flag_that_wrote_it() {
    let sample = retrieval::SampleEntry {
        shard: "http://h/0.tar".into(),
        key: "k".into(),
        ext: "jpg".into(),
        caption: "a cat".into(),
        offset: 512,
        len: 100,
    };
    let v = [0.5f32, 0.5, 0.5];

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE);
    let mut j = SampleJournal::create(dir.path(), "m", 3).unwrap();
    j.append([(&sample, v.as_slice())]).unwrap();
    j.finish_shard(&sample.shard, &[]).unwrap();
    drop(j);
    let mut warnings = Vec::new();
    let images = Journal::resume(dir.path(), "m", Path::new("/r"), &mut warnings).unwrap();
    assert!(images.is_none());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("written by a build from --data")
            && warnings[0].contains("its images are embedded again"),
        "{warnings:?}"
    );
    assert!(!path.exists(), "the other kind's journal is deleted");

    let (dir, _) = written(1);
    let mut warnings = Vec::new();
    let samples = SampleJournal::resume(dir.path(), "m", &mut warnings).unwrap();
    assert!(samples.is_none());
    assert!(
        warnings[0].contains("written by a build from --images")
            && warnings[0].contains("every shard is read again"),
        "{warnings:?}"
    );
}

#[test]
fn a_sample_journal_keeps_finished_shards_and_drops_the_one_cut_short() {
    let entry = |shard: &str, key: &str| retrieval::SampleEntry {
        shard: shard.into(),
        key: key.into(),
        ext: "png".into(),
        caption: format!("caption of {key}"),
        offset: 1024,
        len: 77,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut j = SampleJournal::create(dir.path(), "m", 2).unwrap();
    let (a, b, c) = (
        entry("s/0.tar", "a"),
        entry("s/0.tar", "b"),
        entry("s/1.tar", "c"),
    );
    let at = j
        .append([(&a, [1.0f32, 0.0].as_slice()), (&b, [0.0, 1.0].as_slice())])
        .unwrap();
    j.finish_shard("s/0.tar", &[("s/0.tar#x".into(), "bad image".into())])
        .unwrap();
    j.append([(&c, [0.6f32, 0.8].as_slice())]).unwrap();
    drop(j);

    let mut warnings = Vec::new();
    let mut j = SampleJournal::resume(dir.path(), "m", &mut warnings)
        .unwrap()
        .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(j.dim(), 2);
    let done = j.take_finished("s/0.tar").expect("shard 0 finished");
    assert_eq!(done.skipped, vec![("s/0.tar#x".into(), "bad image".into())]);
    let keys: Vec<_> = done.rows.iter().map(|(e, _)| e.key.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(done.rows[1].0.caption, "caption of b");
    assert_eq!(done.rows.iter().map(|r| r.1).collect::<Vec<_>>(), at);
    let (mut out, mut buf) = ([0f32; 2], Vec::new());
    j.vector(done.rows[1].1, &mut out, &mut buf).unwrap();
    assert_eq!(out, [0.0, 1.0]);
    assert!(
        j.take_finished("s/1.tar").is_none(),
        "a shard without its finished record is read again"
    );
}
