//! A held-out image–caption set, scored with open_clip's retrieval metrics. Images are
//! decoded a batch at a time; a set small enough for its budget keeps its prepared pixels
//! after the first scoring (training validates many times), a larger one streams each time.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use clip_data::{SampleSet, Skip};
use clip_model::{ClipModel, ClipTokenizer, Preprocess};
use rayon::prelude::*;
use retrieval::{group_captions, retrieval_metrics};

use crate::files::LabelTable;
use crate::{dot, Clip, Embeddings, Error, Features, Result};

pub use retrieval::{CaptionGroups, RetrievalMetrics, ZeroShotReport};

/// The example queries searched after a training run when the validation captions have them
/// (chosen before any training and given no special treatment in it).
pub const EXAMPLE_QUERIES: [&str; 6] = [
    "red apple",
    "dog face",
    "rocket",
    "pizza",
    "smiling face with sunglasses",
    "france flag",
];

/// CLIP's simplest prompt, for zero-shot classification without templates of one's own.
pub const DEFAULT_TEMPLATE: &str = "a photo of {}.";

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
    /// Unit image embeddings `[images, dim]`, row-major.
    pub image_embeds: Vec<f32>,
    /// Unit embeddings of the distinct captions `[captions, dim]`.
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
        let batch = batch.max(1);
        let mut img = Vec::new();
        let prepared = match self.kept.take() {
            Some(kept) => {
                for chunk in kept.pixels.chunks(batch) {
                    img.push(self.encode(model, chunk.to_vec())?);
                }
                kept
            }
            None => self.load_and_encode(model, batch, &mut img)?,
        };
        let groups = group_captions(&prepared.captions);
        let refs: Vec<&str> = groups.captions.iter().map(String::as_str).collect();
        let ids = self.tok.encode_batch(&refs)?;
        let mut txt = Vec::new();
        for chunk in ids.chunks(batch) {
            txt.push(model.encode_text(chunk)?);
        }
        let unit = |parts: Vec<Tensor>| -> Result<Vec<f32>> {
            let e = Embeddings::from_tensor(&Tensor::cat(&parts, 0)?)?;
            Ok(e.normalized()?.into_vec())
        };
        let dim = model.config().projection_dim;
        let image_embeds = unit(img)?;
        let text_embeds = unit(txt)?;
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

    /// Image features of preprocessed `pixels`.
    fn encode(&self, model: &ClipModel, pixels: Vec<Vec<f32>>) -> Result<Tensor> {
        let s = self.pre.image_size;
        let px = vision_encoder::pixels_to_tensor(pixels, s, model.device())?;
        Ok(model.encode_image(&px)?)
    }

    /// Decodes the samples a batch at a time, pushing each batch's image features onto `img`;
    /// the usable samples, with their pixels when the set fits its budget.
    fn load_and_encode(
        &self,
        model: &ClipModel,
        batch: usize,
        img: &mut Vec<Tensor>,
    ) -> Result<Prepared> {
        let s = self.pre.image_size;
        let keep = (self.data.len() * 3 * s * s * 4) as u64 <= self.keep_bytes;
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
            img.push(self.encode(model, pixels)?);
        }
        if p.names.is_empty() {
            return Err(Error::Input(format!(
                "no usable validation image ({})",
                clip_data::summarize_skips(&p.skipped).replace('\n', "; ")
            )));
        }
        Ok(p)
    }
}

/// One example search over the validation images.
#[derive(Debug, Clone)]
pub struct ExampleSearch {
    /// The query text.
    pub query: String,
    /// 1-based rank of the first right image (0: none is right).
    pub rank: usize,
    /// The best three: image row, cosine similarity, whether it is a right image.
    pub top: Vec<(usize, f32, bool)>,
}

impl Scored {
    /// Every image by cosine similarity to the unit `query`, best first (ties in image order).
    pub fn rank_images(&self, query: &[f32]) -> Vec<(usize, f32)> {
        let rows = self.image_embeds.chunks_exact(self.dim);
        let mut ranked: Vec<(usize, f32)> = rows.map(|row| dot(row, query)).enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked
    }

