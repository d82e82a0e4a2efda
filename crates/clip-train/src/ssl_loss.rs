//! Contrastive losses beyond CLIP's: NT-Xent over two augmented views, the debiased and
//! hard-negative corrections, a label oracle, and the spectral contrastive loss — plus the
//! cross-modal (image–text) forms of the debiased and spectral losses.
//!
//! Every softmax-style loss here is one row-wise formula ([`row_losses`]): for an anchor with
//! positive logit `s⁺` and candidate negatives `sⱼ` (logits are similarity / temperature),
//!
//! ```text
//! g     = (mean_w(e^{sⱼ}) − τ⁺·e^{s⁺}) / (1 − τ⁺)      mean_w: plain, or weighted by e^{β·sⱼ}
//! Ng    = max(N·g, N·e^{−1/t})                           N = number of negatives
//! loss  = −log( e^{s⁺} / (e^{s⁺} + Ng) )
//! ```
//!
//! τ⁺ = 0 and β = 0 give back the plain InfoNCE / NT-Xent loss exactly, which the tests check.
//! Rows are shifted by their (detached) maximum before `exp`, so nothing overflows.

use candle_core::{Result, Tensor, D};

use crate::loss::{anchor_logits, l2_normalize, own_columns, Anchors};

/// How the negative term of a softmax contrastive loss is estimated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NegativeEstimate {
    /// Class prior τ⁺: the probability that a "negative" shares the anchor's class
    /// (0: the plain biased estimate).
    pub tau_plus: f64,
    /// Hard-negative concentration β (0: uniform weights over negatives).
    pub beta: f64,
}

impl NegativeEstimate {
    /// The plain (biased) estimate: every other sample is a negative with equal weight.
    pub const BIASED: Self = Self {
        tau_plus: 0.0,
        beta: 0.0,
    };
}

/// Per-row losses for `logits` `[R, C]` with one positive per row (`pos_mask`, 1 at the
/// positive) and candidate negatives (`neg_mask`, 1 where a column counts as a negative).
///
/// `n_neg` is N in the formula (the number of negatives the estimate stands for) and
/// `inv_t` the inverse temperature, which sets the clamp `N·e^{−1/t}` (the smallest value
/// `Σ e^{s}` can take for unit vectors).
fn row_losses(
    logits: &Tensor,
    pos_mask: &Tensor,
    neg_mask: &Tensor,
    n_neg: f64,
    inv_t: &Tensor,
    est: NegativeEstimate,
) -> Result<Tensor> {
    let m = logits.max_keepdim(D::Minus1)?.detach(); // [R, 1]
    let shifted = logits.broadcast_sub(&m)?;
    let pos_logit = (&shifted * pos_mask)?.sum_keepdim(D::Minus1)?; // s⁺ − m
    let pos = pos_logit.exp()?;
    let neg = (shifted.exp()? * neg_mask)?;
    let mean_neg = if est.beta == 0.0 {
        let count = neg_mask.sum_keepdim(D::Minus1)?.clamp(1.0, f64::MAX)?;
        (neg.sum_keepdim(D::Minus1)? / count)?
    } else {
        // Importance weights e^{β·s} over the negatives, as a normalised distribution
        // (shifted by the row maximum for the same reason as above).
        let w = ((&shifted * est.beta)?.exp()? * neg_mask)?;
        let z = w.sum_keepdim(D::Minus1)?.clamp(1e-30, f64::MAX)?;
        ((w * &neg)?.sum_keepdim(D::Minus1)? / z)?
    };
    let g = ((mean_neg - (&pos * est.tau_plus)?)? / (1.0 - est.tau_plus))?;
    let floor = (inv_t.detach().neg()?.broadcast_sub(&m)?.exp()? * n_neg)?;
    let ng = (g * n_neg)?.broadcast_maximum(&floor)?;
    (pos + ng)?.log()? - pos_logit
}

/// Global index of two-view anchor `k` among the 2n views (view-1 rows 0..n, then view 2)
/// when the anchors are the views of images `rows`: first their view 1, then their view 2.
fn view_anchor(k: usize, n: usize, rows: &Anchors) -> usize {
    if k < rows.len() {
        rows.start + k
    } else {
        n + rows.start + k - rows.len()
    }
}

