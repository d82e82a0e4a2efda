//! `ShardStream` over a loopback HTTP server that injects faults, and over `pipe:` commands:
//! every sample of a shard that was cut and retried arrives once, missing and failing shards
//! are skipped and listed once each, and the order is a function of seed, rank and position
//! (what resuming relies on).

#[path = "../../shard-source/tests/support/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clip_data::shard_source::{OpenConfig, Opener, RetryPolicy, ShardUrl};
use clip_data::{DataError, ShardStream, SkipReason, StreamSpec};
use server::{Fault, Server};

/// A shard of `n` samples named `{prefix}{i}`: a fake image and a caption each.
fn shard(prefix: &str, n: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..n {
        for (ext, data) in [
            ("jpg", vec![i as u8; 900 + i]),
            ("txt", format!("caption {i}").into_bytes()),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, format!("{prefix}{i}.{ext}"), &data[..])
                .unwrap();
        }
    }
    b.into_inner().unwrap()
}

fn opener() -> Arc<Opener> {
    let retry = RetryPolicy {
        retries: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    };
    let cfg = OpenConfig::default()
        .with_retry(retry)
        .with_timeouts(Duration::from_secs(5), Duration::from_millis(400));
    Arc::new(Opener::new(cfg))
}

fn spec(shards: Vec<ShardUrl>, epoch: u64, buffer: usize, resampled: bool) -> Arc<StreamSpec> {
    with_workers(shards, epoch, buffer, resampled, 2)
}

fn with_workers(
    shards: Vec<ShardUrl>,
    epoch: u64,
    buffer: usize,
    resampled: bool,
    workers: usize,
) -> Arc<StreamSpec> {
    Arc::new(StreamSpec {
        shards,
        opener: opener(),
        epoch_samples: epoch,
        resampled,
        workers,
        shuffle_buffer: buffer,
        need_captions: true,
    })
}

fn names(s: &mut ShardStream, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let (pos, raw) = s.next_sample().unwrap();
            assert_eq!(pos, i as u64);
            raw.name.rsplit(':').next().unwrap().to_string()
        })
        .collect()
}

/// Five shards: clean, cut mid-body once, missing, failing past the retries, slow.
fn faulty_server() -> (Server, Vec<ShardUrl>) {
    let s = Server::start();
    let cut = shard("b", 12);
    let cut_at = cut.len() / 2;
    s.serve("/a.tar", shard("a", 10), Fault::None);
    s.serve(
        "/b.tar",
        cut,
        Fault::Cut {
            bytes: cut_at,
            times: 1,
        },
    );
    s.serve(
        "/d.tar",
        shard("d", 5),
        Fault::Status {
            status: 500,
            times: usize::MAX,
        },
    );
    s.serve(
        "/e.tar",
        shard("e", 7),
        Fault::Stall {
            bytes: 3000,
            ms: 200,
            times: 1,
        },
    );
    let urls = ["/a.tar", "/b.tar", "/c.tar", "/d.tar", "/e.tar"]
        .iter()
        .map(|p| ShardUrl::parse(&s.url(p)).unwrap())
        .collect();
    (s, urls)
}