    /// Up to `n` text→image searches: the `queries` (unit `query_embeds`, `[queries, dim]`)
    /// that some caption equals or contains as whole words ("pizza": "slice of pizza"), then
    /// the first captions; the right images are those of the matching captions.
    pub fn example_searches(
        &self,
        queries: &[&str],
        query_embeds: &[f32],
        n: usize,
    ) -> Vec<ExampleSearch> {
        let captions = &self.groups.captions;
        let mut chosen: Vec<(String, Vec<f32>, Vec<usize>)> = Vec::new();
        for (q, e) in queries.iter().zip(query_embeds.chunks_exact(self.dim)) {
            let exact: Vec<usize> = (0..captions.len()).filter(|&c| captions[c] == *q).collect();
            let right = if exact.is_empty() {
                let has = |c: &usize| has_words(&captions[*c], q);
                (0..captions.len()).filter(has).collect()
            } else {
                exact
            };
            if !right.is_empty() {
                let mut unit = e.to_vec();
                if retrieval::normalize_rows(&mut unit, self.dim).is_ok() {
                    chosen.push((q.to_string(), unit, right));
                }
            }
        }
        let taken: Vec<usize> = chosen.iter().flat_map(|x| x.2.clone()).collect();
        for (c, e) in self.text_embeds.chunks_exact(self.dim).enumerate() {
            if chosen.len() >= n {
                break;
            }
            if !taken.contains(&c) {
                chosen.push((captions[c].clone(), e.to_vec(), vec![c]));
            }
        }
        chosen.truncate(n);
        let search = |(query, embed, right): (String, Vec<f32>, Vec<usize>)| {
            let ranked = self.rank_images(&embed);
            let is_right = |i: usize| right.contains(&self.groups.image_caption[i]);
            let rank = ranked
                .iter()
                .position(|&(i, _)| is_right(i))
                .map_or(0, |r| r + 1);
            let top = ranked
                .iter()
                .take(3)
                .map(|&(i, s)| (i, s, is_right(i)))
                .collect();
            ExampleSearch { query, rank, top }
        };
        chosen.into_iter().map(search).collect()
    }

    /// The file name of image `i` and its caption.
    pub fn image(&self, i: usize) -> (String, &str) {
        let name = Path::new(&self.names[i])
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        (name, &self.groups.captions[self.groups.image_caption[i]])
    }
}

/// Whether `caption` contains the words of `query` in a row ("slice of pizza" has "pizza").
fn has_words(caption: &str, query: &str) -> bool {
    let words: Vec<&str> = caption
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let q: Vec<&str> = query.split_whitespace().collect();
    !q.is_empty() && words.windows(q.len()).any(|w| w == q.as_slice())
}

/// What a model that ranks at random scores on each metric (open_clip's names) for validation
/// captions `groups`: text→image queries are the distinct captions, any of whose images
/// counts, image→text queries the images, each with one right caption.
pub fn chance_levels(groups: &CaptionGroups) -> BTreeMap<String, f64> {
    let (n, m) = (groups.image_caption.len(), groups.captions.len());
    let mut per_caption = vec![0usize; m];
    for &c in &groups.image_caption {
        per_caption[c] += 1;
    }
    // P(one of the g right images among the top k of n) = 1 − C(n−g, k) / C(n, k).
    let hit_within = |g: usize, k: usize| {
        1.0 - (0..k.min(n)).fold(1.0, |p, j| {
            p * (n.saturating_sub(g + j)) as f64 / (n - j) as f64
        })
    };
    let mean = |f: &dyn Fn(usize) -> f64| {
        let used: Vec<usize> = per_caption.iter().copied().filter(|&g| g > 0).collect();
        used.iter().map(|&g| f(g)).sum::<f64>() / used.len().max(1) as f64
    };
    let mut out = BTreeMap::new();
    for k in [1, 5, 10] {
        out.insert(format!("image_to_text_R@{k}"), k.min(m) as f64 / m as f64);
        out.insert(format!("text_to_image_R@{k}"), mean(&|g| hit_within(g, k)));
    }
    // The best of g random ranks among n lies at (n + 1) / (g + 1) on average.
    let best_rank = |g: usize| (n + 1) as f64 / (g + 1) as f64;
    out.insert("image_to_text_mean_rank".into(), (m + 1) as f64 / 2.0);
    out.insert("image_to_text_median_rank".into(), m.div_ceil(2) as f64);
    out.insert("text_to_image_mean_rank".into(), mean(&best_rank));
    out.insert("text_to_image_median_rank".into(), mean(&best_rank).floor());
    out
}

/// Zero-shot classification of the scored images that `labels` lists.
pub struct ZeroShot {
    /// Class names in name order; the report's class ids index this list.
    pub classes: Vec<String>,
    /// Top-1/5 accuracy and each class's.
    pub report: ZeroShotReport,
}

