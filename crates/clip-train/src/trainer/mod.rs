//! The training loop: batches in, one step each, logs, validation and checkpoints out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use clip_data::{Augmenter, DecodedCache, SampleSet, StreamSpec, StreamState};
use clip_model::ClipModel;
use clip_nn::VarStore;
use serde::Serialize;

mod data_start;

use data_start::{data_start, gather_positions, gather_streams, replay_note};

use crate::dist::{Collective, CommStats, Single};
use crate::error::io_err;
use crate::loader::{Batch, Feed, Loader, LoaderMode, LoaderSpec, Share};
use crate::optim::learning_rate;
use crate::run_dir::{self, Metrics, SkipLog};
use crate::step::{model_over, Stepper};
use crate::{LossKind, Objective, Result, RunSetup, TrainConfig, TrainError};

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
    /// Fraction of step time spent in collectives since the last log (data-parallel runs
    /// only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<f64>,
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
    /// Something the user should know that does not stop the run.
    fn on_warning(&mut self, _message: &str) {}
}

/// Reports nothing and validates nothing.
impl Observer for () {}

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
    /// Seconds spent in steps in this invocation (data waits included).
    pub step_time_s: f64,
    /// Ranks that trained together (1: one process).
    pub world: usize,
    /// Time spent in collectives in this invocation (0 in one process).
    pub comm_s: f64,
    /// Bytes this rank sent into collectives per step.
    pub comm_bytes_per_step: f64,
}

/// Step times and losses since the last log (and since the start).
#[derive(Default)]
struct Timing {
    loss: f64,
    steps: usize,
    wait: f64,
    time: f64,
    comm: f64,
    total_wait: f64,
    total_time: f64,
}

impl Timing {
    fn add(&mut self, loss: f32, wait: f64, time: f64, comm: f64) {
        self.loss += loss as f64;
        self.steps += 1;
        self.wait += wait;
        self.time += time;
        self.comm += comm;
        self.total_wait += wait;
        self.total_time += time;
    }

    /// The window's statistics; starts the next window.
    fn log(&mut self, t: &TrainConfig, world: usize, stats: StepStats) -> StepStats {
        let stats = StepStats {
            total: t.steps,
            loss: self.loss / self.steps as f64,
            samples_per_s: (self.steps * t.batch_size) as f64 / self.time,
            data_wait: self.wait / self.time,
            comm: (world > 1).then(|| self.comm / self.time),
            ..stats
        };
        (self.loss, self.steps, self.wait, self.time, self.comm) = (0.0, 0, 0.0, 0.0, 0.0);
        stats
    }
}

impl Timing {
    /// The counts and rates of a run of `steps_run` steps, over the time spent in steps (0 when
    /// a resumed run had none left to take); `comm_start` is the collective's count when it
    /// began. What the loop alone knows (`final_dir`, `val`, `skipped`) is left empty for it.
    fn summary(
        &self,
        t: &TrainConfig,
        steps_run: usize,
        comm: &dyn Collective,
        comm_start: CommStats,
    ) -> Summary {
        let per_time = |x: f64| x / self.total_time.max(f64::MIN_POSITIVE);
        let spent = comm.stats();
        Summary {
            final_dir: PathBuf::new(),
            val: None,
            steps_run,
            samples_per_s: per_time((steps_run * t.batch_size) as f64),
            data_wait: per_time(self.total_wait),
            skipped: 0,
            step_time_s: self.total_time,
            world: comm.world(),
            comm_s: (spent.time - comm_start.time).as_secs_f64(),
            comm_bytes_per_step: (spent.bytes - comm_start.bytes) as f64 / steps_run.max(1) as f64,
        }
    }
}

/// What a run trains on.
#[derive(Clone)]
pub enum TrainData {
    /// Listed samples (folders, manifests, local shards), read in a seeded order.
    Listed(Arc<SampleSet>),
    /// Shards streamed start to end, nothing listed ([`clip_data::ShardStream`]).
    Streamed(Arc<StreamSpec>),
}

