//! Zero-shot classification: classes as text prompts, images labelled by the nearest class.

use serde::Serialize;

use crate::error::{invalid, rows_of};
use crate::eval::rank0;
use crate::exact::map_score_rows;
use crate::kernel::Rows;
use crate::normalize::unit_copy;
use crate::{Result, RetrievalError};

/// One embedding per class from its prompt-template embeddings, as CLIP does: normalise each
/// template's embedding, average them, normalise the mean.
///
/// `template_embeds` is `[classes · templates, dim]`, class-major (class 0's templates first).
pub fn class_embeddings(
    template_embeds: &[f32],
    dim: usize,
    templates_per_class: usize,
) -> Result<Vec<f32>> {
    if templates_per_class == 0 {
        return Err(invalid(
            "templates_per_class",
            0,
            "each class needs at least one template",
        ));
    }
    if dim == 0
        || !template_embeds
            .len()
            .is_multiple_of(dim * templates_per_class)
    {
        return Err(RetrievalError::Shape(format!(
            "{} template embedding floats are not classes × {templates_per_class} templates × {dim} dimensions",
            template_embeds.len()
        )));
    }
    let rows = template_embeds.len() / dim;
    let unit = unit_copy(template_embeds, dim, rows, "template embeddings")?;
    let mut means = vec![0f32; rows / templates_per_class * dim];
    let classes = unit.chunks_exact(templates_per_class * dim);
    for (mean, class) in means.chunks_exact_mut(dim).zip(classes) {
        for t in class.chunks_exact(dim) {
            mean.iter_mut().zip(t).for_each(|(m, v)| *m += v);
        }
    }
    unit_copy(&means, dim, rows / templates_per_class, "class embeddings")
}

/// The class most often predicted instead of the right one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// The wrongly predicted class.
    pub class: usize,
    /// How many images of the true class got it.
    pub count: usize,
}

/// Accuracy on the images of one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClassReport {
    /// The class index.
    pub class: usize,
    /// Images labelled with it.
    pub count: usize,
    /// Of those, predicted correctly (top-1).
    pub correct: usize,
    /// `correct / count`; `None` when no image has this class.
    pub accuracy: Option<f64>,
    /// The most frequent wrong prediction (ties: lowest class index); `None` without mistakes.
    pub most_confused: Option<Confusion>,
}

/// Zero-shot results over a labelled image set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZeroShotReport {
    /// Fraction of images whose true class scores highest.
    pub top1: f64,
    /// Fraction whose true class is among the 5 highest.
    pub top5: f64,
    /// Number of images.
    pub images: usize,
    /// One report per class, in class order.
    pub per_class: Vec<ClassReport>,
    /// Top-1 prediction per image.
    #[serde(skip)]
    pub predictions: Vec<usize>,
}