/// Classifies the images of `scored` that `labels` lists among its class names, each class
/// the mean embedding of its prompts from `templates` (`{}` for the name; none: CLIP's
/// [`DEFAULT_TEMPLATE`]).
pub fn zero_shot(
    clip: &Clip,
    scored: &Scored,
    labels: &LabelTable,
    templates: &[String],
    batch: usize,
) -> Result<ZeroShot> {
    let label_of = labels.by_path();
    let mut classes = labels.classes.clone();
    classes.sort();
    let (mut rows, mut ys) = (Vec::new(), Vec::new());
    for (i, name) in scored.names.iter().enumerate() {
        let canon = Path::new(name).canonicalize().ok();
        if let Some(&id) = canon.and_then(|p| label_of.get(&p)) {
            rows.push(i);
            ys.push(
                classes
                    .binary_search(&labels.classes[id])
                    .expect("a listed class"),
            );
        }
    }
    if rows.is_empty() {
        return Err(Error::Config {
            field: "labels",
            reason: format!("no image of the data appears in {}", labels.path.display()),
        });
    }
    let default = [DEFAULT_TEMPLATE.to_string()];
    let templates = if templates.is_empty() {
        &default[..]
    } else {
        templates
    };
    if let Some(t) = templates.iter().find(|t| !t.contains("{}")) {
        return Err(Error::Config {
            field: "templates",
            reason: format!("template {t:?} has no {{}} for the label"),
        });
    }
    let prompts: Vec<String> = classes
        .iter()
        .flat_map(|n| templates.iter().map(move |t| t.replace("{}", n)))
        .collect();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let text = clip.text_features(&refs, batch.max(1), Features::Embeds, &())?;
    let text = Embeddings::from_tensor(&text)?;
    let d = scored.dim;
    let class_rows = retrieval::class_embeddings(text.as_slice(), d, templates.len())?;
    let images: Vec<f32> = rows
        .iter()
        .flat_map(|&i| scored.image_embeds[i * d..(i + 1) * d].iter().copied())
        .collect();
    let report = retrieval::zero_shot(&images, &class_rows, d, &ys)?;
    Ok(ZeroShot { classes, report })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chance levels against every ordering of five images (three captions, one of them
    /// on three images): the mean over all 120 rankings of each metric, counted out.
    #[test]
    fn chance_levels_are_the_mean_over_every_random_ranking() {
        let per_image = ["a", "b", "a", "c", "a"].map(String::from);
        let groups = retrieval::group_captions(&per_image);
        let chance = chance_levels(&groups);
        let (n, m) = (5usize, 3usize);
        // Every permutation of the images (text→image) by Heap's algorithm.
        let mut perms = Vec::new();
        let mut p: Vec<usize> = (0..n).collect();
        let mut c = vec![0usize; n];
        perms.push(p.clone());
        let mut i = 0;
        while i < n {
            if c[i] < i {
                p.swap(if i % 2 == 0 { 0 } else { c[i] }, i);
                perms.push(p.clone());
                c[i] += 1;
                i = 0;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
        assert_eq!(perms.len(), 120);
        let (mut within, mut rank_sum) = ([0.0f64; 3], 0.0);
        for order in &perms {
            for cap in 0..m {
                // 1-based rank of the first image with caption `cap`.
                let best = order
                    .iter()
                    .position(|&img| groups.image_caption[img] == cap)
                    .unwrap()
                    + 1;
                for (w, k) in within.iter_mut().zip([1, 5, 10]) {
                    *w += f64::from(u8::from(best <= k));
                }
                rank_sum += best as f64;
            }
        }
        let runs = (perms.len() * m) as f64;
        for (w, k) in within.iter().zip([1, 5, 10]) {
            let got = chance[&format!("text_to_image_R@{k}")];
            assert!(
                (got - w / runs).abs() < 1e-12,
                "R@{k}: {got} vs {}",
                w / runs
            );
        }
        let mean_rank = chance["text_to_image_mean_rank"];
        assert!((mean_rank - rank_sum / runs).abs() < 1e-12, "{mean_rank}");
        // Image→text: one right caption among three, uniformly placed.
        assert_eq!(chance["image_to_text_R@1"], 1.0 / 3.0);
        assert_eq!(chance["image_to_text_R@5"], 1.0);
        assert_eq!(chance["image_to_text_mean_rank"], 2.0);
    }

    /// Queries found as whole words of a caption are searched first, then the first captions;
    /// the right image's rank and the top three come from cosine similarity.
    #[test]
    fn example_searches_find_queries_in_captions_and_rank_the_right_images() {
        let captions = ["slice of pizza", "a rocket", "pizzas"].map(String::from);
        let groups = retrieval::group_captions(&captions);
        let embeds = vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        let scored = Scored {
            metrics: retrieval_metrics(&embeds, &embeds, 2, &groups.image_caption).unwrap(),
            image_embeds: embeds.clone(),
            text_embeds: embeds,
            dim: 2,
            names: vec!["a/x.png".into(), "b/y.png".into(), "z.png".into()],
            groups,
            skipped: Vec::new(),
        };
        // "pizza" matches caption 0 only ("pizzas" is another word); its embedding points at
        // image 1, so the right image (0) comes second.
        let found = scored.example_searches(&["pizza", "dog"], &[0.0, 2.0, 1.0, 0.0], 2);
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].query.as_str(), found[0].rank), ("pizza", 3));
        assert_eq!(
            found[0].top.iter().map(|t| t.0).collect::<Vec<_>>(),
            [1, 2, 0]
        );
        assert!(found[0].top[2].2 && !found[0].top[0].2);
        // Then the first caption not already searched for: "a rocket".
        assert_eq!((found[1].query.as_str(), found[1].rank), ("a rocket", 1));
        assert_eq!(scored.image(1), ("y.png".to_string(), "a rocket"));
        assert!(has_words("slice of pizza", "pizza") && !has_words("pizzas", "pizza"));
    }
}
