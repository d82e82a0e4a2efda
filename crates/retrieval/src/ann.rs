//! Approximate search: cluster lists (see [`crate::ivf`]) or an HNSW graph (the `hnsw_rs`
//! crate).
//!
//! The structure is built in memory from the index's vectors the first time it is needed and
//! kept with the [`Index`](crate::Index) for later searches; IVF lists can also be saved beside
//! the index and loaded by later processes ([`Index::save_ann`](crate::Index::save_ann)). Scores are always exact inner
//! products with the stored vectors, so the order of the returned hits is exact; only recall
//! (which true neighbours are found) is approximate.

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::hnsw::Hnsw;
use rayon::prelude::*;

use crate::error::invalid;
use crate::kernel::{dot, Rows};
use crate::topk::{best_hits, Hit};
use crate::{Result, RetrievalError};

/// Which approximate structure to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnnMethod {
    /// Spherical k-means lists, `probes` of them scanned per query. Builds in seconds; best on
    /// clustered data such as embeddings.
    #[default]
    Ivf,
    /// A hierarchical navigable small-world graph (`hnsw_rs`). Builds in minutes per million
    /// vectors; sub-linear per query.
    Hnsw,
}

/// Approximate-search construction and search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnParams {
    /// The structure to build.
    pub method: AnnMethod,
    /// IVF: number of lists (0: √N).
    pub lists: usize,
    /// IVF: lists scanned per query; the recall/speed knob.
    pub probes: usize,
    /// HNSW: neighbours kept per node on the upper layers (twice this on the bottom layer), 2..=255.
    /// More means better recall and more memory.
    pub max_connections: usize,
    /// HNSW: candidate list size while inserting; more means a better graph, slower build.
    pub ef_construction: usize,
    /// HNSW: candidate list size while searching (raised to `k` if lower); the recall/speed
    /// knob.
    pub ef_search: usize,
}

impl Default for AnnParams {
    fn default() -> Self {
        Self {
            method: AnnMethod::Ivf,
            lists: 0,
            probes: 16,
            max_connections: 16,
            ef_construction: 100,
            ef_search: 128,
        }
    }
}

impl AnnParams {
    pub(crate) fn validate(&self) -> Result<()> {
        let bounds = [
            ("max_connections", self.max_connections, 2, 255),
            ("probes", self.probes, 1, usize::MAX),
            ("ef_construction", self.ef_construction, 1, usize::MAX),
        ];
        match bounds
            .into_iter()
            .find(|&(_, v, lo, hi)| !(lo..=hi).contains(&v))
        {
            Some((name, v, lo, usize::MAX)) => {
                Err(invalid(name, v, format!("must be at least {lo}")))
            }
            Some((name, v, lo, hi)) => Err(invalid(name, v, format!("must be in {lo}..={hi}"))),
            None => Ok(()),
        }
    }
}

/// `1 − x·y` for unit vectors, clamped at 0 (rounding can push a self-match's dot above 1, and
/// `hnsw_rs`'s own `DistDot` asserts on that).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UnitDot;

impl Distance<f32> for UnitDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// A built approximate structure.
pub(crate) enum AnnGraph {
    Ivf(crate::ivf::IvfLists, AnnParams),
    Hnsw(HnswGraph),
}

impl AnnGraph {
    pub(crate) fn build(rows: Rows<'_>, dim: usize, params: &AnnParams) -> Result<Self> {
        params.validate()?;
        Ok(match params.method {
            AnnMethod::Ivf => AnnGraph::Ivf(
                crate::ivf::IvfLists::build(rows, dim, params.lists)?,
                *params,
            ),
            AnnMethod::Hnsw => AnnGraph::Hnsw(HnswGraph::build(rows, dim, params)?),
        })
    }

    /// The parameters it was built with (`lists` resolved for IVF).
    pub(crate) fn params(&self) -> AnnParams {
        match self {
            AnnGraph::Ivf(ivf, p) => AnnParams {
                lists: ivf.lists(),
                ..*p
            },
            AnnGraph::Hnsw(h) => h.params,
        }
    }

    /// Approximate top-k per query; `params` supplies the search-time knobs.
    pub(crate) fn search(
        &self,
        rows: Rows<'_>,
        queries: &[f32],
        k: usize,
        params: &AnnParams,
    ) -> Vec<Vec<Hit>> {
        match self {
            AnnGraph::Ivf(ivf, _) => ivf.search(queries, k, params.probes),
            AnnGraph::Hnsw(h) => h.search(rows, queries, k, params.ef_search),
        }
    }
}

/// A built HNSW graph over an index's rows.
pub(crate) struct HnswGraph {
    hnsw: Hnsw<'static, f32, UnitDot>,
    params: AnnParams,
    dim: usize,
}

impl HnswGraph {
    /// Inserts every row, in parallel.
    fn build(rows: Rows<'_>, dim: usize, params: &AnnParams) -> Result<Self> {
        let n = rows.len_elems() / dim;
        let hnsw = Hnsw::new(
            params.max_connections,
            n.max(1),
            16,
            params.ef_construction,
            UnitDot,
        );
        rows.for_each_block(dim, 1 << 14, |r0, block| {
            let items: Vec<(&[f32], usize)> = block.chunks_exact(dim).zip(r0..).collect();
            hnsw.parallel_insert_slice(&items);
        });
        let mut hnsw = hnsw;
        hnsw.set_searching_mode(true);
        if hnsw.get_nb_point() != n {
            return Err(RetrievalError::Ann(format!(
                "graph holds {} of {n} vectors",
                hnsw.get_nb_point()
            )));
        }
        Ok(Self {
            hnsw,
            params: *params,
            dim,
        })
    }

    /// Approximate top-k per query, re-scored exactly against `rows`.
    fn search(&self, rows: Rows<'_>, queries: &[f32], k: usize, ef: usize) -> Vec<Vec<Hit>> {
        let (n, dim) = (self.hnsw.get_nb_point(), self.dim);
        if n == 0 || k == 0 {
            return vec![Vec::new(); queries.len() / dim];
        }
        let k = k.min(n);
        queries
            .par_chunks(dim)
            .map_init(
                || vec![0f32; dim],
                |buf, q| {
                    let found = self.hnsw.search(q, k, ef.max(k));
                    let c: Vec<(f32, u32)> = found
                        .iter()
                        .map(|nb| {
                            let id = nb.get_origin_id();
                            (dot(q, rows.row(id, dim, buf)), id as u32)
                        })
                        .collect();
                    best_hits(c, k, true)
                },
            )
            .collect()
    }
}
