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
    /// How the weights are stored: f32, or int8 for the transformer blocks' linear layers
    /// (about a third of the file; loads straight into the int8 kernels, and embeds exactly
    /// as `--precision int8` on the f32 model). An int8 model is for this tool only:
    /// transformers cannot read it.
    #[arg(long, value_enum, default_value_t)]
    precision: clip::Precision,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    clip::convert(&a.model, &a.out, a.precision)?;
    let what = match a.precision {
        clip::Precision::Int8 => "Hugging Face layout, int8 weights",
        _ => "Hugging Face layout",
    };
    eprintln!("wrote {} ({what})", a.out.display());
    Ok(())
}
