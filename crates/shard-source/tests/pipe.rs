//! `pipe:` shards: a command's stdout, byte for byte; failures name the command and its
//! stderr; a command that dies mid-way is re-run and skipped ahead, a bounded number of
//! times; a dropped reader leaves no process behind.

mod support;

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use shard_source::{Cause, OpenConfig, Opener, RetryPolicy, ShardError, ShardUrl};
use support::{chain, data, read_all};

fn opener(retries: u32) -> Opener {
    Opener::new(OpenConfig::default().with_retry(RetryPolicy {
        retries,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    }))
}

fn pipe(cmd: &str) -> ShardUrl {
    ShardUrl::parse(&format!("pipe:{cmd}")).unwrap()
}

fn file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

#[test]
fn cat_gives_the_file_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    let body = data(1 << 20, 1);
    let f = file(d.path(), "a.tar", &body);
    let (got, retries) = read_all(&opener(2), &pipe(&format!("cat '{f}'"))).unwrap();
    assert_eq!(got, body);
    assert_eq!(retries, 0);
}

#[test]
fn a_command_failing_before_any_output_is_missing_and_named() {
    let o = opener(3);
    let err = o.open(&pipe("false")).unwrap_err();
    match &err {
        ShardError::Missing {
            url,
            cause: Cause::Exit {
                command, status, ..
            },
        } => {
            assert_eq!(url, "pipe:false");
            assert_eq!(command, "false");
            assert!(status.contains('1'), "{status}");
        }
        other => panic!("{other:?}"),
    }
    let err = o.open(&pipe("echo 'no such key' >&2; exit 3")).unwrap_err();
    let msg = chain(&err);
    assert!(err.is_missing(), "{msg}");
    assert!(
        msg.contains("exit status: 3") && msg.contains("no such key"),
        "{msg}"
    );
}

#[test]
fn a_command_dying_mid_way_is_rerun_then_given_up() {
    let d = tempfile::tempdir().unwrap();
    let f = file(d.path(), "a.tar", &data(5_000, 2));
    let runs = d.path().join("runs");
    let cmd = format!("echo x >> '{}'; head -c 1000 '{f}'; exit 1", runs.display());
    let err = read_all(&opener(2), &pipe(&cmd)).unwrap_err();
    match &err {
        ShardError::Failed {
            offset,
            retries,
            cause,
            ..
        } => {
            assert_eq!((*offset, *retries), (1000, 2));
            assert!(matches!(cause, Cause::Exit { .. }), "{cause:?}");
        }
        other => panic!("{other:?}"),
    }
    let msg = chain(&err);
    assert!(
        msg.contains("gave up at byte 1000 after 2 retries") && msg.contains("exit status: 1"),
        "{msg}"
    );
    let ran = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(ran.lines().count(), 3, "one run and two re-runs");
}

#[test]
fn a_rerun_skips_the_bytes_already_read() {
    let d = tempfile::tempdir().unwrap();
    let body = data(200_000, 3);
    let f = file(d.path(), "a.tar", &body);
    let mark = d.path().join("mark");
    let m = mark.display();
    let cmd = format!(
        "if [ -e '{m}' ]; then cat '{f}'; else touch '{m}'; head -c 70000 '{f}'; exit 1; fi"
    );
    let (got, retries) = read_all(&opener(2), &pipe(&cmd)).unwrap();
    assert_eq!(got.len(), body.len());
    assert!(got == body, "bytes differ after the re-run");
    assert_eq!(retries, 1);
}

#[test]
fn a_rerun_that_ends_too_soon_is_named_as_such() {
    let d = tempfile::tempdir().unwrap();
    let f = file(d.path(), "a.tar", &data(10_000, 4));
    let mark = d.path().join("mark");
    let m = mark.display();
    // First run: 6000 bytes then failure; re-runs: only 100 bytes, successfully.
    let cmd = format!(
        "if [ -e '{m}' ]; then head -c 100 '{f}'; else touch '{m}'; head -c 6000 '{f}'; exit 1; fi"
    );
    let err = read_all(&opener(1), &pipe(&cmd)).unwrap_err();
    assert!(
        matches!(
            err,
            ShardError::Failed {
                offset: 6000,
                cause: Cause::Short {
                    produced: 100,
                    offset: 6000
                },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn lots_of_stderr_does_not_block_the_command() {
    let d = tempfile::tempdir().unwrap();
    let body = data(100_000, 5);
    let f = file(d.path(), "a.tar", &body);
    let cmd = format!("head -c 1000000 /dev/zero >&2; cat '{f}'");
    let (got, _) = read_all(&opener(0), &pipe(&cmd)).unwrap();
    assert_eq!(got, body);
}

#[test]
fn dropping_a_reader_ends_its_command() {
    let d = tempfile::tempdir().unwrap();
    let pid_file = d.path().join("pid");
    let cmd = format!(
        "echo $$ > '{}'; echo start; exec sleep 30",
        pid_file.display()
    );
    let o = opener(0);
    let t = Instant::now();
    {
        let mut r = o.open(&pipe(&cmd)).unwrap();
        let mut buf = [0u8; 6];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"start\n");
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "drop waited for the command"
    );
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let proc_dir = format!("/proc/{}", pid.trim());
    assert!(!Path::new(&proc_dir).exists(), "{proc_dir} still there");
}

#[test]
fn empty_output_with_success_is_an_empty_shard() {
    let (got, retries) = read_all(&opener(2), &pipe("true")).unwrap();
    assert!(got.is_empty());
    assert_eq!(retries, 0);
}
