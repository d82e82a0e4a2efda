//! Retrieval metrics in open_clip's names, for `clip eval` and validation during training.
//!
//! open_clip assumes one caption per image and compares each image with every *caption row*;
//! real validation sets repeat captions (several photos of "a dog"), which there would count a
//! correct retrieval as a miss. Here captions are deduplicated first: an image is correct when
//! it ranks its own caption, and a caption is correct when it ranks *any* image that has it.

use std::collections::HashMap;

use serde::Serialize;

use crate::error::{invalid, rows_of};
use crate::exact::map_score_rows;
use crate::kernel::Rows;
use crate::normalize::unit_copy;
use crate::Result;

/// Distinct captions and, for every image, which of them it has.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaptionGroups {
    /// Each caption once, in order of first appearance.
    pub captions: Vec<String>,
    /// `image_caption[i]` indexes `captions` for image `i`.
    pub image_caption: Vec<usize>,
}

/// Deduplicates per-image captions (exact string equality).
pub fn group_captions(per_image: &[String]) -> CaptionGroups {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut g = CaptionGroups::default();
    for c in per_image {
        let id = *seen.entry(c.as_str()).or_insert_with(|| {
            g.captions.push(c.clone());
            g.captions.len() - 1
        });
        g.image_caption.push(id);
    }
    g
}

/// Recall and rank statistics of one retrieval direction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DirectionMetrics {
    /// Fraction of queries whose best correct answer ranks first.
    pub r_at_1: f64,
    /// … within the top 5.
    pub r_at_5: f64,
    /// … within the top 10.
    pub r_at_10: f64,
    /// Mean 1-based rank of the best correct answer.
    pub mean_rank: f64,
    /// open_clip's median: `floor(median(rank − 1)) + 1`.
    pub median_rank: f64,
    /// Number of queries.
    pub queries: usize,
}

impl DirectionMetrics {
    /// Statistics of 1-based ranks (one per query; must not be empty).
    pub fn from_ranks(ranks: &[usize]) -> Self {
        let n = ranks.len().max(1) as f64;
        let within = |k: usize| ranks.iter().filter(|&&r| r <= k).count() as f64 / n;
        let mut sorted = ranks.to_vec();
        sorted.sort_unstable();
        let m = sorted.len();
        let median = match m {
            0 => 0.0,
            _ if m % 2 == 1 => sorted[m / 2] as f64,
            _ => (sorted[m / 2 - 1] + sorted[m / 2]) as f64 / 2.0,
        };
        Self {
            r_at_1: within(1),
            r_at_5: within(5),
            r_at_10: within(10),
            mean_rank: ranks.iter().sum::<usize>() as f64 / n,
            // floor(median(r − 1)) + 1 == floor(median(r)) for ranks r ≥ 1.
            median_rank: median.floor(),
            queries: m,
        }
    }
}

/// Both directions, plus the 1-based rank of every query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrievalMetrics {
    /// Images as queries, distinct captions as candidates.
    pub image_to_text: DirectionMetrics,
    /// Distinct captions (those some image has) as queries, images as candidates.
    pub text_to_image: DirectionMetrics,
    /// Per image: rank of its caption.
    #[serde(skip)]
    pub image_to_text_ranks: Vec<usize>,
    /// Per distinct caption that some image has, in caption order: rank of its best image.
    #[serde(skip)]
    pub text_to_image_ranks: Vec<usize>,
}

impl RetrievalMetrics {
    /// The metrics under open_clip's names (`image_to_text_R@1`, …, `text_to_image_median_rank`).
    pub fn named(&self) -> Vec<(String, f64)> {
        let mut out = Vec::with_capacity(10);
        for (dir, m) in [
            ("image_to_text", &self.image_to_text),
            ("text_to_image", &self.text_to_image),
        ] {
            out.push((format!("{dir}_mean_rank"), m.mean_rank));
            out.push((format!("{dir}_median_rank"), m.median_rank));
            out.push((format!("{dir}_R@1"), m.r_at_1));
            out.push((format!("{dir}_R@5"), m.r_at_5));
            out.push((format!("{dir}_R@10"), m.r_at_10));
        }
        out
    }
}

