//! Contrastive objectives.

use candle_core::{Result, Tensor, D};

/// Row-wise L2 normalisation (differentiable).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&(x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?)
}

/// Cosine similarities of the rows of `img` and `txt`, times the scalar tensor `scale`.
pub(crate) fn scaled_similarities(img: &Tensor, txt: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let (img, txt) = (l2_normalize(img)?, l2_normalize(txt)?);
    img.matmul(&txt.t()?)?.broadcast_mul(scale)
}

/// Mean cross-entropy of each row of `logits` against the diagonal (row i's target is i).
fn diagonal_cross_entropy(logits: &Tensor) -> Result<Tensor> {
    let n = logits.dim(0)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?; // [n, 1]
    let eye = Tensor::eye(n, logits.dtype(), logits.device())?;
    let diag = (shifted * eye)?.sum_keepdim(D::Minus1)?; // [n, 1]
    (lse - diag)?.mean_all()
}

/// CLIP's symmetric in-batch contrastive loss.
///
/// With unit-normalised `img`, `txt` of shape `[B, D]` and logits `L = exp(t)·img·txtᵀ`:
/// `loss = ½·(CE(L, diag) + CE(Lᵀ, diag))`. Matching pairs are the positives and the other
/// B−1 captions (images) of the batch are the negatives. Equal logits give `ln B`.
pub fn clip_loss(img: &Tensor, txt: &Tensor, logit_scale: &Tensor) -> Result<Tensor> {
    let logits = scaled_similarities(img, txt, &logit_scale.exp()?)?;
    let a = diagonal_cross_entropy(&logits)?;
    let b = diagonal_cross_entropy(&logits.t()?)?;
    (a + b)? / 2.0
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
    let n = img.dim(0)?;
    let logits = scaled_similarities(img, txt, &logit_scale.exp()?)?.broadcast_add(logit_bias)?;
    let labels = ((Tensor::eye(n, logits.dtype(), logits.device())? * 2.0)? - 1.0)?;
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
