//! The run directory: `checkpoint-<step>/` folders (weights, optimiser moments, resume state),
//! `metrics.jsonl` and `skipped.tsv`. Every name and format here is what earlier runs wrote,
//! so a run resumes across versions.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use clip_data::{Skip, StreamState};
use clip_nn::{TensorMap, VarStore};
use serde::{Deserialize, Serialize};

use crate::error::io_err;
use crate::{AdamW, Result, RunSetup, TrainConfig, TrainError};

/// Saved beside the weights in each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Steps completed.
    pub step: usize,
    /// The configuration of the run.
    pub train: TrainConfig,
    /// Sample position the next step starts reading at (bad samples shift it past
    /// `step × batch`); absent in checkpoints of earlier versions.
    #[serde(default)]
    pub data_position: Option<usize>,
    /// With N > 1 data-parallel ranks, each rank's (local) sample position, in rank order;
    /// `data_position` is then absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_positions: Option<Vec<usize>>,
    /// Each rank's stream state, in rank order (streamed data only), so a resume reads only
    /// the shards in flight and those in the shuffle buffer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<Vec<StreamState>>,
}

impl TrainState {
    /// Each rank's data position, in rank order (one entry for a one-process run; none in
    /// checkpoints of early versions).
    pub fn positions(&self) -> Option<Vec<usize>> {
        self.data_positions
            .clone()
            .or_else(|| self.data_position.map(|p| vec![p]))
    }
}

const STATE_FILE: &str = "train_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Metadata key of the optimiser file: AdamW's step count (for bias correction).
const ADAM_STEPS: &str = "adam_steps";
/// SigLIP's learned bias is no CLIP weight: it travels with the optimiser state.
pub(crate) const LOGIT_BIAS: &str = "logit_bias";
pub(crate) const METRICS_FILE: &str = "metrics.jsonl";
pub(crate) const PLOT_FILE: &str = "metrics.svg";
const SKIPPED_FILE: &str = "skipped.tsv";

/// `checkpoint-<step>` folders of a run, oldest first.
pub fn checkpoints(run: &Path) -> Vec<(usize, PathBuf)> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(run)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path()
                .join(STATE_FILE)
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// What a resumed run takes from its newest checkpoint.
pub(crate) struct Resumed {
    /// Steps completed.
    pub step: usize,
    /// The checkpoint folder.
    pub dir: PathBuf,
    /// Model weights, SigLIP's bias included.
    pub weights: TensorMap,
    /// AdamW moments and their step count.
    pub opt: (HashMap<String, Tensor>, u64),
    /// Each rank's sample position for the next step (absent in checkpoints of early
    /// versions).
    pub data_positions: Option<Vec<usize>>,
    /// Each rank's stream state (streamed data).
    pub streams: Option<Vec<StreamState>>,
}

/// Loads the newest complete checkpoint of `run`.
pub(crate) fn resume(run: &Path, device: &Device) -> Result<Resumed> {
    let missing = || TrainError::State(format!("no checkpoint to resume in {}", run.display()));
    let (step, dir) = checkpoints(run).pop().ok_or_else(missing)?;
    let ckpt = clip_model::Checkpoint::load(&dir, device)?;
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(io_err("cannot read", &state_path))?;
    let damaged = |e| TrainError::State(format!("{} is damaged: {e}", state_path.display()));
    let state: TrainState = serde_json::from_str(&text).map_err(damaged)?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let opt = clip_model::read_safetensors(&opt_path, device)?;
    let bytes = std::fs::read(&opt_path).map_err(io_err("cannot read", &opt_path))?;
    let adam_steps = safetensors::SafeTensors::read_metadata(&bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().as_ref()?.get(ADAM_STEPS)?.parse().ok())
        .unwrap_or(step as u64);
    let mut weights = ckpt.weights.into_inner();
    if let Some(b) = opt.get(LOGIT_BIAS) {
        weights.insert(LOGIT_BIAS.into(), b.clone());
    }
    Ok(Resumed {
        step,
        dir,
        weights: TensorMap::new(weights, device.clone()),
        opt: (opt, adam_steps),
        data_positions: state.positions(),
        streams: state.streams,
    })
}

