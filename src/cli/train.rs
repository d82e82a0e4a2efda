//! `clip train`: contrastive training on image–caption data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clip::training::{self, Head, Start};
use clip::Device;
use clip_data::{AugmentConfig, CacheConfig, CacheMode, LabelTable, OrderConfig, SampleSet};
use clip_model::{ClipModel, ClipTokenizer};
use clip_train::dist::{Collective, Single};
use clip_train::{
    AdamWConfig, LossKind, Objective, Observer, Precision, RunSetup, ScheduleKind, StepStats,
    TrainConfig,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::common::{self, DeviceArg, FeaturesArg};
use retrieval::CaptionGroups;

use super::valset::{Scored, ValSet};

/// The options of `clip train`, also saved as `RUN/run.json` for `--resume`. A field missing
/// from an older run.json takes its command-line default.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainArgs {
    /// Training data: a folder (image + same-stem .txt), a .csv/.tsv manifest, a .jsonl file,
    /// a webdataset .tar shard or a folder of them (img2dataset's output), or a brace pattern
    /// or glob ('shards/{00000..00999}.tar', 'shards/*.tar'); repeat to combine. Nothing is
    /// decoded up front. Default: the bundled Noto emoji.
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Validation data (same forms). Default with the bundled data: the Twemoji style.
    #[arg(long)]
    val_data: Vec<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    csv: common::CsvArgs,
    /// Architecture preset: micro, tiny, small or vit-b-32 (default: tiny; with no --data, the
    /// bundled run's own: micro).
    #[arg(long)]
    preset: Option<String>,
    /// Start from this checkpoint (HF or open_clip layout) instead of a preset: fine-tuning.
    #[arg(long)]
    init: Option<String>,
    /// Freeze the image tower.
    #[arg(long)]
    lock_image: bool,
    /// Freeze the text tower.
    #[arg(long)]
    lock_text: bool,
    /// What a positive pair is: an image and its caption, or two views of one image.
    /// `images` without --data trains on the bundled digits.
    #[arg(long, value_enum, default_value_t = TrainConfig::default().objective)]
    #[serde(with = "variant_name")]
    objective: Objective,
    /// Loss (default: clip for image-text, nt-xent for images).
    #[arg(long, value_enum)]
    #[serde(with = "variant_name::option")]
    loss: Option<LossKind>,
    /// Temperature of the two-view softmax losses.
    #[arg(long, default_value_t = TrainConfig::default().temperature)]
    temperature: f64,
    /// Class prior τ⁺ of the debiased and hard-negative losses.
    #[arg(long, default_value_t = TrainConfig::default().tau_plus)]
    tau_plus: f64,
    /// Hard-negative concentration β.
    #[arg(long, default_value_t = TrainConfig::default().beta)]
    beta: f64,
    /// Norm bound μ of the spectral loss (default 4 with --objective images, where it measured
    /// best; 1 with captions).
    #[arg(long)]
    spectral_mu: Option<f64>,
    #[command(flatten)]
    #[serde(flatten)]
    head: Head,
    /// Class labels (`filepath<TAB>label`, paths relative to the file) for the oracle loss and
    /// the linear probe printed after an image-only run.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Optimiser steps (default 400; with no --data the bundled run's: 1000 for image–text,
    /// 300 for images, a few minutes on two cores).
    #[arg(long)]
    steps: Option<usize>,
    /// Pairs per step (default 128; with no --data 256 for image–text, 128 for images).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate (default 1e-3).
    #[arg(long)]
    lr: Option<f64>,
    /// Linear warmup steps (default: a tenth of the steps).
    #[arg(long)]
    warmup: Option<usize>,
    /// Schedule after warmup.
    #[arg(long, value_enum, default_value_t = TrainConfig::default().schedule)]
    #[serde(with = "variant_name")]
    schedule: ScheduleKind,
    /// Decoupled weight decay (not applied to biases, gains, embeddings or the temperature).
    #[arg(long, default_value_t = AdamWConfig::default().weight_decay)]
    wd: f64,
    /// AdamW β1.
    #[arg(long, default_value_t = AdamWConfig::default().beta1)]
    beta1: f64,
    /// AdamW β2.
    #[arg(long, default_value_t = AdamWConfig::default().beta2)]
    beta2: f64,
    /// AdamW ε.
    #[arg(long, default_value_t = AdamWConfig::default().eps)]
    eps: f64,
    /// Clip the global gradient norm.
    #[arg(long)]
    grad_clip_norm: Option<f64>,
    /// Forward passes per step; the whole batch stays the negatives.
    #[arg(long, default_value_t = TrainConfig::default().accum_steps)]
    accum_steps: usize,
    /// Seed: a CPU run with the same seed repeats to the bit.
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// Device.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceArg,
    /// Arithmetic: f32, or bf16 mixed precision (f32 weights and optimiser state).
    #[arg(long, value_enum, default_value_t = TrainConfig::default().precision)]
    #[serde(with = "variant_name")]
    precision: Precision,
    /// Run directory for checkpoints, metrics and the plot.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = TrainConfig::default().save_every)]
    save_every: usize,
    /// Keep the newest K checkpoints.
    #[arg(long, default_value_t = TrainConfig::default().keep_last)]
    keep_last: usize,
    /// Log every N steps.
    #[arg(long, default_value_t = TrainConfig::default().log_every)]
    log_every: usize,
    /// Validate every N steps (0: only at the end; default 250 with the bundled sample).
    #[arg(long)]
    val_every: Option<usize>,
    /// Continue the run in this directory from its newest checkpoint (other options are
    /// taken from the run).
    #[arg(long)]
    #[serde(skip)]
    resume: Option<PathBuf>,
    /// Random-resized-crop area range, MIN,MAX (default 0.7,1; 0.3,1 for images, 0.5,1 on
    /// the bundled digits).
    #[arg(long, value_delimiter = ',')]
    aug_scale: Vec<f32>,
    /// Horizontal-flip probability (default off: captions say left and right, digits and
    /// emoji are not mirror-symmetric).
    #[arg(long)]
    hflip: Option<f32>,
    /// Colour-jitter strength (default 0; 0.4 for images, 0.3 on the bundled emoji).
    #[arg(long)]
    color_jitter: Option<f32>,
    /// Greyscale probability (default 0; 0.2 for images and on the bundled emoji).
    #[arg(long)]
    grayscale: Option<f32>,
    /// Gaussian-blur probability (default 0; 0.5 for images and on the bundled emoji).
    #[arg(long)]
    blur: Option<f32>,
    /// Maximum rotation in degrees (default 0; 10 for images).
    #[arg(long)]
    rotation: Option<f32>,
    /// Probability of training on a random run of a caption's words instead of the whole
    /// caption (default 0; 0.5 with the bundled sample): searches are often shorter than
    /// captions.
    #[arg(long)]
    caption_span: Option<f32>,
    /// Example text→image searches printed at the end.
    #[arg(long, default_value_t = 6)]
    examples: usize,
    /// Keep decoded images in memory between epochs: auto (while they fit --cache-mem, then
    /// stream), on (all of them), off (decode every time).
    #[arg(long, value_enum, default_value_t = CacheMode::default())]
    cache: CacheMode,
    /// Memory budget of the decoded-image cache with --cache auto, e.g. 4G or 512M
    /// (default: a quarter of physical memory).
    #[arg(long, value_parser = clip_data::parse_bytes)]
    cache_mem: Option<u64>,
    /// Samples per epoch (open_clip's name): fewer than the data holds draws a fresh subset
    /// each epoch, more repeats samples. Default: every sample once.
    #[arg(long)]
    train_num_samples: Option<usize>,
    /// Shuffle-buffer size for webdataset shards (shards are shuffled per epoch and read
    /// in order; samples are drawn at random from a window this big).
    #[arg(long, default_value_t = OrderConfig::default().shuffle_buffer)]
    shuffle_buffer: usize,
}

