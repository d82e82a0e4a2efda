//! Helpers shared by the integration tests: fixture paths and tensor comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixture `name` as a command-line argument.
pub fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

pub fn tokenizer_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tokenizer.json")
}

/// Tensors written by `scripts/make_fixtures.py` with transformers and open_clip.
pub fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("expected.safetensors"), &Device::Cpu).unwrap()
}

pub fn captions() -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join("captions.txt")).unwrap();
    text.lines().map(str::to_string).collect()
}

pub fn image_paths() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

pub fn ids(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect()
}

/// Both tensors as rows of f32, after checking they have the same shape and are all finite:
/// a NaN or a truncated result must fail a comparison, not slip through `f32::max` or `zip`.
fn comparable(a: &Tensor, b: &Tensor) -> (Vec<f32>, Vec<f32>, usize) {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let (x, y) = (flat(a), flat(b));
    let bad = x.iter().chain(&y).position(|v| !v.is_finite());
    assert!(bad.is_none(), "non-finite value at flat index {bad:?}");
    let cols = a.dims().last().copied().unwrap_or(1).max(1);
    (x, y, cols)
}

/// Largest per-row relative L2 error ‖a−b‖/‖b‖ (rows: the last dimension).
pub fn max_rel_l2(a: &Tensor, b: &Tensor) -> f32 {
    let (x, y, cols) = comparable(a, b);
    x.chunks(cols)
        .zip(y.chunks(cols))
        .map(|(p, q)| {
            let num: f32 = p.iter().zip(q).map(|(u, v)| (u - v).powi(2)).sum();
            let den: f32 = q.iter().map(|v| v * v).sum();
            (num / den).sqrt()
        })
        .fold(0.0, f32::max)
}

/// Largest elementwise |a−b|.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (x, y, _) = comparable(a, b);
    x.iter()
        .zip(&y)
        .map(|(u, v)| (u - v).abs())
        .fold(0.0, f32::max)
}

#[test]
fn comparisons_fail_on_nan_and_on_truncated_input() {
    let t = |v: &[f32], shape: (usize, usize)| Tensor::from_slice(v, shape, &Device::Cpu).unwrap();
    let good = t(&[3.0, 4.0, 1.0, 0.0], (2, 2));
    let near = t(&[3.0, 4.5, 1.0, 0.0], (2, 2));
    assert!(
        (max_rel_l2(&near, &good) - 0.1).abs() < 1e-6,
        "‖(0, 0.5)‖ / ‖(3, 4)‖"
    );
    assert_eq!(max_abs_diff(&near, &good), 0.5);
    let nan = t(&[f32::NAN; 4], (2, 2));
    let short = t(&[3.0, 4.0], (1, 2));
    for f in [max_rel_l2, max_abs_diff] {
        for bad in [&nan, &short] {
            let caught =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(bad, &good))).is_err();
            assert!(caught, "{bad} passed a comparison with {good}");
        }
    }
}

/// Runs the `clip` binary on two threads.
pub fn clip(args: &[&str]) -> Output {
    clip_env(args, &[])
}

/// Runs the `clip` binary on two threads with extra environment variables.
pub fn clip_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clip"));
    cmd.args(args).env("RAYON_NUM_THREADS", "2");
    cmd.envs(env.iter().copied()).output().unwrap()
}

/// Stdout of a run that must succeed (its stderr on failure).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Stderr of a run that must succeed (for its progress lines).
pub fn ok_stderr(out: &Output) -> String {
    ok(out);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Stderr of a run that must fail cleanly (an error, not a panic).
pub fn fail(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The bundled UCI digits.
pub fn digits() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/digits")
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Copies the files of the HF fixture model into `dir`.
pub fn copy_hf_tiny(dir: &Path) {
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        std::fs::copy(fixtures().join("hf_tiny").join(f), dir.join(f)).unwrap();
    }
}

/// Writes `dir/labels.tsv` listing the first `per_class[c]` bundled digits of class `c`
/// (absolute paths), plus `extra` lines verbatim, and returns its path.
pub fn digit_subset(dir: &Path, per_class: &[usize], extra: &[&str]) -> PathBuf {
    let text = std::fs::read_to_string(digits().join("labels.tsv")).unwrap();
    let mut taken = vec![0; per_class.len()];
    let mut out = String::from("filepath\tlabel\n");
    for line in text.lines().skip(1) {
        let (file, label) = line.split_once('\t').unwrap();
        let c: usize = label.parse().unwrap();
        if c < per_class.len() && taken[c] < per_class[c] {
            taken[c] += 1;
            out += &format!("{}\t{label}\n", digits().join(file).display());
        }
    }
    for e in extra {
        out += e;
        out += "\n";
    }
    let path = dir.join("labels.tsv");
    std::fs::write(&path, out).unwrap();
    path
}

/// A webdataset shard of the bundled Noto emoji `from..from + n` (sorted by name).
pub fn emoji_shard(from: usize, n: usize) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/emoji-noto");
    let mut pngs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    pngs.sort();
    let mut b = tar::Builder::new(Vec::new());
    for png in &pngs[from..from + n] {
        let stem = png.file_stem().unwrap().to_str().unwrap();
        b.append_path_with_name(png, format!("{stem}.png")).unwrap();
        b.append_path_with_name(png.with_extension("txt"), format!("{stem}.txt"))
            .unwrap();
    }
    b.into_inner().unwrap()
}

/// The run directory `whole` as it stood when `checkpoint` was its newest: its files and that
/// checkpoint copied into `into` (later checkpoints and the final model left out), ready for
/// `clip train --resume`.
pub fn run_as_of(whole: &Path, into: &Path, checkpoint: &str) {
    std::fs::create_dir_all(into.join(checkpoint)).unwrap();
    for f in ["run.json", "tokenizer.json", "metrics.jsonl", "skipped.tsv"] {
        if whole.join(f).exists() {
            std::fs::copy(whole.join(f), into.join(f)).unwrap();
        }
    }
    for e in std::fs::read_dir(whole.join(checkpoint)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), into.join(checkpoint).join(e.file_name())).unwrap();
    }
}

/// A running `clip serve` and its base URL (`http://ADDR`), killed when dropped.
pub struct Serve(pub std::process::Child, pub String);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `clip serve --index index` on a free loopback port.
pub fn serve(index: &Path) -> Serve {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_clip"))
        .args(["serve", "--index", s(index), "--port", "0"])
        .env("RAYON_NUM_THREADS", "2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    Serve(child, addr)
}
