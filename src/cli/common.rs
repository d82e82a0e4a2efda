//! Pieces several subcommands share: devices, model loading, input listing, embedding loops.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clip_model::{Checkpoint, ClipModel, ClipTokenizer, Preprocess};
use indicatif::{ProgressBar, ProgressStyle};

/// The CLIP BPE tokenizer, compiled in so that any model directory works without one.
pub const BUNDLED_TOKENIZER: &[u8] = include_bytes!("../../models/tokenizer.json");

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

/// Which features `clip probe` and `clip embed` read from a tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FeaturesArg {
    /// The tower's output before the projection head (transformers' `pooler_output`): where
    /// SSL benchmarks read an image-only model.
    Pooled,
    /// The projected embeddings in the shared image–text space.
    Embeds,
}

impl FeaturesArg {
    /// The user's choice, else pooled for image-only models and embeddings otherwise.
    pub fn resolve(choice: Option<Self>, model: &ClipModel) -> Self {
        choice.unwrap_or(if model.config().image_only {
            Self::Pooled
        } else {
            Self::Embeds
        })
    }

    /// For messages: what the features are and why they were chosen.
    pub fn describe(self, choice: Option<Self>) -> &'static str {
        match (self, choice) {
            (Self::Pooled, None) => {
                "pooled features before the projection head (the default for an image-only \
                 model; --features embeds for the embeddings)"
            }
            (Self::Pooled, Some(_)) => "pooled features before the projection head",
            (Self::Embeds, _) => "embeddings",
        }
    }
}

/// A model ready for inference, with what it needs around it.
pub struct LoadedModel {
    pub model: ClipModel,
    pub preprocess: Preprocess,
    pub tokenizer: ClipTokenizer,
    pub checkpoint_dir: PathBuf,
}

/// Resolves `spec` as a directory, or as a Hub repo id already in the local cache.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let p = PathBuf::from(spec);
    if p.is_dir() {
        return Ok(p);
    }
    if let Some(dir) = super::download::cached_snapshot(spec) {
        return Ok(dir);
    }
    bail!("model `{spec}` is neither a directory nor a model in the Hugging Face cache (try `clip download {spec}`)")
}

/// Loads the model at `spec`, its preprocessing, and its tokenizer (or the bundled one).
pub fn load_model(spec: &str, device: &Device) -> Result<LoadedModel> {
    let dir = resolve_model_dir(spec)?;
    let ckpt = Checkpoint::load(&dir, device)
        .with_context(|| format!("cannot load model {}", dir.display()))?;
    let tokenizer = match &ckpt.tokenizer {
        Some(_) => ckpt.tokenizer(None)?,
        None => bundled_tokenizer(ckpt.config.text_config.max_position_embeddings)?,
    };
    let preprocess = ckpt.preprocess.clone();
    Ok(LoadedModel {
        model: ckpt.into_model()?,
        preprocess,
        tokenizer,
        checkpoint_dir: dir,
    })
}

pub fn bundled_tokenizer(context: usize) -> Result<ClipTokenizer> {
    Ok(ClipTokenizer::from_bytes(
        BUNDLED_TOKENIZER,
        Path::new("<bundled tokenizer.json>"),
        context,
    )?)
}

pub fn is_image_file(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().as_str(),
            "png" | "jpg" | "jpeg" | "webp"
        )
    })
}

/// Expands files and folders into image files; a folder's images come in sorted name order.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("cannot list {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image_file(p))
                .collect();
            files.sort();
            out.extend(files);
        } else if input.is_file() {
            out.push(input.clone());
        } else {
            bail!("no such image file or folder: {}", input.display());
        }
    }
    Ok(out)
}

/// Reads one caption per line; an empty line is an empty caption. Invalid UTF-8 is an error
/// naming the file and line.
pub fn read_captions(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow::anyhow!(
            "{} is not valid UTF-8 (line {line}, byte {at})",
            path.display()
        )
    })?;
    Ok(text.lines().map(str::to_string).collect())
}

pub fn progress(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    if len < 64 {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Image features (embeddings or pooled) of files, in batches; an unreadable file is an
/// error naming it.
pub fn image_features(
    m: &LoadedModel,
    files: &[PathBuf],
    batch: usize,
    which: FeaturesArg,
) -> Result<Tensor> {
    let pb = progress(files.len(), "images");
    let mut parts = Vec::new();
    for chunk in files.chunks(batch.max(1)) {
        let pixels = vision_encoder::preprocess_files(chunk, &m.preprocess, m.model.device())?;
        parts.push(match which {
            FeaturesArg::Embeds => m.model.encode_image(&pixels)?,
            FeaturesArg::Pooled => m.model.pooled_image(&pixels)?,
        });
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let cfg = m.model.config();
    let dim = match which {
        FeaturesArg::Embeds => cfg.projection_dim,
        FeaturesArg::Pooled => cfg.vision_config.hidden_size,
    };
    concat_rows(parts, dim, m.model.device())
}

/// Embeds captions in batches.
pub fn embed_texts(m: &LoadedModel, captions: &[String], batch: usize) -> Result<Tensor> {
    text_features(m, captions, batch, FeaturesArg::Embeds)
}

/// Caption features (embeddings or pooled), in batches.
pub fn text_features(
    m: &LoadedModel,
    captions: &[String],
    batch: usize,
    which: FeaturesArg,
) -> Result<Tensor> {
    let pb = progress(captions.len(), "captions");
    let mut parts = Vec::new();
    for chunk in captions.chunks(batch.max(1)) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let ids = m.tokenizer.encode_batch(&refs)?;
        parts.push(match which {
            FeaturesArg::Embeds => m.model.encode_text(&ids)?,
            FeaturesArg::Pooled => m.model.pooled_text(&ids)?,
        });
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let cfg = m.model.config();
    let dim = match which {
        FeaturesArg::Embeds => cfg.projection_dim,
        FeaturesArg::Pooled => cfg.text_config.hidden_size,
    };
    concat_rows(parts, dim, m.model.device())
}

fn concat_rows(parts: Vec<Tensor>, dim: usize, device: &Device) -> Result<Tensor> {
    if parts.is_empty() {
        return Ok(Tensor::zeros((0, dim), candle_core::DType::F32, device)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Writes `path` via a temporary sibling and a rename, so a crash never leaves half a file.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
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
