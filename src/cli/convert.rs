//! `clip convert`: any supported layout in, the Hugging Face layout out.

use std::path::PathBuf;

use anyhow::Result;

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
    clip::convert_to_hf(&a.model, &a.out)?;
    eprintln!("wrote {} (Hugging Face layout)", a.out.display());
    Ok(())
}
