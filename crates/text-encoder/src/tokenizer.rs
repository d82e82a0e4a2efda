//! CLIP tokenisation: start/end tokens, truncation that keeps the end token, padding.

use std::path::Path;

use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::{Result, TextError};

/// The CLIP BPE tokenizer, producing fixed-length rows as transformers' `CLIPTokenizer`
/// does with `padding="max_length", truncation=True`.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    context_length: usize,
    eos: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("context_length", &self.context_length)
            .field("eos", &self.eos)
            .finish()
    }
}

/// CLIP's end-of-text token, also used as padding (as transformers does).
pub const END_OF_TEXT: &str = "<|endoftext|>";

impl ClipTokenizer {
    /// Loads a `tokenizer.json` and fixes rows to `context_length` tokens.
    pub fn from_file(path: &Path, context_length: usize) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| TextError::TokenizerLoad {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_bytes(&bytes, path, context_length)
    }

    /// Parses `tokenizer.json` content; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &Path, context_length: usize) -> Result<Self> {
        let load_err = |message: String| TextError::TokenizerLoad {
            path: origin.to_path_buf(),
            message,
        };
        let mut inner = Tokenizer::from_bytes(bytes).map_err(|e| load_err(e.to_string()))?;
        let eos = inner
            .token_to_id(END_OF_TEXT)
            .ok_or_else(|| load_err(format!("vocabulary has no {END_OF_TEXT} token")))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(context_length),
            pad_id: eos,
            pad_token: END_OF_TEXT.to_string(),
            ..Default::default()
        }));
        inner
            .with_truncation(Some(TruncationParams {
                max_length: context_length,
                ..Default::default()
            }))
            .map_err(|e| load_err(e.to_string()))?;
        Ok(Self {
            inner,
            context_length,
            eos,
        })
    }

    /// Row length of every encoding.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The end-of-text id.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Number of tokens in the vocabulary, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes captions into rows of exactly `context_length` ids.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| TextError::Tokenize(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }
}
