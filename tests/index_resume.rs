//! Black-box tests of resuming `clip index build` after a kill: the build journal keeps what was
//! embedded, a torn tail is dropped, and a damaged or foreign journal is discarded with a
//! warning. Each final index is compared with an uninterrupted build's, row by row.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{clip, fixture, ok_stderr, s};

/// The journal inside an index directory (a leftover name `retrieval` tolerates).
const JOURNAL: &str = ".build-journal.tmp";

/// Images per folder: enough that a build at batch size 1 is still running when killed.
const PHOTOS: usize = 240;

/// Writes images `from..to` into `dir`: 48×48 PNGs, each a different pattern.
fn photos(dir: &Path, from: usize, to: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in from..to {
        let mut state = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(1);
        let img = image::RgbImage::from_fn(48, 48, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state & 63) as u8;
            let base = (i * 37) as u8;
            image::Rgb([
                base.wrapping_add((x * 4) as u8) ^ noise,
                base.wrapping_mul(3).wrapping_add((y * 4) as u8),
                noise.wrapping_mul(4),
            ])
        });
        img.save(dir.join(format!("p{i:04}.png"))).unwrap();
    }
}

/// `clip index build --images images --out out --model model --batch-size 1`.
fn build(images: &Path, out: &Path, model: &str) -> Output {
    clip(&[
        "index",
        "build",
        "--images",
        s(images),
        "--out",
        s(out),
        "--model",
        model,
        "--batch-size",
        "1",
    ])
}

/// Byte ranges of the whole records of a journal (the header first), by their length fields.
fn records(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut pos = 8;
    while pos + 8 <= bytes.len() {
        let n = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        if pos + 8 + n > bytes.len() {
            break;
        }
        out.push(pos..pos + 8 + n);
        pos += 8 + n;
    }
    out
}

/// Starts a build and kills it (SIGKILL) once its journal holds `at_least` images; returns
/// the journal's bytes as the kill left them.
fn killed_build(images: &Path, out: &Path, model: &str, at_least: usize) -> Vec<u8> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_clip"))
        .args(["index", "build", "--images", s(images), "--out", s(out)])
        .args(["--model", model, "--batch-size", "1"])
        .env("RAYON_NUM_THREADS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = out.join(JOURNAL);
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the build ended ({status}) before it could be killed; use more images");
        }
        let bytes = std::fs::read(&journal).unwrap_or_default();
        if records(&bytes).len() > at_least {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no journal records"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let bytes = std::fs::read(&journal).expect("a killed build leaves its journal");
    assert!(records(&bytes).len() > at_least);
    bytes
}

/// The number before `word` in `text` (e.g. `"(12 embedded"`), if any.
fn count_before(text: &str, word: &str) -> Option<usize> {
    let at = text.find(&format!(" {word}"))?;
    text[..at]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The index's rows: (file name, vector), in row order.
fn rows(idx: &Path) -> Vec<(PathBuf, Vec<f32>)> {
    let index = clip::Index::open(idx).unwrap();
    (0..index.len())
        .map(|i| {
            let path = clip::index::hit_path(&index, i).expect("an image index");
            (path.file_name().unwrap().into(), index.vector(i))
        })
        .collect()
}

/// Asserts that two indexes hold the same files in the same order with vectors within 1e-6.
fn assert_same_rows(got: &Path, want: &Path) {
    let (got, want) = (rows(got), rows(want));
    assert!(!want.is_empty());
    assert_eq!(got.len(), want.len(), "row counts");
    for ((gp, gv), (wp, wv)) in got.iter().zip(&want) {
        assert_eq!(gp, wp, "row order");
        assert_eq!(gv.len(), wv.len(), "dimension of {}", gp.display());
        assert!(gv.iter().all(|x| x.is_finite()), "{}", gp.display());
        let worst = gv
            .iter()
            .zip(wv)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst <= 1e-6, "{}: vectors differ by {worst}", gp.display());
    }
}