impl Default for TrainArgs {
    /// The command line's defaults, so run.json and the flags share them.
    fn default() -> Self {
        use clap::{Args, FromArgMatches};
        let cmd = Self::augment_args(clap::Command::new("train"));
        Self::from_arg_matches(&cmd.get_matches_from(["train"])).expect("the defaults parse")
    }
}

/// run.json spells the option enums by their Rust variant names ("ImageText", "NtXent"), as
/// it did when the command line had enums of its own.
mod variant_name {
    use std::fmt::Debug;

    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Debug, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        format!("{v:?}").serialize(s)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: Debug + clap::ValueEnum,
        D: Deserializer<'de>,
    {
        parse(&String::deserialize(d)?)
    }

    fn parse<T: Debug + clap::ValueEnum, E: Error>(name: &str) -> Result<T, E> {
        let found = T::value_variants()
            .iter()
            .find(|v| format!("{v:?}") == name);
        found
            .cloned()
            .ok_or_else(|| E::custom(format!("unknown value {name:?}")))
    }

    /// The same for an optional value (`null` when absent).
    pub mod option {
        use super::*;

        pub fn serialize<T: Debug, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
            v.as_ref().map(|v| format!("{v:?}")).serialize(s)
        }

        pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
        where
            T: Debug + clap::ValueEnum,
            D: Deserializer<'de>,
        {
            Option::<String>::deserialize(d)?
                .map(|name| parse(&name))
                .transpose()
        }
    }
}