#[test]
fn every_sample_of_the_readable_shards_arrives_once_and_failures_are_listed_once() {
    let (server, urls) = faulty_server();
    // One shard at a time and a buffer of 1: samples leave in the order they are read, so
    // the first 29 (10 + 12 + 7) of an epoch are one pass over the shards, and its 30th
    // sample comes after every shard of that pass was taken up, failing ones included.
    let mut s = ShardStream::new(with_workers(urls, 30, 1, false, 1), 3, 0, 1);
    let all = names(&mut s, 30 * 2);
    let want: Vec<String> = (0..10)
        .map(|i| format!("a{i}"))
        .chain((0..12).map(|i| format!("b{i}")))
        .chain((0..7).map(|i| format!("e{i}")))
        .collect();
    for epoch in all.chunks(30) {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &epoch[..29] {
            *seen.entry(n).or_default() += 1;
        }
        assert_eq!(seen.len(), want.len(), "{seen:?}");
        assert!(
            seen.values().all(|&c| c == 1),
            "each once per pass: {seen:?}"
        );
        assert!(want.iter().all(|w| seen.contains_key(w.as_str())));
    }
    // The cut shard was read again from the byte it reached, not from the start.
    let ranges = server.ranges("/b.tar");
    let resumed_at = Some(shard("b", 12).len() as u64 / 2);
    assert_eq!(ranges[..2], [None, resumed_at], "{ranges:?}");
    assert!(ranges[2..].iter().all(Option::is_none), "{ranges:?}");
    // The missing and the failing shard, once each over two epochs.
    let skips = s.take_skips();
    let mut skipped: Vec<(&str, String)> = skips
        .iter()
        .map(|k| (k.name.rsplit('/').next().unwrap(), k.reason.to_string()))
        .collect();
    skipped.sort();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert_eq!(skipped[0].0, "c.tar");
    assert!(skipped[0].1.contains("missing"), "{skipped:?}");
    assert_eq!(skipped[1].0, "d.tar");
    assert!(skipped[1].1.contains("gave up"), "{skipped:?}");
    assert!(matches!(skips[0].reason, SkipReason::Shard(_)));
}

#[test]
fn the_order_is_a_function_of_seed_stream_and_position() {
    let (_server, urls) = faulty_server();
    let run = |seed, index, streams, resampled| {
        let mut s = ShardStream::new(spec(urls.clone(), 20, 6, resampled), seed, index, streams);
        names(&mut s, 45)
    };
    let a = run(3, 0, 1, false);
    assert_eq!(a, run(3, 0, 1, false), "repeatable");
    assert_ne!(a, run(4, 0, 1, false), "the seed matters");
    // Seeking replays to the position: the rest is what a fresh stream reads there.
    for at in [7u64, 20, 33] {
        let mut s = ShardStream::new(spec(urls.clone(), 20, 6, false), 3, 0, 1);
        let replay = s.seek(at).unwrap();
        assert_eq!(replay.samples, at % 20);
        let (pos, raw) = s.next_sample().unwrap();
        assert_eq!(pos, at);
        assert!(raw.name.ends_with(&format!(":{}", a[at as usize])), "{at}");
    }
    // Ranks read their own streams (which shards each takes: shard-source's tests).
    assert_ne!(run(3, 0, 2, false), run(3, 1, 2, false));
    // Resampled: repeatable, and each rank its own stream.
    let r = run(3, 0, 2, true);
    assert_eq!(r, run(3, 0, 2, true));
    assert_ne!(r, run(3, 1, 2, true));
}

#[test]
fn pipe_commands_stream_and_a_failing_one_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.tar");
    std::fs::write(&path, shard("p", 4)).unwrap();
    let urls = vec![
        ShardUrl::Pipe(format!("cat '{}'", path.display())),
        ShardUrl::Pipe("exit 3".into()),
    ];
    // One at a time: the first four are the readable shard, in whichever pass order, and
    // the fifth comes after the failing command was taken up.
    let mut s = ShardStream::new(with_workers(urls, 5, 1, false, 1), 0, 0, 1);
    let mut got = names(&mut s, 5)[..4].to_vec();
    got.sort();
    assert_eq!(got, ["p0", "p1", "p2", "p3"]);
    let skips = s.take_skips();
    assert_eq!(skips.len(), 1, "{skips:?}");
    assert!(skips[0].name.contains("exit 3"), "{skips:?}");
}

