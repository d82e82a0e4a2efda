//! Models on the Hugging Face Hub: the local cache, and downloads into it.

use std::path::PathBuf;

use hf_hub::{Cache, Repo, RepoType};

use crate::{Error, Result};

/// The files that make a model, per checkpoint layout (the first one names the folder).
const LAYOUTS: [&[&str]; 2] = [
    &["config.json", "model.safetensors"],
    &["open_clip_config.json", "open_clip_model.safetensors"],
];

/// Fetched when present, never required.
const OPTIONAL: [&str; 3] = [
    "tokenizer.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
];

fn repo(id: &str, revision: &str) -> Repo {
    Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string())
}

/// The Hugging Face cache folder (`HF_HOME` / `HF_HUB_CACHE` honoured).
pub fn cache_dir() -> PathBuf {
    Cache::from_env().path().clone()
}

/// The cached snapshot folder of `repo_id` at `revision`, if a complete model is there.
pub fn cached(repo_id: &str, revision: &str) -> Option<PathBuf> {
    if !repo_id.contains('/') {
        return None;
    }
    let cache = Cache::from_env().repo(repo(repo_id, revision));
    LAYOUTS.iter().find_map(|files| {
        let paths: Option<Vec<PathBuf>> = files.iter().map(|f| cache.get(f)).collect();
        paths.and_then(|p| p[0].parent().map(PathBuf::from))
    })
}

/// Downloads `repo_id` at `revision` into the cache (files already there are not fetched
/// again) and returns its snapshot folder. `progress` draws download bars on stderr.
pub fn download(repo_id: &str, revision: &str, progress: bool) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(progress)
        .build()
        .map_err(|e| Error::Hub(format!("cannot set up the client: {e}")))?;
    let r = api.repo(repo(repo_id, revision));
    let mut last_err = None;
    for files in LAYOUTS {
        match files
            .iter()
            .map(|f| r.get(f))
            .collect::<std::result::Result<Vec<_>, _>>()
        {
            Ok(paths) => {
                for f in OPTIONAL {
                    let _ = r.get(f); // absent optional files are fine
                }
                return paths[0]
                    .parent()
                    .map(PathBuf::from)
                    .ok_or_else(|| Error::Hub(format!("{repo_id}: cached file has no folder")));
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(Error::Hub(format!(
        "cannot download {repo_id}: it has neither config.json + model.safetensors nor \
         open_clip_config.json + open_clip_model.safetensors{}",
        last_err.map(|e| format!(" ({e})")).unwrap_or_default()
    )))
}
