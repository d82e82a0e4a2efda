//! `clip convert`: any supported layout in, the Hugging Face layout out.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clip_model::Checkpoint;

use super::common;

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// Model directory (HF or open_clip layout) or a cached Hub repo id.
    #[arg(long)]
    model: String,
    /// Output directory (replaced atomically).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let dir = common::resolve_model_dir(&a.model)?;
    let ckpt = Checkpoint::load(&dir, &Device::Cpu)
        .with_context(|| format!("cannot load model {}", dir.display()))?;
    // The bundled tokenizer stands in when the source has none, so the output is complete.
    let bundled;
    let tokenizer = match &ckpt.tokenizer {
        Some(p) => p.as_path(),
        None => {
            bundled = tempfile_with(common::BUNDLED_TOKENIZER)?;
            bundled.path()
        }
    };
    clip_model::save_hf(
        &a.out,
        &ckpt.config,
        &ckpt.preprocess,
        ckpt.weights.tensors(),
        Some(tokenizer),
    )?;
    eprintln!("wrote {} (Hugging Face layout)", a.out.display());
    Ok(())
}

fn tempfile_with(bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new()?;
    f.write_all(bytes)?;
    Ok(f)
}
