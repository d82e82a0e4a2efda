//! Per-query bounded top-k selection.
//!
//! Candidates are kept in a small buffer and pruned with `select_nth_unstable` when it fills,
//! which costs O(1) amortised per accepted candidate and never sorts the whole score row. The
//! running k-th best score is a threshold that rejects almost every later candidate with a single
//! comparison, which is what keeps selection cheap next to the dot products.

use std::cmp::Ordering;

/// One search result: a row of the index and its score (inner product with the query).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Row of the index (0-based), also the position in the manifest's entries.
    pub id: usize,
    /// Inner product with the query; on unit vectors, the cosine similarity.
    pub score: f32,
}

/// The total order of results: higher score first, then lower id. Making ties deterministic
/// means the exact search returns the same list whatever the thread count or blocking.
#[inline]
pub(crate) fn rank_order(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Top-k candidates of many queries at once.
pub(crate) struct TopKSet {
    k: usize,
    cap: usize,
    /// A candidate must score at least this to be considered (the k-th best so far).
    thr: Vec<f32>,
    /// Among candidates scoring exactly `thr`, only ids below this one are better.
    thr_id: Vec<u32>,
    cand: Vec<Vec<(f32, u32)>>,
}

impl TopKSet {
    pub(crate) fn new(queries: usize, k: usize) -> Self {
        debug_assert!(k > 0);
        let cap = (2 * k).max(k + 32);
        Self {
            k,
            cap,
            thr: vec![f32::NEG_INFINITY; queries],
            thr_id: vec![u32::MAX; queries],
            cand: (0..queries).map(|_| Vec::new()).collect(),
        }
    }

    /// The score a candidate for query `q` must reach to be worth offering.
    #[inline(always)]
    pub(crate) fn threshold(&self, q: usize) -> f32 {
        self.thr[q]
    }

    /// Offers one candidate; it is kept only if it beats the current k-th best.
    #[inline]
    pub(crate) fn push(&mut self, q: usize, score: f32, id: u32) {
        // Better than the k-th best: a higher score, or the same score and a lower id. NaN
        // compares as `None` and is rejected.
        match score.partial_cmp(&self.thr[q]) {
            Some(std::cmp::Ordering::Greater) => {}
            Some(std::cmp::Ordering::Equal) if id < self.thr_id[q] => {}
            _ => return,
        }
        let c = &mut self.cand[q];
        if c.capacity() == 0 {
            c.reserve_exact(self.cap);
        }
        c.push((score, id));
        if c.len() >= self.cap {
            self.compact(q);
        }
    }

    fn compact(&mut self, q: usize) {
        let k = self.k;
        let c = &mut self.cand[q];
        if c.len() < k {
            return;
        }
        if c.len() > k {
            c.select_nth_unstable_by(k - 1, rank_order);
            c.truncate(k);
        }
        // The worst kept candidate is the new bar.
        let worst = *c
            .iter()
            .max_by(|a, b| rank_order(a, b))
            .expect("k > 0 candidates");
        self.thr[q] = worst.0;
        self.thr_id[q] = worst.1;
    }

    /// Folds `other` (the same queries over other rows) into `self`.
    pub(crate) fn merge(mut self, other: Self) -> Self {
        for (q, theirs) in other.cand.into_iter().enumerate() {
            for (s, id) in theirs {
                self.push(q, s, id);
            }
        }
        self
    }

    /// The final lists, best first.
    pub(crate) fn into_hits(self) -> Vec<Vec<Hit>> {
        let k = self.k;
        self.cand
            .into_iter()
            .map(|c| best_hits(c, k, false))
            .collect()
    }
}

/// The best `k` of `(score, id)` candidates as hits, best first; with `dedup_ids`, an id
/// found more than once (approximate searches can return one twice) counts once.
pub(crate) fn best_hits(mut c: Vec<(f32, u32)>, k: usize, dedup_ids: bool) -> Vec<Hit> {
    c.sort_unstable_by(rank_order);
    if dedup_ids {
        c.dedup_by_key(|x| x.1);
    }
    c.truncate(k);
    c.into_iter()
        .map(|(score, id)| Hit {
            id: id as usize,
            score,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_k_best_with_ties_broken_by_id() {
        let scores = [0.5, 0.9, 0.1, 0.9, 0.7, 0.5, 0.3, 0.9, 0.2, 0.6];
        let mut t = TopKSet::new(1, 4);
        // Offer in a scrambled order, as merged partial results would arrive.
        for &i in &[9usize, 3, 0, 7, 1, 5, 2, 8, 4, 6] {
            t.push(0, scores[i], i as u32);
        }
        let hits = t.into_hits().remove(0);
        let ids: Vec<usize> = hits.iter().map(|h| h.id).collect();
        assert_eq!(ids, vec![1, 3, 7, 4]);
    }

    #[test]
    fn many_candidates_trigger_pruning() {
        let n = 10_000u32;
        let mut t = TopKSet::new(2, 3);
        for i in 0..n {
            t.push(0, i as f32, i);
            t.push(1, -(i as f32), i);
        }
        let hits = t.into_hits();
        assert_eq!(
            hits[0].iter().map(|h| h.id).collect::<Vec<_>>(),
            vec![9999, 9998, 9997]
        );
        assert_eq!(
            hits[1].iter().map(|h| h.id).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn nan_is_never_kept_and_fewer_than_k_is_fine() {
        let mut t = TopKSet::new(1, 5);
        t.push(0, f32::NAN, 0);
        t.push(0, 1.0, 1);
        let hits = t.into_hits().remove(0);
        assert_eq!(hits, vec![Hit { id: 1, score: 1.0 }]);
    }
}
