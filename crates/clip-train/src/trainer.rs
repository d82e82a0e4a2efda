//! The training loop: batches in, one step each, logs, validation and checkpoints out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use clip_data::{Augmenter, DecodedCache, SampleSet};
use clip_model::{ClipConfig, ClipModel, Preprocess};
use clip_nn::{TensorMap, VarStore};
use serde::Serialize;
use text_encoder::ClipTokenizer;

use crate::error::io;
use crate::loader::{Loader, LoaderMode, LoaderSpec};
use crate::optim::learning_rate;
use crate::run_dir::{self, Metrics, SkipLog};
use crate::step::{model_over, Stepper};
use crate::{LossKind, Objective, Result, TrainConfig, TrainError};

/// One logged step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepStats {
    /// Step just completed (1-based count of updates).
    pub step: usize,
    /// Total steps of the run.
    pub total: usize,
    /// Mean loss since the last log.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// exp(logit_scale), the inverse temperature.
    pub logit_scale: f64,
    /// Training samples per second since the last log.
    pub samples_per_s: f64,
    /// Fraction of step time spent waiting for data.
    pub data_wait: f64,
    /// Seconds since the run (or resume) started.
    pub elapsed_s: f64,
    /// Distinct samples skipped so far (unpaired, unreadable, bad captions).
    pub skipped: usize,
}

/// Hooks for progress display and validation.
pub trait Observer {
    /// Called after each logged step.
    fn on_step(&mut self, _stats: &StepStats) {}
    /// Validation metrics for the current model, or `None` when there is no validation data.
    fn validate(
        &mut self,
        _model: &ClipModel,
        _step: usize,
    ) -> Result<Option<BTreeMap<String, f64>>> {
        Ok(None)
    }
    /// Called after a checkpoint is safely on disk.
    fn on_checkpoint(&mut self, _dir: &Path) {}
}

/// Reports nothing and validates nothing.
impl Observer for () {}

/// What a run starts from and where it writes.
pub struct RunSetup {
    /// The run directory.
    pub out: PathBuf,
    /// Model architecture.
    pub model: ClipConfig,
    /// Image preprocessing (size, mean, std).
    pub preprocess: Preprocess,
    /// Weights to fine-tune from (None: fresh, seeded initialisation).
    pub init: Option<TensorMap>,
    /// `tokenizer.json` copied into every checkpoint.
    pub tokenizer_file: PathBuf,
    /// The tokenizer.
    pub tokenizer: ClipTokenizer,
    /// Optimisation settings.
    pub train: TrainConfig,
    /// Continue from the newest checkpoint in `out`.
    pub resume: bool,
    /// Class id per sample (needed by [`LossKind::Oracle`] only).
    pub labels: Option<Vec<usize>>,
}

/// The end of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The final model directory (`RUN_DIR/final`).
    pub final_dir: PathBuf,
    /// Last validation metrics, if any.
    pub val: Option<BTreeMap<String, f64>>,
    /// Steps run in this invocation.
    pub steps_run: usize,
    /// Mean training samples per second in this invocation.
    pub samples_per_s: f64,
    /// Mean fraction of step time spent waiting for data.
    pub data_wait: f64,
    /// Distinct samples skipped over the whole run (listed in `RUN/skipped.tsv`).
    pub skipped: usize,
}

/// Step times and losses since the last log (and since the start).
#[derive(Default)]
struct Timing {
    loss: f64,
    steps: usize,
    wait: f64,
    time: f64,
    total_wait: f64,
    total_time: f64,
}

impl Timing {
    fn add(&mut self, loss: f32, wait: f64, time: f64) {
        self.loss += loss as f64;
        self.steps += 1;
        self.wait += wait;
        self.time += time;
        self.total_wait += wait;
        self.total_time += time;
    }

    /// The window's statistics; starts the next window.
    fn log(&mut self, t: &TrainConfig, stats: StepStats) -> StepStats {
        let stats = StepStats {
            total: t.steps,
            loss: self.loss / self.steps as f64,
            samples_per_s: (self.steps * t.batch_size) as f64 / self.time,
            data_wait: self.wait / self.time,
            ..stats
        };
        (self.loss, self.steps, self.wait, self.time) = (0.0, 0, 0.0, 0.0);
        stats
    }
}

/// Checks what only the data can tell: there is some, and the oracle loss has its labels.
fn check_data(setup: &RunSetup, data: &SampleSet) -> Result<()> {
    let bad = |field, reason: String| Err(TrainError::Config { field, reason });
    let labels = setup.labels.as_ref().map(Vec::len);
    if data.is_empty() {
        bad("data", "there are no samples to train on".into())
    } else if setup.train.loss != LossKind::Oracle || labels == Some(data.len()) {
        Ok(())
    } else {
        let missing = "the oracle loss needs a class label for every image";
        let reason = labels.map(|n| format!("{n} labels for {} images", data.len()));
        bad("labels", reason.unwrap_or_else(|| missing.into()))
    }
}