impl From<Arc<SampleSet>> for TrainData {
    fn from(data: Arc<SampleSet>) -> Self {
        TrainData::Listed(data)
    }
}

impl From<StreamSpec> for TrainData {
    fn from(spec: StreamSpec) -> Self {
        TrainData::Streamed(Arc::new(spec))
    }
}

/// Checks what only the data can tell: there is some, and the oracle loss has its labels.
fn check_data(setup: &RunSetup, data: &TrainData) -> Result<()> {
    let bad = |field, reason: String| Err(TrainError::Config { field, reason });
    let labels = setup.labels.as_ref().map(Vec::len);
    let data = match data {
        TrainData::Listed(data) => data,
        TrainData::Streamed(_) if setup.train.loss == LossKind::Oracle => {
            return bad(
                "loss",
                "the oracle loss needs listed data with labels".into(),
            )
        }
        TrainData::Streamed(_) => return Ok(()),
    };
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
    data: impl Into<TrainData>,
    device: &Device,
    obs: &mut dyn Observer,
) -> Result<Summary> {
    train_on(setup, data, device, obs, &Single)
}

/// [`train`] as one of the ranks of `comm`: each rank reads its share of every global batch
/// of `setup.train.batch_size` samples, and they take the same steps one process would on
/// the whole batch (see [`crate::dist`]). Rank 0 alone writes the run directory and talks to
/// `obs` (validation included).
pub fn train_on(
    setup: RunSetup,
    data: impl Into<TrainData>,
    device: &Device,
    obs: &mut dyn Observer,
    comm: &dyn Collective,
) -> Result<Summary> {
    let data = data.into();
    let t = &setup.train;
    t.validate()?;
    check_data(&setup, &data)?;
    let (rank, world) = (comm.rank(), comm.world());
    let local_batch = local_batch(t, world)?;
    if let TrainData::Streamed(_) = &data {
        check_streams(t, world)?;
    }
    let lead = rank == 0;
    if lead {
        std::fs::create_dir_all(&setup.out).map_err(io_err("cannot create", &setup.out))?;
    }

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
    let stepper = Stepper::new(&setup, &store, resumed.as_ref().map(|r| &r.opt), comm)?;
    let (metrics, skips) = match lead {
        true => (
            Some(Metrics::open(&setup.out, resumed.as_ref().map(|r| r.step))?),
            Some(SkipLog::open(&setup.out, start, scan_skips(&data))?),
        ),
        false => (None, None),
    };
    let from = data_start(&data, resumed.as_ref(), comm, (start, local_batch), t, obs);
    let position = from.position;
    let spec = loader_spec(&setup, data, Share { rank, world });
    let loader = Loader::spawn(spec, start..t.steps, from, t.prefetch);

    let comm_start = comm.stats();
    let mut run = Run {
        setup: &setup,
        store: &store,
        device,
        comm,
        stepper,
        metrics,
        skips,
        timing: Timing::default(),
        run_start: Instant::now(),
        position,
        streams: Vec::new(),
        last_ckpt: resumed.map(|r| r.dir),
        last_val: None,
    };
    for step in start..t.steps {
        let t0 = Instant::now();
        let batch = loader.next().map_err(TrainError::Loader)?;
        let wait = t0.elapsed().as_secs_f64();
        if let (Some(r), true) = (&batch.replayed, lead) {
            obs.on_warning(&replay_note(r));
        }
        debug_assert_eq!(batch.step, step);
        let lr = run.step(step, batch, t0, wait)?;
        run.after(step + 1, lr, obs)?;
    }
    drop(loader);
    run.finish(t.steps - start, comm_start)
}

