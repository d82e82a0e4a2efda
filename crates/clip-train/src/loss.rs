//! Contrastive objectives.

use std::ops::Range;

use candle_core::{Result, Tensor, D};

/// Row-wise L2 normalisation of a tensor inside the loss's autograd graph.
///
/// Not `retrieval::normalize_rows`, the one normalisation of plain `f32` rows, which errors on
/// a zero row: here a training step must go on and its backward needs a finite gradient
/// everywhere, so `1e-12` under the square root keeps a zero row at zero with a bounded
/// gradient instead of NaN (as `torch.nn.functional.normalize`'s epsilon does).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&(x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?)
}

/// The anchors of a loss: all rows of the batch in one process, or one rank's block of the
/// global batch in data-parallel training. Each loss sums its per-anchor terms and divides by
/// the global normaliser, so the losses of a partition of the rows add up to the whole
/// batch's loss (and so do their gradients).
pub type Anchors = Range<usize>;

/// One-hot `[rows.len(), n]` mask of each anchor's own column (anchor i → column
/// `rows.start + i`), on the device and type of `like`.
pub(crate) fn own_columns(rows: &Anchors, n: usize, like: &Tensor) -> Result<Tensor> {
    let mut m = vec![0f32; rows.len() * n];
    for (i, c) in rows.clone().enumerate() {
        m[i * n + c] = 1.0;
    }
    Tensor::from_vec(m, (rows.len(), n), like.device())?.to_dtype(like.dtype())
}

/// Cosine similarities times `scale` of the anchors `rows` in both directions: their images
/// against every caption, and their captions against every image (each `[rows.len(), n]`).
pub(crate) fn anchor_logits(
    img: &Tensor,
    txt: &Tensor,
    scale: &Tensor,
    rows: &Anchors,
) -> Result<(Tensor, Tensor)> {
    let (img, txt) = (l2_normalize(img)?, l2_normalize(txt)?);
    let side = |a: &Tensor, b: &Tensor| {
        a.narrow(0, rows.start, rows.len())?
            .matmul(&b.t()?)?
            .broadcast_mul(scale)
    };
    Ok((side(&img, &txt)?, side(&txt, &img)?))
}

/// Summed cross-entropy of each row of `logits` against the column marked in `target`.
fn row_cross_entropy(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?; // [r, 1]
    let own = (shifted * target)?.sum_keepdim(D::Minus1)?; // [r, 1]
    (lse - own)?.sum_all()
}

/// CLIP's symmetric in-batch contrastive loss.
///
/// With unit-normalised `img`, `txt` of shape `[B, D]` and logits `L = exp(t)·img·txtᵀ`:
/// `loss = ½·(CE(L, diag) + CE(Lᵀ, diag))`. Matching pairs are the positives and the other
/// B−1 captions (images) of the batch are the negatives. Equal logits give `ln B`.
pub fn clip_loss(img: &Tensor, txt: &Tensor, logit_scale: &Tensor) -> Result<Tensor> {
    clip_loss_rows(img, txt, logit_scale, 0..img.dim(0)?)
}

/// The part of [`clip_loss`] whose anchors (image rows of `L`, caption rows of `Lᵀ`) are
/// `rows`; summed over a partition of the rows it is the whole loss.
pub fn clip_loss_rows(
    img: &Tensor,
    txt: &Tensor,
    logit_scale: &Tensor,
    rows: Anchors,
) -> Result<Tensor> {
    let n = img.dim(0)?;
    let (per_image, per_text) = anchor_logits(img, txt, &logit_scale.exp()?, &rows)?;
    let target = own_columns(&rows, n, &per_image)?;
    let sum = (row_cross_entropy(&per_image, &target)? + row_cross_entropy(&per_text, &target)?)?;
    sum / (2 * n) as f64
}

/// SigLIP's pairwise sigmoid loss.
///
/// With unit-normalised features and logits `L = exp(t)·img·txtᵀ + b`, each pair is a binary
/// problem: label +1 on the diagonal, −1 elsewhere; `loss = −Σᵢⱼ log σ(yᵢⱼ·Lᵢⱼ) / B`.
pub fn siglip_loss(
    img: &Tensor,
    txt: &Tensor,
    logit_scale: &Tensor,
    logit_bias: &Tensor,
) -> Result<Tensor> {
    siglip_loss_rows(img, txt, logit_scale, logit_bias, 0..img.dim(0)?)
}

/// The part of [`siglip_loss`] over the pairs whose image is one of `rows`.
pub fn siglip_loss_rows(
    img: &Tensor,
    txt: &Tensor,
    logit_scale: &Tensor,
    logit_bias: &Tensor,
    rows: Anchors,
) -> Result<Tensor> {
    let n = img.dim(0)?;
    let (img, txt) = (l2_normalize(img)?, l2_normalize(txt)?);
    let logits = img
        .narrow(0, rows.start, rows.len())?
        .matmul(&txt.t()?)?
        .broadcast_mul(&logit_scale.exp()?)?
        .broadcast_add(logit_bias)?;
    let labels = ((own_columns(&rows, n, &logits)? * 2.0)? - 1.0)?;
    let z = (logits * labels)?;
    // −log σ(z) = softplus(−z) = max(−z, 0) + log(1 + e^{−|z|}), stable for any z.
    let softplus = (z.neg()?.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    softplus.sum_all()? / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn equal_logits_give_ln_batch_size() {
        let b = 6;
        let img = Tensor::ones((b, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let scale = Tensor::new(2.0f32, &Device::Cpu).unwrap();
        let loss: f32 = clip_loss(&img, &img, &scale).unwrap().to_scalar().unwrap();
        assert!((loss - (b as f32).ln()).abs() < 1e-5, "{loss}");
    }

    #[test]
    fn matches_hand_computed_two_by_two() {
        // img = txt = identity rows: logits = s·I, loss = ln(e^s + 1) − s in both directions.
        let img = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap();
        let s = 1.5f32;
        let scale = Tensor::new(s.ln(), &Device::Cpu).unwrap();
        let loss: f32 = clip_loss(&img, &img, &scale).unwrap().to_scalar().unwrap();
        let want = (s.exp() + 1.0).ln() - s;
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
    }

    #[test]
    fn siglip_matches_hand_computed_value() {
        // img = txt = I₂, scale e^t = 2, bias −1: diagonal logits 1, off-diagonal −1.
        // Every pair then has z = 1: loss = 4·log(1 + e^{−1}) / 2.
        let eye = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap();
        let t = Tensor::new(2f32.ln(), &Device::Cpu).unwrap();
        let b = Tensor::new(-1f32, &Device::Cpu).unwrap();
        let loss: f32 = siglip_loss(&eye, &eye, &t, &b)
            .unwrap()
            .to_scalar()
            .unwrap();
        let want = 2.0 * (1.0 + (-1f32).exp()).ln();
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
    }
}