/// Trains until `setup.train.steps`, checkpointing and validating along the way.
pub fn train(
    setup: RunSetup,
    data: Arc<SampleSet>,
    device: &Device,
    obs: &mut dyn Observer,
) -> Result<Summary> {
    let t = &setup.train;
    t.validate()?;
    check_data(&setup, &data)?;
    std::fs::create_dir_all(&setup.out).map_err(io("cannot create", &setup.out))?;

    // Weights, optimiser moments, step and data position from the newest checkpoint, or a
    // fresh (seeded or given) start.
    let resumed = (setup.resume)
        .then(|| run_dir::resume(&setup.out, device))
        .transpose()?;
    let start = resumed.as_ref().map_or(0, |r| r.step);
    let store = match resumed.as_ref().map(|r| &r.weights).or(setup.init.as_ref()) {
        Some(w) => VarStore::from_tensors(w.clone()),
        None => VarStore::new(device.clone(), t.seed),
    };
    let mut stepper = Stepper::new(&setup, &store, resumed.as_ref().map(|r| &r.opt))?;
    let metrics = Metrics::open(&setup.out, resumed.as_ref().map(|r| r.step))?;
    let mut skips = SkipLog::open(&setup.out, start, data.scan_skips())?;
    let mut position = resumed
        .as_ref()
        .and_then(|r| r.data_position)
        .unwrap_or(start * t.batch_size);
    let spec = loader_spec(&setup, data);
    let loader = Loader::spawn(spec, start..t.steps, position, t.prefetch);

    let run_start = Instant::now();
    let mut timing = Timing::default();
    let mut last_ckpt = resumed.map(|r| r.dir);
    let mut last_val = None;
    for step in start..t.steps {
        let t0 = Instant::now();
        let batch = loader.next().map_err(TrainError::Loader)?;
        let wait = t0.elapsed().as_secs_f64();
        debug_assert_eq!(batch.step, step);
        position = batch.next_position;
        skips.record(step + 1, &batch.skipped)?;
        let (loss, grads) = stepper.gradients(batch, device)?;
        if !loss.is_finite() {
            let last = last_ckpt.map(|p| format!(" at {}", p.display()));
            let (step, value, last) = (step + 1, loss, last.unwrap_or_default());
            return Err(TrainError::NonFiniteLoss { step, value, last });
        }
        let lr = learning_rate(t.schedule, t.lr, t.warmup, t.steps, step);
        stepper.update(grads, lr)?;
        timing.add(loss, wait, t0.elapsed().as_secs_f64());

        let done = step + 1;
        // Every n steps (n = 0: never) and at the end.
        let every = |n: usize| (n > 0 && done % n == 0) || done == t.steps;
        if every(t.log_every.max(1)) {
            let window = StepStats {
                step: done,
                lr,
                logit_scale: stepper.logit_scale()?,
                elapsed_s: run_start.elapsed().as_secs_f64(),
                skipped: skips.count(),
                ..Default::default()
            };
            let stats = timing.log(t, window);
            metrics.append(&serde_json::to_value(&stats).expect("stats serialise"))?;
            obs.on_step(&stats);
        }
        if every(t.val_every) {
            let snap = model_over(&store, &setup.model, device, DType::F32, true)?;
            if let Some(m) = obs.validate(&snap, done)? {
                metrics.append(&serde_json::json!({ "step": done, "val": m }))?;
                last_val = Some(m);
            }
        }
        if every(t.save_every) {
            let dir = setup.out.join(format!("checkpoint-{done}"));
            stepper.save(&dir, done, position)?;
            obs.on_checkpoint(&dir);
            last_ckpt = Some(dir);
            run_dir::prune(&setup.out, t.keep_last);
        }
    }
    drop(loader);
    let final_dir = setup.out.join("final");
    stepper.save(&final_dir, t.steps, position)?;
    let _ = crate::plot::write_plot(metrics.path(), &setup.out.join(run_dir::PLOT_FILE));
    let steps_run = t.steps - start;
    // Rates over the time spent in steps (0 when a resumed run had none left to take).
    let per_time = |x: f64| x / timing.total_time.max(f64::MIN_POSITIVE);
    Ok(Summary {
        final_dir,
        val: last_val,
        steps_run,
        samples_per_s: per_time((steps_run * t.batch_size) as f64),
        data_wait: per_time(timing.total_wait),
        skipped: skips.count(),
    })
}

/// What the loader thread reads, in which order, and how it augments.
fn loader_spec(setup: &RunSetup, data: Arc<SampleSet>) -> LoaderSpec {
    let t = &setup.train;
    LoaderSpec {
        cache: Arc::new(DecodedCache::new(&t.cache)),
        aug: Augmenter::new(t.augment.clone(), setup.preprocess.clone()),
        mode: match t.objective {
            Objective::Images => LoaderMode::TwoViews,
            Objective::ImageText => LoaderMode::Captions(Box::new(setup.tokenizer.clone())),
        },
        batch: t.batch_size,
        seed: t.seed,
        order: t.order.clone(),
        max_short_side: (2 * setup.preprocess.image_size).max(1) as u32,
        data,
    }
}