/// A run in progress on one rank: its step, rank 0's logs, and where its data and
/// checkpoints stand.
struct Run<'a> {
    setup: &'a RunSetup,
    store: &'a VarStore,
    device: &'a Device,
    comm: &'a dyn Collective,
    stepper: Stepper<'a>,
    /// `metrics.jsonl` (rank 0 only).
    metrics: Option<Metrics>,
    /// `skipped.tsv` (rank 0 only).
    skips: Option<SkipLog>,
    timing: Timing,
    run_start: Instant,
    /// This rank's data position after the last batch.
    position: usize,
    /// The states of this rank's streams after the last batch (streamed data).
    streams: Vec<StreamState>,
    last_ckpt: Option<PathBuf>,
    last_val: Option<BTreeMap<String, f64>>,
}

impl Run<'_> {
    /// Takes step `step` on `batch` (asked for at `t0`, after `wait` seconds of waiting):
    /// records its skips, checks the loss is finite, updates; returns the learning rate.
    fn step(&mut self, step: usize, mut batch: Batch, t0: Instant, wait: f64) -> Result<f64> {
        let (t, comm) = (&self.setup.train, self.comm);
        self.position = batch.next_position;
        self.streams = std::mem::take(&mut batch.streams);
        let skipped = gather_skips(comm, &batch.skipped)?;
        if let Some(log) = self.skips.as_mut() {
            log.record_rows(step + 1, &skipped)?;
        }
        let c0 = comm.stats().time;
        let (loss, grads) = self.stepper.gradients(batch, self.device)?;
        if !loss.is_finite() {
            let last = self
                .last_ckpt
                .as_ref()
                .map(|p| format!(" at {}", p.display()));
            let (step, value, last) = (step + 1, loss, last.unwrap_or_default());
            return Err(TrainError::NonFiniteLoss { step, value, last });
        }
        let lr = learning_rate(t.schedule, t.lr, t.warmup, t.steps, step);
        self.stepper.update(grads, lr)?;
        let in_comm = (comm.stats().time - c0).as_secs_f64();
        self.timing
            .add(loss, wait, t0.elapsed().as_secs_f64(), in_comm);
        Ok(lr)
    }

    /// What is due after `done` steps, every n steps (n = 0: never) and at the end: the log
    /// line, validation (rank 0) and a checkpoint.
    fn after(&mut self, done: usize, lr: f64, obs: &mut dyn Observer) -> Result<()> {
        let (setup, t, comm) = (self.setup, &self.setup.train, self.comm);
        let lead = comm.rank() == 0;
        let every = |n: usize| (n > 0 && done.is_multiple_of(n)) || done == t.steps;
        if every(t.log_every.max(1)) {
            let window = StepStats {
                step: done,
                lr,
                logit_scale: self.stepper.logit_scale()?,
                elapsed_s: self.run_start.elapsed().as_secs_f64(),
                skipped: self.skips.as_ref().map_or(0, SkipLog::count),
                ..Default::default()
            };
            let stats = self.timing.log(t, comm.world(), window);
            if let Some(m) = &self.metrics {
                m.append(&serde_json::to_value(&stats).expect("stats serialise"))?;
                obs.on_step(&stats);
            }
        }
        if lead && every(t.val_every) {
            let snap = model_over(self.store, &setup.model, self.device, DType::F32, true)?;
            if let Some(m) = obs.validate(&snap, done)? {
                let metrics = self.metrics.as_ref().expect("rank 0 keeps the metrics");
                metrics.append(&serde_json::json!({ "step": done, "val": m }))?;
                self.last_val = Some(m);
            }
        }
        if every(t.save_every) {
            let dir = setup.out.join(format!("checkpoint-{done}"));
            let positions = gather_positions(comm, self.position)?;
            let streams = gather_streams(comm, &self.streams)?;
            if lead {
                self.stepper
                    .save(&dir, done, &positions, streams.as_deref())?;
                obs.on_checkpoint(&dir);
                self.last_ckpt = Some(dir);
                run_dir::prune(&setup.out, t.keep_last);
            }
        }
        Ok(())
    }

    /// Writes `final/` and the plot (rank 0) after `steps_run` steps; the run's summary.
    fn finish(self, steps_run: usize, comm_start: CommStats) -> Result<Summary> {
        let (setup, t) = (self.setup, &self.setup.train);
        let final_dir = setup.out.join("final");
        let positions = gather_positions(self.comm, self.position)?;
        let streams = gather_streams(self.comm, &self.streams)?;
        if let Some(m) = &self.metrics {
            self.stepper
                .save(&final_dir, t.steps, &positions, streams.as_deref())?;
            let _ = crate::plot::write_plot(m.path(), &setup.out.join(run_dir::PLOT_FILE));
        }
        Ok(Summary {
            final_dir,
            val: self.last_val,
            skipped: self.skips.as_ref().map_or(0, SkipLog::count),
            ..self.timing.summary(t, steps_run, self.comm, comm_start)
        })
    }
}