/// Writes a complete checkpoint to `dir` (replacing it atomically): HF weights, config,
/// tokenizer, optimiser moments (and SigLIP's bias), and the state a resume needs.
pub(crate) fn save_checkpoint(
    dir: &Path,
    setup: &RunSetup,
    store: &VarStore,
    opt: &AdamW,
    step: usize,
    positions: &[usize],
    streams: Option<&[StreamState]>,
) -> Result<()> {
    let mut tensors = store.tensors();
    let mut opt_state = opt.state_tensors()?;
    if let Some(b) = tensors.remove(LOGIT_BIAS) {
        opt_state.insert(LOGIT_BIAS.into(), b);
    }
    let state = TrainState {
        step,
        train: setup.train.clone(),
        data_position: (positions.len() == 1).then(|| positions[0]),
        data_positions: (positions.len() > 1).then(|| positions.to_vec()),
        streams: streams.map(<[StreamState]>::to_vec),
    };
    clip_model::replace_dir_atomically(dir, |tmp| {
        clip_model::write_hf_files(
            tmp,
            &setup.model,
            &setup.preprocess,
            &clip_nn::TensorMap::new(tensors, candle_core::Device::Cpu),
            Some(&setup.tokenizer_file),
        )?;
        let p = tmp.join(OPTIMIZER_FILE);
        let meta = HashMap::from([(ADAM_STEPS.to_string(), opt.steps_taken().to_string())]);
        safetensors::serialize_to_file(&opt_state, Some(meta), &p).map_err(|source| {
            clip_model::ModelError::Safetensors {
                path: p.clone(),
                source,
            }
        })?;
        let p = tmp.join(STATE_FILE);
        let json = serde_json::to_string_pretty(&state).expect("state serialises");
        std::fs::write(&p, json).map_err(|source| clip_model::ModelError::Io {
            action: "cannot write",
            path: p.clone(),
            source,
        })
    })?;
    Ok(())
}

/// Removes all but the newest `keep` (at least one) checkpoints.
pub(crate) fn prune(run: &Path, keep: usize) {
    let all = checkpoints(run);
    let keep = keep.max(1);
    if all.len() > keep {
        for (_, dir) in &all[..all.len() - keep] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `RUN/metrics.jsonl`: one JSON object per logged step or validation.
pub(crate) struct Metrics {
    path: PathBuf,
}

impl Metrics {
    /// A fresh run starts an empty file; a resumed one keeps the lines up to its step.
    pub(crate) fn open(run: &Path, resumed_at: Option<usize>) -> Result<Self> {
        let path = run.join(METRICS_FILE);
        match resumed_at {
            Some(step) => truncate_metrics(&path, step)?,
            None if path.exists() => {
                std::fs::remove_file(&path).map_err(io_err("cannot remove", &path))?
            }
            None => {}
        }
        Ok(Self { path })
    }

    /// The file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line.
    pub(crate) fn append(&self, value: &serde_json::Value) -> Result<()> {
        append(&self.path, &format!("{value}\n"))
    }
}

/// Appends `text` to the file at `path`, creating it if needed.
fn append(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err("cannot write", path))?;
    f.write_all(text.as_bytes())
        .map_err(io_err("cannot write", path))
}

/// Drops metric lines past `step` (a resumed run rewrites them).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept = text.lines().filter(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
            .is_some_and(|s| s as usize <= step)
    });
    let body: String = kept.map(|l| format!("{l}\n")).collect();
    std::fs::write(path, body).map_err(io_err("cannot write", path))
}

/// `RUN/skipped.tsv`: every sample left out, once, with the step that met it and why.
pub(crate) struct SkipLog {
    path: PathBuf,
    seen: HashSet<String>,
}

/// Skips as `name<TAB>reason` lines, the form they travel between ranks in.
pub(crate) fn skip_rows(skips: &[Skip]) -> String {
    skips
        .iter()
        .map(|s| {
            let reason = s.reason.to_string().replace(['\t', '\n'], " ");
            format!("{}\t{reason}\n", s.name.replace(['\t', '\n'], " "))
        })
        .collect()
}

impl SkipLog {
    /// Starts the log: a fresh run lists what scanning skipped (step 0); a resumed one keeps
    /// the rows up to its step and drops later ones, which the run will meet again.
    pub(crate) fn open(run: &Path, start: usize, scan: &[Skip]) -> Result<Self> {
        let path = &run.join(SKIPPED_FILE);
        let mut log = Self {
            path: path.to_path_buf(),
            seen: Default::default(),
        };
        let mut body = String::from("step\tsample\treason\n");
        if start > 0 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            for line in text.lines().skip(1) {
                let mut f = line.splitn(3, '\t');
                let (Some(step), Some(name)) = (f.next(), f.next()) else {
                    continue;
                };
                if step.parse::<usize>().is_ok_and(|s| s <= start) && log.seen.insert(name.into()) {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
        std::fs::write(path, body).map_err(io_err("cannot write", path))?;
        log.record(0, scan)?;
        Ok(log)
    }

    /// Appends the skips not listed yet.
    pub(crate) fn record(&mut self, step: usize, skips: &[Skip]) -> Result<()> {
        self.record_rows(step, &skip_rows(skips))
    }

    /// Appends the rows of [`skip_rows`] (from any rank) not listed yet.
    pub(crate) fn record_rows(&mut self, step: usize, skips: &str) -> Result<()> {
        let mut rows = String::new();
        for line in skips.lines() {
            let Some((name, reason)) = line.split_once('\t') else {
                continue;
            };
            if self.seen.insert(name.to_string()) {
                rows.push_str(&format!("{step}\t{name}\t{reason}\n"));
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        append(&self.path, &rows)
    }

    /// Distinct samples listed.
    pub(crate) fn count(&self) -> usize {
        self.seen.len()
    }
}
