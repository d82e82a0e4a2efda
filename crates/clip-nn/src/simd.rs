//! Reductions written so that the compiler can vectorise them.
//!
//! The workspace builds for baseline x86-64 (SSE2) so that the binary runs anywhere; a hot
//! row loop carries `#[multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma",
//! "x86_64+avx2+fma"))]` (the `multiversion` crate), which compiles it again for AVX-512 and
//! for AVX2+FMA and picks the best the CPU has at run time. Floating-point sums only
//! vectorise when the code itself keeps independent partial sums, which the `LANES`-wide
//! helpers below do (in a fixed order, so results repeat); they are `inline(always)`, so each
//! dispatched loop compiles them for its own instruction set.

/// Independent partial sums per reduction: one AVX-512 register of f32.
const LANES: usize = 16;

/// Adds the lanes in a fixed pairwise order.
#[inline(always)]
fn fold(acc: [f32; LANES]) -> f32 {
    let mut w = acc;
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            w[i] += w[i + n];
        }
    }
    w[0]
}

/// `Σ f(a[i], b[i])` over two equally long slices.
#[inline(always)]
pub(crate) fn sum_zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += f(x[i], y[i]);
        }
    }
    for (i, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        acc[i] += f(x, y);
    }
    fold(acc)
}

/// `Σ a[i]·b[i]·c[i]`.
#[inline(always)]
pub(crate) fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    assert!(a.len() == b.len() && a.len() == c.len());
    let mut acc = [0f32; LANES];
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let (ra, rb, rc) = (ca.remainder(), cb.remainder(), cc.remainder());
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i] * z[i];
        }
    }
    for (i, ((&x, &y), &z)) in ra.iter().zip(rb).zip(rc).enumerate() {
        acc[i] += x * y * z;
    }
    fold(acc)
}

/// `Σ f(a[i])`.
#[inline(always)]
pub(crate) fn sum_map(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let ra = ca.remainder();
    for x in ca {
        for i in 0..LANES {
            acc[i] += f(x[i]);
        }
    }
    for (i, &x) in ra.iter().enumerate() {
        acc[i] += f(x);
    }
    fold(acc)
}

/// The largest element (−∞ for an empty slice); NaN-blind, like `maxps`.
#[inline(always)]
pub(crate) fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let ca = a.chunks_exact(LANES);
    let ra = ca.remainder();
    for x in ca {
        for i in 0..LANES {
            acc[i] = if x[i] > acc[i] { x[i] } else { acc[i] };
        }
    }
    for (i, &x) in ra.iter().enumerate() {
        acc[i] = if x > acc[i] { x } else { acc[i] };
    }
    acc.iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// The smallest element (+∞ for an empty slice); NaN-blind, like `minps`.
#[inline(always)]
pub(crate) fn min(a: &[f32]) -> f32 {
    let mut acc = [f32::INFINITY; LANES];
    let ca = a.chunks_exact(LANES);
    let ra = ca.remainder();
    for x in ca {
        for i in 0..LANES {
            acc[i] = if x[i] < acc[i] { x[i] } else { acc[i] };
        }
    }
    for (i, &x) in ra.iter().enumerate() {
        acc[i] = if x < acc[i] { x } else { acc[i] };
    }
    acc.iter()
        .fold(f32::INFINITY, |m, &v| if v < m { v } else { m })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[multiversion::multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
    fn dispatched_dot(a: &[f32], b: &[f32]) -> f32 {
        sum_zip(a, b, |x, y| x * y)
    }

    #[test]
    fn reductions_match_plain_loops() {
        for n in [0usize, 1, 15, 16, 17, 65, 256, 1000] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 11 % 53) as f32 - 26.0) * 0.02)
                .collect();
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| (x * y) as f64).sum();
            let sq: f64 = a.iter().map(|x| (x * x) as f64).sum();
            let cube: f64 = a.iter().zip(&b).map(|(x, y)| (x * x * y) as f64).sum();
            assert!(
                (dot3(&a, &a, &b) as f64 - cube).abs() < 1e-4,
                "dot3, n = {n}"
            );
            assert!(
                (dispatched_dot(&a, &b) as f64 - dot).abs() < 1e-4,
                "dot, n = {n}"
            );
            assert!(
                (sum_map(&a, |x| x * x) as f64 - sq).abs() < 1e-4,
                "squares, n = {n}"
            );
            let m = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&a), m, "max, n = {n}");
            let m = a.iter().copied().fold(f32::INFINITY, f32::min);
            assert_eq!(min(&a), m, "min, n = {n}");
        }
    }
}
