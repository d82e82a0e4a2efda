//! A whole run from its [`RunConfig`], as `clip train` runs it: data listed, the model started,
//! validation with example searches at each validation, `run.json` saved for `--resume`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use clip_data::{LabelTable, SampleSet, Skip};
use clip_model::{ClipModel, ClipTokenizer};
use clip_train::dist::{Collective, Single};
use clip_train::{
    LossKind, Objective, Observer, RunSetup, StepStats, Summary, TrainConfig, TrainData,
};
use serde::{Deserialize, Serialize};

use super::data::is_streamed;
use super::{bundled, defaults, demo, Head, Start};
use crate::files::{sources, write_atomically, CsvColumns};
use crate::validation::{chance_levels, ExampleSearch, Scored, ValSet, EXAMPLE_QUERIES};
use crate::{DeviceKind, Error, Result};

/// The file in a run directory that holds its [`RunConfig`].
pub const RUN_FILE: &str = "run.json";

/// The run directory unless told otherwise.
pub const DEFAULT_OUT: &str = "runs/latest";

/// A whole training run: its data, the model it starts from, the optimisation, where it runs
/// and writes. [`RunConfig::new`] gives the defaults of an objective (one place for them:
/// [`super::defaults`]); the run saves it as [`RUN_FILE`] and [`RunConfig::load`] reads it
/// back to resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunConfig {
    /// Training data: folders, manifests, shards, or patterns of them ([`crate::files::sources`]);
    /// remote shards (`pipe:COMMAND`, http(s), s3/gs/az URLs with brace patterns) are
    /// streamed ([`clip_data::ShardStream`]); `::` separates parts as in open_clip.
    pub data: Vec<PathBuf>,
    /// An S3-compatible endpoint for `s3://` data (MinIO, a local test server), over
    /// `AWS_ENDPOINT_URL` and the profile files.
    pub data_endpoint: Option<String>,
    /// Validation data in the same forms (image–text runs).
    pub val_data: Vec<PathBuf>,
    /// How CSV/TSV manifests are read.
    pub csv: CsvColumns,
    /// Class labels (`filepath<TAB>label`): the oracle loss, and the probe after an image-only
    /// run.
    pub labels: Option<PathBuf>,
    /// Architecture preset of a fresh model ([`crate::preset`]); unused with `init`.
    pub preset: String,
    /// A checkpoint (folder or cached Hub id) to fine-tune instead of a fresh preset.
    pub init: Option<String>,
    /// The projection head asked for.
    pub head: Head,
    /// The optimisation.
    pub train: TrainConfig,
    /// Where the run trains.
    pub device: DeviceKind,
    /// Example text→image searches made after the last validation.
    pub examples: usize,
    /// The run directory: checkpoints, metrics, the plot and [`RUN_FILE`].
    pub out: PathBuf,
}

impl Default for RunConfig {
    /// The bundled image–text run.
    fn default() -> Self {
        Self::new(Objective::ImageText, None, Vec::new())
    }
}

impl RunConfig {
    /// A run of `objective` with `loss` (`None`: the objective's own) on `data`, everything
    /// else at its default. No data means the bundled sample ([`super::bundled`]) with its
    /// validation set, labels, preset and schedule ([`super::demo`]).
    pub fn new(objective: Objective, loss: Option<LossKind>, data: Vec<PathBuf>) -> Self {
        let is_bundled = data.is_empty();
        let mut c = Self {
            data,
            data_endpoint: None,
            val_data: Vec::new(),
            csv: CsvColumns::default(),
            labels: None,
            preset: "tiny".into(),
            init: None,
            head: Head::default(),
            train: defaults(objective, loss, is_bundled),
            device: DeviceKind::default(),
            examples: EXAMPLE_QUERIES.len(),
            out: DEFAULT_OUT.into(),
        };
        if is_bundled {
            let (train, val, labels) = bundled(objective);
            c.data = vec![train];
            c.val_data.extend(val);
            c.labels = labels;
            c.preset = demo(objective).preset.into();
        }
        c
    }

    /// Whether the run trains on the bundled sample of its objective.
    pub fn is_bundled(&self) -> bool {
        self.data == [bundled(self.train.objective).0]
    }

    /// Whether the run validates on the bundled held-out style (whose measured table is in
    /// the README).
    pub fn validates_on_bundled(&self) -> bool {
        let held_out = bundled(self.train.objective).1;
        self.is_bundled() && held_out.is_some_and(|v| self.val_data == [v])
    }

