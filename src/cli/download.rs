//! `clip download`: fetch a model from the Hugging Face Hub into the standard cache.

use anyhow::{Context, Result};
use clip::hub;

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

pub fn run(a: DownloadArgs) -> Result<()> {
    let dir = if a.offline {
        hub::cached(&a.repo_id, &a.revision).with_context(|| {
            format!(
                "{} (revision {}) is not in the Hugging Face cache at {}",
                a.repo_id,
                a.revision,
                hub::cache_dir().display()
            )
        })?
    } else {
        hub::download(&a.repo_id, &a.revision, true)?
    };
    println!("{}", dir.display());
    Ok(())
}
