//! The streaming data path end to end: batches from webdataset shards are the same whether
//! decoded images are cached or not, a run killed in the middle of a shard resumes onto
//! exactly the samples it would have seen, bad samples are skipped, counted and listed while
//! the run goes on, and the cache's memory stays within its budget whatever the data size.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use common::*;

use clip_data::{
    AugmentConfig, Augmenter, CacheConfig, CacheMode, DecodedCache, OrderConfig, SampleSet, Source,
};
use clip_model::Preprocess;
use clip_train::{Feed, Loader, LoaderMode, LoaderSpec, RunSetup, Share, TrainConfig};
use image::RgbImage;

fn jpeg(seed: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(24, 20, |x, y| {
        image::Rgb([
            (x * 10 + seed * 37) as u8,
            (y * 12 + seed * 11) as u8,
            (seed * 53) as u8,
        ])
    });
    let mut out = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut out),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    out
}

/// Members of one webdataset sample, img2dataset style.
enum Member<'a> {
    Good(u32),
    CorruptImage,
    Caption(&'a [u8]),
    NoCaption,
}

/// A shard `name` with samples `keys`, each as `kind` says.
fn shard(path: &Path, samples: &[(u32, Member)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: String, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    for (key, m) in samples {
        let k = format!("{key:09}");
        match m {
            Member::Good(seed) => {
                add(format!("{k}.jpg"), &jpeg(*seed));
                add(
                    format!("{k}.txt"),
                    format!("sample number {key}").as_bytes(),
                );
            }
            Member::CorruptImage => {
                let mut bytes = jpeg(*key);
                bytes.truncate(bytes.len() / 3);
                add(format!("{k}.jpg"), &bytes);
                add(format!("{k}.txt"), b"a corrupt jpeg");
            }
            Member::Caption(text) => {
                add(format!("{k}.jpg"), &jpeg(*key));
                add(format!("{k}.txt"), text);
            }
            Member::NoCaption => add(format!("{k}.jpg"), &jpeg(*key)),
        }
        add(
            format!("{k}.json"),
            format!("{{\"key\": \"{k}\"}}").as_bytes(),
        );
    }
    b.into_inner().unwrap().flush().unwrap();
}

/// `n_shards` shards of `per` good samples each under `dir`.
fn good_shards(dir: &Path, n_shards: u32, per: u32) -> Vec<Source> {
    (0..n_shards)
        .map(|s| {
            let p = dir.join(format!("{s:05}.tar"));
            let samples: Vec<(u32, Member)> = (0..per)
                .map(|i| (s * per + i, Member::Good(s * per + i)))
                .collect();
            shard(&p, &samples);
            Source::Tar(p)
        })
        .collect()
}

fn spec(data: Arc<SampleSet>, cache: CacheConfig, batch: usize) -> LoaderSpec {
    LoaderSpec {
        feed: Feed::Listed {
            data,
            cache: Arc::new(DecodedCache::new(&cache)),
            order: OrderConfig {
                shuffle_buffer: 7,
                ..OrderConfig::default()
            },
        },
        aug: Augmenter::new(
            AugmentConfig::default(),
            Preprocess {
                image_size: 16,
                ..Preprocess::default()
            },
        ),
        mode: LoaderMode::Captions(Box::new(tokenizer())),
        batch,
        seed: 5,
        max_short_side: 32,
        share: Share::WHOLE,
    }
}

/// The decoded-sample cache of a listed feed.
fn cache_of(spec: &LoaderSpec) -> Arc<DecodedCache> {
    match &spec.feed {
        Feed::Listed { cache, .. } => Arc::clone(cache),
        Feed::Streamed { .. } => unreachable!("these tests list their data"),
    }
}

/// A decoded-image cache in `mode` without a memory budget.
fn unbounded(mode: CacheMode) -> CacheConfig {
    CacheConfig {
        mode,
        mem_bytes: None,
    }
}

type Seen = Vec<(Vec<f32>, Vec<Vec<u32>>, Vec<usize>, usize)>;

fn batches(spec: LoaderSpec, steps: std::ops::Range<usize>, start: usize) -> Seen {
    let loader = Loader::spawn(spec, steps.clone(), start, 2);
    steps
        .map(|_| {
            let b = loader.next().unwrap();
            (b.pixels, b.ids, b.items, b.next_position)
        })
        .collect()
}

#[test]
fn streaming_and_cached_batches_are_identical() {
    let d = tempfile::tempdir().unwrap();
    let data = Arc::new(SampleSet::scan(&good_shards(d.path(), 3, 10)).unwrap());
    let (off, on) = (unbounded(CacheMode::Off), unbounded(CacheMode::On));
    // 12 steps of 8 = 3.2 epochs: the cached run serves epochs 2–4 from memory.
    let streamed = batches(spec(Arc::clone(&data), off.clone(), 8), 0..12, 0);
    let cached_spec = spec(Arc::clone(&data), on, 8);
    let cache = cache_of(&cached_spec);
    let cached = batches(cached_spec, 0..12, 0);
    assert_eq!(cache.len(), 30, "every sample decoded once and kept");
    assert_eq!(streamed.len(), cached.len());
    for (s, c) in streamed.iter().zip(&cached) {
        assert_eq!(s.0.len(), 8 * 3 * 16 * 16);
        assert!(s.0.iter().all(|x| x.is_finite()));
        assert_eq!(s.0, c.0, "bit-identical pixels");
        assert_eq!(s.1, c.1, "same token ids");
        assert_eq!(s.2, c.2, "same samples");
    }
    // Starting at step 7's position gives step 7's batch (what resume relies on).
    let resumed = batches(spec(data, off, 8), 7..9, streamed[6].3);
    assert_eq!(resumed[0].0, streamed[7].0);
    assert_eq!(resumed[1].2, streamed[8].2);
}

#[test]
fn the_cache_stays_within_its_budget_for_ten_times_the_data() {
    let d = tempfile::tempdir().unwrap();
    let small = Arc::new(SampleSet::scan(&good_shards(&d.path().join(""), 2, 10)).unwrap());
    let big_dir = d.path().join("big");
    std::fs::create_dir(&big_dir).unwrap();
    let big = Arc::new(SampleSet::scan(&good_shards(&big_dir, 20, 10)).unwrap());
    let one = small.load(0, 32).unwrap().bytes() as u64;
    let budget = 12 * one;
    let held = |data: Arc<SampleSet>, mode| {
        let data_len = data.len();
        let s = spec(
            data,
            CacheConfig {
                mode,
                mem_bytes: Some(budget),
            },
            10,
        );
        let cache = cache_of(&s);
        let n = 2 * data_len / 10;
        batches(s, 0..n, 0);
        (cache.bytes(), cache.len())
    };
    let (small_bytes, _) = held(Arc::clone(&small), CacheMode::Auto);
    let (big_bytes, big_len) = held(Arc::clone(&big), CacheMode::Auto);
    assert!(
        small_bytes <= budget && big_bytes <= budget,
        "{small_bytes} {big_bytes}"
    );
    assert!(
        big_len >= 10,
        "the cache is used up to its budget ({big_len})"
    );
    assert_eq!(held(big, CacheMode::Off), (0, 0), "off keeps nothing");
}

fn setup(out: &Path, steps: usize, resume: bool) -> RunSetup {
    let train = TrainConfig {
        steps,
        batch_size: 6,
        lr: 3e-3,
        warmup: 2,
        seed: 3,
        save_every: 4,
        keep_last: 2,
        log_every: 1,
        order: OrderConfig {
            shuffle_buffer: 5,
            ..OrderConfig::default()
        },
        cache: unbounded(CacheMode::Off),
        ..TrainConfig::default()
    };
    run_setup(out, train, resume)
}

/// Two shards with every kind of bad sample among good ones, and a third cut off mid-member.
fn bad_data(dir: &Path) -> Vec<Source> {
    let a = dir.join("00000.tar");
    shard(
        &a,
        &[
            (0, Member::Good(0)),
            (1, Member::Good(1)),
            (2, Member::CorruptImage),
            (3, Member::Good(3)),
            (4, Member::Caption(b"caf\xe9 au lait")),
            (5, Member::Good(5)),
            (6, Member::Caption(b"   ")),
            (7, Member::Good(7)),
        ],
    );
    let b = dir.join("00001.tar");
    shard(
        &b,
        &[
            (8, Member::Good(8)),
            (9, Member::NoCaption),
            (10, Member::Good(10)),
            (11, Member::Good(11)),
            (12, Member::Good(12)),
            (13, Member::Good(13)),
        ],
    );
    let c = dir.join("00002.tar");
    shard(
        &c,
        &[
            (14, Member::Good(14)),
            (15, Member::Good(15)),
            (16, Member::Good(16)),
        ],
    );
    let bytes = std::fs::read(&c).unwrap();
    std::fs::write(&c, &bytes[..bytes.len() - 1024 - 700]).unwrap();
    vec![Source::Tar(a), Source::Tar(b), Source::Tar(c)]
}

#[test]
fn bad_samples_are_skipped_counted_and_listed_and_resume_is_exact() {
    let d = tempfile::tempdir().unwrap();
    let data = Arc::new(SampleSet::scan(&bad_data(d.path())).unwrap());
    let whole = tempfile::tempdir().unwrap();
    let summary = train_quietly(setup(whole.path(), 10, false), Arc::clone(&data)).unwrap();
    let listed = std::fs::read_to_string(whole.path().join("skipped.tsv")).unwrap();
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    let has = |name: &str, why: &str| {
        rows.iter()
            .any(|r| r.contains(name) && r.to_lowercase().contains(why))
    };
    assert!(has("00000.tar:000000002", "unreadable image"), "{listed}");
    assert!(has("00000.tar:000000004", "utf-8"), "{listed}");
    assert!(has("00000.tar:000000006", "empty caption"), "{listed}");
    assert!(has("00001.tar:000000009", "without a caption"), "{listed}");
    assert!(has("00002.tar", "cut off"), "{listed}");
    assert_eq!(
        rows.len(),
        5,
        "each listed once, over several epochs: {listed}"
    );
    assert_eq!(summary.skipped, 5);
    assert!(whole.path().join("final/model.safetensors").is_file());

    // Killed after the step-4 checkpoint (inside the second shard's samples), then resumed.
    let parts = tempfile::tempdir().unwrap();
    train_killed_after(4, setup(parts.path(), 10, false), Arc::clone(&data));
    let resumed = train_quietly(setup(parts.path(), 10, true), data).unwrap();
    assert_eq!(
        weights(&whole.path().join("final")),
        weights(&parts.path().join("final")),
        "the resumed run equals the uninterrupted one"
    );
    assert_eq!(
        std::fs::read_to_string(parts.path().join("skipped.tsv")).unwrap(),
        listed,
        "and lists the same skips"
    );
    assert_eq!(resumed.skipped, 5);
}

#[test]
fn data_with_no_usable_sample_is_an_error_that_says_why() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.tar");
    shard(
        &p,
        &[
            (0, Member::CorruptImage),
            (1, Member::CorruptImage),
            (2, Member::Caption(b"\xff\xfe")),
        ],
    );
    let data = Arc::new(SampleSet::scan(&[Source::Tar(p)]).unwrap());
    let out = tempfile::tempdir().unwrap();
    let err = train_quietly(setup(out.path(), 3, false), data)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no usable sample") && err.contains("unreadable image"),
        "{err}"
    );
}

