//! `clip train` on streamed shards: http URLs from a loopback server that injects faults (a
//! connection cut mid-shard, a 500 that clears, a slow body, a 404), `pipe:` commands, and
//! `--dataset-resampled`. The run finishes, each skip is listed once in `skipped.tsv`, and a
//! run resumed from a checkpoint ends on the uninterrupted run's weights to the bit.

mod common;

#[path = "../crates/shard-source/tests/support/server.rs"]
mod server;

use std::path::Path;

use common::*;
use server::{Fault, Server};

/// Three shards of 24 emoji (one cut mid-body once, one answering 500 once, one slow), and
/// a fourth that is not there.
fn shard_server() -> (Server, String, usize) {
    let s = Server::start();
    let cut = emoji_shard(24, 24);
    let cut_at = cut.len() / 3;
    s.serve("/s0.tar", emoji_shard(0, 24), Fault::None);
    s.serve(
        "/s1.tar",
        cut,
        Fault::Cut {
            bytes: cut_at,
            times: 1,
        },
    );
    let e500 = Fault::Status {
        status: 500,
        times: 1,
    };
    s.serve("/s2.tar", emoji_shard(48, 24), e500);
    s.serve(
        "/s3.tar",
        emoji_shard(72, 24),
        Fault::Stall {
            bytes: 5000,
            ms: 300,
            times: 1,
        },
    );
    let data = format!("{}::{}", s.url("/s{0..3}.tar"), s.url("/gone.tar"));
    (s, data, cut_at)
}

fn train_args<'a>(data: &'a str, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--data",
        data,
        "--train-num-samples",
        "96",
        "--preset",
        "micro",
        "--steps",
        "8",
        "--batch-size",
        "16",
        "--shuffle-buffer",
        "20",
        "--data-workers",
        "2",
        "--save-every",
        "4",
        "--keep-last",
        "5",
        "--log-every",
        "1",
        "--examples",
        "0",
        "--out",
        s(out),
    ];
    a.extend_from_slice(extra);
    a
}

fn weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("final/model.safetensors")).unwrap()
}

/// `whole`'s run directory as it stood after its first checkpoint, resumed to its end;
/// `keep_stream: false` drops the stream's saved state from the checkpoint (as a checkpoint
/// of an earlier version), so the resume replays the epoch instead.
fn resume_from_first_checkpoint(whole: &Path, into: &Path, keep_stream: bool) -> String {
    run_as_of(whole, into, "checkpoint-4");
    let state_file = into.join("checkpoint-4/train_state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert!(state["streams"][0]["buffer"].is_array(), "{state}");
    if !keep_stream {
        state.as_object_mut().unwrap().remove("streams");
        std::fs::write(&state_file, state.to_string()).unwrap();
    }
    ok_stderr(&clip(&["train", "--resume", s(into)]))
}

#[test]
fn http_shards_with_faults_train_list_each_skip_once_and_resume_to_the_bit() {
    let (server, data, cut_at) = shard_server();
    let tmp = tempfile::tempdir().unwrap();
    for (name, extra) in [
        ("passes", &[][..]),
        ("resampled", &["--dataset-resampled"][..]),
    ] {
        let whole = tmp.path().join(name);
        let err = ok_stderr(&clip(&train_args(&data, &whole, extra)));
        assert!(
            err.contains("streaming 5 shards, 96 image–caption pairs"),
            "{err}"
        );
        // The cut shard was read on from where it broke, not from its start.
        assert!(
            server.ranges("/s1.tar").contains(&Some(cut_at as u64)),
            "{:?}",
            server.ranges("/s1.tar")
        );
        let tsv = std::fs::read_to_string(whole.join("skipped.tsv")).unwrap();
        let rows: Vec<&str> = tsv.lines().skip(1).collect();
        if name == "passes" {
            // 128 samples and a buffer of 20 read past the first pass: every shard was
            // taken up, and only the missing one is skipped, once.
            assert_eq!(rows.len(), 1, "{tsv}");
            assert!(
                rows[0].contains("/gone.tar") && rows[0].contains("404"),
                "{tsv}"
            );
        }
        assert!(rows.iter().all(|r| r.contains("/gone.tar")), "{tsv}");
        for keep_stream in [true, false] {
            let resumed = tmp.path().join(format!("{name}-resumed-{keep_stream}"));
            let err = resume_from_first_checkpoint(&whole, &resumed, keep_stream);
            // Without the saved state the epoch is replayed to the position (64 samples);
            // with it, the shards in flight and those in the buffer are read again.
            assert!(err.contains("resuming re-read"), "{name}: {err}");
            if !keep_stream {
                assert!(err.contains("re-read 64 samples"), "{name}: {err}");
            }
            assert!(
                weights(&resumed) == weights(&whole),
                "{name} (stream state kept: {keep_stream}): the resumed run's weights differ \
                 from the uninterrupted run's"
            );
        }
    }
}

#[test]
fn pipe_commands_stream_and_a_failing_command_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let shard = tmp.path().join("a.tar");
    std::fs::write(&shard, emoji_shard(0, 40)).unwrap();
    let data = format!("pipe:cat {}::pipe:exit 7", s(&shard));
    let out = tmp.path().join("run");
    let mut args = train_args(&data, &out, &[]);
    args[4] = "40"; // --train-num-samples
    let err = ok_stderr(&clip(&args));
    assert!(err.contains("streaming 2 shards"), "{err}");
    let tsv = std::fs::read_to_string(out.join("skipped.tsv")).unwrap();
    assert!(tsv.contains("pipe:exit 7"), "{tsv}");
    assert_eq!(tsv.lines().count(), 2, "{tsv}");
}

