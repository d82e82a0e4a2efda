//! Helpers shared by this crate's tests, its integration tests and its benchmark: not part of
//! the supported API.

/// `n` pseudo-random unit rows of dimension `dim`, the same for the same `seed`.
pub fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut st = seed;
    let mut v: Vec<f32> = (0..n * dim)
        .map(|_| {
            st = st
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((st >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    crate::normalize_rows(&mut v, dim).expect("random rows are not zero");
    v
}

/// Every query's inner product with every row of `base`, in f64: `[query][row]`.
pub fn scores(base: &[f32], dim: usize, queries: &[f32]) -> Vec<Vec<f64>> {
    let dot = |r: &[f32], q: &[f32]| r.iter().zip(q).map(|(a, b)| *a as f64 * *b as f64).sum();
    queries
        .chunks(dim)
        .map(|q| base.chunks(dim).map(|r| dot(r, q)).collect())
        .collect()
}

/// Brute force in f64 with a full sort: `(row, score)` of the `k` best rows per query, ties
/// to the lower row. The reference the blocked search must reproduce.
pub fn brute_force(base: &[f32], dim: usize, queries: &[f32], k: usize) -> Vec<Vec<(usize, f64)>> {
    scores(base, dim, queries)
        .into_iter()
        .map(|row| {
            let mut s: Vec<(usize, f64)> = row.into_iter().enumerate().collect();
            s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            s.truncate(k);
            s
        })
        .collect()
}
