//! `clip download`: fetch a model from the Hugging Face Hub into the standard cache.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use hf_hub::{Cache, Repo, RepoType};

#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// Repository id, e.g. `openai/clip-vit-base-patch32`.
    repo_id: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Use only the local cache; never touch the network.
    #[arg(long)]
    offline: bool,
}

/// Files of the two layouts; the first group that resolves wins.
const LAYOUTS: [&[&str]; 2] = [
    &["config.json", "model.safetensors"],
    &["open_clip_config.json", "open_clip_model.safetensors"],
];
const OPTIONAL: [&str; 3] = [
    "tokenizer.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
];

fn repo(id: &str, revision: &str) -> Repo {
    Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string())
}

/// The cached snapshot directory of `repo_id` at `main`, if a complete model is there.
pub fn cached_snapshot(repo_id: &str) -> Option<PathBuf> {
    cached(repo_id, "main")
}

fn cached(repo_id: &str, revision: &str) -> Option<PathBuf> {
    if !repo_id.contains('/') {
        return None;
    }
    let cache = Cache::from_env().repo(repo(repo_id, revision));
    LAYOUTS.iter().find_map(|files| {
        let paths: Option<Vec<PathBuf>> = files.iter().map(|f| cache.get(f)).collect();
        paths.and_then(|p| p[0].parent().map(PathBuf::from))
    })
}

pub fn run(a: DownloadArgs) -> Result<()> {
    let dir = if a.offline {
        cached(&a.repo_id, &a.revision).with_context(|| {
            format!(
                "{} (revision {}) is not in the Hugging Face cache at {}",
                a.repo_id,
                a.revision,
                Cache::from_env().path().display()
            )
        })?
    } else {
        fetch(&a.repo_id, &a.revision)?
    };
    println!("{}", dir.display());
    Ok(())
}

fn fetch(repo_id: &str, revision: &str) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .context("cannot set up the Hugging Face Hub client")?;
    let r = api.repo(repo(repo_id, revision));
    let mut last_err = None;
    for files in LAYOUTS {
        match files
            .iter()
            .map(|f| r.get(f))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(paths) => {
                for f in OPTIONAL {
                    let _ = r.get(f); // absent optional files are fine
                }
                return Ok(paths[0]
                    .parent()
                    .map(PathBuf::from)
                    .expect("cached file has a folder"));
            }
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) => Err(e).with_context(|| format!("cannot download {repo_id}: it has neither config.json + model.safetensors nor open_clip_config.json + open_clip_model.safetensors")),
        None => bail!("cannot download {repo_id}"),
    }
}
