//! `clip index build --data`: an index of webdataset shards read from a loopback HTTP server
//! that injects faults (a 404, a connection cut mid-shard, a stall), from `pipe:` commands and
//! from local files; searched with `clip search` and served by `clip serve`, whose thumbnails
//! are the image members read alone from their shards.

mod common;

#[path = "../crates/shard-source/tests/support/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clip::index::SampleEntry;
use clip::Index;
use common::*;
use server::{Fault, Server};

/// Samples per test shard.
const PER: usize = 12;

/// `clip index build --data <data>... --out out` with the fixture model.
fn build(data: &[&str], out: &Path) -> std::process::Output {
    let model = fixture("hf_tiny");
    let mut args = vec!["index", "build", "--model", &model, "--out", s(out)];
    args.extend(["--batch-size", "5"]);
    for d in data {
        args.extend(["--data", d]);
    }
    clip(&args)
}

/// The shards `s0.tar`… (`n` of them, emoji `PER * k..`) written into `dir`.
fn local_shards(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|k| {
            let bytes = emoji_shard(PER * k, PER);
            std::fs::write(dir.join(format!("s{k}.tar")), &bytes).unwrap();
            bytes
        })
        .collect()
}

/// Every row of a samples index: its entry and its vector.
fn rows(dir: &Path) -> Vec<(SampleEntry, Vec<f32>)> {
    let idx = Index::open(dir).unwrap();
    (0..idx.len())
        .map(|i| (idx.entries().sample(i).unwrap().unwrap(), idx.vector(i)))
        .collect()
}

/// Asserts the same samples (all but the shard's name) with the same vectors, in order.
fn assert_same_rows(a: &[(SampleEntry, Vec<f32>)], b: &[(SampleEntry, Vec<f32>)]) {
    assert_eq!(a.len(), b.len());
    for ((ea, va), (eb, vb)) in a.iter().zip(b) {
        let strip = |e: &SampleEntry| {
            (
                e.key.clone(),
                e.ext.clone(),
                e.caption.clone(),
                e.offset,
                e.len,
            )
        };
        assert_eq!(strip(ea), strip(eb));
        let diff = va
            .iter()
            .zip(vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-6, "{}: vectors differ by {diff}", ea.key);
    }
}

/// The bundled emoji image of a sample key.
fn emoji_png(key: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("data/emoji-noto/{key}.png"))
}

#[test]
fn http_shards_index_as_the_same_shards_on_disk_and_list_a_missing_one_once() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = local_shards(tmp.path(), 3);
    let srv = Server::start();
    let cut_at = shards[1].len() / 2;
    for (k, bytes) in shards.iter().enumerate() {
        let fault = match k {
            1 => Fault::Cut {
                bytes: cut_at,
                times: 1,
            },
            _ => Fault::None,
        };
        srv.serve(&format!("/s{k}.tar"), bytes.clone(), fault);
    }
    let local = tmp.path().join("local");
    let err = ok_stderr(&build(
        &[&format!("{}/s{{0..2}}.tar", s(tmp.path()))],
        &local,
    ));
    assert!(
        err.contains(&format!("indexed {} samples", 3 * PER)),
        "{err}"
    );

    let remote = tmp.path().join("remote");
    let data = format!("{}::{}", srv.url("/s{0..2}.tar"), srv.url("/gone.tar"));
    let err = ok_stderr(&build(&[&data], &remote));
    assert!(
        err.contains(&format!("indexed {} samples", 3 * PER)),
        "{err}"
    );
    // The missing shard is listed once, with why; nothing else is skipped.
    assert!(err.contains("skipped 1 unreadable"), "{err}");
    assert_eq!(err.matches("/gone.tar").count(), 1, "{err}");
    assert!(err.contains("404"), "{err}");
    let listed = std::fs::read_to_string(remote.join("skipped.tsv")).unwrap();
    let lines: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(lines.len(), 1, "{listed}");
    assert!(
        lines[0].contains("/gone.tar\t") && lines[0].contains("404"),
        "{listed}"
    );
    assert!(
        !local.join("skipped.tsv").exists(),
        "nothing skipped, no list"
    );
    // The cut shard was read on from where it broke, each shard from its start once.
    assert_eq!(srv.ranges("/s1.tar"), [None, Some(cut_at as u64)]);
    assert_eq!(srv.ranges("/s0.tar"), [None]);

    let (l, r) = (rows(&local), rows(&remote));
    assert_same_rows(&l, &r);
    let mut keys: Vec<&str> = r.iter().map(|(e, _)| e.key.as_str()).collect();
    keys.dedup();
    assert_eq!(keys.len(), 3 * PER, "every sample once");
    assert_eq!(r[PER].0.shard, srv.url("/s1.tar"));
    let first = tmp.path().join("s0.tar").canonicalize().unwrap();
    assert_eq!(l[0].0.shard, s(&first), "local shards by absolute path");
    // Captions are kept.
    let caption = std::fs::read_to_string(emoji_png(&r[0].0.key).with_extension("txt")).unwrap();
    assert_eq!(r[0].0.caption, caption.trim());

    let info = ok(&clip(&["index", "info", s(&remote)]));
    assert!(info.contains("36 samples of webdataset shards"), "{info}");
    assert!(info.contains("format:    version 3"), "{info}");
}

