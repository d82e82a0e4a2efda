//! Exact (brute-force) search and full score rows, streaming over the index in blocks.

use rayon::prelude::*;

use crate::kernel::{MatrixSink, Rows, Scanner};
use crate::topk::{Hit, TopKSet};

/// Index rows per parallel task: big enough to amortise the per-task top-k state, small enough
/// to balance two to a few dozen threads over a million rows.
const CHUNK_ROWS: usize = 4096;
/// Queries scored together. All of a tile's queries stream past each packed index panel, so a
/// tile should stay in L2 (1024 × 256 floats = 1 MiB); bigger batches take several passes.
const QUERY_TILE_BYTES: usize = 1 << 20;

/// The `k` best index rows for each query (`[nq, dim]`), best first; ties go to the lower id.
/// Memory beyond the result is a few KiB per thread plus `O(nq · k)`, whatever the index size.
pub(crate) fn top_k(base: Rows<'_>, dim: usize, queries: &[f32], k: usize) -> Vec<Vec<Hit>> {
    let n = base.len_elems() / dim;
    let nq = queries.len() / dim;
    if n == 0 || k == 0 {
        return vec![Vec::new(); nq];
    }
    let k = k.min(n);
    let tile_rows = (QUERY_TILE_BYTES / (4 * dim)).max(8);
    let chunks = n.div_ceil(CHUNK_ROWS);
    let threads = rayon::current_num_threads();
    if chunks < 2 * threads && nq >= 16 {
        // A small index: too few row chunks to keep every thread busy, so split the queries
        // instead, each task scanning the whole (cache-resident) index.
        let per_task = nq.div_ceil(4 * threads).clamp(8, tile_rows);
        return queries
            .par_chunks(per_task * dim)
            .flat_map_iter(|tile| {
                let mut set = TopKSet::new(tile.len() / dim, k);
                Scanner::new(dim).scan(base, 0..n, tile, &mut set);
                set.into_hits()
            })
            .collect();
    }
    let mut out = Vec::with_capacity(nq);
    for tile in queries.chunks(tile_rows * dim) {
        let tq = tile.len() / dim;
        let set = (0..chunks)
            .into_par_iter()
            .fold(
                || (TopKSet::new(tq, k), Scanner::new(dim)),
                |(mut set, mut s), c| {
                    let rows = c * CHUNK_ROWS..((c + 1) * CHUNK_ROWS).min(n);
                    s.scan(base, rows, tile, &mut set);
                    (set, s)
                },
            )
            .map(|(set, _)| set)
            .reduce_with(TopKSet::merge)
            .unwrap_or_else(|| TopKSet::new(tq, k));
        out.extend(set.into_hits());
    }
    out
}

/// Calls `f(query, scores)` for every query with its full score row against `base` (`scores[i]`
/// is the inner product with row `i`), in parallel over query tiles, and collects the results
/// in query order. Only a tile of score rows exists at a time, so this suits evaluation sets
/// whose full similarity matrix would not fit in memory.
pub(crate) fn map_score_rows<T, F>(base: Rows<'_>, dim: usize, queries: &[f32], f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize, &[f32]) -> T + Sync,
{
    let n = base.len_elems() / dim;
    let nq = queries.len() / dim;
    if nq == 0 {
        return Vec::new();
    }
    // At most ~4 MiB of scores per tile, at least one micro-kernel's worth of rows.
    let tile = ((1usize << 20) / n.max(1)).clamp(8, 256);
    (0..nq.div_ceil(tile))
        .into_par_iter()
        .flat_map_iter(|t| {
            let q0 = t * tile;
            let q1 = (q0 + tile).min(nq);
            let mut scores = vec![0f32; (q1 - q0) * n];
            let mut sink = MatrixSink {
                out: &mut scores,
                cols: n,
            };
            Scanner::new(dim).scan(base, 0..n, &queries[q0 * dim..q1 * dim], &mut sink);
            (q0..q1)
                .map(|q| f(q, &scores[(q - q0) * n..(q - q0 + 1) * n]))
                .collect::<Vec<T>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{brute_force, scores, unit_rows};

    /// Same ids in the same order, except that two hits whose reference scores are within
    /// float rounding of each other may swap (and the last place may differ between them).
    fn assert_same_ranking(got: &[Vec<Hit>], want: &[Vec<(usize, f64)>]) {
        assert_eq!(got.len(), want.len());
        for (q, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.len(), w.len(), "query {q}");
            for (r, (h, &(id, s))) in g.iter().zip(w).enumerate() {
                assert!(
                    (h.score as f64 - s).abs() < 1e-5,
                    "query {q} rank {r}: score {} vs {s}",
                    h.score
                );
                if h.id != id {
                    assert!(
                        (h.score as f64 - s).abs() < 1e-6
                            || w.iter().any(|&(i, t)| i == h.id && (t - s).abs() < 1e-6),
                        "query {q} rank {r}: id {} vs {id} ({:?} vs {:?})",
                        h.id,
                        &g[..],
                        w
                    );
                }
            }
        }
    }

    #[test]
    fn blocked_search_equals_brute_force() {
        // Several chunks, a ragged last panel, query tiles of one and of many rows.
        let (n, dim) = (3 * CHUNK_ROWS + 77, 24);
        let base = unit_rows(n, dim, 1);
        for nq in [1, 5, 37] {
            let queries = unit_rows(nq, dim, 2 + nq as u64);
            for k in [1, 10, 100] {
                let got = top_k(Rows::F32(&base), dim, &queries, k);
                assert_same_ranking(&got, &brute_force(&base, dim, &queries, k));
            }
        }
    }

    #[test]
    fn small_index_with_many_queries_splits_the_queries() {
        let (n, dim) = (300, 12);
        let base = unit_rows(n, dim, 5);
        let queries = unit_rows(500, dim, 6);
        let got = top_k(Rows::F32(&base), dim, &queries, 4);
        assert_same_ranking(&got, &brute_force(&base, dim, &queries, 4));
    }

    #[test]
    fn exact_duplicates_rank_by_id_whatever_the_chunking() {
        // Every row equal: all scores tie exactly, so the order must be by id.
        let dim = 8;
        let n = 2 * CHUNK_ROWS + 5;
        let row: Vec<f32> = (0..dim).map(|d| if d == 0 { 1.0 } else { 0.0 }).collect();
        let base: Vec<f32> = row.iter().copied().cycle().take(n * dim).collect();
        let got = top_k(Rows::F32(&base), dim, &row, 5);
        assert_eq!(
            got[0].iter().map(|h| h.id).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn k_larger_than_the_index_returns_everything() {
        let base = unit_rows(3, 4, 9);
        let got = top_k(Rows::F32(&base), 4, &base, 10);
        assert!(got.iter().all(|h| h.len() == 3));
        for (q, hits) in got.iter().enumerate() {
            assert_eq!(hits[0].id, q, "a unit vector is its own nearest neighbour");
        }
    }

    #[test]
    fn score_rows_match_brute_force() {
        let (n, dim) = (300, 16);
        let base = unit_rows(n, dim, 3);
        let queries = unit_rows(20, dim, 4);
        let rows = map_score_rows(Rows::F32(&base), dim, &queries, |q, s| (q, s.to_vec()));
        let want = scores(&base, dim, &queries);
        for (q, s) in rows {
            for (a, b) in s.iter().zip(&want[q]) {
                assert!((*a as f64 - b).abs() < 1e-5);
            }
        }
    }
}