/// Positive and negative masks of the two-view logits `[2r, 2n]` of the anchors of images
/// `rows`, on the device and type of `like`: each view's positive is the other view of its
/// image, and its negatives are all views but those two.
fn view_masks(n: usize, rows: &Anchors, like: &Tensor) -> Result<(Tensor, Tensor)> {
    let (a, c) = (2 * rows.len(), 2 * n);
    let mut pos = vec![0f32; a * c];
    let mut neg = vec![1f32; a * c];
    for k in 0..a {
        let g = view_anchor(k, n, rows);
        let p = (g + n) % c;
        pos[k * c + p] = 1.0;
        neg[k * c + p] = 0.0;
        neg[k * c + g] = 0.0;
    }
    let mask = |m| Tensor::from_vec(m, (a, c), like.device())?.to_dtype(like.dtype());
    Ok((mask(pos)?, mask(neg)?))
}

fn check_views(z1: &Tensor, z2: &Tensor) -> Result<usize> {
    let (b, d) = z1.dims2()?;
    if z2.dims2()? != (b, d) {
        candle_core::bail!(
            "the two views must have the same shape, got {:?} and {:?}",
            z1.dims(),
            z2.dims()
        );
    }
    if b < 2 {
        candle_core::bail!("a contrastive batch needs at least 2 images, got {b}");
    }
    Ok(b)
}

/// The common start of the two-view losses: n, the similarity logits `[2r, 2n]` of the
/// anchors of images `rows` against all normalised views at temperature `t`, and 1/t.
fn two_view_logits(
    z1: &Tensor,
    z2: &Tensor,
    t: f64,
    rows: &Anchors,
) -> Result<(usize, Tensor, Tensor)> {
    let n = check_views(z1, z2)?;
    if !(t.is_finite() && t > 0.0) {
        candle_core::bail!("temperature must be a positive number, got {t}");
    }
    let z = l2_normalize(&Tensor::cat(&[z1, z2], 0)?)?;
    let (s, r) = (rows.start, rows.len());
    let anchors = Tensor::cat(&[z.narrow(0, s, r)?, z.narrow(0, n + s, r)?], 0)?;
    let logits = (anchors.matmul(&z.t()?)? / t)?;
    let inv_t = Tensor::new(1.0 / t as f32, z.device())?.to_dtype(z.dtype())?;
    Ok((n, logits, inv_t))
}

/// Two-view softmax loss with a configurable negative estimate; the common body of
/// [`nt_xent_loss`], [`debiased_contrastive_loss`] and [`hard_negative_loss`].
///
/// `z1[i]` and `z2[i]` are two augmented views of image i (`[B, D]`, normalised here). Each of
/// the 2B views is an anchor whose positive is its sibling and whose N = 2B − 2 negatives are
/// all other views. The result is the mean over the 2B anchors.
pub fn two_view_loss(
    z1: &Tensor,
    z2: &Tensor,
    temperature: f64,
    est: NegativeEstimate,
) -> Result<Tensor> {
    two_view_loss_rows(z1, z2, temperature, est, 0..z1.dim(0)?)
}

/// The part of [`two_view_loss`] whose anchors are both views of the images `rows`.
pub fn two_view_loss_rows(
    z1: &Tensor,
    z2: &Tensor,
    temperature: f64,
    est: NegativeEstimate,
    rows: Anchors,
) -> Result<Tensor> {
    let (n, logits, inv_t) = two_view_logits(z1, z2, temperature, &rows)?;
    if !(0.0..1.0).contains(&est.tau_plus) {
        candle_core::bail!("tau_plus must be in [0, 1), got {}", est.tau_plus);
    }
    if !(est.beta.is_finite() && est.beta >= 0.0) {
        candle_core::bail!("beta must be a non-negative number, got {}", est.beta);
    }
    let (pos, neg) = view_masks(n, &rows, &logits)?;
    let sum = row_losses(&logits, &pos, &neg, (2 * n - 2) as f64, &inv_t, est)?.sum_all()?;
    sum / (2 * n) as f64
}

