//! What ships inside the library: the CLIP BPE tokenizer and the model presets of `models/`,
//! so that any checkpoint works without a tokenizer file and a fresh model needs no download.

use std::path::Path;

use clip_model::{ClipConfig, ClipTokenizer};

use crate::{Error, Result};

/// The CLIP BPE tokenizer (`models/tokenizer.json`).
pub const BUNDLED_TOKENIZER: &[u8] = include_bytes!("../models/tokenizer.json");

/// Model presets by name, each a Hugging Face `config.json` (`models/<name>/config.json`).
pub const PRESETS: [(&str, &str); 4] = [
    ("micro", include_str!("../models/micro/config.json")),
    ("tiny", include_str!("../models/tiny/config.json")),
    ("small", include_str!("../models/small/config.json")),
    ("vit-b-32", include_str!("../models/vit-b-32/config.json")),
];

/// The configuration of preset `name` (see [`PRESETS`]).
pub fn preset(name: &str) -> Result<ClipConfig> {
    let (_, json) = PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| Error::UnknownPreset(name.to_string()))?;
    let cfg: ClipConfig = serde_json::from_str(json)
        .map_err(|e| Error::Input(format!("bundled preset {name} does not parse: {e}")))?;
    cfg.validate()?;
    Ok(cfg)
}

/// The bundled tokenizer, padding and truncating to `context` tokens.
pub fn bundled_tokenizer(context: usize) -> Result<ClipTokenizer> {
    Ok(ClipTokenizer::from_bytes(
        BUNDLED_TOKENIZER,
        Path::new("<bundled tokenizer.json>"),
        context,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_unknown_names_are_listed() {
        for (name, _) in PRESETS {
            let cfg = preset(name).unwrap();
            assert!(cfg.projection_dim > 0, "{name}");
        }
        let err = preset("huge").unwrap_err().to_string();
        assert!(err.contains("huge") && err.contains("tiny"), "{err}");
        let tok = bundled_tokenizer(77).unwrap();
        assert_eq!(tok.encode_batch(&["a cat"]).unwrap()[0].len(), 77);
    }
}