    /// Checks the settings before anything is loaded; errors name the field, and other
    /// fields in backticks.
    pub fn check(&self) -> Result<()> {
        if self.train.objective == Objective::Images && !self.val_data.is_empty() {
            return Err(Error::Config {
                field: "val_data",
                reason: "measures image–text retrieval; with `objective` images use `labels` \
                         for a linear probe (or `clip probe` afterwards)"
                    .into(),
            });
        }
        Ok(self.train.validate()?)
    }

    /// The configuration saved in the run directory `dir`, to resume it.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(RUN_FILE);
        let text = std::fs::read_to_string(&path).map_err(crate::error::io_at(&path))?;
        let mut c: Self = serde_json::from_str(&text)
            .map_err(|e| Error::Input(format!("{} is damaged: {e}", path.display())))?;
        c.out = dir.to_path_buf();
        Ok(c)
    }

    /// Writes [`RUN_FILE`] into the run directory.
    pub fn save(&self) -> Result<()> {
        let json = serde_json::to_string_pretty(self).expect("a run config serialises");
        write_atomically(&self.out.join(RUN_FILE), |f| {
            std::io::Write::write_all(f, json.as_bytes())
        })
    }

    /// Checks the settings, starts the model (fresh or from `init`) and lists the data
    /// (nothing is decoded yet); `resume`: continue from the newest checkpoint in `out`.
    pub fn prepare(&self, device: &Device, resume: bool) -> Result<Prepared> {
        self.check()?;
        let images_only = self.train.objective == Objective::Images;
        let mut start = match &self.init {
            Some(spec) => {
                let start = Start::checkpoint(spec, device)?;
                self.head.check(&start.config)?;
                start
            }
            None => Start::fresh_for(crate::preset(&self.preset)?, &self.head, &self.train)?,
        };
        start.config.image_only = images_only;
        let mut setup = start.into_setup(&self.out, self.train.clone())?;
        let (data, listed) = if is_streamed(&self.data, self.train.order.resampled)? {
            self.stream("training data")?
        } else {
            let (data, listed) = self.list(&self.data, "training data")?;
            setup.labels = match &self.labels {
                Some(p) => {
                    let table = LabelTable::read(p, "filepath", "label")?;
                    Some(table.lookup((0..data.len()).map(|i| data.name(i)))?)
                }
                None => None,
            };
            (TrainData::Listed(Arc::new(data)), listed)
        };
        let mut listings = vec![listed];
        let val = if self.val_data.is_empty() {
            None
        } else {
            let (val, listed) = self.list(&self.val_data, "validation data")?;
            listings.push(listed);
            // Validation pixels stay in memory between validations while they fit the cache
            // budget (the bundled Twemoji set: 47 MB).
            let budget = setup.train.cache.budget();
            Some(ValSet::new(
                val,
                &setup.preprocess,
                &setup.tokenizer,
                budget,
            ))
        };
        setup.resume = resume;
        Ok(Prepared {
            config: self.clone(),
            setup,
            data,
            val,
            listings,
        })
    }

    /// Lists the samples of `paths` (file names, manifest rows, tar headers).
    fn list(&self, paths: &[PathBuf], what: &'static str) -> Result<(SampleSet, Listing)> {
        let sources = sources(paths, &self.csv)?;
        let t0 = Instant::now();
        let images_only = self.train.objective == Objective::Images;
        let set = if images_only {
            SampleSet::scan_images(&sources)?
        } else {
            SampleSet::scan(&sources)?
        };
        let listing = Listing {
            what,
            samples: set.len(),
            images_only,
            sources: sources.len(),
            seconds: t0.elapsed().as_secs_f64(),
            skips: set.scan_skips().to_vec(),
            streamed: None,
        };
        Ok((set, listing))
    }
}

/// What listing one set of data found.
#[derive(Debug, Clone)]
pub struct Listing {
    /// `training data` or `validation data`.
    pub what: &'static str,
    /// Samples listed.
    pub samples: usize,
    /// Images alone (an image-only run), not image–caption pairs.
    pub images_only: bool,
    /// Sources they were listed from.
    pub sources: usize,
    /// How long listing took.
    pub seconds: f64,
    /// What was left out, with why.
    pub skips: Vec<Skip>,
    /// Streamed shards: where the epoch size (`samples`) came from; nothing was listed.
    pub streamed: Option<String>,
}

/// A run ready to train: its model started, its data listed.
pub struct Prepared {
    config: RunConfig,
    setup: RunSetup,
    data: TrainData,
    val: Option<ValSet>,
    listings: Vec<Listing>,
}

impl Prepared {
    /// The data listed: training data, then validation data if any.
    pub fn listings(&self) -> &[Listing] {
        &self.listings
    }

