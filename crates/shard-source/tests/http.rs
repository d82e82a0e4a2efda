//! HTTP shards against a loopback server that injects faults: every byte must arrive, in
//! order, with exactly the reconnections and `Range` offsets expected.

mod support;

use std::io::Read;
use std::time::Duration;

use shard_source::{Cause, OpenConfig, Opener, RetryPolicy, ShardError, ShardUrl};
use support::server::{Fault, Server};
use support::{chain, data, read_all};

fn opener(retries: u32) -> Opener {
    let retry = RetryPolicy {
        retries,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    };
    let cfg = OpenConfig::default()
        .with_retry(retry)
        .with_timeouts(Duration::from_secs(5), Duration::from_millis(300));
    Opener::new(cfg)
}

fn http(server: &Server, path: &str) -> ShardUrl {
    ShardUrl::parse(&server.url(path)).unwrap()
}

#[test]
fn a_clean_body_arrives_whole() {
    let s = Server::start();
    let body = data(300_000, 1);
    s.serve("/a.tar", body.clone(), Fault::None);
    let (got, retries) = read_all(&opener(3), &http(&s, "/a.tar")).unwrap();
    assert_eq!(got, body);
    assert_eq!(retries, 0);
    assert_eq!(s.ranges("/a.tar"), [None]);
}

#[test]
fn cut_connections_resume_at_the_offset_reached() {
    let s = Server::start();
    let body = data(100_000, 2);
    s.serve(
        "/cut.tar",
        body.clone(),
        Fault::Cut {
            bytes: 30_000,
            times: 2,
        },
    );
    let (got, retries) = read_all(&opener(3), &http(&s, "/cut.tar")).unwrap();
    assert_eq!(got, body);
    assert_eq!(retries, 2);
    assert_eq!(s.ranges("/cut.tar"), [None, Some(30_000), Some(60_000)]);
    // The resumed requests are pinned to the first response's ETag.
    let tags: Vec<Option<String>> = s.seen("/cut.tar").into_iter().map(|r| r.if_match).collect();
    assert_eq!(tags, [None, Some("\"v1\"".into()), Some("\"v1\"".into())]);
}

#[test]
fn server_errors_are_retried_then_succeed() {
    let s = Server::start();
    let body = data(5_000, 3);
    s.serve(
        "/busy.tar",
        body.clone(),
        Fault::Status {
            status: 503,
            times: 2,
        },
    );
    let (got, retries) = read_all(&opener(3), &http(&s, "/busy.tar")).unwrap();
    assert_eq!(got, body);
    assert_eq!(retries, 2);
    assert_eq!(s.ranges("/busy.tar"), [None, None, None]);
}

#[test]
fn missing_and_forbidden_shards_are_missing_and_not_retried() {
    let s = Server::start();
    s.serve(
        "/secret.tar",
        data(10, 4),
        Fault::Status {
            status: 403,
            times: 99,
        },
    );
    let o = opener(3);
    for (path, status) in [("/nothing.tar", 404), ("/secret.tar", 403)] {
        let err = o.open(&http(&s, path)).unwrap_err();
        assert!(err.is_missing(), "{err:?}");
        match &err {
            ShardError::Missing {
                url,
                cause: Cause::Status { status: got },
            } => {
                assert_eq!(*got, status);
                assert_eq!(*url, s.url(path));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.seen(path).len(), 1, "{path} asked once");
    }
}

#[test]
fn a_stalled_body_times_out_and_resumes() {
    let s = Server::start();
    let body = data(50_000, 5);
    s.serve(
        "/slow.tar",
        body.clone(),
        Fault::Stall {
            bytes: 20_000,
            ms: 1500,
            times: 1,
        },
    );
    let (got, retries) = read_all(&opener(2), &http(&s, "/slow.tar")).unwrap();
    assert_eq!(got, body);
    assert_eq!(retries, 1);
    assert_eq!(s.ranges("/slow.tar"), [None, Some(20_000)]);
}

#[test]
fn a_server_that_ignores_range_is_skipped_ahead() {
    let s = Server::start();
    let body = data(40_000, 6);
    s.serve(
        "/norange.tar",
        body.clone(),
        Fault::IgnoreRange {
            bytes: 12_345,
            times: 1,
        },
    );
    let (got, retries) = read_all(&opener(2), &http(&s, "/norange.tar")).unwrap();
    assert_eq!(got, body);
    assert_eq!(retries, 1);
    assert_eq!(s.ranges("/norange.tar"), [None, Some(12_345)]);
}

#[test]
fn used_up_retries_fail_naming_url_and_offset() {
    let s = Server::start();
    s.serve(
        "/flaky.tar",
        data(100_000, 7),
        Fault::Cut {
            bytes: 1_000,
            times: 99,
        },
    );
    let err = read_all(&opener(3), &http(&s, "/flaky.tar")).unwrap_err();
    match &err {
        ShardError::Failed {
            url,
            offset,
            retries,
            cause,
        } => {
            assert_eq!(*url, s.url("/flaky.tar"));
            assert_eq!((*offset, *retries), (4_000, 3));
            assert!(
                matches!(
                    cause,
                    Cause::Truncated {
                        at: 4_000,
                        len: 100_000
                    } | Cause::Io(_)
                ),
                "{cause:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let msg = chain(&err);
    assert!(
        msg.contains("gave up at byte 4000 after 3 retries"),
        "{msg}"
    );
    assert_eq!(s.seen("/flaky.tar").len(), 4);
}

#[test]
fn a_file_replaced_mid_read_is_an_error_not_a_splice() {
    let s = Server::start();
    let first = data(20_000, 8);
    s.serve(
        "/moving.tar",
        first.clone(),
        Fault::Cut {
            bytes: 5_000,
            times: 1,
        },
    );
    let o = opener(3);
    let mut r = o.open(&http(&s, "/moving.tar")).unwrap();
    let mut head = vec![0; 5_000];
    r.read_exact(&mut head).unwrap();
    assert_eq!(head, first[..5_000]);
    s.serve("/moving.tar", data(20_000, 9), Fault::None);
    let err = r.read_to_end(&mut Vec::new()).unwrap_err();
    let e = ShardError::from_io(&err).expect("a shard error");
    assert!(
        matches!(
            e,
            ShardError::Failed {
                offset: 5_000,
                cause: Cause::Changed,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_connection_refused_is_retried_then_fails() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = ShardUrl::parse(&format!("http://{addr}/gone.tar")).unwrap();
    let err = opener(2).open(&url).unwrap_err();
    assert!(
        matches!(
            err,
            ShardError::Failed {
                offset: 0,
                retries: 2,
                ..
            }
        ),
        "{err:?}"
    );
}