/// An uninterrupted build of `images` with `model` into `dir/name`.
fn reference(dir: &Path, name: &str, images: &Path, model: &str) -> PathBuf {
    let out = dir.join(name);
    let err = ok_stderr(&build(images, &out, model));
    assert_eq!(count_before(&err, "embedded,"), Some(PHOTOS), "{err}");
    out
}

#[test]
fn killed_build_resumes_keeps_the_old_index_and_matches_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("photos");
    let idx = dir.path().join("idx");
    let model = fixture("hf_tiny");

    // An index of the first 40 photos, then 200 more to add.
    photos(&images, 0, 40);
    ok_stderr(&build(&images, &idx, &model));
    let before = rows(&idx);
    assert_eq!(before.len(), 40);
    photos(&images, 40, PHOTOS);
    let want = reference(dir.path(), "reference", &images, &model);

    let journal = killed_build(&images, &idx, &model, 3);
    // The kill did not touch the index: it still opens, checksum verified, as it was.
    ok_stderr(&clip(&["index", "info", s(&idx)]));
    assert_eq!(rows(&idx), before);
    // A record cut short by the kill: claims 1000 bytes, holds 5. It must be dropped silently.
    let mut torn = journal[..records(&journal).last().unwrap().end].to_vec();
    torn.extend_from_slice(&1000u32.to_le_bytes());
    torn.extend_from_slice(&[7; 9]);
    std::fs::write(idx.join(JOURNAL), &torn).unwrap();

    let err = ok_stderr(&build(&images, &idx, &model));
    assert!(!err.contains("warning"), "{err}");
    let resumed = count_before(&err, "images embedded by an interrupted build").unwrap_or(0);
    let embedded = count_before(&err, "embedded,").expect("an embedded count");
    assert!(resumed >= 3, "{err}");
    assert_eq!(resumed + embedded, PHOTOS - 40, "{err}");
    assert!(err.contains("40 unchanged"), "{err}");
    assert!(
        !idx.join(JOURNAL).exists(),
        "the journal outlived the build"
    );
    assert_same_rows(&idx, &want);

    // Nothing left to do: the next build says so.
    let err = ok_stderr(&build(&images, &idx, &model));
    assert!(err.contains("is up to date"), "{err}");
}

#[test]
fn damaged_journal_is_discarded_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("photos");
    photos(&images, 0, PHOTOS);
    let model = fixture("hf_tiny");
    let want = reference(dir.path(), "reference", &images, &model);

    // A first build killed: the directory holds nothing but the journal.
    let idx = dir.path().join("idx");
    let mut journal = killed_build(&images, &idx, &model, 4);
    let recs = records(&journal);
    // Flip a vector byte of a record in the middle (not the last one, which could be torn).
    let middle = &recs[recs.len() / 2];
    assert!(middle.end < recs.last().unwrap().end);
    journal[middle.end - 3] ^= 0x55;
    std::fs::write(idx.join(JOURNAL), &journal).unwrap();

    let out = build(&images, &idx, &model);
    let err = ok_stderr(&out);
    assert!(
        err.contains("warning: discarding the build journal")
            && err.contains(&idx.join(JOURNAL).display().to_string())
            && err.contains("CRC"),
        "{err}"
    );
    assert!(!err.contains("resumed"), "{err}");
    assert_eq!(count_before(&err, "embedded,"), Some(PHOTOS), "{err}");
    assert_same_rows(&idx, &want);
    assert!(!idx.join(JOURNAL).exists());
}

#[test]
fn journal_of_another_model_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("photos");
    photos(&images, 0, PHOTOS);
    let other = fixture("openclip_tiny");
    let want = reference(dir.path(), "reference", &images, &other);

    let idx = dir.path().join("idx");
    killed_build(&images, &idx, &fixture("hf_tiny"), 3);
    let err = ok_stderr(&build(&images, &idx, &other));
    assert!(
        err.contains("warning: discarding the build journal") && err.contains("for model"),
        "{err}"
    );
    assert!(!err.contains("resumed"), "{err}");
    assert_eq!(count_before(&err, "embedded,"), Some(PHOTOS), "{err}");
    assert_same_rows(&idx, &want);
}