const RUN_FILE: &str = "run.json";

struct Display {
    bar: ProgressBar,
    val: Option<ValSet>,
    last: Option<Scored>,
    /// Embeds the example queries at each validation.
    tok: ClipTokenizer,
    /// [`EXAMPLE_QUERIES`] as the last validated model embeds them, `[queries, dim]`.
    queries: Vec<f32>,
}

impl Observer for Display {
    fn on_warning(&mut self, message: &str) {
        self.bar.suspend(|| eprintln!("warning: {message}"));
    }

    fn on_step(&mut self, s: &StepStats) {
        self.bar.set_position(s.step as u64);
        let skipped = if s.skipped > 0 {
            format!(" skipped {}", s.skipped)
        } else {
            String::new()
        };
        self.bar.set_message(format!(
            "loss {:.4} lr {:.2e} scale {:.1} {:.0} samples/s data-wait {:.0}%{skipped}",
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
            "step {}/{} loss {:.4} lr {:.2e} scale {:.1} {:.0} samples/s{skipped}",
            s.step, s.total, s.loss, s.lr, s.logit_scale, s.samples_per_s
        );
    }

    fn validate(
        &mut self,
        model: &ClipModel,
        _step: usize,
    ) -> clip_train::Result<Option<BTreeMap<String, f64>>> {
        let Some(val) = &mut self.val else {
            return Ok(None);
        };
        let scored = val
            .score(model, 256)
            .map_err(|e| clip_train::TrainError::State(format!("validation failed: {e:#}")))?;
        let m: BTreeMap<String, f64> = scored.metrics.named().into_iter().collect();
        self.last = Some(scored);
        let failed = |e: String| clip_train::TrainError::State(format!("validation failed: {e}"));
        let ids = self
            .tok
            .encode_batch(&EXAMPLE_QUERIES)
            .map_err(|e| failed(e.to_string()))?;
        let embeds = model
            .encode_text(&ids)
            .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
            .map_err(|e| failed(e.to_string()))?;
        self.queries = embeds;
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
    let device = a.device.device_for_rank()?;
    let comm = join_ranks(&device)?;
    let (rank, world) = (comm.rank(), comm.world());
    match run_on(a, resume, &device, comm.as_ref()) {
        // The others may be waiting in a collective: end the whole job, naming this rank.
        Err(e) if world > 1 => {
            eprintln!("error: rank {rank} of {world} failed: {e:#}");
            comm.abort(1)
        }
        r => r,
    }
}

/// The ranks of this training job: MPI's world when started by an MPI launcher (`mpirun`,
/// `srun`), else this process alone.
fn join_ranks(device: &Device) -> Result<Box<dyn Collective>> {
    let _ = device; // only NCCL needs it
    if !clip_train::dist::launched_by_mpi() {
        return Ok(Box::new(Single));
    }
    #[cfg(feature = "mpi")]
    {
        let mpi = clip_train::dist::Mpi::init()?;
        // On GPUs the tensors go through NCCL (rendezvous over MPI); on CPUs through MPI.
        #[cfg(feature = "nccl")]
        if device.is_cuda() && mpi.world() > 1 {
            return Ok(Box::new(clip_train::dist::Nccl::init(mpi, device)?));
        }
        Ok(Box::new(mpi))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let size = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
            .iter()
            .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok());
        if size.is_some_and(|n| n > 1) {
            bail!(
                "started by an MPI launcher, but this clip binary was built without MPI; \
                 rebuild with `--features mpi` to train across ranks (otherwise every rank \
                 would train alone and write the same run directory)"
            );
        }
        Ok(Box::new(Single))
    }
}

/// The run of `a` (already read from `run.json` when resuming from `resume`) as one of the
/// ranks of `comm`.
fn run_on(
    mut a: TrainArgs,
    resume: Option<PathBuf>,
    device: &Device,
    comm: &dyn Collective,
) -> Result<()> {
    let lead = comm.rank() == 0;
    let images_only = a.objective == Objective::Images;
    let bundled = a.data.is_empty();
    if bundled {
        let (train, val, labels) = training::bundled(a.objective);
        a.data = vec![train];
        if a.val_data.is_empty() {
            a.val_data.extend(val);
        }
        a.labels = a.labels.or(labels);
        if a.init.is_none() {
            a.preset
                .get_or_insert_with(|| training::demo(a.objective).preset.into());
        }
    }
    if images_only && !a.val_data.is_empty() {
        bail!(
            "--val-data measures image–text retrieval; with --objective images use --labels \
             for a linear probe (or `clip probe` afterwards)"
        );
    }
    let d = training::defaults(a.objective, a.loss, bundled);
    let steps = a.steps.unwrap_or(d.steps);
    let train = TrainConfig {
        steps,
        batch_size: a.batch_size.unwrap_or(d.batch_size),
        lr: a.lr.unwrap_or(d.lr),
        warmup: a.warmup.unwrap_or(steps / 10),
        schedule: a.schedule,
        optimizer: AdamWConfig {
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.eps,
            weight_decay: a.wd,
        },
        grad_clip_norm: a.grad_clip_norm,
        accum_steps: a.accum_steps,
        seed: a.seed,

        temperature: a.temperature,
        tau_plus: a.tau_plus,
        beta: a.beta,
        spectral_mu: a.spectral_mu.unwrap_or(d.spectral_mu),
        precision: a.precision,
        lock_image: a.lock_image,
        lock_text: a.lock_text,
        save_every: a.save_every,
        keep_last: a.keep_last,
        log_every: a.log_every,
        val_every: a.val_every.unwrap_or(d.val_every),
        augment: augment_config(&a, d.augment)?,
        order: OrderConfig {
            epoch_samples: a.train_num_samples,
            shuffle_buffer: a.shuffle_buffer,
        },
        cache: CacheConfig {
            mode: a.cache,
            mem_bytes: a.cache_mem,
        },
        ..d
    };
    train.validate()?;

    // Model: a preset from scratch, or a checkpoint to fine-tune.
    let mut start = match &a.init {
        Some(spec) => {
            let start = Start::checkpoint(spec, device)
                .with_context(|| format!("cannot load --init {spec}"))?;
            a.head.check(&start.config)?;
            start
        }
        None => {
            let name = a.preset.get_or_insert_with(|| "tiny".into());
            let preset = clip::preset(name).context("--preset")?;
            Start::fresh_for(preset, &a.head, &train)?
        }
    };
    start.config.image_only = images_only;
    let setup = start.into_setup(&a.out, train)?;

    // Lists samples only (file names, manifest rows, tar headers): images are decoded by
    // the loader while the model trains.
    let scan = |paths: &[PathBuf], what: &str| -> Result<SampleSet> {
        let sources = a.csv.sources(paths)?;
        let t0 = std::time::Instant::now();
        let set = if images_only {
            SampleSet::scan_images(&sources)?
        } else {
            SampleSet::scan(&sources)?
        };
        if !lead {
            return Ok(set);
        }
        eprintln!(
            "{what}: {} {} (listed from {} source{} in {:.1} s)",
            set.len(),
            if images_only {
                "images"
            } else {
                "image–caption pairs"
            },
            sources.len(),
            if sources.len() == 1 { "" } else { "s" },
            t0.elapsed().as_secs_f64()
        );
        common::report_skips(set.scan_skips());
        Ok(set)
    };
    let data = scan(&a.data, "training data")?;
    let labels = match &a.labels {
        Some(p) => {
            let table = LabelTable::read(p, "filepath", "label")?;
            Some(table.lookup((0..data.len()).map(|i| data.name(i)))?)
        }
        None => None,
    };
    let val = if a.val_data.is_empty() {
        None
    } else {
        // Validation pixels stay in memory between validations while they fit the cache
        // budget (the bundled Twemoji set: 47 MB).
        Some(ValSet::new(
            scan(&a.val_data, "validation data")?,
            &setup.preprocess,
            &setup.tokenizer,
            setup.train.cache.budget(),
        ))
    };
    if resume.is_none() && lead {
        let p = a.out.join(RUN_FILE);
        std::fs::write(&p, serde_json::to_string_pretty(&a)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }

    let bar = ProgressBar::new(setup.train.steps as u64);
    if !lead {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{bar:25} {pos}/{len} {msg} ETA {eta}")?.progress_chars("=> "),
    );
    let mut display = Display {
        bar,
        val,
        last: None,
        tok: setup.tokenizer.clone(),
        queries: Vec::new(),
    };
    let setup = RunSetup {
        resume: resume.is_some(),
        labels: labels.clone(),
        ..setup
    };
    let data = Arc::new(data);
    let summary = clip_train::train_on(setup, data.clone(), device, &mut display, comm)?;
    display.bar.finish_and_clear();
    if !lead {
        return Ok(());
    }

    println!(
        "trained {} steps at {:.1} samples/s (waiting for data {:.1}% of the time)",
        summary.steps_run,
        summary.samples_per_s,
        100.0 * summary.data_wait
    );
    if summary.skipped > 0 {
        println!(
            "skipped {} samples (each with its reason in {})",
            summary.skipped,
            a.out.join("skipped.tsv").display()
        );
    }
    if summary.world > 1 {
        println!(
            "{} ranks: {:.1} s in collectives ({:.1}% of step time), {:.2} MB sent per step \
             and rank",
            summary.world,
            summary.comm_s,
            100.0 * summary.comm_s / summary.step_time_s.max(f64::MIN_POSITIVE),
            summary.comm_bytes_per_step / 1e6
        );
    }
    println!("model: {}", summary.final_dir.display());
    println!(
        "metrics: {}  plot: {}",
        a.out.join("metrics.jsonl").display(),
        a.out.join("metrics.svg").display()
    );
    if let (Some(m), Some(scored)) = (&summary.val, &display.last) {
        // The bundled held-out style, unless the user named other validation data.
        let held_out = training::bundled(a.objective)
            .1
            .filter(|v| a.val_data == [v.clone()]);
        print_validation(m, scored, held_out.as_ref().filter(|_| bundled));
        print_examples(scored, &display.queries, a.examples);
    }
    if let (true, Some(file)) = (images_only, &a.labels) {
        print_probe(&summary.final_dir, file, a.seed, a.device)?;
    }
    if !images_only {
        print_next_steps(&summary.final_dir, &a, display.last.as_ref());
    }
    Ok(())
}

/// What a model that ranks at random scores on each metric of `m` (open_clip's names) for
/// validation captions `groups`: text→image queries are the distinct captions, any of whose
/// images counts, image→text queries the images, each with one right caption.
fn chance_levels(groups: &CaptionGroups) -> BTreeMap<String, f64> {
    let (n, m) = (groups.image_caption.len(), groups.captions.len());
    let mut per_caption = vec![0usize; m];
    for &c in &groups.image_caption {
        per_caption[c] += 1;
    }
    // P(one of the g right images among the top k of n) = 1 − C(n−g, k) / C(n, k).
    let hit_within = |g: usize, k: usize| {
        1.0 - (0..k.min(n)).fold(1.0, |p, j| {
            p * (n.saturating_sub(g + j)) as f64 / (n - j) as f64
        })
    };
    let mean = |f: &dyn Fn(usize) -> f64| {
        let used: Vec<usize> = per_caption.iter().copied().filter(|&g| g > 0).collect();
        used.iter().map(|&g| f(g)).sum::<f64>() / used.len().max(1) as f64
    };
    let mut out = BTreeMap::new();
    for k in [1, 5, 10] {
        out.insert(format!("image_to_text_R@{k}"), k.min(m) as f64 / m as f64);
        out.insert(format!("text_to_image_R@{k}"), mean(&|g| hit_within(g, k)));
    }
    // The best of g random ranks among n lies at (n + 1) / (g + 1) on average.
    let best_rank = |g: usize| (n + 1) as f64 / (g + 1) as f64;
    out.insert("image_to_text_mean_rank".into(), (m + 1) as f64 / 2.0);
    out.insert("image_to_text_median_rank".into(), m.div_ceil(2) as f64);
    out.insert("text_to_image_mean_rank".into(), mean(&best_rank));
    out.insert("text_to_image_median_rank".into(), mean(&best_rank).floor());
    out
}

/// The validation metrics with the chance level beside each, and a line saying what was
/// measured; `bundled`: the bundled held-out style, whose measured table is in the README.
fn print_validation(m: &BTreeMap<String, f64>, scored: &Scored, bundled: Option<&PathBuf>) {
    let (n, captions) = (scored.names.len(), scored.groups.captions.len());
    println!("\nvalidation ({n} images, {captions} distinct captions):");
    println!("  {:<28} {:>9} {:>9}", "metric", "value", "chance");
    let chance = chance_levels(&scored.groups);
    for (k, v) in m {
        match chance.get(k) {
            Some(c) => println!("  {k:<28} {v:>9.4} {c:>9.4}"),
            None => println!("  {k:<28} {v:>9.4}"),
        }
    }
    let (r10, c10) = (
        scored.metrics.text_to_image.r_at_10,
        chance["text_to_image_R@10"],
    );
    let what = match bundled {
        Some(dir) => format!(
            "{n} images of {}, a drawing style the model never saw in training",
            shown(dir).display()
        ),
        None => format!("{n} validation images"),
    };
    println!(
        "measured: text→image search over {what}; the right image is in the top 10 for {:.0}% \
         of the {captions} captions ({:.0}× the {:.2}% of a random ranking)",
        100.0 * r10,
        r10 / c10.max(f64::MIN_POSITIVE),
        100.0 * c10
    );
    if bundled.is_some() {
        println!("{MORE_TRAINING}");
    }
}

/// What longer runs of the bundled sample reach (README.md, "What the first command does").
const MORE_TRAINING: &str = "what fewer or more steps buy (steps, minutes, R@1, R@10): the \
    table in README.md, \"What the first command does\"";

/// The commands to try next, ready to paste: index and search the validation images (or the
/// training data) with the trained model, serve them, fine-tune on another folder.
fn print_next_steps(model: &Path, a: &TrainArgs, scored: Option<&Scored>) {
    let images = a
        .val_data
        .iter()
        .chain(&a.data)
        .find(|p| p.is_dir())
        .map_or_else(|| "YOUR_IMAGE_FOLDER".to_string(), |p| shell_path(p));
    let query = scored
        .and_then(|s| {
            let c = &s.groups.captions;
            EXAMPLE_QUERIES
                .iter()
                .find(|q| c.iter().any(|x| x == *q))
                .map(|q| q.to_string())
                .or_else(|| c.first().cloned())
        })
        .unwrap_or_else(|| "a red apple".into());
    let clip = program();
    let (model, index) = (shell_path(model), shell_path(&a.out.join("index")));
    println!("\nnext steps:");
    println!("  # search the images with the model just trained");
    println!("  {clip} index build --model {model} --images {images} --out {index}");
    println!("  {clip} search --index {index} {}", sh_quote(&query));
    println!("  # the same in a browser (a search page at the printed address)");
    println!("  {clip} serve --index {index}");
    println!("  # fine-tune this model on your own pairs (a folder of x.png + x.txt captions)");
    println!(
        "  {clip} train --init {model} --data YOUR_FOLDER --lr 1e-4 --out {}",
        shell_path(&a.out.with_file_name("fine-tuned"))
    );
}

/// This program as the user can run it again (`target/release/clip` after `cargo run`).
fn program() -> String {
    std::env::current_exe().map_or_else(|_| "clip".into(), |exe| shell_path(&exe))
}

/// `p` for a POSIX shell in the working directory: relative to it when below it, quoted
/// where needed.
fn shell_path(p: &Path) -> String {
    sh_quote(&shown(p).to_string_lossy())
}

/// `p` relative to the working directory when it lies below it.
fn shown(p: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| p.to_path_buf())
}

/// `s` as one POSIX shell word: bare when it has only safe characters, else single-quoted.
fn sh_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The user's augmentations over the objective's `defaults`.
fn augment_config(a: &TrainArgs, defaults: AugmentConfig) -> Result<AugmentConfig> {
    let scale = match a.aug_scale.as_slice() {
        [] => defaults.scale,
        &[lo, hi] => [lo, hi],
        other => bail!("--aug-scale takes MIN,MAX, got {other:?}"),
    };
    Ok(AugmentConfig {
        scale,
        hflip: a.hflip.unwrap_or(defaults.hflip),
        color_jitter: a.color_jitter.unwrap_or(defaults.color_jitter),
        grayscale: a.grayscale.unwrap_or(defaults.grayscale),
        blur: a.blur.unwrap_or(defaults.blur),
        rotation: a.rotation.unwrap_or(defaults.rotation),
        caption_span: a.caption_span.unwrap_or(defaults.caption_span),
        ..defaults
    })
}

/// The example queries shown after a run, when the validation captions have them (chosen
/// before any training and given no special treatment in it).
const EXAMPLE_QUERIES: [&str; 6] = [
    "red apple",
    "dog face",
    "rocket",
    "pizza",
    "smiling face with sunglasses",
    "france flag",
];

/// `n` example text→image searches over the validation images: the top 3, each with its own
/// caption, and the rank at which the right image was found. The queries are
/// [`EXAMPLE_QUERIES`] (`query_embeds`) that some validation caption equals or contains as
/// whole words ("pizza": "slice of pizza"), then the first captions.
fn print_examples(scored: &Scored, query_embeds: &[f32], n: usize) {
    if n == 0 {
        return;
    }
    let (captions, d) = (&scored.groups.captions, scored.dim);
    let mut examples: Vec<(String, &[f32], Vec<usize>)> = Vec::new();
    for (q, e) in EXAMPLE_QUERIES.iter().zip(query_embeds.chunks_exact(d)) {
        let exact: Vec<usize> = (0..captions.len()).filter(|&c| captions[c] == *q).collect();
        let right = if exact.is_empty() {
            (0..captions.len())
                .filter(|&c| has_words(&captions[c], q))
                .collect()
        } else {
            exact
        };
        if !right.is_empty() {
            examples.push((q.to_string(), e, right));
        }
    }
    let shown: Vec<usize> = examples.iter().flat_map(|x| x.2.clone()).collect();
    for (c, e) in scored.text_embeds.chunks_exact(d).enumerate() {
        if examples.len() >= n {
            break;
        }
        if !shown.contains(&c) {
            examples.push((captions[c].clone(), e, vec![c]));
        }
    }
    let images = scored.names.len();
    println!(
        "\nexample text→image searches (top 3 of the {images} validation images, ✓ the right \
         one):"
    );
    for (query, embed, right) in examples.iter().take(n) {
        let ranked = rank_images(scored, embed);
        let is_right = |i: usize| right.contains(&scored.groups.image_caption[i]);
        let rank = ranked
            .iter()
            .position(|&(i, _)| is_right(i))
            .map_or(0, |r| r + 1);
        println!("  \"{query}\": the right image at rank {rank} of {images}");
        for (r, &(i, score)) in ranked.iter().take(3).enumerate() {
            let hit = if is_right(i) { "  ✓" } else { "" };
            let name = Path::new(&scored.names[i])
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let caption = &captions[scored.groups.image_caption[i]];
            println!("    {}. {name:<22} {caption:<34} {score:.3}{hit}", r + 1);
        }
    }
}

/// Whether `caption` contains the words of `query` in a row ("slice of pizza" has "pizza").
fn has_words(caption: &str, query: &str) -> bool {
    let words: Vec<&str> = caption
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let q: Vec<&str> = query.split_whitespace().collect();
    !q.is_empty() && words.windows(q.len()).any(|w| w == q.as_slice())
}

/// Every validation image by cosine similarity to `query`, best first (ties in image order).
fn rank_images(scored: &Scored, query: &[f32]) -> Vec<(usize, f32)> {
    let unit = |v: &[f32]| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter().map(|x| x / n).collect::<Vec<f32>>()
    };
    let q = unit(query);
    let mut ranked: Vec<(usize, f32)> = scored
        .image_embeds
        .chunks_exact(scored.dim)
        .map(|row| unit(row).iter().zip(&q).map(|(a, b)| a * b).sum())
        .enumerate()
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked
}

