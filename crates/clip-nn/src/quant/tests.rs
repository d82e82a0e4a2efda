//! Every instruction-set path against naive references, over the shape classes that hit
//! each tail: rows not a multiple of the tile, columns not a multiple of a panel, `k` not a
//! multiple of a group (4) or of 64, one row, none.

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_xoshiro::SplitMix64;

use super::*;

/// `(m, n, k)`: tails in every dimension, a single row and column, an empty batch.
const SHAPES: [(usize, usize, usize); 10] = [
    (1, 1, 1),
    (1, 16, 4),
    (3, 5, 7),
    (8, 32, 64),
    (9, 33, 65),
    (17, 48, 130),
    (50, 40, 77),
    (64, 16, 3),
    (131, 70, 256),
    (0, 24, 12),
];

fn paths() -> [Isa; 2] {
    [Isa::Portable, Isa::Avx512]
}

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Activations like a transformer's: mostly small, a few large, one row all positive (as
/// after GELU), one row all zeros.
fn activations(m: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut x = random(m * k, seed);
    for (i, row) in x.chunks_mut(k.max(1)).enumerate() {
        match i % 4 {
            1 => row.iter_mut().for_each(|v| *v = v.abs() * 3.0),
            2 if i == 2 => row.fill(0.0),
            3 => row[i % row.len()] *= 20.0,
            _ => {}
        }
    }
    x
}

fn reference(x: &[f32], w: &[f32], b: &[f32], n: usize, k: usize) -> Vec<f32> {
    let m = x.len().checked_div(k).unwrap_or(0);
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                .sum();
            y[i * n + j] = (dot + b[j] as f64) as f32;
        }
    }
    y
}

/// The dequantized operands of the int8 scheme, so a naive product of them is what the
/// kernels must give up to f32 rounding.
fn int8_operands(x: &[f32], w: &[f32], n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
    let m = x.len().checked_div(k).unwrap_or(0);
    let a = int8::Rows::quantize(x, m, k, Isa::Portable);
    let packed = int8::Weights::pack(&Int8Weight::quantize(w, n, k));
    let (xd, wd) = (a.dequantized(m, k), packed.dequantized(n, k));
    (xd, wd)
}

fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    let scale = want.iter().fold(1e-3f32, |s, v| s.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * scale,
            "{what}: element {i} is {g}, want {w} (scale {scale})"
        );
    }
}

#[test]
fn int8_kernels_equal_the_dequantized_product() {
    for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
        let (x, w, b) = (
            activations(m, k, s as u64),
            random(n * k, 100 + s as u64),
            random(n, 200 + s as u64),
        );
        let layer = PackedLinear::new(&w, Some(&b), n, k, Precision::Int8).unwrap();
        let (xd, wd) = int8_operands(&x, &w, n, k);
        let want = reference(&xd, &wd, &b, n, k);
        for isa in paths() {
            let got = layer.forward_on(&x, isa);
            assert_close(&got, &want, 1e-5, &format!("int8 {isa:?} {m}×{n}×{k}"));
        }
    }
}

#[test]
fn int8_activation_quantization_is_the_same_on_every_path() {
    for (s, &(m, _, k)) in SHAPES.iter().enumerate() {
        let x = activations(m, k, 50 + s as u64);
        let want = int8::Rows::quantize(&x, m, k, Isa::Portable).dequantized(m, k);
        let got = int8::Rows::quantize(&x, m, k, Isa::best(Precision::Int8)).dequantized(m, k);
        assert_eq!(got, want, "{m}×{k}");
    }
}

#[test]
fn int8_stays_near_f32() {
    // The quantization error itself: per-row activation and per-channel weight steps of
    // 1/255 and 1/127 of the range leave well under 2 % of the output scale here.
    let (m, n, k) = (37, 70, 300);
    let (x, w, b) = (activations(m, k, 7), random(n * k, 8), random(n, 9));
    let want = reference(&x, &w, &b, n, k);
    let layer = PackedLinear::new(&w, Some(&b), n, k, Precision::Int8).unwrap();
    for isa in paths() {
        assert_close(&layer.forward_on(&x, isa), &want, 0.02, "int8 vs f32");
    }
}

