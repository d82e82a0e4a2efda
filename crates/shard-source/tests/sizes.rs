//! Epoch sizes from the files beside the shards, local and over HTTP; bad files are errors
//! naming the file and the key; nothing at all is an error naming the shards.

mod support;

use std::path::Path;

use shard_source::{
    epoch_size, parse_data_arg, shard_sizes, DataPart, OpenConfig, Opener, ShardError, ShardUrl,
    SizeFrom,
};
use support::server::{Fault, Server};

fn shards(dir: &Path, names: &[&str]) -> Vec<ShardUrl> {
    names.iter().map(|n| ShardUrl::Local(dir.join(n))).collect()
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn opener() -> Opener {
    Opener::new(OpenConfig::default())
}

#[test]
fn sizes_json_gives_each_shard_its_count() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "sizes.json",
        r#"{"0.tar": 10, "1.tar": "20", "2.tar": 5}"#,
    );
    let s = shard_sizes(&shards(d.path(), &["1.tar", "0.tar"]), &opener()).unwrap();
    assert_eq!(s.per_shard, [20, 10]);
    assert_eq!(s.files, [d.path().join("sizes.json").display().to_string()]);
}

#[test]
fn info_json_in_timm_and_wids_forms() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "_info.json",
        r#"{"name": "x", "splits": {"train": {"name": "train", "num_samples": 7,
            "filenames": ["t-0.tar", "t-1.tar"], "shard_lengths": [3, 4]}}}"#,
    );
    let s = shard_sizes(&shards(d.path(), &["t-0.tar", "t-1.tar"]), &opener()).unwrap();
    assert_eq!(s.per_shard, [3, 4]);
    let w = tempfile::tempdir().unwrap();
    write(
        w.path(),
        "_info.json",
        r#"{"wids_version": 1, "shardlist": [{"url": "http://h/d/a.tar", "nsamples": 100},
            {"url": "b.tar", "nsamples": 7}]}"#,
    );
    let s = shard_sizes(&shards(w.path(), &["b.tar", "a.tar"]), &opener()).unwrap();
    assert_eq!(s.per_shard, [7, 100]);
}

#[test]
fn img2dataset_stats_fill_what_sizes_json_lacks() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "sizes.json", r#"{"00000.tar": 8}"#);
    write(
        d.path(),
        "00001_stats.json",
        r#"{"count": 10, "successes": 9, "failed_to_download": 1}"#,
    );
    let got = epoch_size(
        None,
        &shards(d.path(), &["00000.tar", "00001.tar"]),
        &opener(),
    )
    .unwrap();
    assert_eq!(got.samples, 17);
    let SizeFrom::Files(files) = got.from else {
        panic!("{got:?}")
    };
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[1].contains("1 img2dataset"), "{files:?}");
}

#[test]
fn bad_files_name_the_file_and_the_key() {
    let d = tempfile::tempdir().unwrap();
    let one = shards(d.path(), &["00000.tar"]);
    let cases = [
        ("sizes.json", "{not json", "sizes.json: is not JSON"),
        (
            "sizes.json",
            r#"{"00000.tar": -3}"#,
            "`00000.tar` is not a sample count (found -3)",
        ),
        ("sizes.json", "[1, 2]", "is not an object"),
        (
            "_info.json",
            r#"{"splits": {"train": {"filenames": ["a"], "shard_lengths": []}}}"#,
            "`splits.train.shard_lengths` has 0 entries for 1 filenames",
        ),
        (
            "_info.json",
            r#"{"shardlist": [{"url": "00000.tar"}]}"#,
            "`shardlist[0].nsamples` is missing",
        ),
        ("_info.json", r#"{"other": 1}"#, "`splits` is missing"),
        (
            "00000_stats.json",
            r#"{"count": 3}"#,
            "00000_stats.json: `successes` is missing",
        ),
        (
            "00000_stats.json",
            r#"{"successes": "many"}"#,
            "`successes` is not a sample count",
        ),
    ];
    for (name, text, want) in cases {
        for f in ["sizes.json", "_info.json", "00000_stats.json"] {
            let _ = std::fs::remove_file(d.path().join(f));
        }
        write(d.path(), name, text);
        let err = shard_sizes(&one, &opener()).unwrap_err();
        assert!(matches!(err, ShardError::Sidecar { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(want), "{name} {text}: {msg}");
        assert!(
            msg.contains(&d.path().join(name).display().to_string()),
            "{msg}"
        );
    }
}

#[test]
fn no_size_anywhere_names_the_shards_and_the_files_looked_for() {
    let d = tempfile::tempdir().unwrap();
    let err = epoch_size(
        None,
        &shards(d.path(), &["a.tar", "b.tar", "c.tar", "e.tar"]),
        &opener(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ShardError::UnknownSize { .. }), "{err:?}");
    assert!(
        msg.contains("4 shard(s)") && msg.contains("a.tar") && msg.contains("and 1 more"),
        "{msg}"
    );
    assert!(
        msg.contains("sizes.json") && msg.contains("_info.json") && msg.contains("_stats.json"),
        "{msg}"
    );
    assert!(msg.contains("`epoch_samples`"), "{msg}");
    // Commands have no folder to look in.
    let pipes = [ShardUrl::parse("pipe:cat x.tar").unwrap()];
    let msg = epoch_size(None, &pipes, &opener()).unwrap_err().to_string();
    assert!(msg.contains("pipe:cat x.tar"), "{msg}");
}

#[test]
fn an_explicit_number_wins_without_reading_anything() {
    let pipes = [ShardUrl::parse("pipe:exit 1").unwrap()];
    let got = epoch_size(Some(12_345), &pipes, &opener()).unwrap();
    assert_eq!((got.samples, got.from), (12_345, SizeFrom::Explicit));
}

#[test]
fn remote_sidecars_come_through_the_same_opener() {
    let s = Server::start();
    s.serve(
        "/d/sizes.json",
        br#"{"0.tar": 4, "1.tar": 6}"#.to_vec(),
        Fault::None,
    );
    s.serve(
        "/e/0_stats.json",
        br#"{"successes": 11}"#.to_vec(),
        Fault::Status {
            status: 503,
            times: 1,
        },
    );
    let arg = format!("{}::{}", s.url("/d/{0..1}.tar"), s.url("/e/0.tar"));
    let urls: Vec<ShardUrl> = parse_data_arg(&arg)
        .unwrap()
        .into_iter()
        .flat_map(|p| match p {
            DataPart::Remote(v) => v,
            DataPart::Local(l) => panic!("{l}"),
        })
        .collect();
    let o = Opener::new(OpenConfig::default().with_retry(shard_source::RetryPolicy {
        retries: 2,
        base_delay: std::time::Duration::from_millis(1),
        max_delay: std::time::Duration::from_millis(1),
    }));
    let sizes = shard_sizes(&urls, &o).unwrap();
    assert_eq!(sizes.per_shard, [4, 6, 11]);
    // One request for the folder's sizes.json, not one per shard; the second folder had
    // none, nor an _info.json, and its stats file needed a retry.
    assert_eq!(s.seen("/d/sizes.json").len(), 1);
    assert_eq!(s.seen("/e/sizes.json").len(), 1);
    assert_eq!(s.seen("/e/_info.json").len(), 1);
    assert_eq!(s.seen("/e/0_stats.json").len(), 2);
}