/// Each row of a batch: (global position, pixels, token ids), sorted by position.
type Rows = Vec<(usize, Vec<f32>, Vec<u32>)>;

/// The rows of `steps` batches of a loader reading `streams` streams of `shards` as `share`.
fn streamed_rows(
    shards: &[Source],
    streams: usize,
    share: Share,
    global_batch: usize,
) -> Vec<Rows> {
    let stream = Arc::new(clip_data::StreamSpec {
        shards: (shards.iter())
            .map(|s| clip_data::shard_source::ShardUrl::Local(s.path().to_path_buf()))
            .collect(),
        opener: Arc::new(clip_data::shard_source::Opener::new(Default::default())),
        epoch_samples: 40,
        resampled: false,
        workers: 2,
        shuffle_buffer: 5,
        need_captions: true,
    });
    let data = Arc::new(SampleSet::scan(shards).unwrap());
    let mut s = spec(data, unbounded(CacheMode::Off), global_batch / share.world);
    let feed = Feed::Streamed {
        spec: stream,
        streams,
    };
    (s.feed, s.share) = (feed, share);
    let loader = Loader::spawn(s, 0..6, 0, 2);
    (0..6)
        .map(|_| {
            let b = loader.next().unwrap();
            let per = b.pixels.len() / b.items.len();
            let mut rows: Rows = (b.items.iter().enumerate())
                .map(|(i, &item)| {
                    (
                        item,
                        b.pixels[i * per..(i + 1) * per].to_vec(),
                        b.ids[i].clone(),
                    )
                })
                .collect();
            rows.sort_by_key(|r| r.0);
            rows
        })
        .collect()
}