/// Streamed data's streams must split evenly over the ranks, and the global batch over the
/// streams (each step takes the same number of samples from every stream).
fn check_streams(t: &TrainConfig, world: usize) -> Result<()> {
    let n = t.order.streams_for(world);
    let reason = if n == 0 {
        "there must be at least one stream".to_string()
    } else if !n.is_multiple_of(world) {
        format!("{n} streams do not split evenly over {world} ranks")
    } else if !t.batch_size.is_multiple_of(n) {
        format!(
            "the global batch of {} (`batch_size`) does not split evenly over {n} streams",
            t.batch_size
        )
    } else {
        return Ok(());
    };
    Err(TrainError::Config {
        field: "streams",
        reason,
    })
}

/// Each rank's share of the global batch; the batch must split evenly over the ranks and
/// each share over the accumulation chunks.
fn local_batch(t: &TrainConfig, world: usize) -> Result<usize> {
    let bad = |reason: String| TrainError::Config {
        field: "batch_size",
        reason,
    };
    if !t.batch_size.is_multiple_of(world) {
        return Err(bad(format!(
            "the global batch of {} does not split evenly over {world} ranks",
            t.batch_size
        )));
    }
    let local = t.batch_size / world;
    if !local.is_multiple_of(t.accum_steps) {
        return Err(bad(format!(
            "each of the {world} ranks' {local} samples must split evenly into {} \
             accumulation steps",
            t.accum_steps
        )));
    }
    Ok(local)
}

/// Every rank's skipped samples of this step, as `name<TAB>reason` lines.
fn gather_skips(comm: &dyn Collective, skips: &[clip_data::Skip]) -> Result<String> {
    let mine = run_dir::skip_rows(skips);
    if comm.world() == 1 {
        return Ok(mine);
    }
    let all = comm.all_gather_bytes(mine.as_bytes())?;
    Ok(all
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect())
}

/// What scanning left out (listed data only: a stream reports its skips as it meets them).
fn scan_skips(data: &TrainData) -> &[clip_data::Skip] {
    match data {
        TrainData::Listed(d) => d.scan_skips(),
        TrainData::Streamed(_) => &[],
    }
}

/// What the loader thread reads, in which order, and how it augments.
fn loader_spec(setup: &RunSetup, data: TrainData, share: Share) -> LoaderSpec {
    let t = &setup.train;
    LoaderSpec {
        feed: match data {
            TrainData::Listed(data) => Feed::Listed {
                data,
                cache: Arc::new(DecodedCache::new(&t.cache)),
                order: t.order.clone(),
            },
            TrainData::Streamed(spec) => Feed::Streamed {
                spec,
                streams: t.order.streams_for(share.world),
            },
        },
        aug: Augmenter::new(t.augment.clone(), setup.preprocess.clone()),
        mode: match t.objective {
            Objective::Images => LoaderMode::TwoViews,
            Objective::ImageText => LoaderMode::Captions(Box::new(setup.tokenizer.clone())),
        },
        batch: t.batch_size / share.world,
        seed: t.seed,
        max_short_side: (2 * setup.preprocess.image_size).max(1) as u32,
        share,
    }
}
