//! `Opener::read_range`: one byte range of a shard (a tar member, for a thumbnail), from a
//! local file or a loopback HTTP server, resumed inside the range after a cut, and refused
//! for `pipe:` commands and ranges past the end.

mod support;

use std::time::Duration;

use shard_source::{Cause, OpenConfig, Opener, RetryPolicy, ShardError, ShardUrl};
use support::data;
use support::server::{Fault, Server};

fn opener() -> Opener {
    let retry = RetryPolicy {
        retries: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    };
    Opener::new(OpenConfig::default().with_retry(retry))
}

#[test]
fn http_ranges_ask_for_just_their_bytes_and_resume_inside_them() {
    let s = Server::start();
    let body = data(200_000, 7);
    s.serve("/a.tar", body.clone(), Fault::None);
    let url = ShardUrl::parse(&s.url("/a.tar")).unwrap();
    let got = opener().read_range(&url, 1000, 5000).unwrap();
    assert_eq!(got, body[1000..6000]);
    let seen = s.seen("/a.tar");
    assert_eq!(
        (seen[0].range, seen[0].range_last),
        (Some(1000), Some(5999))
    );
    // From byte 0 too: a bounded range, not the whole shard.
    assert_eq!(opener().read_range(&url, 0, 10).unwrap(), body[..10]);
    assert_eq!(s.seen("/a.tar")[1].range_last, Some(9));

    // A cut inside the range reconnects where it broke, pinned to the first ETag.
    let cut = Fault::Cut {
        bytes: 2000,
        times: 1,
    };
    s.serve("/cut.tar", body.clone(), cut);
    let url = ShardUrl::parse(&s.url("/cut.tar")).unwrap();
    assert_eq!(
        opener().read_range(&url, 500, 9000).unwrap(),
        body[500..9500]
    );
    let seen = s.seen("/cut.tar");
    let asked: Vec<_> = seen.iter().map(|r| (r.range, r.range_last)).collect();
    assert_eq!(asked, [(Some(500), Some(9499)), (Some(2500), Some(9499))]);
    assert_eq!(seen[1].if_match.as_deref(), Some("\"v2\""));

    // A server that ignores `Range` sends the whole shard: the range is cut out of it.
    let ignore = Fault::IgnoreRange {
        bytes: usize::MAX,
        times: 1,
    };
    s.serve("/whole.tar", body.clone(), ignore);
    let url = ShardUrl::parse(&s.url("/whole.tar")).unwrap();
    assert_eq!(opener().read_range(&url, 7, 70).unwrap(), body[7..77]);
}

#[test]
fn local_ranges_seek_and_short_or_unranged_shards_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tar");
    let body = data(10_000, 3);
    std::fs::write(&path, &body).unwrap();
    let url = ShardUrl::Local(path.clone());
    assert_eq!(opener().read_range(&url, 9000, 1000).unwrap(), body[9000..]);

    let err = opener().read_range(&url, 9500, 1000).unwrap_err();
    assert!(
        matches!(
            err,
            ShardError::Failed {
                offset: 10_000,
                cause: Cause::Truncated { len: 10_500, .. },
                ..
            }
        ),
        "{err:?}"
    );

    let pipe = ShardUrl::parse(&format!("pipe:cat {}", path.display())).unwrap();
    let err = opener().read_range(&pipe, 0, 10).unwrap_err();
    assert!(matches!(err, ShardError::NotRanged { .. }), "{err:?}");
    assert!(
        err.to_string().contains("cannot be read at an offset"),
        "{err}"
    );

    let gone = ShardUrl::Local(dir.path().join("gone.tar"));
    assert!(opener().read_range(&gone, 0, 10).unwrap_err().is_missing());
}
