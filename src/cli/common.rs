//! Pieces several subcommands share: devices, progress bars, data options, atomic writes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};

pub use clip::Features as FeaturesArg;

/// `--precision`: the arithmetic of the towers' transformer blocks at inference.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct PrecisionArg {
    /// Arithmetic of the towers' transformer blocks on the CPU: f32 (the reference), bf16
    /// (AVX512_BF16 where the CPU has it), or int8 (weights per channel, activations per row;
    /// VNNI where the CPU has it). Embeddings are f32 unit vectors in every case.
    /// [default: f32, or int8 for a checkpoint saved by `clip convert --precision int8`]
    #[arg(long, value_enum)]
    pub precision: Option<clip::Precision>,
}

impl PrecisionArg {
    /// `--model` (a folder or a cached Hub id) on `device`, in this precision.
    pub fn open(self, spec: &str, device: &Device) -> clip::Result<clip::Clip> {
        let clip = clip::Clip::open(spec, device)?;
        match self.precision {
            Some(p) => clip.with_precision(p),
            None => Ok(clip),
        }
    }
}

/// Which device to run on.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    clap::ValueEnum,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum DeviceArg {
    /// The CPU (default).
    #[default]
    Cpu,
    /// The first CUDA GPU (needs a build with `--features cuda`).
    Cuda,
}

impl DeviceArg {
    /// The device of this process: with CUDA under an MPI launcher, the GPU of the rank's
    /// local index on its node (one GPU per rank), else GPU 0.
    pub fn device_for_rank(self) -> Result<Device> {
        let local = [
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "MPI_LOCALRANKID",
            "SLURM_LOCALID",
        ]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .unwrap_or(0);
        match self {
            DeviceArg::Cuda if cfg!(feature = "cuda") && local > 0 => Device::new_cuda(local)
                .with_context(|| format!("cannot open CUDA device {local} (local rank {local})")),
            other => other.device(),
        }
    }

    pub fn device(self) -> Result<Device> {
        match self {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Cuda if cfg!(feature = "cuda") => {
                Device::new_cuda(0).context("cannot open CUDA device 0")
            }
            DeviceArg::Cuda => {
                bail!("this clip binary was built without CUDA; rebuild with `--features cuda`")
            }
        }
    }
}

/// A progress bar on stderr for the library's long jobs (hidden for short ones).
#[derive(Default)]
pub struct Bar(std::cell::RefCell<Option<ProgressBar>>);

impl clip::Progress for Bar {
    fn start(&self, total: usize, what: &str) {
        let pb = ProgressBar::new(total as u64);
        if total < 64 {
            pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        pb.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        *self.0.borrow_mut() = Some(pb);
    }
    fn advance(&self, n: usize) {
        if let Some(pb) = &*self.0.borrow() {
            pb.inc(n as u64);
        }
    }
    fn finish(&self) {
        if let Some(pb) = self.0.borrow_mut().take() {
            pb.finish_and_clear();
        }
    }
}

/// Writes `path` through a temporary sibling that is renamed into place, so a crash never
/// leaves half a file.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut b = tempfile::Builder::new();
    // Readable like a file from `File::create` (tempfile defaults to owner-only).
    #[cfg(unix)]
    b.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let tmp = b
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    write(tmp.path())?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// open_clip's CSV/TSV manifest options, shared by every command that reads `--data`.
#[derive(Debug, Clone, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct CsvArgs {
    /// CSV/TSV separator (default: tab for .tsv, comma for .csv).
    #[arg(long)]
    csv_separator: Option<char>,
    /// CSV/TSV column with image paths (relative to the manifest).
    #[arg(long, default_value = "filepath")]
    csv_img_key: String,
    /// CSV/TSV column with captions.
    #[arg(long, default_value = "title")]
    csv_caption_key: String,
}

impl CsvArgs {
    /// Data sources for `paths`: each a folder, .csv/.tsv, .jsonl or .tar, a folder of
    /// shards, or a brace pattern or glob of them.
    pub fn sources(&self, paths: &[PathBuf]) -> Result<Vec<clip_data::Source>> {
        let mut opts = clip_data::CsvOptions {
            img_key: self.csv_img_key.clone(),
            caption_key: self.csv_caption_key.clone(),
            ..clip_data::CsvOptions::default()
        };
        if let Some(c) = self.csv_separator {
            if !c.is_ascii() {
                bail!("--csv-separator must be a single ASCII character, got {c:?}");
            }
            opts.separator = c as u8;
        }
        let mut out = Vec::new();
        for p in paths {
            for mut s in clip_data::Source::expand(p, &opts)? {
                // An explicit separator wins over the one implied by the extension.
                if let (clip_data::Source::Csv(_, o), Some(_)) = (&mut s, self.csv_separator) {
                    o.separator = opts.separator;
                }
                out.push(s);
            }
        }
        Ok(out)
    }
}

/// Prints what was skipped, by kind with examples, to stderr.
pub fn report_skips(skips: &[clip_data::Skip]) {
    if !skips.is_empty() {
        eprintln!(
            "skipped {}:\n  {}",
            skips.len(),
            clip_data::summarize_skips(skips).replace('\n', "\n  ")
        );
    }
}