#[test]
fn bf16_kernels_equal_the_rounded_product() {
    for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
        let (x, w, b) = (
            activations(m, k, s as u64),
            random(n * k, 300 + s as u64),
            random(n, 400 + s as u64),
        );
        let round =
            |v: &[f32]| -> Vec<f32> { v.iter().map(|&v| bf16::from_f32(v).to_f32()).collect() };
        let want = reference(&round(&x), &round(&w), &b, n, k);
        let layer = PackedLinear::new(&w, Some(&b), n, k, Precision::Bf16).unwrap();
        for isa in paths() {
            let got = layer.forward_on(&x, isa);
            assert_close(&got, &want, 1e-5, &format!("bf16 {isa:?} {m}×{n}×{k}"));
        }
        let f32_want = reference(&x, &w, &b, n, k);
        assert_close(&layer.forward(&x), &f32_want, 0.02, "bf16 vs f32");
    }
}

#[test]
fn no_bias_and_f32_need_no_packing() {
    assert!(PackedLinear::new(&[1.0], None, 1, 1, Precision::F32).is_none());
    let w = random(20 * 9, 1);
    let x = random(3 * 9, 2);
    let layer = PackedLinear::new(&w, None, 20, 9, Precision::Int8).unwrap();
    let (xd, wd) = int8_operands(&x, &w, 20, 9);
    assert_close(
        &layer.forward(&x),
        &reference(&xd, &wd, &[0.0; 20], 20, 9),
        1e-5,
        "int8 without bias",
    );
    assert_eq!((layer.out_dim(), layer.in_dim()), (20, 9));
    // Sizes at a realistic shape (tiny layers are mostly panel padding).
    let (n, k) = (64, 128);
    let w = random(n * k, 3);
    let bytes = |p| PackedLinear::new(&w, None, n, k, p).unwrap().bytes();
    assert!(
        bytes(Precision::Int8) * 3 < n * k * 4,
        "int8 under a third of f32"
    );
    assert!(
        bytes(Precision::Bf16) * 3 < n * k * 4 * 2,
        "bf16 about half of f32"
    );
}

#[test]
fn precision_names_round_trip() {
    for p in Precision::ALL {
        assert_eq!(p.name().parse::<Precision>(), Ok(p));
    }
    assert!("fp8".parse::<Precision>().unwrap_err().contains("fp8"));
}

#[test]
fn zero_and_constant_rows_quantize_exactly() {
    // A zero row must give exactly the bias; a constant row c·1 exactly c·Σw + b up to the
    // weight's own rounding (zero is representable, c is the range end).
    let (n, k) = (3, 5);
    let w: Vec<f32> = (0..n * k).map(|i| (i as f32 - 7.0) / 8.0).collect();
    let b = [0.5, -0.25, 0.0];
    let layer = PackedLinear::new(&w, Some(&b), n, k, Precision::Int8).unwrap();
    let y = layer.forward(&[0.0; 5]);
    assert_eq!(y, b.to_vec());
    let x = [2.0f32; 5];
    let (xd, wd) = int8_operands(&x, &w, n, k);
    assert_close(&xd, &x, 1e-6, "constant row");
    assert_close(
        &layer.forward(&x),
        &reference(&xd, &wd, &b, n, k),
        1e-6,
        "const",
    );
}

/// The stored form of an int8 weight: each channel's largest magnitude is ±127, every value
/// within half a level of the f32 weight, and packing it gives what packing the f32 weight
/// does (a quantized checkpoint embeds exactly as quantizing at load).
#[test]
fn int8_weights_quantize_per_channel_and_pack_alike() {
    for &(m, n, k) in &SHAPES {
        let w = random(n * k, 11);
        let q = Int8Weight::quantize(&w, n, k);
        assert_eq!(q.check(), Ok(()), "({n}, {k})");
        for j in 0..n {
            let row = &q.values[j * k..][..k];
            let s = q.scales[j];
            assert_eq!(row.iter().map(|v| v.unsigned_abs()).max(), Some(127));
            for (v, f) in row.iter().zip(&w[j * k..][..k]) {
                assert!((*v as f32 * s - f).abs() <= s * 0.5 + 1e-7, "({n}, {k})");
            }
        }
        let x = activations(m, k, 12);
        let b = random(n, 13);
        let fresh = PackedLinear::new(&w, Some(&b), n, k, Precision::Int8).unwrap();
        let stored = PackedLinear::from_int8(&q, Some(&b));
        for isa in paths() {
            assert_eq!(fresh.forward_on(&x, isa), stored.forward_on(&x, isa));
        }
    }
    let mut bad = Int8Weight::quantize(&random(6, 1), 2, 3);
    bad.scales[1] = f32::NAN;
    assert!(bad.check().unwrap_err().contains("channel 1"));
    bad.values.pop();
    assert!(bad.check().unwrap_err().contains("5 values"));
}
