//! s3:// shards through `object_store`: against the loopback fault server speaking S3's
//! path-style GET (unsigned), so ranged resumes, missing objects and retries are tested
//! without a network; and, when `CLIP_TEST_S3_ENDPOINT` names one (moto, MinIO; see
//! `scripts/s3_test_server.sh`), against a real S3 implementation with signed requests.

mod support;

use std::io::Read;
use std::time::Duration;

use shard_source::{
    epoch_size, parse_data_arg, Cause, DataPart, OpenConfig, Opener, RetryPolicy, ShardError,
    ShardUrl,
};
use support::server::{Fault, Server};
use support::{data, read_all};

fn retry() -> RetryPolicy {
    RetryPolicy {
        retries: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    }
}

/// An opener whose S3 endpoint is `endpoint`, unsigned.
fn opener(endpoint: &str) -> Opener {
    let cfg = OpenConfig::default()
        .with_retry(retry())
        .with_timeouts(Duration::from_secs(5), Duration::from_millis(500))
        .with_endpoint(endpoint)
        .with_store_option("aws_skip_signature", "true")
        .with_store_option("aws_region", "us-east-1");
    Opener::new(cfg)
}

fn s3(spec: &str) -> ShardUrl {
    ShardUrl::parse(spec).unwrap()
}

#[test]
fn objects_resume_with_ranged_gets_after_a_cut() {
    let s = Server::start();
    let body = data(200_000, 1);
    s.serve(
        "/bk/d/0.tar",
        body.clone(),
        Fault::Cut {
            bytes: 70_000,
            times: 2,
        },
    );
    let (got, retries) = read_all(&opener(&s.url("")), &s3("s3://bk/d/0.tar")).unwrap();
    assert!(got == body, "bytes differ");
    assert_eq!(retries, 2);
    assert_eq!(s.ranges("/bk/d/0.tar"), [None, Some(70_000), Some(140_000)]);
}

#[test]
fn missing_objects_are_missing_and_busy_ones_retried() {
    let s = Server::start();
    let o = opener(&s.url(""));
    let err = o.open(&s3("s3://bk/none.tar")).unwrap_err();
    assert!(
        matches!(&err, ShardError::Missing { url, cause: Cause::Store(_) } if url == "s3://bk/none.tar"),
        "{err:?}"
    );
    assert_eq!(s.seen("/bk/none.tar").len(), 1);
    let body = data(1_000, 2);
    s.serve(
        "/bk/busy.tar",
        body.clone(),
        Fault::Status {
            status: 503,
            times: 2,
        },
    );
    let (got, retries) = read_all(&o, &s3("s3://bk/busy.tar")).unwrap();
    assert_eq!((got, retries), (body, 2));
}

#[test]
fn a_replaced_object_is_not_spliced() {
    let s = Server::start();
    s.serve(
        "/bk/m.tar",
        data(30_000, 3),
        Fault::Cut {
            bytes: 10_000,
            times: 1,
        },
    );
    let o = opener(&s.url(""));
    let mut r = o.open(&s3("s3://bk/m.tar")).unwrap();
    let mut head = vec![0; 10_000];
    r.read_exact(&mut head).unwrap();
    s.serve("/bk/m.tar", data(30_000, 4), Fault::None);
    let err = r.read_to_end(&mut Vec::new()).unwrap_err();
    let e = ShardError::from_io(&err).expect("a shard error");
    assert!(
        matches!(
            e,
            ShardError::Failed {
                offset: 10_000,
                cause: Cause::Changed,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn sidecars_are_read_from_the_bucket() {
    let s = Server::start();
    s.serve(
        "/bk/d/sizes.json",
        br#"{"0.tar": 3, "1.tar": 4}"#.to_vec(),
        Fault::None,
    );
    let urls = remote(&parse_data_arg("s3://bk/d/{0..1}.tar").unwrap());
    let got = epoch_size(None, &urls, &opener(&s.url(""))).unwrap();
    assert_eq!(got.samples, 7);
}

fn remote(parts: &[DataPart]) -> Vec<ShardUrl> {
    parts
        .iter()
        .flat_map(|p| match p {
            DataPart::Remote(v) => v.clone(),
            DataPart::Local(l) => panic!("{l}"),
        })
        .collect()
}

/// Against a real S3 implementation (signed requests, credentials from the environment).
#[test]
fn a_real_s3_server_when_one_is_named() {
    let Ok(endpoint) = std::env::var("CLIP_TEST_S3_ENDPOINT") else {
        eprintln!(
            "skipped: CLIP_TEST_S3_ENDPOINT is unset (scripts/s3_test_server.sh starts moto)"
        );
        return;
    };
    assert!(
        std::env::var("AWS_ACCESS_KEY_ID").is_ok(),
        "CLIP_TEST_S3_ENDPOINT is set: also set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    );
    let bucket = format!("clip-test-{}", std::process::id());
    let put = |path: &str, body: &[u8]| {
        ureq::put(&format!("{endpoint}/{bucket}{path}"))
            .send_bytes(body)
            .unwrap_or_else(|e| panic!("PUT {path} to {endpoint}: {e}"));
    };
    put("", b"");
    let bodies: Vec<Vec<u8>> = (0..3)
        .map(|i| data(100_000 + i * 7, 10 + i as u64))
        .collect();
    for (i, b) in bodies.iter().enumerate() {
        put(&format!("/shards/{i:03}.tar"), b);
    }
    put(
        "/shards/sizes.json",
        br#"{"000.tar": 1, "001.tar": 2, "002.tar": 3}"#,
    );
    let cfg = OpenConfig::default()
        .with_retry(retry())
        .with_endpoint(&endpoint);
    let o = Opener::new(cfg);
    let urls = remote(&parse_data_arg(&format!("s3://{bucket}/shards/{{000..002}}.tar")).unwrap());
    for (u, want) in urls.iter().zip(&bodies) {
        let (got, retries) = read_all(&o, u).unwrap();
        assert!(got == *want, "{u}: bytes differ");
        assert_eq!(retries, 0);
    }
    assert_eq!(epoch_size(None, &urls, &o).unwrap().samples, 6);
    // One byte range alone (a thumbnail of an index of shards): a bounded GET.
    let got = o.read_range(&urls[1], 1000, 5000).unwrap();
    assert!(got == bodies[1][1000..6000], "the range's bytes differ");
    let err = o
        .open(&s3(&format!("s3://{bucket}/shards/999.tar")))
        .unwrap_err();
    assert!(err.is_missing(), "{err:?}");
}