#[test]
fn search_names_samples_and_finds_an_images_own_sample_first() {
    let tmp = tempfile::tempdir().unwrap();
    local_shards(tmp.path(), 2);
    let idx = tmp.path().join("idx");
    ok(&build(
        &[&format!(
            "{}/s0.tar::{}/s1.tar",
            s(tmp.path()),
            s(tmp.path())
        )],
        &idx,
    ));
    let want = rows(&idx)[PER + 3].0.clone();
    let png = emoji_png(&want.key);
    let args = ["search", "--index", s(&idx), "--image", s(&png), "-k", "3"];
    let doc: serde_json::Value =
        serde_json::from_str(&ok(&clip(&[&args[..], &["--json"]].concat()))).unwrap();
    let hit = &doc[0]["hits"][0];
    assert_eq!(hit["id"], PER + 3, "{doc}");
    assert_eq!(hit["name"], want.name(), "{doc}");
    assert_eq!(hit["caption"], want.caption.as_str(), "{doc}");
    // The listing prints the name and the caption.
    let out = ok(&clip(&args));
    let line = out.lines().nth(1).unwrap();
    assert!(
        line.contains(&want.name()) && line.contains(&want.caption),
        "{out}"
    );
}

#[test]
fn pipe_commands_index_as_files_do() {
    let tmp = tempfile::tempdir().unwrap();
    local_shards(tmp.path(), 1);
    let (local, piped) = (tmp.path().join("local"), tmp.path().join("piped"));
    ok(&build(&[s(&tmp.path().join("s0.tar"))], &local));
    let cmd = format!("pipe:cat {}", s(&tmp.path().join("s0.tar")));
    let err = ok_stderr(&build(&[&cmd, "pipe:exit 3"], &piped));
    assert!(
        err.contains("pipe:exit 3") && err.contains("skipped 1"),
        "{err}"
    );
    let r = rows(&piped);
    assert_same_rows(&rows(&local), &r);
    assert_eq!(r[0].0.shard, cmd);
}