/// Classifies every image by its nearest class embedding and scores the result against
/// `labels`. `image_embeds` is `[N, dim]`, `class_embeds` `[C, dim]` (e.g. from
/// [`class_embeddings`]); rows are normalised here. Ties go to the lower class index, for the
/// prediction and for the top-5 rank alike.
pub fn zero_shot(
    image_embeds: &[f32],
    class_embeds: &[f32],
    dim: usize,
    labels: &[usize],
) -> Result<ZeroShotReport> {
    let n = labels.len();
    let images = unit_copy(image_embeds, dim, n, "image embeddings")?;
    // No class at all fails below: every label is past the last class, or there is no image.
    let c = rows_of(class_embeds.len(), dim, "class embedding")?;
    let classes = unit_copy(class_embeds, dim, c, "class embeddings")?;
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= c) {
        return Err(invalid(
            "label",
            l,
            format!("image {i} has a label past the {c} classes"),
        ));
    }
    if n == 0 {
        return Err(invalid(
            "images",
            0,
            "zero-shot accuracy needs at least one image",
        ));
    }
    // (prediction, 0-based rank of the true class)
    let per_image: Vec<(usize, usize)> =
        map_score_rows(Rows::F32(&classes), dim, &images, |i, s| {
            let pred = (0..c).fold(0, |best, j| if s[j] > s[best] { j } else { best });
            (pred, rank0(s, labels[i]))
        });
    let mut confusion = vec![vec![0usize; c]; c];
    for (&(pred, _), &l) in per_image.iter().zip(labels) {
        confusion[l][pred] += 1;
    }
    let per_class = confusion
        .iter()
        .enumerate()
        .map(|(class, row)| {
            let count: usize = row.iter().sum();
            let correct = row[class];
            let most_confused = row
                .iter()
                .enumerate()
                .filter(|&(j, &k)| j != class && k > 0)
                // The highest count; among equal counts the lowest class.
                .max_by_key(|&(j, &k)| (k, std::cmp::Reverse(j)))
                .map(|(j, &k)| Confusion { class: j, count: k });
            ClassReport {
                class,
                count,
                correct,
                accuracy: (count > 0).then(|| correct as f64 / count as f64),
                most_confused,
            }
        })
        .collect();
    let frac = |f: &dyn Fn(&(usize, usize), usize) -> bool| {
        per_image
            .iter()
            .zip(labels)
            .filter(|(p, &l)| f(p, l))
            .count() as f64
            / n as f64
    };
    Ok(ZeroShotReport {
        top1: frac(&|&(pred, _), l| pred == l),
        top5: frac(&|&(_, rank), _| rank < 5),
        images: n,
        per_class,
        predictions: per_image.iter().map(|p| p.0).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_embedding_is_the_renormalised_mean_of_unit_templates() {
        // Class 0: (2,0) and (0,5) → units (1,0), (0,1) → mean (.5,.5) → (1/√2, 1/√2).
        // Class 1: (0,-3) alone twice → (0,-1).
        let t = [2.0, 0.0, 0.0, 5.0, 0.0, -3.0, 0.0, -3.0];
        let c = class_embeddings(&t, 2, 2).unwrap();
        let r = std::f32::consts::FRAC_1_SQRT_2;
        let want = [r, r, 0.0, -1.0];
        assert!(
            c.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{c:?}"
        );
        assert!(class_embeddings(&t, 2, 3).is_err());
    }

    #[test]
    fn hand_built_accuracy_and_confusion() {
        // Seven classes on the unit circle at 0°, 10°, 20°, …, 60°; dimension 2.
        let class: Vec<f32> = (0..7)
            .flat_map(|j| {
                let a = (j as f32 * 10.0).to_radians();
                [a.cos(), a.sin()]
            })
            .collect();
        let at = |deg: f32| {
            let a = deg.to_radians();
            [a.cos(), a.sin()]
        };
        // Image angle → nearest class: 1° → 0, 9° → 1, 21° → 2, 58° → 6, 12° → 1, 33° → 3.
        let images: Vec<f32> = [1.0, 9.0, 21.0, 58.0, 12.0, 33.0]
            .iter()
            .flat_map(|&d| at(d))
            .collect();
        let labels = [0, 0, 2, 0, 0, 3];
        let r = zero_shot(&images, &class, 2, &labels).unwrap();
        assert_eq!(r.predictions, vec![0, 1, 2, 6, 1, 3]);
        assert_eq!(r.top1, 3.0 / 6.0);
        // Rank of class 0 for the 58° image: classes 6, 5, 4, 3, 2, 1 are nearer → 0-based rank
        // 6, outside the top 5. For 9°: class 1 is nearer (rank 1); for 12°: classes 1 and 2
        // (rank 2) → inside.
        assert_eq!(r.top5, 5.0 / 6.0);
        let c0 = r.per_class[0];
        assert_eq!((c0.count, c0.correct), (4, 1));
        assert_eq!(c0.accuracy, Some(0.25));
        assert_eq!(c0.most_confused, Some(Confusion { class: 1, count: 2 }));
        assert_eq!(r.per_class[2].most_confused, None);
        assert_eq!(r.per_class[2].accuracy, Some(1.0));
        assert_eq!(r.per_class[4].accuracy, None);
    }

    #[test]
    fn ties_go_to_the_lower_class() {
        // Two identical classes: the image ties on both, predicted class 0.
        let classes = [1.0, 0.0, 1.0, 0.0];
        let r = zero_shot(&[1.0, 0.0, 1.0, 0.0], &classes, 2, &[0, 1]).unwrap();
        assert_eq!(r.predictions, vec![0, 0]);
        assert_eq!(r.top1, 0.5);
        assert_eq!(r.top5, 1.0);
        assert_eq!(
            r.per_class[1].most_confused,
            Some(Confusion { class: 0, count: 1 })
        );
        assert!(zero_shot(&[1.0, 0.0], &classes, 2, &[2]).is_err());
    }
}