/// After an image-only run with labels: how linearly separable the frozen embeddings are with
/// a few labels per class, next to the same probe on raw pixels.
fn print_probe(model_dir: &Path, labels_file: &Path, seed: u64, device: DeviceArg) -> Result<()> {
    use linear_probe::{run_probe, Labels, Method, ProbeConfig};
    let table = LabelTable::read(labels_file, "filepath", "label")?;
    let (files, names) = super::probe::select_images(&table, &[])?;
    let labels = Labels::from_names(&names);
    let smallest = labels.counts().into_iter().min().unwrap_or(0);
    if labels.n_classes() < 2 || smallest < 2 {
        return Ok(());
    }
    let n = 10.min(smallest - 1);
    let model = model_dir.display().to_string();
    println!(
        "\nlinear probe ({} images, {} classes, ridge on {n} labelled images per class, \
         accuracy on the rest; `clip probe` for more):",
        labels.len(),
        labels.n_classes()
    );
    let read = |which| super::probe::embedding_features(&model, &files, 256, device, Some(which));
    for (what, features) in [
        ("pooled features", read(FeaturesArg::Pooled)?),
        ("image embeddings", read(FeaturesArg::Embeds)?),
        ("raw pixels", super::probe::pixel_features(&files, None)?),
    ] {
        let cfg = ProbeConfig {
            method: Method::Ridge,
            n_per_class: n,
            seed,
            lambda: None,
        };
        let r = run_probe(&features.matrix, &labels, &cfg)?;
        println!("  {what:<17} accuracy {:.4}", r.accuracy);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chance levels against every ordering of five images (three captions, one of them
    /// on three images): the mean over all 120 rankings of each metric, counted out.
    #[test]
    fn chance_levels_are_the_mean_over_every_random_ranking() {
        let per_image = ["a", "b", "a", "c", "a"].map(String::from);
        let groups = retrieval::group_captions(&per_image);
        let chance = chance_levels(&groups);
        let (n, m) = (5usize, 3usize);
        // Every permutation of the images (text→image) by Heap's algorithm.
        let mut perms = Vec::new();
        let mut p: Vec<usize> = (0..n).collect();
        let mut c = vec![0usize; n];
        perms.push(p.clone());
        let mut i = 0;
        while i < n {
            if c[i] < i {
                p.swap(if i % 2 == 0 { 0 } else { c[i] }, i);
                perms.push(p.clone());
                c[i] += 1;
                i = 0;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
        assert_eq!(perms.len(), 120);
        let (mut within, mut rank_sum) = ([0.0f64; 3], 0.0);
        for order in &perms {
            for cap in 0..m {
                // 1-based rank of the first image with caption `cap`.
                let best = order
                    .iter()
                    .position(|&img| groups.image_caption[img] == cap)
                    .unwrap()
                    + 1;
                for (w, k) in within.iter_mut().zip([1, 5, 10]) {
                    *w += f64::from(u8::from(best <= k));
                }
                rank_sum += best as f64;
            }
        }
        let runs = (perms.len() * m) as f64;
        for (w, k) in within.iter().zip([1, 5, 10]) {
            let got = chance[&format!("text_to_image_R@{k}")];
            assert!(
                (got - w / runs).abs() < 1e-12,
                "R@{k}: {got} vs {}",
                w / runs
            );
        }
        let mean_rank = chance["text_to_image_mean_rank"];
        assert!((mean_rank - rank_sum / runs).abs() < 1e-12, "{mean_rank}");
        // Image→text: one right caption among three, uniformly placed.
        assert_eq!(chance["image_to_text_R@1"], 1.0 / 3.0);
        assert_eq!(chance["image_to_text_R@5"], 1.0);
        assert_eq!(chance["image_to_text_mean_rank"], 2.0);
    }

    #[test]
    fn printed_words_are_quoted_only_where_a_shell_needs_it() {
        assert_eq!(sh_quote("runs/latest/final"), "runs/latest/final");
        assert_eq!(sh_quote("red apple"), "'red apple'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