#[test]
fn shards_that_all_fail_are_an_error_naming_them_and_leave_the_index_alone() {
    let tmp = tempfile::tempdir().unwrap();
    local_shards(tmp.path(), 1);
    let idx = tmp.path().join("idx");
    ok(&build(&[s(&tmp.path().join("s0.tar"))], &idx));
    let before = std::fs::read(idx.join("manifest.json")).unwrap();
    let srv = Server::start();
    srv.serve("/bad.tar", b"not a tar at all".repeat(100), Fault::None);
    let data = format!(
        "{}::{}",
        srv.url("/missing-{0..1}.tar"),
        srv.url("/bad.tar")
    );
    let err = fail(&build(&[&data], &idx));
    assert!(
        err.contains("no sample could be indexed from the 3 shard(s)"),
        "{err}"
    );
    for name in ["missing-0.tar", "missing-1.tar", "bad.tar"] {
        assert!(err.contains(name), "{name}: {err}");
    }
    assert!(err.contains("404"), "{err}");
    assert_eq!(std::fs::read(idx.join("manifest.json")).unwrap(), before);
    let left: Vec<_> = std::fs::read_dir(&idx)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(!left.iter().any(|n| n == ".build-journal.tmp"), "{left:?}");
    // --data and --images are one or the other.
    let both = clip(&[
        "index", "build", "--data", "a.tar", "--images", "x", "--out", "o",
    ]);
    assert!(fail(&both).contains("cannot be used with"));
}

