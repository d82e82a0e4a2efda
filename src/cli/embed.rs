//! `clip embed`: image and caption features into a safetensors file (or, for one kind, a
//! `.npy` array or a `.parquet` table).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};

use clip::export::Format;
use clip::{Clip, Embeddings};

use super::common::{self, DeviceArg, FeaturesArg, PrecisionArg};

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
    features: Option<FeaturesArg>,
    /// Device to run on.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceArg,
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
    let which = FeaturesArg::resolve(a.features, m.model());
    let bar = common::Bar::default();
    let mut images = m.image_features(&files, a.batch_size, which, &bar)?;
    let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
    let mut texts = m.text_features(&refs, a.batch_size, which, &bar)?;
    if a.normalize {
        images = normalize_rows(&images)?;
        texts = normalize_rows(&texts)?;
    }
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    if let Some(format) = format {
        let (t, column, labels) = if a.texts.is_some() {
            (&texts, "caption", &captions)
        } else {
            (&images, "image_path", &names)
        };
        let rows = Embeddings::from_tensor(t)?;
        common::write_atomically(&a.out, |tmp| {
            Ok(clip::export::write_embeddings(
                tmp, format, &rows, column, labels,
            )?)
        })?;
    } else {
        write_safetensors(&a, &images, &texts, &names, &m, which)?;
    }

    if which == FeaturesArg::Pooled {
        eprintln!("features: {}", which.describe(a.features));
        eprintln!(
            "wrote {} image and {} text pooled features (dim {} and {}) to {}",
            files.len(),
            captions.len(),
            images.dim(1)?,
            texts.dim(1)?,
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
    images: &Tensor,
    texts: &Tensor,
    names: &[String],
    m: &Clip,
    which: FeaturesArg,
) -> Result<()> {
    let tensors = HashMap::from([
        ("image_embeds".to_string(), images.to_device(&Device::Cpu)?),
        ("text_embeds".to_string(), texts.to_device(&Device::Cpu)?),
    ]);
    let metadata = HashMap::from([
        ("image_files".to_string(), serde_json::to_string(names)?),
        ("model".to_string(), m.dir().display().to_string()),
        ("normalized".to_string(), a.normalize.to_string()),
        ("features".to_string(), which.name().to_string()),
    ]);
    common::write_atomically(&a.out, |tmp| {
        safetensors::serialize_to_file(&tensors, Some(metadata), tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))
    })
}

fn normalize_rows(x: &Tensor) -> Result<Tensor> {
    if x.dim(0)? == 0 {
        return Ok(x.clone());
    }
    Ok(x.broadcast_div(&(x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-12)?)?)
}
