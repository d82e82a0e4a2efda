//! A held-out image–caption set, prepared once and scored with open_clip's retrieval metrics.

use anyhow::Result;
use candle_core::{Device, Tensor};
use clip_data::Dataset;
use clip_model::{ClipModel, ClipTokenizer, Preprocess};
use rayon::prelude::*;
use retrieval::{group_captions, retrieval_metrics, CaptionGroups, RetrievalMetrics};

/// Validation images (already preprocessed) and their distinct captions (already tokenized).
pub struct ValSet {
    pixels: Vec<Vec<f32>>,
    size: usize,
    pub names: Vec<String>,
    pub groups: CaptionGroups,
    ids: Vec<Vec<u32>>,
}

/// Embeddings from the last scoring, for example searches.
pub struct Scored {
    pub metrics: RetrievalMetrics,
    pub image_embeds: Vec<f32>,
    pub text_embeds: Vec<f32>,
    pub dim: usize,
}

impl ValSet {
    /// Each image is paired with its first caption; several images may share one.
    pub fn new(data: &Dataset, pre: &Preprocess, tok: &ClipTokenizer) -> Result<Self> {
        let pixels: Vec<Vec<f32>> = data
            .items
            .par_iter()
            .map(|it| vision_encoder::preprocess(&it.image, pre))
            .collect();
        let per_image: Vec<String> = data.items.iter().map(|it| it.captions[0].clone()).collect();
        let groups = group_captions(&per_image);
        let refs: Vec<&str> = groups.captions.iter().map(String::as_str).collect();
        Ok(Self {
            pixels,
            size: pre.image_size,
            names: data.items.iter().map(|it| it.name.clone()).collect(),
            ids: tok.encode_batch(&refs)?,
            groups,
        })
    }

    pub fn len(&self) -> usize {
        self.pixels.len()
    }

    /// Embeds everything with `model` and computes recall@1/5/10 and ranks both ways.
    pub fn score(&self, model: &ClipModel, batch: usize) -> Result<Scored> {
        let device = model.device();
        let mut img = Vec::new();
        for chunk in self.pixels.chunks(batch) {
            let px = vision_encoder::pixels_to_tensor(chunk.to_vec(), self.size, device)?;
            img.push(model.encode_image(&px)?);
        }
        let mut txt = Vec::new();
        for chunk in self.ids.chunks(batch) {
            txt.push(model.encode_text(chunk)?);
        }
        let flat = |parts: Vec<Tensor>| -> Result<Vec<f32>> {
            Ok(Tensor::cat(&parts, 0)?
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1()?)
        };
        let dim = model.config().projection_dim;
        let image_embeds = flat(img)?;
        let text_embeds = flat(txt)?;
        let metrics =
            retrieval_metrics(&image_embeds, &text_embeds, dim, &self.groups.image_caption)?;
        Ok(Scored {
            metrics,
            image_embeds,
            text_embeds,
            dim,
        })
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