/// Starts `clip index build --data data --out out` and kills it once its journal records
/// `shards` finished shards.
fn killed_build(data: &str, out: &Path, shards: usize) {
    let model = fixture("hf_tiny");
    let mut child = Command::new(env!("CARGO_BIN_EXE_clip"))
        .args([
            "index",
            "build",
            "--model",
            &model,
            "--data",
            data,
            "--out",
            s(out),
        ])
        .args(["--batch-size", "5"])
        .env("RAYON_NUM_THREADS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = out.join(".build-journal.tmp");
    let start = Instant::now();
    loop {
        let bytes = std::fs::read(&journal).unwrap_or_default();
        if bytes.windows(9).filter(|w| w == b"{\"shard\":").count() >= shards {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before the kill"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no finished shard journalled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A server of `shards` as `/s{k}.tar` where shard `stalled` stalls for 20 s after its
/// first 1000 bytes, on its first request only.
fn server_stalling(shards: &[Vec<u8>], stalled: usize) -> Server {
    let srv = Server::start();
    for (k, bytes) in shards.iter().enumerate() {
        let fault = if k == stalled {
            Fault::Stall {
                bytes: 1000,
                ms: 20_000,
                times: 1,
            }
        } else {
            Fault::None
        };
        srv.serve(&format!("/s{k}.tar"), bytes.clone(), fault);
    }
    srv
}

/// Kills a build of `data` into `idx` once `finished` shards are journalled, builds again and
/// checks that the second build resumed their samples.
fn kill_then_resume(data: &str, idx: &Path, finished: usize) {
    killed_build(data, idx, finished);
    let err = ok_stderr(&build(&[data], idx));
    assert!(
        err.contains(&format!(
            "{} resumed from an interrupted build",
            finished * PER
        )),
        "{err}"
    );
}

#[test]
fn a_killed_build_resumes_without_reading_finished_shards_again() {
    let tmp = tempfile::tempdir().unwrap();
    // The last shard stalls on its first request: the build is killed while it waits.
    let srv = server_stalling(&local_shards(tmp.path(), 4), 3);
    let data = srv.url("/s{0..3}.tar");
    let idx = tmp.path().join("idx");
    kill_then_resume(&data, &idx, 3);
    for k in 0..3 {
        assert_eq!(
            srv.ranges(&format!("/s{k}.tar")).len(),
            1,
            "s{k} read again"
        );
    }
    let local = tmp.path().join("local");
    ok(&build(
        &[&format!("{}/s{{0..3}}.tar", s(tmp.path()))],
        &local,
    ));
    assert_same_rows(&rows(&local), &rows(&idx));
    assert!(!idx.join(".build-journal.tmp").exists());
    // Another run rebuilds, saying so.
    let err = ok_stderr(&build(&[&data], &idx));
    assert!(err.contains("rebuilt"), "{err}");
    assert_same_rows(&rows(&local), &rows(&idx));
}

#[test]
fn shards_are_read_several_at_once_and_indexed_in_the_order_named() {
    let tmp = tempfile::tempdir().unwrap();
    // The first shard stalls: the two after it can only finish first if they are read
    // while it waits. The build is killed once both are journalled as finished.
    let srv = server_stalling(&local_shards(tmp.path(), 3), 0);
    let data = srv.url("/s{0..2}.tar");
    let idx = tmp.path().join("idx");
    kill_then_resume(&data, &idx, 2);
    assert_eq!(srv.ranges("/s1.tar").len(), 1, "s1 read again");
    assert_eq!(
        srv.ranges("/s0.tar").len(),
        2,
        "s1 and s2 finished while s0 stalled, and only s0 was read again"
    );

    // One reader, in order: the same rows in the same order.
    let (model, one) = (fixture("hf_tiny"), tmp.path().join("one"));
    let local = format!("{}/s{{0..2}}.tar", s(tmp.path()));
    let (data_arg, out_arg) = (["--data", &local], ["--out", s(&one)]);
    let mut args = vec!["index", "build", "--model", &model, "--batch-size", "5"];
    args.extend(
        data_arg
            .iter()
            .chain(&out_arg)
            .chain(&["--data-workers", "1"]),
    );
    ok(&clip(&args));
    let (a, b) = (rows(&one), rows(&idx));
    assert_eq!(a.len(), 3 * PER);
    assert_same_rows(&a, &b);
}

/// `/search` results for a text query.
fn results(srv: &Serve) -> Vec<serde_json::Value> {
    let url = format!("{}/search", srv.1);
    let r = ureq::post(&url)
        .send_string(r#"{"text": "a face", "k": 3}"#)
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
    doc["results"].as_array().unwrap().clone()
}

#[test]
fn serve_shows_http_samples_by_a_ranged_read_and_pipe_samples_without_one() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = local_shards(tmp.path(), 1);
    let srv = Server::start();
    srv.serve("/s0.tar", shards[0].clone(), Fault::None);
    let (remote, piped) = (tmp.path().join("remote"), tmp.path().join("piped"));
    ok(&build(&[&srv.url("/s0.tar")], &remote));
    ok(&build(
        &[&format!("pipe:cat {}", s(&tmp.path().join("s0.tar")))],
        &piped,
    ));

    let server = serve(&remote);
    let hits = results(&server);
    assert_eq!(hits.len(), 3);
    for h in &hits {
        let name = h["name"].as_str().unwrap();
        let key = name
            .strip_prefix("s0.tar#")
            .unwrap_or_else(|| panic!("{h}"));
        // Relative, as the page uses them.
        let url = format!("{}{}", server.1, h["url"].as_str().unwrap());
        let r = ureq::get(&url).call().unwrap();
        assert_eq!(r.header("Content-Type"), Some("image/png"));
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut r.into_reader(), &mut got).unwrap();
        assert_eq!(got, std::fs::read(emoji_png(key)).unwrap(), "{name}");
    }
    // Each thumbnail was a bounded range of the shard, not the shard.
    let seen = srv.seen("/s0.tar");
    assert_eq!(seen.len(), 1 + hits.len(), "{seen:?}");
    assert!(seen[1..]
        .iter()
        .all(|r| r.range.is_some() && r.range_last.is_some()));
    drop(server);

    let server = serve(&piped);
    let hits = results(&server);
    let no_url = |h: &serde_json::Value| {
        h["url"].is_null() && h["name"].as_str().unwrap().starts_with("pipe:…#")
    };
    assert!(!hits.is_empty() && hits.iter().all(no_url), "{hits:?}");
    let err = ureq::get(&format!("{}/image/piped/0", server.1))
        .call()
        .unwrap_err();
    let ureq::Error::Status(404, r) = err else {
        panic!("{err}")
    };
    assert!(r.into_string().unwrap().contains("pipe:"));
}