/// NT-Xent (SimCLR's normalised temperature-scaled cross-entropy).
///
/// With unit vectors and similarities `sᵢⱼ = zᵢ·zⱼ / t` over the 2B views,
/// `ℓᵢ = −log( e^{sᵢ,p(i)} / Σ_{k≠i} e^{sᵢₖ} )`, averaged over all 2B anchors; p(i) is the
/// other view of the same image. SimCLR's default temperature is 0.5.
pub fn nt_xent_loss(z1: &Tensor, z2: &Tensor, temperature: f64) -> Result<Tensor> {
    two_view_loss(z1, z2, temperature, NegativeEstimate::BIASED)
}

/// Debiased contrastive loss (Chuang et al. 2020).
///
/// Some "negatives" share the anchor's class (with probability τ⁺), which biases NT-Xent.
/// The negative term is re-estimated as
/// `Ng = N · max( (mean_{j∈neg} e^{sⱼ} − τ⁺·e^{s⁺}) / (1 − τ⁺), e^{−1/t} )`
/// and `ℓ = −log( e^{s⁺} / (e^{s⁺} + Ng) )`. τ⁺ = 0 is exactly NT-Xent.
pub fn debiased_contrastive_loss(
    z1: &Tensor,
    z2: &Tensor,
    temperature: f64,
    tau_plus: f64,
) -> Result<Tensor> {
    hard_negative_loss(z1, z2, temperature, tau_plus, 0.0)
}

/// Hard-negative contrastive loss (Robinson et al. 2021) on top of the debiased estimate.
///
/// Negatives are reweighted by `e^{β·sⱼ}` (normalised over the row), so similar — hard —
/// negatives count more: `mean_{j∈neg}` in [`debiased_contrastive_loss`] becomes
/// `Σⱼ e^{β·sⱼ}·e^{sⱼ} / Σⱼ e^{β·sⱼ}`. β = 0 is the debiased loss.
pub fn hard_negative_loss(
    z1: &Tensor,
    z2: &Tensor,
    temperature: f64,
    tau_plus: f64,
    beta: f64,
) -> Result<Tensor> {
    two_view_loss(z1, z2, temperature, NegativeEstimate { tau_plus, beta })
}

/// The "unbiased" oracle: NT-Xent whose negatives are only views of a different class,
/// known from true labels (for experiments that bound what debiasing can gain).
///
/// `Ng = N · mean_{j: yⱼ≠yᵢ} e^{sⱼ}` — the quantity the debiased loss estimates without
/// labels — with N = 2B − 2 as in NT-Xent. A row with no different-class view contributes
/// `−log(e^{s⁺} / (e^{s⁺} + N·e^{−1/t}))`, the clamp of the debiased loss.
pub fn oracle_contrastive_loss(
    z1: &Tensor,
    z2: &Tensor,
    temperature: f64,
    labels: &[u32],
) -> Result<Tensor> {
    oracle_contrastive_loss_rows(z1, z2, temperature, labels, 0..z1.dim(0)?)
}

/// The part of [`oracle_contrastive_loss`] whose anchors are both views of images `rows`
/// (`labels` are those of all images).
pub fn oracle_contrastive_loss_rows(
    z1: &Tensor,
    z2: &Tensor,
    temperature: f64,
    labels: &[u32],
    rows: Anchors,
) -> Result<Tensor> {
    let (n, logits, inv_t) = two_view_logits(z1, z2, temperature, &rows)?;
    if labels.len() != n {
        candle_core::bail!("{} labels for a batch of {n} images", labels.len());
    }
    let (pos, _) = view_masks(n, &rows, &logits)?;
    let (a, c) = (2 * rows.len(), 2 * n);
    let mut neg = vec![0f32; a * c];
    for k in 0..a {
        let g = view_anchor(k, n, &rows);
        for j in 0..c {
            if labels[g % n] != labels[j % n] {
                neg[k * c + j] = 1.0;
            }
        }
    }
    let neg = Tensor::from_vec(neg, (a, c), logits.device())?.to_dtype(logits.dtype())?;
    let est = NegativeEstimate::BIASED;
    let sum = row_losses(&logits, &pos, &neg, (c - 2) as f64, &inv_t, est)?.sum_all()?;
    sum / c as f64
}

