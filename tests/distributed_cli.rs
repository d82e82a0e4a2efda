//! Data-parallel training under `mpirun` (Open MPI; built with `--features mpi`): two ranks
//! with half the batch each take the same steps as one process with the whole batch, a rank
//! killed mid-run ends the job without damaging checkpoints, and the run resumes exactly.
#![cfg(feature = "mpi")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use common::*;

/// `labels.tsv` of 40 bundled digits, plus `captions.tsv` giving each a caption.
fn digit_data(dir: &Path) -> (PathBuf, PathBuf) {
    let labels = digit_subset(dir, &[4; 10], &[]);
    let mut captions = String::from("filepath\ttitle\n");
    for (i, line) in std::fs::read_to_string(&labels)
        .unwrap()
        .lines()
        .skip(1)
        .enumerate()
    {
        let (file, label) = line.split_once('\t').unwrap();
        let words = ["small", "bold", "thin", "round"][i % 4];
        captions += &format!("{file}\ta {words} handwritten digit {label}\n");
    }
    let captions_path = dir.join("captions.tsv");
    std::fs::write(&captions_path, captions).unwrap();
    (labels, captions_path)
}

/// `mpirun -np N clip ARGS` with one thread per rank.
fn mpirun(n: usize, args: &[&str]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "-np",
        &n.to_string(),
        "--oversubscribe",
        "--bind-to",
        "none",
    ])
    .arg(env!("CARGO_BIN_EXE_clip"))
    .args(args)
    .env("RAYON_NUM_THREADS", "1")
    // Open MPI refuses root unless told; CI containers run as root.
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    cmd
}

fn weights(model: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(model.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect()
}

/// Relative L2 distance of the two runs' final weights: over all weights together, and the
/// largest of any one tensor.
fn weight_distance(a: &Path, b: &Path) -> (f32, f32) {
    let (wa, wb) = (weights(&a.join("final")), weights(&b.join("final")));
    assert_eq!(
        wa.keys().collect::<std::collections::BTreeSet<_>>(),
        wb.keys().collect()
    );
    let (mut diff, mut norm, mut worst) = (0f64, 0f64, 0f32);
    for (name, x) in &wa {
        // Attention's key bias shifts every logit of a softmax row equally, so its gradient
        // is zero in exact arithmetic and its steps are rounding noise.
        if name.ends_with("k_proj.bias") {
            continue;
        }
        worst = worst.max(max_rel_l2(x, &wb[name]));
        let sq = |t: Tensor| {
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        diff += sq((x - &wb[name]).unwrap()) as f64;
        norm += sq(x.clone()) as f64;
    }
    ((diff / norm).sqrt() as f32, worst)
}

/// The two runs' per-step losses agree to 1e-5 (relative) and so do their final weights,
/// taken together; any one tensor to 1e-3 (a bias a few Adam steps from zero carries the
/// rounding of its gradient, a sum over the batch, straight into its value).
fn assert_same_training(a: &Path, b: &Path) {
    let (la, lb) = (losses(a), losses(b));
    assert!(!la.is_empty() && la.len() == lb.len(), "{la:?} vs {lb:?}");
    for (x, y) in la.iter().zip(&lb) {
        assert!(
            x.is_finite() && (x - y).abs() <= 1e-5 * x.abs(),
            "{la:?} vs {lb:?}"
        );
    }
    let (all, worst) = weight_distance(a, b);
    assert!(
        all <= 1e-5 && worst <= 1e-3,
        "{}: {all} overall, {worst} worst",
        b.display()
    );
}

/// Trains `args` for three steps on a global batch of 8 once in one process and once as two
/// ranks of 4, and checks they took the same steps.
fn one_rank_equals_two(data: &Path, args: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let common = [
        "train",
        "--preset",
        "micro",
        "--data",
        s(data),
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--log-every",
        "1",
        "--seed",
        "3",
    ];
    fn run<'a>(common: &[&'a str], args: &[&'a str], out: &'a Path) -> Vec<&'a str> {
        [common, args, &["--out", s(out)]].concat()
    }
    ok(&clip(&run(&common, args, &one)));
    let out = mpirun(2, &run(&common, args, &two)).output().unwrap();
    let stdout = ok(&out);
    assert!(stdout.contains("2 ranks:"), "{stdout}");
    assert_same_training(&one, &two);
    // Each rank on its own half (no gathered negatives) would have trained differently: the
    // comparison above can tell.
    let half = tmp.path().join("half");
    let alone: Vec<&str> = run(&common, args, &half)
        .into_iter()
        .map(|a| if a == "8" { "4" } else { a })
        .collect();
    ok(&clip(&alone));
    assert!((losses(&one)[0] - losses(&half)[0]).abs() > 1e-3);
    assert!(weight_distance(&one, &half).0 > 1e-3);
}

