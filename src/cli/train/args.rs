//! `clip train`'s flags, and the one function that turns them into a [`RunConfig`].

use std::path::PathBuf;

use anyhow::{bail, Result};
use clip::training::{
    default_warmup, parse_bytes, AdamWConfig, CacheMode, Head, LossKind, Objective, OrderConfig,
    Precision, RunConfig, ScheduleKind, TrainConfig, DEFAULT_OUT,
};
use clip::validation::EXAMPLE_QUERIES;
use clip::DeviceKind;

use crate::cli::common::CsvArgs;

/// The options of `clip train`, turned into one [`RunConfig`] by [`TrainArgs::config`]. A
/// default is the library's: quoted with `default_value_t` where it is fixed, or an `Option`
/// that [`RunConfig::new`] fills where it depends on the objective or the bundled sample.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Training data: a folder (image + same-stem .txt), a .csv/.tsv manifest, a .jsonl file,
    /// a webdataset .tar shard or a folder of them (img2dataset's output), or a brace pattern
    /// or glob ('shards/{00000..00999}.tar', 'shards/*.tar'); repeat to combine. Nothing is
    /// decoded up front. Remote shards are streamed: 'pipe:COMMAND' (its stdout is a shard),
    /// http(s)://, s3://, gs://, az:// URLs, with brace patterns; '::' joins parts as in
    /// open_clip. Default: the bundled Noto emoji.
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Validation data (same forms). Default with the bundled data: the Twemoji style.
    #[arg(long)]
    val_data: Vec<PathBuf>,
    #[command(flatten)]
    csv: CsvArgs,
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
    objective: Objective,
    /// Loss (default: clip for image-text, nt-xent for images).
    #[arg(long, value_enum)]
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
    head: Head,
    /// Class labels (`filepath<TAB>label`, paths relative to the file) for the oracle loss and
    /// the linear probe printed after an image-only run.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Optimiser steps (default 400; with no --data the bundled run's: 1500 for image–text,
    /// 300 for images, a few minutes on two cores).
    #[arg(long)]
    steps: Option<usize>,
    /// Pairs per step (default 128; with no --data 256 for image–text, 128 for images).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate (default 5e-4 for image–text pairs, 1e-3 for --objective images
    /// and for the bundled runs; image–text runs before December 2026 used 1e-3).
    #[arg(long)]
    lr: Option<f64>,
    /// Linear warmup steps (default: a tenth of the steps).
    #[arg(long)]
    warmup: Option<usize>,
    /// Schedule after warmup.
    #[arg(long, value_enum, default_value_t = TrainConfig::default().schedule)]
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
    device: DeviceKind,
    /// Arithmetic: f32, or bf16 mixed precision (f32 weights and optimiser state).
    #[arg(long, value_enum, default_value_t = TrainConfig::default().precision)]
    precision: Precision,
    /// Run directory for checkpoints, metrics and the plot.
    #[arg(long, default_value = DEFAULT_OUT)]
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
    pub resume: Option<PathBuf>,
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
    #[arg(long, default_value_t = EXAMPLE_QUERIES.len())]
    examples: usize,
    /// Keep decoded images in memory between epochs: auto (while they fit --cache-mem, then
    /// stream), on (all of them), off (decode every time).
    #[arg(long, value_enum, default_value_t = TrainConfig::default().cache.mode)]
    cache: CacheMode,
    /// Memory budget of the decoded-image cache with --cache auto, e.g. 4G or 512M
    /// (default: a quarter of physical memory).
    #[arg(long, value_parser = parse_bytes)]
    cache_mem: Option<u64>,
    /// Samples per epoch (open_clip's name): fewer than the data holds draws a fresh subset
    /// each epoch, more repeats samples. Default: every sample once; for streamed shards, the
    /// sum their sizes.json / _info.json / *_stats.json give (all ranks together).
    #[arg(long)]
    train_num_samples: Option<usize>,
    /// Shuffle-buffer size for webdataset shards (shards are shuffled per epoch and read
    /// in order; samples are drawn at random from a window this big).
    #[arg(long, default_value_t = OrderConfig::default().shuffle_buffer)]
    shuffle_buffer: usize,
    /// Draw streamed shards with replacement (open_clip's name), each draw a function of
    /// the seed, stream and position; streams local shards too. Needs an epoch size
    /// (--train-num-samples or the shards' sizes.json / _info.json / *_stats.json).
    #[arg(long)]
    dataset_resampled: bool,
    /// Streamed shards read at once, per stream (default: the cores, 2 to 8).
    #[arg(long, default_value_t = OrderConfig::default().workers)]
    data_workers: usize,
    /// Split streamed shards into this many streams, all ranks together (default: one per
    /// rank). A step reads the same samples on any number of ranks that divides it, so a run
    /// resumes exactly on fewer or more ranks; the global batch must split over the streams.
    #[arg(long)]
    data_streams: Option<usize>,
    /// S3-compatible endpoint for s3:// data (e.g. http://127.0.0.1:9000 for a local MinIO);
    /// default: AWS_ENDPOINT_URL or the profile's.
    #[arg(long)]
    data_endpoint: Option<String>,
}

