//! `clip train`: contrastive training on image–caption data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clip_data::{AugmentConfig, Dataset};
use clip_model::{Checkpoint, ClipConfig, ClipModel, Preprocess};
use clip_train::{LossKind, Observer, RunSetup, ScheduleKind, StepStats, TrainConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::common::{self, DeviceArg};
use super::valset::{top_images, Scored, ValSet};

/// Model presets compiled into the binary (the files in `models/`).
const PRESETS: [(&str, &str); 3] = [
    ("tiny", include_str!("../../models/tiny/config.json")),
    ("small", include_str!("../../models/small/config.json")),
    (
        "vit-b-32",
        include_str!("../../models/vit-b-32/config.json"),
    ),
];

/// The bundled sample: Noto emoji to train on, Twemoji (a style never seen) to validate on.
fn bundled_data() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    (root.join("emoji-noto"), root.join("emoji-twemoji"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
enum LossArg {
    Clip,
    Siglip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
enum ScheduleArg {
    Cosine,
    Constant,
}

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct TrainArgs {
    /// Training data: a folder (image + same-stem .txt), a .csv/.tsv manifest, a .jsonl file
    /// or a webdataset .tar shard; repeat to combine. Default: the bundled Noto emoji.
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Validation data (same forms). Default with the bundled data: the Twemoji style.
    #[arg(long)]
    val_data: Vec<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    csv: common::CsvArgs,
    /// Architecture preset: tiny, small or vit-b-32.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Start from this checkpoint (HF or open_clip layout) instead of a preset: fine-tuning.
    #[arg(long)]
    init: Option<String>,
    /// Freeze the image tower.
    #[arg(long)]
    lock_image: bool,
    /// Freeze the text tower.
    #[arg(long)]
    lock_text: bool,
    /// Objective.
    #[arg(long, value_enum, default_value_t = LossArg::Clip)]
    loss: LossArg,
    /// Optimiser steps (default 400; 100 with the bundled sample, a few minutes on a laptop).
    #[arg(long)]
    steps: Option<usize>,
    /// Pairs per step (default 128; 64 with the bundled sample).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate (default 1e-3; 5e-4 with the bundled sample's short run).
    #[arg(long)]
    lr: Option<f64>,
    /// Linear warmup steps (default: a tenth of the steps).
    #[arg(long)]
    warmup: Option<usize>,
    /// Schedule after warmup.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    schedule: ScheduleArg,
    /// Decoupled weight decay (not applied to biases, gains, embeddings or the temperature).
    #[arg(long, default_value_t = 0.1)]
    wd: f64,
    /// AdamW β1.
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    /// AdamW β2.
    #[arg(long, default_value_t = 0.98)]
    beta2: f64,
    /// AdamW ε.
    #[arg(long, default_value_t = 1e-6)]
    eps: f64,
    /// Clip the global gradient norm.
    #[arg(long)]
    grad_clip_norm: Option<f64>,
    /// Forward passes per step; the whole batch stays the negatives.
    #[arg(long, default_value_t = 1)]
    accum_steps: usize,
    /// Seed: a CPU run with the same seed repeats to the bit.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Run directory for checkpoints, metrics and the plot.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// Keep the newest K checkpoints.
    #[arg(long, default_value_t = 3)]
    keep_last: usize,
    /// Log every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Validate every N steps (0: only at the end; default 25 with the bundled sample).
    #[arg(long)]
    val_every: Option<usize>,
    /// Continue the run in this directory from its newest checkpoint (other options are
    /// taken from the run).
    #[arg(long)]
    #[serde(skip)]
    resume: Option<PathBuf>,
    /// Random-resized-crop area range, MIN,MAX.
    #[arg(long, value_delimiter = ',', num_args = 2, default_values_t = [0.7f32, 1.0])]
    aug_scale: Vec<f32>,
    /// Horizontal-flip probability (off: captions say left and right).
    #[arg(long, default_value_t = 0.0)]
    hflip: f32,
    /// Colour-jitter strength.
    #[arg(long, default_value_t = 0.0)]
    color_jitter: f32,
    /// Greyscale probability.
    #[arg(long, default_value_t = 0.0)]
    grayscale: f32,
    /// Gaussian-blur probability.
    #[arg(long, default_value_t = 0.0)]
    blur: f32,
    /// Maximum rotation in degrees.
    #[arg(long, default_value_t = 0.0)]
    rotation: f32,
    /// Example text→image searches printed at the end.
    #[arg(long, default_value_t = 5)]
    examples: usize,
}

const RUN_FILE: &str = "run.json";

fn preset(name: &str) -> Result<ClipConfig> {
    let (_, json) = PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .with_context(|| format!("unknown --preset {name:?} (choose tiny, small or vit-b-32)"))?;
    let cfg: ClipConfig = serde_json::from_str(json)?;
    cfg.validate()?;
    Ok(cfg)
}

struct Display {
    bar: ProgressBar,
    val: Option<ValSet>,
    last: Option<Scored>,
}

impl Observer for Display {
    fn on_step(&mut self, s: &StepStats) {
        self.bar.set_position(s.step as u64);
        self.bar.set_message(format!(
            "loss {:.4} lr {:.2e} scale {:.1} {:.0} samples/s data-wait {:.0}%",
            s.loss,
            s.lr,
            s.logit_scale,
            s.samples_per_s,
            100.0 * s.data_wait
        ));
        if !self.bar.is_hidden() {
            return;
        }
        eprintln!(
            "step {}/{} loss {:.4} lr {:.2e} scale {:.1} {:.0} samples/s",
            s.step, s.total, s.loss, s.lr, s.logit_scale, s.samples_per_s
        );
    }

    fn validate(
        &mut self,
        model: &ClipModel,
        _step: usize,
    ) -> clip_train::Result<Option<BTreeMap<String, f64>>> {
        let Some(val) = &self.val else {
            return Ok(None);
        };
        let scored = val
            .score(model, 256)
            .map_err(|e| clip_train::TrainError::State(format!("validation failed: {e:#}")))?;
        let m: BTreeMap<String, f64> = scored.metrics.named().into_iter().collect();
        self.last = Some(scored);
        Ok(Some(m))
    }
}

pub fn run(mut a: TrainArgs) -> Result<()> {
    let resume = a.resume.clone();
    if let Some(dir) = &resume {
        let path = dir.join(RUN_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot resume: {} is missing", path.display()))?;
        a = serde_json::from_str(&text)
            .with_context(|| format!("cannot resume: {} is damaged", path.display()))?;
        a.out = dir.clone();
    }
    let (bundled_train, bundled_val) = bundled_data();
    let bundled = a.data.is_empty();
    if bundled {
        a.data = vec![bundled_train];
        if a.val_data.is_empty() {
            a.val_data = vec![bundled_val];
        }
    }
    // The bundled demo is a short run: smaller batches and a gentler peak rate keep the
    // few-minute schedule from collapsing the embedding in its first steps.
    let steps = a.steps.unwrap_or(if bundled { 100 } else { 400 });
    let batch_size = a.batch_size.unwrap_or(if bundled { 64 } else { 128 });
    let lr = a.lr.unwrap_or(if bundled { 5e-4 } else { 1e-3 });
    let device = a.device.device()?;

    // Model: a preset from scratch, or a checkpoint to fine-tune.
    let (model_cfg, preprocess, init, tok_path) = match &a.init {
        Some(spec) => {
            let dir = common::resolve_model_dir(spec)?;
            let ckpt = Checkpoint::load(&dir, &device)
                .with_context(|| format!("cannot load --init {}", dir.display()))?;
            (
                ckpt.config.clone(),
                ckpt.preprocess.clone(),
                Some(ckpt.weights.clone()),
                ckpt.tokenizer.clone(),
            )
        }
        None => {
            let mut cfg = preset(&a.preset)?;
            if a.loss == LossArg::Siglip {
                cfg.logit_scale_init_value = 10f64.ln();
            }
            let pre = Preprocess {
                image_size: cfg.vision_config.image_size,
                ..Preprocess::default()
            };
            (cfg, pre, None, None)
        }
    };
    let context = model_cfg.text_config.max_position_embeddings;
    // The tokenizer copied into every checkpoint so each one is complete on its own.
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let tokenizer_file = match tok_path {
        Some(p) => p,
        None => {
            let p = a.out.join("tokenizer.json");
            std::fs::write(&p, common::BUNDLED_TOKENIZER)
                .with_context(|| format!("cannot write {}", p.display()))?;
            p
        }
    };
    let tokenizer = clip_model::ClipTokenizer::from_file(&tokenizer_file, context)?;

    let train = TrainConfig {
        steps,
        batch_size,
        lr,
        warmup: a.warmup.unwrap_or(steps / 10),
        schedule: match a.schedule {
            ScheduleArg::Cosine => ScheduleKind::Cosine,
            ScheduleArg::Constant => ScheduleKind::Constant,
        },
        optimizer: clip_train::AdamWConfig {
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.eps,
            weight_decay: a.wd,
        },
        grad_clip_norm: a.grad_clip_norm,
        accum_steps: a.accum_steps,
        seed: a.seed,
        loss: match a.loss {
            LossArg::Clip => LossKind::Clip,
            LossArg::Siglip => LossKind::Siglip,
        },
        lock_image: a.lock_image,
        lock_text: a.lock_text,
        save_every: a.save_every,
        keep_last: a.keep_last,
        log_every: a.log_every,
        val_every: a.val_every.unwrap_or(if bundled { 25 } else { 0 }),
        augment: AugmentConfig {
            scale: [a.aug_scale[0], a.aug_scale[1]],
            hflip: a.hflip,
            color_jitter: a.color_jitter,
            grayscale: a.grayscale,
            blur: a.blur,
            rotation: a.rotation,
            ..AugmentConfig::default()
        },
        prefetch: 4,
    };
    train.validate()?;

    let load = |paths: &[PathBuf], what: &str| -> Result<Dataset> {
        let ds = Dataset::load(&a.csv.sources(paths)?, preprocess.image_size)?;
        eprintln!("{what}: {} image–caption pairs", ds.len());
        if ds.skipped.total() > 0 {
            eprintln!(
                "  skipped {}:\n  {}",
                ds.skipped.total(),
                ds.skipped.summary().replace('\n', "\n  ")
            );
        }
        Ok(ds)
    };
    let data = load(&a.data, "training data")?;
    let val = if a.val_data.is_empty() {
        None
    } else {
        Some(ValSet::new(
            &load(&a.val_data, "validation data")?,
            &preprocess,
            &tokenizer,
        )?)
    };
    if resume.is_none() {
        let p = a.out.join(RUN_FILE);
        std::fs::write(&p, serde_json::to_string_pretty(&a)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }

    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:25} {pos}/{len} {msg} ETA {eta}")?.progress_chars("=> "),
    );
    let mut display = Display {
        bar,
        val,
        last: None,
    };
    let setup = RunSetup {
        out: a.out.clone(),
        model: model_cfg,
        preprocess,
        init,
        tokenizer_file,
        tokenizer,
        train,
        resume: resume.is_some(),
    };
    let summary = clip_train::train(setup, Arc::new(data), &device, &mut display)?;
    display.bar.finish_and_clear();

    println!(
        "trained {} steps at {:.1} samples/s (waiting for data {:.1}% of the time)",
        summary.steps_run,
        summary.samples_per_s,
        100.0 * summary.data_wait
    );
    println!("model: {}", summary.final_dir.display());
    println!(
        "metrics: {}  plot: {}",
        a.out.join("metrics.jsonl").display(),
        a.out.join("metrics.svg").display()
    );
    if let Some(m) = &summary.val {
        println!(
            "\nvalidation ({} images):",
            display.val.as_ref().map_or(0, ValSet::len)
        );
        for (k, v) in m {
            println!("  {k:<28} {v:.4}");
        }
    }
    if let (Some(val), Some(scored)) = (&display.val, &display.last) {
        print_examples(val, scored, a.examples);
    }
    Ok(())
}

fn print_examples(val: &ValSet, scored: &Scored, n: usize) {
    if n == 0 {
        return;
    }
    // Familiar queries when present, else the first captions.
    let wanted = [
        "red apple",
        "dog face",
        "rocket",
        "pizza",
        "smiling face with sunglasses",
        "france flag",
    ];
    let mut picks: Vec<usize> = wanted
        .iter()
        .filter_map(|w| val.groups.captions.iter().position(|c| c == w))
        .collect();
    picks.extend(0..val.groups.captions.len());
    picks.dedup();
    println!("\nexample text→image searches (validation images):");
    for &c in picks.iter().take(n) {
        println!("  \"{}\"", val.groups.captions[c]);
        for (rank, (i, score)) in top_images(scored, c, 3).into_iter().enumerate() {
            let hit = if val.groups.image_caption[i] == c {
                "  ✓"
            } else {
                ""
            };
            let name = Path::new(&val.names[i])
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            println!("    {}. {name} ({score:.3}){hit}", rank + 1);
        }
    }
}
