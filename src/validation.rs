//! A held-out image–caption set, scored with open_clip's retrieval metrics. Images are
//! decoded a batch at a time; a set small enough for its budget keeps its prepared pixels
//! after the first scoring (training validates many times), a larger one streams each time.

use candle_core::Tensor;
use clip_data::{SampleSet, Skip};
use clip_model::{ClipModel, ClipTokenizer, Preprocess};
use rayon::prelude::*;
use retrieval::{group_captions, retrieval_metrics, CaptionGroups, RetrievalMetrics};

use crate::{Embeddings, Error, Result};

/// Validation samples and how to prepare them.
pub struct ValSet {
    data: SampleSet,
    pre: Preprocess,
    tok: ClipTokenizer,
    /// Bytes of prepared pixels that may stay in memory between scorings.
    keep_bytes: u64,
    kept: Option<Prepared>,
}

/// The usable samples of a pass: pixels (when kept), names and first captions.
struct Prepared {
    pixels: Vec<Vec<f32>>,
    names: Vec<String>,
    captions: Vec<String>,
    skipped: Vec<Skip>,
}

/// Embeddings and metrics from one scoring.
pub struct Scored {
    /// Recall@k and ranks, image→text and text→image.
    pub metrics: RetrievalMetrics,
    /// Image embeddings `[images, dim]`, row-major.
    pub image_embeds: Vec<f32>,
    /// Embeddings of the distinct captions `[captions, dim]`.
    pub text_embeds: Vec<f32>,
    /// Embedding dimension.
    pub dim: usize,
    /// Names of the images scored, in row order.
    pub names: Vec<String>,
    /// Distinct captions and each image's caption.
    pub groups: CaptionGroups,
    /// Samples left out (unreadable image, bad caption), with why.
    pub skipped: Vec<Skip>,
}

impl ValSet {
    /// Each image is paired with its first caption; several images may share one.
    /// `keep_bytes` bounds the prepared pixels kept between scorings (0: always stream).
    pub fn new(data: SampleSet, pre: &Preprocess, tok: &ClipTokenizer, keep_bytes: u64) -> Self {
        Self {
            data,
            pre: pre.clone(),
            tok: tok.clone(),
            keep_bytes,
            kept: None,
        }
    }

    /// Embeds everything with `model` and computes recall@1/5/10 and ranks both ways.
    pub fn score(&mut self, model: &ClipModel, batch: usize) -> Result<Scored> {
        let device = model.device();
        let batch = batch.max(1);
        let s = self.pre.image_size;
        let mut img = Vec::new();
        let prepared = match self.kept.take() {
            Some(kept) => {
                for chunk in kept.pixels.chunks(batch) {
                    let px = vision_encoder::pixels_to_tensor(chunk.to_vec(), s, device)?;
                    img.push(model.encode_image(&px)?);
                }
                kept
            }
            None => {
                let per_image = 3 * s * s * 4;
                let keep = (self.data.len() * per_image) as u64 <= self.keep_bytes;
                let mut p = Prepared {
                    pixels: Vec::new(),
                    names: Vec::new(),
                    captions: Vec::new(),
                    skipped: Vec::new(),
                };
                let idx: Vec<usize> = (0..self.data.len()).collect();
                for chunk in idx.chunks(batch) {
                    let loaded: Vec<_> = chunk
                        .par_iter()
                        .map(|&i| {
                            // No downscale: preprocessing sees the file as `clip embed` does.
                            self.data.load(i, u32::MAX).map(|smp| {
                                let px = vision_encoder::preprocess(&smp.image, &self.pre);
                                let cap = smp.captions.into_iter().next().unwrap_or_default();
                                (px, cap)
                            })
                        })
                        .collect();
                    let mut pixels = Vec::with_capacity(chunk.len());
                    for (&i, r) in chunk.iter().zip(loaded) {
                        match r {
                            Ok((px, cap)) => {
                                p.names.push(self.data.name(i).to_string());
                                p.captions.push(cap);
                                pixels.push(px);
                            }
                            Err(reason) => p.skipped.push(Skip::new(self.data.name(i), reason)),
                        }
                    }
                    if pixels.is_empty() {
                        continue;
                    }
                    if keep {
                        p.pixels.extend(pixels.iter().cloned());
                    }
                    let px = vision_encoder::pixels_to_tensor(pixels, s, device)?;
                    img.push(model.encode_image(&px)?);
                }
                if p.names.is_empty() {
                    return Err(Error::Input(format!(
                        "no usable validation image ({})",
                        clip_data::summarize_skips(&p.skipped).replace('\n', "; ")
                    )));
                }
                p
            }
        };
        let groups = group_captions(&prepared.captions);
        let refs: Vec<&str> = groups.captions.iter().map(String::as_str).collect();
        let ids = self.tok.encode_batch(&refs)?;
        let mut txt = Vec::new();
        for chunk in ids.chunks(batch) {
            txt.push(model.encode_text(chunk)?);
        }
        let flat = |parts: Vec<Tensor>| -> Result<Vec<f32>> {
            Ok(Embeddings::from_tensor(&Tensor::cat(&parts, 0)?)?.into_vec())
        };
        let dim = model.config().projection_dim;
        let image_embeds = flat(img)?;
        let text_embeds = flat(txt)?;
        let metrics = retrieval_metrics(&image_embeds, &text_embeds, dim, &groups.image_caption)?;
        let scored = Scored {
            metrics,
            image_embeds,
            text_embeds,
            dim,
            names: prepared.names.clone(),
            groups,
            skipped: prepared.skipped.clone(),
        };
        if !prepared.pixels.is_empty() {
            self.kept = Some(prepared);
        }
        Ok(scored)
    }
}

/// Top-`k` image indices for caption `c` by cosine similarity.
pub fn top_images(s: &Scored, c: usize, k: usize) -> Vec<(usize, f32)> {
    let d = s.dim;
    let unit = |v: &[f32]| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter().map(|x| x / n).collect::<Vec<f32>>()
    };
    let q = unit(&s.text_embeds[c * d..(c + 1) * d]);
    let mut scored: Vec<(usize, f32)> = s
        .image_embeds
        .chunks(d)
        .enumerate()
        .map(|(i, row)| (i, unit(row).iter().zip(&q).map(|(a, b)| a * b).sum()))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.truncate(k);
    scored
}