impl TrainArgs {
    /// The run these flags ask for: the library's defaults for the objective (and for the
    /// bundled sample when there is no `--data`), then every flag given over them.
    pub fn config(self) -> Result<RunConfig> {
        let a = self;
        let mut c = RunConfig::new(a.objective, a.loss, a.data);
        if !a.val_data.is_empty() {
            c.val_data = a.val_data;
        }
        c.csv = a.csv.columns();
        c.labels = a.labels.or(c.labels);
        c.preset = a.preset.unwrap_or(c.preset);
        c.init = a.init;
        c.head = a.head;
        (c.device, c.examples, c.out) = (a.device, a.examples, a.out);
        let t = &mut c.train;
        t.steps = a.steps.unwrap_or(t.steps);
        t.batch_size = a.batch_size.unwrap_or(t.batch_size);
        t.lr = a.lr.unwrap_or(t.lr);
        t.warmup = a.warmup.unwrap_or(default_warmup(t.steps));
        t.schedule = a.schedule;
        t.optimizer = AdamWConfig {
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.eps,
            weight_decay: a.wd,
        };
        t.grad_clip_norm = a.grad_clip_norm;
        (t.accum_steps, t.seed, t.precision) = (a.accum_steps, a.seed, a.precision);
        (t.temperature, t.tau_plus, t.beta) = (a.temperature, a.tau_plus, a.beta);
        t.spectral_mu = a.spectral_mu.unwrap_or(t.spectral_mu);
        (t.lock_image, t.lock_text) = (a.lock_image, a.lock_text);
        (t.save_every, t.keep_last, t.log_every) = (a.save_every, a.keep_last, a.log_every);
        t.val_every = a.val_every.unwrap_or(t.val_every);
        let g = &mut t.augment;
        g.scale = match a.aug_scale.as_slice() {
            [] => g.scale,
            &[lo, hi] => [lo, hi],
            other => bail!("--aug-scale takes MIN,MAX, got {other:?}"),
        };
        g.hflip = a.hflip.unwrap_or(g.hflip);
        g.color_jitter = a.color_jitter.unwrap_or(g.color_jitter);
        g.grayscale = a.grayscale.unwrap_or(g.grayscale);
        g.blur = a.blur.unwrap_or(g.blur);
        g.rotation = a.rotation.unwrap_or(g.rotation);
        g.caption_span = a.caption_span.unwrap_or(g.caption_span);
        t.order = OrderConfig {
            epoch_samples: a.train_num_samples,
            shuffle_buffer: a.shuffle_buffer,
            resampled: a.dataset_resampled,
            workers: a.data_workers,
            streams: a.data_streams,
        };
        (t.cache.mode, t.cache.mem_bytes) = (a.cache, a.cache_mem);
        c.data_endpoint = a.data_endpoint;
        Ok(c)
    }
}
