use super::*;
use crate::clip_loss;
use candle_core::{DType, Device, Var};

fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_xoshiro::SplitMix64::seed_from_u64(seed);
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random::<f64>() as f32 * 2.0 - 1.0)
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

fn scalar(t: Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// The rows of `z` in f64, each scaled by `factor(its norm)`.
fn rows(z: &Tensor, factor: impl Fn(f64) -> f64) -> Vec<Vec<f64>> {
    let rows = z.to_vec2::<f32>().unwrap().into_iter();
    rows.map(|r| {
        let f = factor(r.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt());
        r.into_iter().map(|x| x as f64 * f).collect()
    })
    .collect()
}

fn dot(a: &[f64], c: &[f64]) -> f64 {
    a.iter().zip(c).map(|(x, y)| x * y).sum()
}

/// NT-Xent written out with loops in f64, straight from the SimCLR formula.
fn nt_xent_reference(z1: &Tensor, z2: &Tensor, t: f64) -> f64 {
    let mut z = rows(z1, |n| 1.0 / n);
    let b = z.len();
    z.extend(rows(z2, |n| 1.0 / n));
    let mut total = 0.0;
    for i in 0..2 * b {
        let p = (i + b) % (2 * b);
        let denom: f64 = (0..2 * b)
            .filter(|&k| k != i)
            .map(|k| (dot(&z[i], &z[k]) / t).exp())
            .sum();
        total -= ((dot(&z[i], &z[p]) / t).exp() / denom).ln();
    }
    total / (2 * b) as f64
}

#[test]
fn nt_xent_matches_the_formula() {
    let (z1, z2) = (random(5, 7, 1), random(5, 7, 2));
    for t in [0.1, 0.5, 1.0] {
        let got = scalar(nt_xent_loss(&z1, &z2, t).unwrap());
        let want = nt_xent_reference(&z1, &z2, t);
        assert!((got - want).abs() < 1e-4, "t={t}: {got} vs {want}");
    }
}

#[test]
fn nt_xent_of_identical_orthogonal_views_is_analytic() {
    // Views equal to the standard basis: s⁺ = 1/t, the 2B−2 negatives have s = 0.
    let z = Tensor::eye(3, DType::F32, &Device::Cpu).unwrap();
    let t = 0.5;
    let got = scalar(nt_xent_loss(&z, &z, t).unwrap());
    let want = -(1.0 / t) + ((1.0 / t).exp() + 4.0).ln();
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

#[test]
fn debiased_with_zero_prior_is_nt_xent() {
    let (z1, z2) = (random(6, 4, 3), random(6, 4, 4));
    let a = scalar(nt_xent_loss(&z1, &z2, 0.5).unwrap());
    let b = scalar(debiased_contrastive_loss(&z1, &z2, 0.5, 0.0).unwrap());
    assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    // A positive prior changes it, and β = 0 hard-negative equals debiased.
    let d = scalar(debiased_contrastive_loss(&z1, &z2, 0.5, 0.1).unwrap());
    let h = scalar(hard_negative_loss(&z1, &z2, 0.5, 0.1, 0.0).unwrap());
    assert!((d - a).abs() > 1e-3 && (d - h).abs() < 1e-6, "{a} {d} {h}");
}

#[test]
fn debiased_matches_hand_computed_values_and_clamp() {
    // z = basis vectors, t = 1: e^{s⁺} = e, every negative e^0 = 1, N = 4.
    let z = Tensor::eye(3, DType::F32, &Device::Cpu).unwrap();
    let e = 1f64.exp();
    let tau = 0.3;
    let g = (1.0 - tau * e) / (1.0 - tau); // 0.264 < e^{−1} = 0.368: clamped
    let ng = 4.0 * g.max((-1f64).exp());
    let want = -(e / (e + ng)).ln();
    let got = scalar(debiased_contrastive_loss(&z, &z, 1.0, tau).unwrap());
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    assert!(g < (-1f64).exp(), "this case exercises the clamp");
    // A small prior stays above the clamp.
    let tau = 0.05;
    let g = (1.0 - tau * e) / (1.0 - tau);
    assert!(g > (-1f64).exp());
    let want = -(e / (e + 4.0 * g)).ln();
    let got = scalar(debiased_contrastive_loss(&z, &z, 1.0, tau).unwrap());
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

#[test]
fn hard_negatives_weight_similar_negatives_more() {
    // Anchor 0 has one close negative (s = 0.8/t) and far ones; β > 0 raises the loss
    // towards the close one: the weighted mean is Σ e^{(1+β)s} / Σ e^{βs}.
    let z1 = Tensor::new(
        &[[1f32, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]],
        &Device::Cpu,
    )
    .unwrap();
    let plain = scalar(hard_negative_loss(&z1, &z1, 0.5, 0.0, 0.0).unwrap());
    let hard = scalar(hard_negative_loss(&z1, &z1, 0.5, 0.0, 1.0).unwrap());
    assert!(hard > plain + 0.05, "{plain} vs {hard}");
}

#[test]
fn oracle_drops_same_class_negatives() {
    let (z1, z2) = (random(4, 5, 5), random(4, 5, 6));
    // All classes distinct: every negative is a true negative, so it is NT-Xent.
    let a = scalar(nt_xent_loss(&z1, &z2, 0.5).unwrap());
    let o = scalar(oracle_contrastive_loss(&z1, &z2, 0.5, &[0, 1, 2, 3]).unwrap());
    assert!((a - o).abs() < 1e-6, "{a} vs {o}");
    // Basis vectors, t = 1, classes {0, 0, 1}: for anchors of class 0 the true
    // negatives are the two views of image 2 (s = 0), mean e^0 = 1, N = 4;
    // for image 2 both other images are true negatives, also mean 1.
    let z = Tensor::eye(3, DType::F32, &Device::Cpu).unwrap();
    let e = 1f64.exp();
    let want = -(e / (e + 4.0)).ln();
    let got = scalar(oracle_contrastive_loss(&z, &z, 1.0, &[0, 0, 1]).unwrap());
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    // Now make images 0 and 1 similar: the oracle ignores that similarity, NT-Xent not.
    let z = Tensor::new(&[[1f32, 0.0], [0.9, 0.1], [0.0, 1.0]], &Device::Cpu).unwrap();
    let nt = scalar(nt_xent_loss(&z, &z, 0.5).unwrap());
    let or = scalar(oracle_contrastive_loss(&z, &z, 0.5, &[0, 0, 1]).unwrap());
    assert!(or < nt, "{or} vs {nt}");
    assert!(oracle_contrastive_loss(&z, &z, 0.5, &[0, 1]).is_err());
}

#[test]
fn spectral_loss_matches_the_formula() {
    let (z1, z2) = (random(6, 3, 7), random(6, 3, 8));
    // Entries in [−1, 1] over 3 dims: some rows exceed norm 1 and get projected.
    let mu = 1.0f64;
    let proj = |z| rows(z, |n| if n > mu.sqrt() { mu.sqrt() / n } else { 1.0 });
    let (a, c) = (proj(&z1), proj(&z2));
    let b = a.len();
    let attract = -2.0 * (0..b).map(|i| dot(&a[i], &c[i])).sum::<f64>() / b as f64;
    let mut repel = 0.0;
    for (i, ai) in a.iter().enumerate() {
        for (j, cj) in c.iter().enumerate() {
            if i != j {
                repel += dot(ai, cj).powi(2);
            }
        }
    }
    let want = (attract + repel / (b * (b - 1)) as f64) / mu;
    let got = scalar(spectral_contrastive_loss(&z1, &z2, mu).unwrap());
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    // Orthonormal positives that are orthogonal to every negative: −2.
    let eye = Tensor::eye(4, DType::F32, &Device::Cpu).unwrap();
    let got = scalar(spectral_contrastive_loss(&eye, &eye, 1.0).unwrap());
    assert!((got + 2.0).abs() < 1e-6, "{got}");
    // μ scales: with norm-2 rows and μ = 4 nothing is projected and the loss is
    // (−2·4 + 0)/4 = −2 again.
    let two = (eye * 2.0).unwrap();
    let got = scalar(spectral_contrastive_loss(&two, &two, 4.0).unwrap());
    assert!((got + 2.0).abs() < 1e-5, "{got}");
}

#[test]
fn debiased_clip_with_zero_prior_is_clip_loss() {
    let (img, txt) = (random(5, 6, 9), random(5, 6, 10));
    let scale = Tensor::new(2.3f32, &Device::Cpu).unwrap();
    let want = scalar(clip_loss(&img, &txt, &scale).unwrap());
    let got = scalar(debiased_clip_loss(&img, &txt, &scale, NegativeEstimate::BIASED).unwrap());
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    // Equal logits: ln B for the plain estimate.
    let ones = Tensor::ones((4, 3), DType::F32, &Device::Cpu).unwrap();
    let got = scalar(debiased_clip_loss(&ones, &ones, &scale, NegativeEstimate::BIASED).unwrap());
    assert!((got - 4f64.ln()).abs() < 1e-5, "{got}");
}

#[test]
fn large_logits_stay_finite() {
    let (z1, z2) = (random(8, 4, 11), random(8, 4, 12));
    for t in [0.02, 0.05] {
        for f in [
            nt_xent_loss(&z1, &z2, t),
            debiased_contrastive_loss(&z1, &z2, t, 0.1),
            hard_negative_loss(&z1, &z2, t, 0.1, 1.0),
        ] {
            let v = scalar(f.unwrap());
            assert!(v.is_finite() && v >= 0.0, "t={t}: {v}");
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    let z = random(3, 2, 1);
    assert!(nt_xent_loss(&z, &random(4, 2, 1), 0.5).is_err());
    assert!(nt_xent_loss(&z, &z, 0.0).is_err());
    assert!(debiased_contrastive_loss(&z, &z, 0.5, 1.0).is_err());
    assert!(hard_negative_loss(&z, &z, 0.5, 0.1, -1.0).is_err());
    assert!(spectral_contrastive_loss(&z, &z, 0.0).is_err());
    assert!(nt_xent_loss(&random(1, 2, 1), &random(1, 2, 2), 0.5).is_err());
}

/// Each loss over a partition of its anchors sums to the whole-batch loss, in value and
/// in gradient: what data-parallel training relies on.
#[test]
fn anchor_partitions_add_up_to_the_whole_loss() {
    use crate::loss::{clip_loss_rows, siglip_loss_rows};
    let n = 6;
    let (a, b) = (random(n, 5, 21), random(n, 5, 22));
    let scale = Tensor::new(2.5f32.ln(), &Device::Cpu).unwrap();
    let bias = Tensor::new(-1.5f32, &Device::Cpu).unwrap();
    let labels = [0u32, 1, 0, 2, 1, 2];
    let est = NegativeEstimate {
        tau_plus: 0.1,
        beta: 0.5,
    };
    type Loss<'a> = Box<dyn Fn(&Tensor, &Tensor, Anchors) -> Result<Tensor> + 'a>;
    let losses: Vec<(&str, Loss)> = vec![
        ("clip", Box::new(|x, y, r| clip_loss_rows(x, y, &scale, r))),
        (
            "siglip",
            Box::new(|x, y, r| siglip_loss_rows(x, y, &scale, &bias, r)),
        ),
        (
            "two_view",
            Box::new(|x, y, r| two_view_loss_rows(x, y, 0.5, est, r)),
        ),
        (
            "oracle",
            Box::new(|x, y, r| oracle_contrastive_loss_rows(x, y, 0.5, &labels, r)),
        ),
        (
            "spectral",
            Box::new(|x, y, r| spectral_contrastive_loss_rows(x, y, 2.0, r)),
        ),
        (
            "debiased_clip",
            Box::new(|x, y, r| debiased_clip_loss_rows(x, y, &scale, est, r)),
        ),
    ];
    for (name, loss) in &losses {
        let run = |parts: &[Anchors]| {
            let (x, y) = (Var::from_tensor(&a).unwrap(), Var::from_tensor(&b).unwrap());
            let mut total = Tensor::new(0f32, &Device::Cpu).unwrap();
            for r in parts {
                total = (total + loss(x.as_tensor(), y.as_tensor(), r.clone()).unwrap()).unwrap();
            }
            let g = total.backward().unwrap();
            let grad = |v: &Var| g.get(v).unwrap().flatten_all().unwrap().to_vec1::<f32>();
            (scalar(total), grad(&x).unwrap(), grad(&y).unwrap())
        };
        let whole = run(std::slice::from_ref(&(0..n)));
        let split = run(&[0..2, 2..3, 3..n]);
        assert!(whole.0.is_finite() && whole.1.len() == n * 5, "{name}");
        assert!(
            (whole.0 - split.0).abs() < 1e-5,
            "{name}: {} vs {}",
            whole.0,
            split.0
        );
        for (w, s) in whole
            .1
            .iter()
            .chain(&whole.2)
            .zip(split.1.iter().chain(&split.2))
        {
            assert!((w - s).abs() < 1e-5, "{name}: gradient {w} vs {s}");
        }
        // A part alone is not the whole: the partition test can fail.
        let part = run(std::slice::from_ref(&(0..3)));
        assert!((whole.0 - part.0).abs() > 1e-4, "{name}");
    }
}