#[test]
fn two_ranks_train_like_one_process_with_the_whole_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (labels, captions) = digit_data(tmp.path());
    one_rank_equals_two(&captions, &[]);
    one_rank_equals_two(&captions, &["--loss", "siglip"]);
    one_rank_equals_two(&captions, &["--accum-steps", "2"]);
    one_rank_equals_two(&labels, &["--objective", "images"]);
    one_rank_equals_two(&labels, &["--objective", "images", "--loss", "spectral"]);
}

/// Pid of the `clip` process that is rank `rank` of the job writing to `run`.
fn rank_pid(run: &Path, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let has = |hay: &[u8], needle: &str| {
            hay.split(|&b| b == 0).any(|w| {
                w == needle.as_bytes() || (needle.contains('/') && w.ends_with(needle.as_bytes()))
            })
        };
        if has(&cmdline, s(run)) && has(&environ, &want) && !has(&cmdline, "mpirun") {
            return Some(pid);
        }
    }
    None
}

fn wait_with_timeout(mut child: std::process::Child, limit: Duration) -> Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("the job was still running {limit:?} after a rank died");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_killed_rank_ends_the_job_and_the_run_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, captions) = digit_data(tmp.path());
    let args = |out: &Path| {
        let v = [
            "train",
            "--preset",
            "micro",
            "--data",
            s(&captions),
            "--steps",
            "24",
            "--batch-size",
            "8",
            "--log-every",
            "1",
            "--save-every",
            "1",
            "--keep-last",
            "3",
            "--out",
        ];
        let mut v: Vec<String> = v.iter().map(|a| a.to_string()).collect();
        v.push(s(out).to_string());
        v
    };
    let (killed, straight) = (tmp.path().join("killed"), tmp.path().join("straight"));

    let child = mpirun(
        2,
        &args(&killed).iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let t0 = Instant::now();
    let pid = loop {
        if killed.join("checkpoint-2").is_dir() {
            if let Some(pid) = rank_pid(&killed, 1) {
                break pid;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint-2");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let out = wait_with_timeout(child, Duration::from_secs(60));
    assert!(
        !out.status.success(),
        "the job succeeded with a rank killed"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rank 1") || err.contains("signal 9"), "{err}");
    assert!(
        !killed.join("final").exists(),
        "the run finished before the kill"
    );

    // Every checkpoint on disk is complete and loads.
    let ckpts = clip_train::checkpoints(&killed);
    assert!(!ckpts.is_empty());
    for (step, dir) in &ckpts {
        let state: clip_train::TrainState =
            serde_json::from_str(&std::fs::read_to_string(dir.join("train_state.json")).unwrap())
                .unwrap();
        assert_eq!(state.step, *step);
        assert_eq!(state.positions().map(|p| p.len()), Some(2));
        assert!(!weights(dir).is_empty());
    }

    // Resuming with a different world size says what it does (on a copy of the run).
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(&killed).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
    }
    let (last_step, last) = ckpts.last().unwrap();
    let dst = copy.join(format!("checkpoint-{last_step}"));
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(last).unwrap().flatten() {
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let err = ok_stderr(&clip(&["train", "--resume", s(&copy)]));
    assert!(
        err.contains("written by 2 rank(s) and this run has 1"),
        "{err}"
    );

    // The same world size resumes exactly where the killed run was.
    ok(&mpirun(2, &["train", "--resume", s(&killed)])
        .output()
        .unwrap());
    let straight_args = args(&straight);
    ok(&mpirun(
        2,
        &straight_args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .output()
    .unwrap());
    let (a, b) = (
        weights(&killed.join("final")),
        weights(&straight.join("final")),
    );
    for (name, x) in &a {
        assert_eq!(
            max_abs_diff(x, &b[name]),
            0.0,
            "{name} differs after resume"
        );
    }
}

/// A build with MPI still trains alone without a launcher, and a batch that does not split
/// over the ranks is refused by name.
#[test]
fn a_batch_that_does_not_split_over_the_ranks_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, captions) = digit_data(tmp.path());
    let run = tmp.path().join("run");
    let args = [
        "train",
        "--preset",
        "micro",
        "--data",
        s(&captions),
        "--steps",
        "1",
        "--batch-size",
        "7",
        "--out",
        s(&run),
    ];
    let out = mpirun(2, &args).output().unwrap();
    let err = fail(&out);
    assert!(err.contains("does not split evenly over 2 ranks"), "{err}");
}

#[path = "../crates/shard-source/tests/support/server.rs"]
mod server;

/// Streamed shards split over ranks: two ranks stream their own shares of http shards (one
/// of them missing), list the missing one once, take the same steps as one process reading
/// the same two streams, and resume from a checkpoint to the uninterrupted run's weights, on
/// two ranks and on one.
#[test]
fn two_ranks_stream_http_shards_like_one_process_and_resume_exactly() {
    use server::{Fault, Server};
    let srv = Server::start();
    for k in 0..4 {
        srv.serve(&format!("/s{k}.tar"), emoji_shard(20 * k, 20), Fault::None);
    }
    let data = format!("{}::{}", srv.url("/s{0..3}.tar"), srv.url("/gone.tar"));
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--preset",
            "micro",
            "--data",
            data.as_str(),
            "--train-num-samples",
            "80",
            "--steps",
            "6",
            "--batch-size",
            "16",
            "--shuffle-buffer",
            "10",
            "--save-every",
            "3",
            "--keep-last",
            "5",
            "--log-every",
            "1",
            "--examples",
            "0",
            "--out",
            s(out),
        ]
        .map(String::from)
        .to_vec()
    };
    let a = args(&whole);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let stdout = ok(&mpirun(2, &a).output().unwrap());
    assert!(stdout.contains("2 ranks:"), "{stdout}");
    let tsv = std::fs::read_to_string(whole.join("skipped.tsv")).unwrap();
    assert_eq!(
        tsv.matches("/gone.tar").count(),
        2,
        "listed once (name and reason): {tsv}"
    );
    // One process reading both streams takes the same steps.
    let one = tmp.path().join("one");
    let a1 = args(&one);
    let mut a1: Vec<&str> = a1.iter().map(String::as_str).collect();
    a1.extend(["--data-streams", "2"]);
    ok(&clip(&a1));
    assert_same_training(&whole, &one);
    // The two-rank run's checkpoint resumes in one process onto the same steps.
    let alone = tmp.path().join("alone");
    run_as_of(&whole, &alone, "checkpoint-3");
    ok(&clip(&["train", "--resume", s(&alone)]));
    let (all, worst) = weight_distance(&whole, &alone);
    assert!(all <= 1e-5 && worst <= 1e-3, "{all} overall, {worst} worst");

    let resumed = tmp.path().join("resumed");
    run_as_of(&whole, &resumed, "checkpoint-3");
    ok(&mpirun(2, &["train", "--resume", s(&resumed)])
        .output()
        .unwrap());
    let (w, r) = (
        weights(&whole.join("final")),
        weights(&resumed.join("final")),
    );
    for (k, t) in &w {
        let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = r[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(a == b, "{k}: the resumed two-rank run differs");
    }
}