#[test]
fn a_stream_where_every_shard_fails_is_an_error_naming_them() {
    let s = Server::start();
    let urls: Vec<ShardUrl> = ["/x.tar", "/y.tar"]
        .iter()
        .map(|p| ShardUrl::parse(&s.url(p)).unwrap())
        .collect();
    let mut st = ShardStream::new(spec(urls, 10, 4, false), 0, 0, 1);
    let err = st.next_sample().unwrap_err();
    assert!(
        matches!(err, DataError::NoShardReadable { shards: 2, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("x.tar") || msg.contains("y.tar"), "{msg}");
    assert!(msg.contains("404"), "{msg}");
}

#[test]
fn streams_read_disjoint_shards_that_together_cover_the_pass() {
    let s = Server::start();
    let urls: Vec<ShardUrl> = (0..4)
        .map(|k| {
            s.serve(
                &format!("/{k}.tar"),
                shard(&format!("s{k}-"), 5),
                Fault::None,
            );
            ShardUrl::parse(&s.url(&format!("/{k}.tar"))).unwrap()
        })
        .collect();
    // 20 samples per epoch over two streams: each one's epoch is its two shards of the pass
    // (one shard at a time, a buffer of 1, so nothing of the next pass comes in).
    let epoch = |rank| {
        let spec = with_workers(urls.clone(), 20, 1, false, 1);
        let mut st = ShardStream::new(spec, 9, rank, 2);
        assert_eq!(st.epoch_len(), 10);
        let mut n = names(&mut st, 10);
        n.sort();
        n
    };
    let (r0, r1) = (epoch(0), epoch(1));
    assert!(r0.iter().all(|n| !r1.contains(n)), "{r0:?} {r1:?}");
    let mut all: Vec<String> = r0.into_iter().chain(r1).collect();
    all.sort();
    let mut want: Vec<String> = (0..4)
        .flat_map(|k| (0..5).map(move |i| format!("s{k}-{i}")))
        .collect();
    want.sort();
    assert_eq!(all, want);
}

#[test]
fn a_saved_state_rebuilds_the_stream_from_the_buffer_and_the_shards_in_flight() {
    let s = Server::start();
    let urls: Vec<ShardUrl> = (0..12)
        .map(|k| {
            s.serve(
                &format!("/{k}.tar"),
                shard(&format!("s{k}-"), 15),
                Fault::None,
            );
            ShardUrl::parse(&s.url(&format!("/{k}.tar"))).unwrap()
        })
        .collect();
    for resampled in [false, true] {
        let spec = || spec(urls.clone(), 150, 8, resampled);
        let mut whole = ShardStream::new(spec(), 5, 0, 1);
        let want = names(&mut whole, 400);
        for at in [0usize, 1, 97, 150, 151, 290] {
            let mut a = ShardStream::new(spec(), 5, 0, 1);
            for _ in 0..at {
                a.next_sample().unwrap();
            }
            let state = a.state();
            assert_eq!(state.position(150), at as u64);
            // Through JSON, as a checkpoint holds it.
            let state = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
            let (mut b, replay) = ShardStream::restore(spec(), 5, 0, 1, &state).unwrap();
            assert_eq!(replay.lost, 0);
            for (i, w) in want.iter().enumerate().skip(at).take(60) {
                let (pos, raw) = b.next_sample().unwrap();
                assert_eq!(pos, i as u64);
                assert!(raw.name.ends_with(&format!(":{w}")), "{resampled} {at} {i}");
            }
            // Resuming takes whichever reads less again: never more than replaying the
            // epoch up to the position, buffer included.
            let (mut c, r) = ShardStream::resume(spec(), 5, 0, 1, at as u64, Some(&state)).unwrap();
            assert!(r.samples <= (at % 150) as u64 + 8, "{at}: {r:?}");
            let (pos, raw) = c.next_sample().unwrap();
            assert_eq!(pos, at as u64);
            assert!(raw.name.ends_with(&format!(":{}", want[at])));
            // 140 samples into an epoch, the shards in flight (2) and those the buffer of 8
            // draws on are read again, not the 148 samples an epoch replay reads.
            if at == 290 {
                assert!(replay.shards <= 10, "{replay:?}");
                assert!(replay.samples < 140, "{replay:?}");
            }
        }
    }
    // A state that cannot be this stream's (another worker count) is refused.
    let mut a = ShardStream::new(spec(urls.clone(), 150, 8, false), 5, 0, 1);
    a.next_sample().unwrap();
    let other = with_workers(urls, 150, 8, false, 3);
    assert!(ShardStream::restore(other, 5, 0, 1, &a.state()).is_none());
}