/// Rows longer than √μ are scaled back to norm √μ (the reference implementation's
/// projection; shorter rows are left alone).
fn project_to_ball(z: &Tensor, mu: f64) -> Result<Tensor> {
    let norm = (z.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    let factor = (norm.recip()? * mu.sqrt())?.clamp(0.0, 1.0)?;
    z.broadcast_mul(&factor)
}

/// Spectral contrastive loss (HaoChen et al. 2021) on B positive pairs `(z1ᵢ, z2ᵢ)`.
///
/// `L = ( −2·meanᵢ(z1ᵢ·z2ᵢ) + mean_{i≠j}(z1ᵢ·z2ⱼ)² ) / μ`, after scaling rows longer than
/// √μ back to norm √μ. The mean over i ≠ j is the full-matrix mean times B/(B−1) with the
/// diagonal removed, as in the reference implementation. No normalisation and no
/// temperature: its population minimiser is the top eigenvectors of the normalised
/// augmentation graph (checked exactly by the `spectral-graph` crate; see docs/SPECTRAL.md).
pub fn spectral_contrastive_loss(z1: &Tensor, z2: &Tensor, mu: f64) -> Result<Tensor> {
    spectral_contrastive_loss_rows(z1, z2, mu, 0..z1.dim(0)?)
}

/// The part of [`spectral_contrastive_loss`] whose first-view rows are `rows` (the pairs
/// `(z1ᵢ, z2ᵢ)` and `(z1ᵢ, z2ⱼ)` for i in `rows`).
pub fn spectral_contrastive_loss_rows(
    z1: &Tensor,
    z2: &Tensor,
    mu: f64,
    rows: Anchors,
) -> Result<Tensor> {
    let n = check_views(z1, z2)?;
    if !(mu.is_finite() && mu > 0.0) {
        candle_core::bail!("mu must be a positive number, got {mu}");
    }
    let (s, r) = (rows.start, rows.len());
    let a = project_to_ball(&z1.narrow(0, s, r)?, mu)?;
    let z2 = project_to_ball(z2, mu)?;
    let attract = ((&a * z2.narrow(0, s, r)?)?.sum_all()? * (-2.0 / n as f64))?;
    let similarities = a.matmul(&z2.t()?)?;
    let off = (1.0 - own_columns(&rows, n, &similarities)?)?;
    let sq = (similarities.sqr()? * off)?.sum_all()?;
    let repel = (sq / (n * (n - 1)) as f64)?;
    (attract + repel)? / mu
}

/// CLIP's image–text loss with the debiased (and optionally hard-negative) estimate.
///
/// Logits are `exp(t)·img·txtᵀ` as in [`crate::clip_loss`]; each image's positive is its
/// caption and its N = B − 1 negatives the other captions (and the same for each caption),
/// with the negative term of [`debiased_contrastive_loss`]. τ⁺ = β = 0 equals `clip_loss`.
pub fn debiased_clip_loss(
    img: &Tensor,
    txt: &Tensor,
    logit_scale: &Tensor,
    est: NegativeEstimate,
) -> Result<Tensor> {
    debiased_clip_loss_rows(img, txt, logit_scale, est, 0..img.dim(0)?)
}

/// The part of [`debiased_clip_loss`] whose anchors (images and captions) are `rows`.
pub fn debiased_clip_loss_rows(
    img: &Tensor,
    txt: &Tensor,
    logit_scale: &Tensor,
    est: NegativeEstimate,
    rows: Anchors,
) -> Result<Tensor> {
    let n = check_views(img, txt)?;
    if !(0.0..1.0).contains(&est.tau_plus) {
        candle_core::bail!("tau_plus must be in [0, 1), got {}", est.tau_plus);
    }
    let inv_t = logit_scale.exp()?;
    let (per_image, per_text) = anchor_logits(img, txt, &inv_t, &rows)?;
    let pos = own_columns(&rows, n, &per_image)?;
    let neg = (1.0 - &pos)?;
    let m = (n - 1) as f64;
    let a = row_losses(&per_image, &pos, &neg, m, &inv_t, est)?.sum_all()?;
    let c = row_losses(&per_text, &pos, &neg, m, &inv_t, est)?.sum_all()?;
    (a + c)? / (2 * n) as f64
}

#[cfg(test)]
mod tests;