/// 0-based rank of candidate `best` in `scores` when candidates are sorted by score, highest
/// first, equal scores in index order (a stable sort): everything above it, plus the equal ones
/// before it. Deterministic where open_clip's unstable `argsort` is not.
#[inline]
pub(crate) fn rank0(scores: &[f32], best: usize) -> usize {
    let s = scores[best];
    let above = scores.iter().filter(|&&x| x > s).count();
    let tied_before = scores[..best].iter().filter(|&&x| x == s).count();
    above + tied_before
}

/// Retrieval metrics between images and captions.
///
/// `image_embeds` is `[N, dim]` and `text_embeds` `[M, dim]` (the *distinct* captions, see
/// [`group_captions`]); `image_caption[i]` is image `i`'s caption. Rows are normalised here
/// (cosine similarity), so raw features are fine. Captions no image has still compete as
/// image→text candidates but are not text→image queries.
pub fn retrieval_metrics(
    image_embeds: &[f32],
    text_embeds: &[f32],
    dim: usize,
    image_caption: &[usize],
) -> Result<RetrievalMetrics> {
    let n = image_caption.len();
    let images = unit_copy(image_embeds, dim, n, "image embeddings")?;
    let m = rows_of(text_embeds.len(), dim, "text embedding")?;
    let texts = unit_copy(text_embeds, dim, m, "text embeddings")?;
    if n == 0 || m == 0 {
        return Err(invalid(
            "image/caption count",
            format!("{n}/{m}"),
            "retrieval metrics need at least one image and one caption",
        ));
    }
    if let Some((i, &c)) = image_caption.iter().enumerate().find(|(_, &c)| c >= m) {
        return Err(invalid(
            "image_caption",
            c,
            format!("image {i} points past the {m} captions"),
        ));
    }

    let i2t = map_score_rows(Rows::F32(&texts), dim, &images, |i, scores| {
        rank0(scores, image_caption[i]) + 1
    });

    let mut images_of: Vec<Vec<usize>> = vec![Vec::new(); m];
    for (i, &c) in image_caption.iter().enumerate() {
        images_of[c].push(i);
    }
    let t2i: Vec<usize> = map_score_rows(Rows::F32(&images), dim, &texts, |c, scores| {
        // The first correct image in stable score order: highest score, then lowest index.
        let best =
            images_of[c]
                .iter()
                .copied()
                .reduce(|a, b| if scores[b] > scores[a] { b } else { a })?;
        Some(rank0(scores, best) + 1)
    })
    .into_iter()
    .flatten()
    .collect();

    Ok(RetrievalMetrics {
        image_to_text: DirectionMetrics::from_ranks(&i2t),
        text_to_image: DirectionMetrics::from_ranks(&t2i),
        image_to_text_ranks: i2t,
        text_to_image_ranks: t2i,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn grouping_keeps_first_appearance_order() {
        let g = group_captions(&s(&["a dog", "a cat", "a dog", "", "a cat"]));
        assert_eq!(g.captions, s(&["a dog", "a cat", ""]));
        assert_eq!(g.image_caption, vec![0, 1, 0, 2, 1]);
    }

    #[test]
    fn perfect_pairs_rank_first() {
        // Three orthogonal pairs.
        let e = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let m = retrieval_metrics(&e, &e, 3, &[0, 1, 2]).unwrap();
        for d in [m.image_to_text, m.text_to_image] {
            assert_eq!(
                (d.r_at_1, d.r_at_5, d.mean_rank, d.median_rank),
                (1.0, 1.0, 1.0, 1.0)
            );
        }
    }

    #[test]
    fn hand_computed_ranks_with_duplicate_captions_and_ties() {
        // Dimension 2. Captions: t0 = (1,0), t1 = (0,1), t2 = (1,1)/√2.
        // Images: i0 = (1,0) has t0; i1 = (0,1) has t0; i2 = (0,1) has t1; i3 = (1,0.1) has t2.
        let r = std::f32::consts::FRAC_1_SQRT_2;
        let texts = [1.0, 0.0, 0.0, 1.0, r, r];
        let images = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.1];
        let m = retrieval_metrics(&images, &texts, 2, &[0, 0, 1, 2]).unwrap();
        // i0 scores t0 = 1, t1 = 0, t2 = .707 → t0 first: rank 1.
        // i1 scores t0 = 0, t1 = 1, t2 = .707 → t0 last: rank 3.
        // i2 scores t1 highest: rank 1.
        // i3 = (1,.1)/|..| scores t0 = .995, t1 = .0995, t2 = .774 → t2 second: rank 2.
        assert_eq!(m.image_to_text_ranks, vec![1, 3, 1, 2]);
        // t0 queries: i0 = 1, i1 = 0, i2 = 0, i3 = .995 → best correct is i0 at rank 1.
        // t1: i0 = 0, i1 = 1, i2 = 1 (tie, and i1 comes first in index order), i3 = .0995 → i2
        //     is correct; stable order is i1, i2 → rank 2.
        // t2: i0 = .707, i1 = .707, i2 = .707, i3 = .774 → i3 first: rank 1.
        assert_eq!(m.text_to_image_ranks, vec![1, 2, 1]);
        let i2t = m.image_to_text;
        assert_eq!((i2t.r_at_1, i2t.r_at_5), (0.5, 1.0));
        assert_eq!(i2t.mean_rank, 7.0 / 4.0);
        // median of 0-based ranks [0, 0, 1, 2] is 0.5 → floor → 0 → +1.
        assert_eq!(i2t.median_rank, 1.0);
        let t2i = m.text_to_image;
        assert!((t2i.r_at_1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(
            (t2i.mean_rank, t2i.median_rank, t2i.queries),
            (4.0 / 3.0, 1.0, 3)
        );
        let named: Vec<String> = m.named().into_iter().map(|(k, _)| k).collect();
        assert!(named.contains(&"image_to_text_R@10".to_string()));
        assert!(named.contains(&"text_to_image_median_rank".to_string()));
    }

    #[test]
    fn all_tied_scores_rank_by_index() {
        // Every score is 0: the stable order is index order.
        let images = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let texts = [0.0, 1.0, 0.0, -0.0, 0.0, 1.0];
        // Image i has caption 2 - i.
        let m = retrieval_metrics(&images, &texts, 2, &[2, 1, 0]).unwrap();
        // Caption t1 is (0, -0): zero after normalisation stays zero; all scores are 0 anyway.
        assert_eq!(m.image_to_text_ranks, vec![3, 2, 1]);
        assert_eq!(m.text_to_image_ranks, vec![3, 2, 1]);
    }

    #[test]
    fn median_of_an_even_count_floors_like_open_clip() {
        let d = DirectionMetrics::from_ranks(&[1, 2, 3, 4]);
        // 0-based [0,1,2,3] → median 1.5 → floor 1 → +1 = 2.
        assert_eq!(d.median_rank, 2.0);
        assert_eq!(d.mean_rank, 2.5);
        assert_eq!(DirectionMetrics::from_ranks(&[1, 12, 7]).r_at_10, 2.0 / 3.0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let e = [1.0, 0.0];
        assert!(retrieval_metrics(&e, &e, 2, &[1])
            .unwrap_err()
            .to_string()
            .contains("image 0"));
        assert!(
            retrieval_metrics(&e, &e, 2, &[0, 0]).is_err(),
            "two images, one row"
        );
        assert!(retrieval_metrics(&[], &e, 2, &[]).is_err());
    }
}
