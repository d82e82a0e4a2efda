//! Any supported checkpoint layout in, the Hugging Face layout out.

use std::io::Write;
use std::path::Path;

use candle_core::Device;

use crate::error::io_at;
use crate::model::load_checkpoint;
use crate::{resolve_model_dir, Result, BUNDLED_TOKENIZER};

/// Writes the model `spec` (a folder in either layout, or a cached Hub id) to `out` in the
/// Hugging Face layout, replacing `out` atomically. A source without a tokenizer gets the
/// bundled one, so the result is complete on its own.
pub fn convert_to_hf(spec: &str, out: &Path) -> Result<()> {
    let dir = resolve_model_dir(spec)?;
    let ckpt = load_checkpoint(&dir, &Device::Cpu)?;
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
        ckpt.weights.tensors(),
        Some(tokenizer),
    )?;
    Ok(())
}
