//! `clip embed`: image and caption features into a safetensors file (or, for one kind, a
//! `.npy` array or a `.parquet` table).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clip::export::Format;
use clip::{Clip, DeviceKind, Embeddings, Features};

use super::common::{self, PrecisionArg};

#[derive(Debug, clap::Args)]
pub struct EmbedArgs {
    /// Model directory (HF or open_clip layout) or a cached Hub repo id.
    #[arg(long)]
    model: String,
    /// Image files or folders (a folder's images are taken in sorted file-name order).
    #[arg(long, num_args = 1..)]
    images: Vec<PathBuf>,
    /// A text file with one caption per line (an empty line is an empty caption).
    #[arg(long)]
    texts: Option<PathBuf>,
    /// Output file: safetensors with `image_embeds` and `text_embeds`; or, for images or
    /// captions alone, `.npy` (a float32 `[N, D]` array) or `.parquet` (an `embedding` column
    /// beside `image_path` or `caption`).
    #[arg(long)]
    out: PathBuf,
    /// Write unit-length rows.
    #[arg(long)]
    normalize: bool,
    /// Items per forward pass.
    #[arg(long, default_value_t = clip::DEFAULT_BATCH)]
    batch_size: usize,
    /// What to write: the embeddings, or each tower's pooled output before its projection
    /// (default: pooled for a model trained with --objective images, else embeds).
    #[arg(long, value_enum)]
    features: Option<Features>,
    /// Device to run on.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceKind,
    #[command(flatten)]
    precision: PrecisionArg,
}

pub fn run(a: EmbedArgs) -> Result<()> {
    if a.images.is_empty() && a.texts.is_none() {
        bail!("nothing to embed: give --images and/or --texts");
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let format = match a.out.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("npy") => Some(Format::Npy),
        Some(e) if e.eq_ignore_ascii_case("parquet") => Some(Format::Parquet),
        _ => None,
    };
    if format.is_some() && !a.images.is_empty() && a.texts.is_some() {
        bail!(
            "{} holds one kind of embeddings: give --images or --texts, or write .safetensors",
            a.out.display()
        );
    }
    // Read every input before the (slow) model load so that mistakes surface at once.
    let files = clip::files::collect_images(&a.images)?;
    let captions = match &a.texts {
        Some(p) => clip::files::read_captions(p)?,
        None => Vec::new(),
    };
    let device = a.device.device()?;
    let m = a.precision.open(&a.model, &device)?;
    let which = Features::resolve(a.features, m.model());
    let bar = common::Bar::default();
    let images = m.image_features(&files, a.batch_size, which, &bar)?;
    let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
    let texts = m.text_features(&refs, a.batch_size, which, &bar)?;
    let (mut images, mut texts) = (
        Embeddings::from_tensor(&images)?,
        Embeddings::from_tensor(&texts)?,
    );
    if a.normalize {
        (images, texts) = (images.normalized()?, texts.normalized()?);
    }
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    match format {
        Some(format) if a.texts.is_some() => {
            clip::export::write_embeddings(&a.out, format, &texts, "caption", &captions)?
        }
        Some(format) => {
            clip::export::write_embeddings(&a.out, format, &images, "image_path", &names)?
        }
        None => write_safetensors(&a, &images, &texts, &names, &m, which)?,
    }
    if which == Features::Pooled {
        eprintln!("features: {}", which.describe(a.features));
        eprintln!(
            "wrote {} image and {} text pooled features (dim {} and {}) to {}",
            files.len(),
            captions.len(),
            images.dim(),
            texts.dim(),
            a.out.display()
        );
    } else {
        eprintln!(
            "wrote {} image and {} text embeddings (dim {}) to {}",
            files.len(),
            captions.len(),
            m.dim(),
            a.out.display()
        );
    }
    Ok(())
}

/// Both kinds of rows with what made them, as one safetensors file.
fn write_safetensors(
    a: &EmbedArgs,
    images: &Embeddings,
    texts: &Embeddings,
    names: &[String],
    m: &Clip,
    which: Features,
) -> Result<()> {
    let metadata = HashMap::from([
        ("image_files".to_string(), serde_json::to_string(names)?),
        ("model".to_string(), m.dir().display().to_string()),
        ("normalized".to_string(), a.normalize.to_string()),
        ("features".to_string(), which.name().to_string()),
    ]);
    let tensors = [("image_embeds", images), ("text_embeds", texts)];
    Ok(clip::export::write_safetensors(&a.out, &tensors, metadata)?)
}