#[test]
fn a_step_reads_the_same_streamed_samples_on_one_rank_and_on_two() {
    let d = tempfile::tempdir().unwrap();
    // Four shards of ten, one sample of the second corrupt: it is replaced from its own
    // stream, whichever rank reads that stream.
    let shards: Vec<Source> = (0..4u32)
        .map(|s| {
            let p = d.path().join(format!("{s:05}.tar"));
            let samples: Vec<(u32, Member)> = (0..10)
                .map(|i| match (s, i) {
                    (1, 3) => (s * 10 + i, Member::CorruptImage),
                    _ => (s * 10 + i, Member::Good(s * 10 + i)),
                })
                .collect();
            shard(&p, &samples);
            Source::Tar(p)
        })
        .collect();
    let one = streamed_rows(&shards, 2, Share::WHOLE, 8);
    let rank = |rank| streamed_rows(&shards, 2, Share { rank, world: 2 }, 8);
    let (r0, r1) = (rank(0), rank(1));
    assert_eq!(one.len(), 6);
    for (step, rows) in one.iter().enumerate() {
        assert_eq!(rows.len(), 8, "step {step}");
        assert!(rows.iter().all(|r| r.1.iter().all(|v| v.is_finite())));
        let mut two: Rows = [r0[step].clone(), r1[step].clone()].concat();
        two.sort_by_key(|r| r.0);
        assert!(
            rows == &two,
            "step {step}: one process and two ranks read different rows"
        );
    }
    // One stream per rank (the default) reads other samples than one stream: the
    // comparison above can tell.
    let single = streamed_rows(&shards, 1, Share::WHOLE, 8);
    let captions = |rows: &[Rows]| -> Vec<Vec<Vec<u32>>> {
        let step = |r: &Rows| {
            let mut ids: Vec<Vec<u32>> = r.iter().map(|x| x.2.clone()).collect();
            ids.sort();
            ids
        };
        rows.iter().map(step).collect()
    };
    assert_ne!(captions(&single), captions(&one));
}
