//! `clip train`: contrastive training on image–caption data. The flags become one
//! [`RunConfig`] (`args.rs`), or `--resume` reads it back from the run's `run.json` (either
//! form, `legacy.rs`); the library trains; `report.rs` prints.

mod args;
mod legacy;
mod report;

use std::path::Path;

use anyhow::{Context, Result};
use clip::training::{join_ranks, RunConfig, RUN_FILE};
use indicatif::{ProgressBar, ProgressStyle};

pub use args::TrainArgs;

pub fn run(a: TrainArgs) -> Result<()> {
    let resume = a.resume.is_some();
    let config = match &a.resume {
        Some(dir) => resumed(dir)?,
        None => a.config()?,
    };
    let device = config.device.device_for_rank()?;
    let comm = join_ranks(&device)?;
    let (rank, world) = (comm.rank(), comm.world());
    match run_on(&config, resume, &device, comm.as_ref()) {
        // The others may be waiting in a collective: end the whole job, naming this rank.
        Err(e) if world > 1 => {
            eprintln!("error: rank {rank} of {world} failed: {e:#}");
            comm.abort(1)
        }
        r => r,
    }
}

/// The run saved in `dir`, as this version writes `run.json` or as earlier ones did.
fn resumed(dir: &Path) -> Result<RunConfig> {
    let path = dir.join(RUN_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot resume: {} is missing", path.display()))?;
    let damaged = || format!("cannot resume: {} is damaged", path.display());
    let json: serde_json::Value = serde_json::from_str(&text).with_context(damaged)?;
    if !legacy::is_legacy(&json) {
        return Ok(RunConfig::load(dir)?);
    }
    let mut config = legacy::args(&json).with_context(damaged)?.config()?;
    config.out = dir.to_path_buf();
    Ok(config)
}

/// The run of `config` as one of the ranks of `comm`; rank 0 alone prints.
fn run_on(
    config: &RunConfig,
    resume: bool,
    device: &clip::Device,
    comm: &dyn clip::training::Collective,
) -> Result<()> {
    let lead = comm.rank() == 0;
    let run = config.prepare(device, resume)?;
    if lead {
        run.listings().iter().for_each(report::listing);
    }
    let bar = ProgressBar::new(config.train.steps as u64);
    if !lead {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{bar:25} {pos}/{len} {msg} ETA {eta}")?.progress_chars("=> "),
    );
    let mut progress = report::Progress(bar);
    let outcome = run.train(device, comm, &mut progress)?;
    progress.0.finish_and_clear();
    if !lead {
        return Ok(());
    }
    report::outcome(config, &outcome);
    let images_only = config.train.objective == clip::training::Objective::Images;
    if let (true, Some(labels)) = (images_only, &config.labels) {
        let model = &outcome.summary.final_dir;
        if let Some(p) = clip::probe::after_training(model, labels, config.train.seed, device)? {
            report::probe(&p);
        }
    } else if !images_only {
        report::next_steps(config, &outcome);
    }
    Ok(())
}