    /// Trains as one rank of `comm` ([`Single`] for one process), telling `observer` each
    /// logged step and warning. Validation and its example searches happen here, as does
    /// saving [`RUN_FILE`] for a new run (on rank 0, which alone writes the run directory).
    pub fn train(
        self,
        device: &Device,
        comm: &dyn Collective,
        observer: &mut dyn Observer,
    ) -> Result<Outcome> {
        let Prepared {
            mut config,
            mut setup,
            data,
            val,
            ..
        } = self;
        if let TrainData::Streamed(_) = &data {
            // The number of streams is part of the order: fixed when the run starts (one per
            // rank unless given), so a resume reads the same samples on any number of ranks.
            let streams = Some(config.train.order.streams_for(comm.world()));
            (config.train.order.streams, setup.train.order.streams) = (streams, streams);
        }
        if !setup.resume && comm.rank() == 0 {
            config.save()?;
        }
        let mut v = Validating {
            inner: observer,
            val,
            tok: setup.tokenizer.clone(),
            last: None,
            queries: Vec::new(),
        };
        let summary = clip_train::train_on(setup, data, device, &mut v, comm)?;
        let validation = match (&summary.val, v.last) {
            (Some(metrics), Some(scored)) => Some(Validation {
                chance: chance_levels(&scored.groups),
                examples: scored.example_searches(&EXAMPLE_QUERIES, &v.queries, config.examples),
                metrics: metrics.clone(),
                scored,
            }),
            _ => None,
        };
        Ok(Outcome {
            summary,
            validation,
        })
    }
}

/// How a run ended.
pub struct Outcome {
    /// Steps, throughput, the final model's folder.
    pub summary: Summary,
    /// The last validation, on rank 0 of a run with validation data.
    pub validation: Option<Validation>,
}

/// The last validation of a run: each metric beside what a random ranking scores, and example
/// searches.
pub struct Validation {
    /// open_clip's retrieval metrics by name.
    pub metrics: BTreeMap<String, f64>,
    /// What a random ranking scores on each metric ([`chance_levels`]).
    pub chance: BTreeMap<String, f64>,
    /// The embeddings and metrics behind them.
    pub scored: Scored,
    /// Text→image searches of [`EXAMPLE_QUERIES`] found in the captions, then of the first
    /// captions, up to the run's `examples`.
    pub examples: Vec<ExampleSearch>,
}

/// The caller's observer, with validation (and the example queries' embeddings) done here.
struct Validating<'a> {
    inner: &'a mut dyn Observer,
    val: Option<ValSet>,
    tok: ClipTokenizer,
    last: Option<Scored>,
    /// [`EXAMPLE_QUERIES`] as the last validated model embeds them, `[queries, dim]`.
    queries: Vec<f32>,
}

impl Observer for Validating<'_> {
    fn on_step(&mut self, stats: &StepStats) {
        self.inner.on_step(stats);
    }

    fn on_checkpoint(&mut self, dir: &Path) {
        self.inner.on_checkpoint(dir);
    }

    fn on_warning(&mut self, message: &str) {
        self.inner.on_warning(message);
    }

    fn validate(
        &mut self,
        model: &ClipModel,
        _step: usize,
    ) -> clip_train::Result<Option<BTreeMap<String, f64>>> {
        let Some(val) = &mut self.val else {
            return Ok(None);
        };
        let failed = |e: Error| clip_train::TrainError::State(format!("validation failed: {e}"));
        let scored = val.score(model, 256).map_err(failed)?;
        let metrics = scored.metrics.named().into_iter().collect();
        self.last = Some(scored);
        let ids = self
            .tok
            .encode_batch(&EXAMPLE_QUERIES)
            .map_err(|e| failed(e.into()))?;
        let embeds = model
            .encode_text(&ids)
            .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
            .map_err(|e| failed(e.into()))?;
        self.queries = embeds;
        Ok(Some(metrics))
    }
}

/// The ranks of this training job: MPI's world when started by an MPI launcher (`mpirun`,
/// `srun`), over NCCL on CUDA with the `nccl` feature; else this process alone.
pub fn join_ranks(device: &Device) -> Result<Box<dyn Collective>> {
    let _ = device; // only NCCL needs it
    if !clip_train::dist::launched_by_mpi() {
        return Ok(Box::new(Single));
    }
    #[cfg(feature = "mpi")]
    {
        let mpi = clip_train::dist::Mpi::init()?;
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
            return Err(Error::Input(
                "started by an MPI launcher, but this clip binary was built without MPI; \
                 rebuild with `--features mpi` to train across ranks (otherwise every rank \
                 would train alone and write the same run directory)"
                    .into(),
            ));
        }
        Ok(Box::new(Single))
    }
}
