//! Any supported checkpoint layout in, the Hugging Face layout out.

use std::io::Write;
use std::path::Path;

use candle_core::Device;

use crate::error::io_at;
use crate::model::load_checkpoint;
use crate::{resolve_model_dir, Precision, Result, BUNDLED_TOKENIZER};

/// Writes the model `spec` (a folder in either layout, or a cached Hub id) to `out` in the
/// Hugging Face layout, replacing `out` atomically. A source without a tokenizer gets the
/// bundled one, so the result is complete on its own.
pub fn convert_to_hf(spec: &str, out: &Path) -> Result<()> {
    convert(spec, out, Precision::F32)
}

/// [`convert_to_hf`], with the weights stored in `precision`: f32 as loaded, or int8 for
/// the transformer blocks' linear layers (a quarter of their size; loads straight into the
/// int8 kernels and embeds exactly as `with_precision(Precision::Int8)` on the source).
/// bf16 is an error: its weights are rounded at load from an f32 checkpoint.
pub fn convert(spec: &str, out: &Path, precision: Precision) -> Result<()> {
    let dir = resolve_model_dir(spec)?;
    let mut ckpt = load_checkpoint(&dir, &Device::Cpu)?;
    let refuse = |reason| clip_model::ModelError::Precision { precision, reason };
    if precision == Precision::Bf16 {
        return Err(refuse(
            "checkpoints are saved in f32 or int8; bf16 is rounded from f32 at load \
             (--precision bf16 on embed, index build, search and serve)",
        )
        .into());
    }
    if ckpt.precision() != precision {
        if ckpt.precision() == Precision::Int8 {
            return Err(refuse(
                "this checkpoint stores int8 weights; convert the f32 checkpoint it came from",
            )
            .into());
        }
        ckpt = ckpt.quantized()?;
    }
    let bundled;
    let tokenizer = match &ckpt.tokenizer {
        Some(p) => p.as_path(),
        None => {
            let tmp = std::env::temp_dir();
            let mut f = tempfile::NamedTempFile::new().map_err(io_at(&tmp))?;
            f.write_all(BUNDLED_TOKENIZER).map_err(io_at(&tmp))?;
            bundled = f;
            bundled.path()
        }
    };
    clip_model::save_hf(
        out,
        &ckpt.config,
        &ckpt.preprocess,
        &ckpt.weights,
        Some(tokenizer),
    )?;
    Ok(())
}