#[test]
fn streamed_data_that_cannot_be_read_or_sized_is_a_clear_error() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // Every shard missing: an error naming them, after trying each.
    let data = server.url("/missing-{0..2}.tar");
    let err = fail(&clip(&train_args(&data, &out, &[])));
    assert!(err.contains("no shard could be read (3 shards"), "{err}");
    assert!(err.contains("missing-") && err.contains("404"), "{err}");
    // No epoch size given and no sidecar file: names the number that is missing.
    let err = fail(&clip(&["train", "--data", &data, "--out", s(&out)]));
    assert!(err.contains("--train-num-samples"), "{err}");
    // A folder mixed into streamed data.
    let mixed = format!("{}::data/emoji-noto", server.url("/a.tar"));
    let err = fail(&clip(&train_args(&mixed, &out, &[])));
    assert!(err.contains("data/emoji-noto is not a tar shard"), "{err}");
    // A batch of 16 does not split over 3 streams.
    let err = fail(&clip(&train_args(&data, &out, &["--data-streams", "3"])));
    assert!(
        err.contains(
            "invalid --data-streams: the global batch of 16 (--batch-size) does not \
             split evenly over 3 streams"
        ),
        "{err}"
    );
}

#[test]
fn eval_reads_http_shards_as_it_reads_the_same_shards_on_disk() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    for k in 0..2 {
        let bytes = emoji_shard(30 * k, 30);
        std::fs::write(tmp.path().join(format!("e{k}.tar")), &bytes).unwrap();
        server.serve(&format!("/e{k}.tar"), bytes, Fault::None);
    }
    server.serve(
        "/e1.tar",
        emoji_shard(30, 30),
        Fault::Cut {
            bytes: 9000,
            times: 1,
        },
    );
    let eval = |data: &str| -> serde_json::Value {
        let out = clip(&[
            "eval",
            "--model",
            &fixture("hf_tiny"),
            "--data",
            data,
            "--json",
        ]);
        serde_json::from_str(&ok(&out)).unwrap()
    };
    let local = eval(&format!("{}/e{{0..1}}.tar", s(tmp.path())));
    let remote = eval(&server.url("/e{0..1}.tar"));
    assert_eq!(local["images"], 60, "{local}");
    assert_eq!(local, remote);
}
