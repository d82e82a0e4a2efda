//! Approximate search by clusters (an inverted file, "IVF"): spherical k-means splits the index
//! into lists; a query scans only the lists of its nearest centroids.
//!
//! Embeddings are clustered (by topic, style, …), which is exactly what this exploits, and every
//! step runs on the exact kernel: k-means assignment is a top-1 search, and a batch of queries
//! is grouped by list so that each probed list is scanned once, with the packed kernel, for all
//! the queries that probe it. Building takes seconds where an HNSW graph takes many minutes.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use rayon::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::io_err;
use crate::files::{read_regular, write_atomically};
use crate::kernel::{Rows, Scanner};
use crate::manifest::Manifest;
use crate::topk::{best_hits, Hit, TopKSet};
use crate::{exact, Result, RetrievalError};

/// `format` in the metadata of a saved lists file ([`crate::ANN_FILE`]).
const ANN_FORMAT: &str = "clip-ivf";

/// Clusters of an index's rows, with the rows copied in cluster order so each list is one
/// contiguous block for the kernel.
pub(crate) struct IvfLists {
    dim: usize,
    /// `[lists, dim]`, unit rows.
    centroids: Vec<f32>,
    /// List `l` is positions `offsets[l]..offsets[l + 1]`.
    offsets: Vec<usize>,
    /// Original row of each position.
    order: Vec<u32>,
    /// `[n, dim]` in position order.
    vectors: Vec<f32>,
}

/// k-means iterations: assignments barely move after a handful on embedding data.
const ITERATIONS: usize = 8;
/// Training rows per list (faiss uses 39 to 256).
const SAMPLE_PER_LIST: usize = 64;

impl IvfLists {
    /// Clusters `rows` into `lists` lists (0: √n).
    pub(crate) fn build(rows: Rows<'_>, dim: usize, lists: usize) -> Result<Self> {
        let n = rows.len_elems() / dim;
        let nlist = if lists == 0 {
            (n as f64).sqrt().round() as usize
        } else {
            lists
        }
        .clamp(1, n.max(1));
        // Training sample: evenly strided rows (deterministic, and spread over the whole index).
        let ns = (nlist * SAMPLE_PER_LIST).min(n);
        let mut sample = vec![0f32; ns * dim];
        for (i, out) in sample.chunks_exact_mut(dim).enumerate() {
            let r = i * n / ns.max(1);
            rows.copy_f32(r..r + 1, dim, out);
        }
        // Initial centroids: strided sample rows.
        let mut centroids = vec![0f32; nlist * dim];
        for (c, out) in centroids.chunks_exact_mut(dim).enumerate() {
            let s = c * ns / nlist;
            out.copy_from_slice(&sample[s * dim..(s + 1) * dim]);
        }
        for _ in 0..ITERATIONS {
            let assign = nearest(&centroids, dim, &sample);
            let mut sums = vec![0f64; nlist * dim];
            let mut counts = vec![0usize; nlist];
            for (row, &c) in sample.chunks_exact(dim).zip(&assign) {
                counts[c] += 1;
                let sum = &mut sums[c * dim..(c + 1) * dim];
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += *v as f64);
            }
            let per_list = centroids.chunks_exact_mut(dim).zip(sums.chunks_exact(dim));
            for (c, (out, sum)) in per_list.enumerate() {
                let norm = sum.iter().map(|s| s * s).sum::<f64>().sqrt();
                if counts[c] == 0 || norm == 0.0 {
                    // An empty list takes over a sample row, spread over the sample.
                    let s = (c * 7919 + 13) % ns.max(1);
                    out.copy_from_slice(&sample[s * dim..(s + 1) * dim]);
                } else {
                    out.iter_mut()
                        .zip(sum)
                        .for_each(|(o, s)| *o = (s / norm) as f32);
                }
            }
        }
        // Assign every row, a block at a time, and lay the rows out list by list.
        let mut assign = Vec::with_capacity(n);
        rows.for_each_block(dim, 1 << 16, |_, block| {
            assign.extend(nearest(&centroids, dim, block))
        });
        // List by list, rows in index order within a list (the sort is stable).
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by_key(|&r| assign[r as usize]);
        let list_start = |c| order.partition_point(|&r| assign[r as usize] < c);
        let offsets: Vec<usize> = (0..=nlist).map(list_start).collect();
        let vectors = gather(rows, dim, &order);
        Ok(Self {
            dim,
            centroids,
            offsets,
            order,
            vectors,
        })
    }

    /// Writes the centroids and lists to `path`, tagged with the identity of the vectors of
    /// `m`. The vectors themselves are not copied: [`IvfLists::load`] regathers them from the
    /// index.
    pub(crate) fn save(&self, path: &Path, m: &Manifest) -> Result<()> {
        let centroids: Vec<u8> = self
            .centroids
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let offsets = self.offsets.iter().flat_map(|&v| (v as u64).to_le_bytes());
        let offsets: Vec<u8> = offsets.collect();
        let order: Vec<u8> = self.order.iter().flat_map(|v| v.to_le_bytes()).collect();
        let st_err = |source| RetrievalError::Safetensors {
            path: path.to_path_buf(),
            source,
        };
        let view = |dtype, shape, data| TensorView::new(dtype, shape, data).map_err(st_err);
        let tensors = [
            (
                "centroids",
                view(Dtype::F32, vec![self.lists(), self.dim], &centroids)?,
            ),
            (
                "offsets",
                view(Dtype::U64, vec![self.lists() + 1], &offsets)?,
            ),
            ("order", view(Dtype::U32, vec![self.order.len()], &order)?),
        ];
        let bytes = safetensors::serialize(tensors, Some(identity(m))).map_err(st_err)?;
        write_atomically(path, |f| {
            f.write_all(&bytes).map_err(io_err("cannot write", path))
        })
    }

    /// Reads lists saved by [`IvfLists::save`] for the vectors of `m`, which are `rows`.
    /// `Ok(None)` when there is no file; an error when it is damaged or was made for other
    /// vectors.
    pub(crate) fn load(path: &Path, m: &Manifest, rows: Rows<'_>) -> Result<Option<Self>> {
        // Centroids, offsets and order of at most one list per row, and a header.
        let max = (m.count as u64 + 1) * (m.dimension as u64 * 4 + 16) + (100 << 20);
        let bytes = match read_regular(path, max) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot read", path)(e)),
        };
        let damaged = |reason: String| RetrievalError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| damaged(format!("bad safetensors file: {e}")))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("deserialize read it");
        let found = meta.metadata().clone().unwrap_or_default();
        if found.get("format").map(String::as_str) != Some(ANN_FORMAT) {
            return Err(damaged(format!("it is not a {ANN_FORMAT} file")));
        }
        if found != identity(m) {
            return Err(RetrievalError::Stale {
                path: path.to_path_buf(),
            });
        }
        let tensor = |key: &str, dtype: Dtype| typed_tensor(&st, key, dtype).map_err(damaged);
        let (dim, n) = (m.dimension, m.count);
        let (cshape, c) = tensor("centroids", Dtype::F32)?;
        let (oshape, o) = tensor("offsets", Dtype::U64)?;
        let (rshape, r) = tensor("order", Dtype::U32)?;
        let lists = cshape.first().copied().unwrap_or(0);
        if lists == 0 || cshape != [lists, dim] || oshape != [lists + 1] || rshape != [n] {
            return Err(damaged(format!(
                "shapes {cshape:?}, {oshape:?}, {rshape:?} do not fit {n} vectors of dimension {dim}"
            )));
        }
        let centroids: Vec<f32> = c
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let offsets: Vec<usize> = (o.chunks_exact(8))
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
            .collect();
        let order: Vec<u32> = r
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        if offsets[0] != 0 || offsets[lists] != n || offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(damaged("list offsets are out of order".into()));
        }
        // Every row exactly once, so no hit can name a row outside the index.
        let mut seen = vec![false; n];
        if !order
            .iter()
            .all(|&i| (i as usize) < n && !std::mem::replace(&mut seen[i as usize], true))
        {
            return Err(damaged(
                "the lists do not hold every row exactly once".into(),
            ));
        }
        if !centroids.iter().all(|v| v.is_finite()) {
            return Err(damaged("a centroid holds a non-finite value".into()));
        }
        let vectors = gather(rows, dim, &order);
        Ok(Some(Self {
            dim,
            centroids,
            offsets,
            order,
            vectors,
        }))
    }

    /// Number of lists.
    pub(crate) fn lists(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Top-k per query from the `probes` lists nearest to it, exactly scored.
    pub(crate) fn search(&self, queries: &[f32], k: usize, probes: usize) -> Vec<Vec<Hit>> {
        let dim = self.dim;
        let nq = queries.len() / dim;
        let n = self.order.len();
        if n == 0 || k == 0 {
            return vec![Vec::new(); nq];
        }
        let probes = probes.clamp(1, self.lists());
        let probed = exact::top_k(Rows::F32(&self.centroids), dim, queries, probes);
        // Invert: which queries probe each list.
        let mut by_list: Vec<Vec<u32>> = vec![Vec::new(); self.lists()];
        for (q, hits) in probed.iter().enumerate() {
            for h in hits {
                by_list[h.id].push(q as u32);
            }
        }
        let partial: Vec<(u32, Vec<(f32, u32)>)> = by_list
            .par_iter()
            .enumerate()
            .filter(|(_, qs)| !qs.is_empty())
            .flat_map_iter(|(l, qs)| {
                let mut qbuf = Vec::with_capacity(qs.len() * dim);
                for &q in qs {
                    qbuf.extend_from_slice(&queries[q as usize * dim..(q as usize + 1) * dim]);
                }
                let (start, end) = (self.offsets[l], self.offsets[l + 1]);
                let list = Rows::F32(&self.vectors[start * dim..end * dim]);
                let mut set = TopKSet::new(qs.len(), k);
                Scanner::new(dim).scan(list, 0..end - start, &qbuf, &mut set);
                // Back from positions in the list to rows of the index.
                let at = |h: Hit| (h.score, self.order[start + h.id]);
                qs.iter()
                    .zip(set.into_hits())
                    .map(|(&q, h)| (q, h.into_iter().map(at).collect()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut merged: Vec<Vec<(f32, u32)>> = vec![Vec::new(); nq];
        for (q, hits) in partial {
            merged[q as usize].extend(hits);
        }
        merged
            .into_par_iter()
            .map(|c| best_hits(c, k, false))
            .collect()
    }
}

/// The shape and bytes of tensor `key` of `st`, which must be of `dtype`; otherwise what is
/// wrong with it.
fn typed_tensor<'a>(
    st: &SafeTensors<'a>,
    key: &str,
    dtype: Dtype,
) -> std::result::Result<(Vec<usize>, &'a [u8]), String> {
    let v = st.tensor(key).map_err(|_| format!("no `{key}` tensor"))?;
    if v.dtype() != dtype {
        return Err(format!("`{key}` is {:?}, not {dtype:?}", v.dtype()));
    }
    Ok((v.shape().to_vec(), v.data()))
}

/// Rows `order` of `rows`, in that order.
fn gather(rows: Rows<'_>, dim: usize, order: &[u32]) -> Vec<f32> {
    let mut vectors = vec![0f32; order.len() * dim];
    vectors
        .par_chunks_mut(dim)
        .zip(order.par_iter())
        .for_each(|(out, &r)| rows.copy_f32(r as usize..r as usize + 1, dim, out));
    vectors
}

/// What identifies the vectors saved lists were built from: their manifest's record of them.
fn identity(m: &Manifest) -> HashMap<String, String> {
    let fields = [
        ("format", ANN_FORMAT.to_string()),
        ("vectors_file", m.vectors_file.clone()),
        ("vectors_bytes", m.vectors_bytes.to_string()),
        ("vectors_crc32", m.vectors_crc32.to_string()),
        ("count", m.count.to_string()),
        ("dimension", m.dimension.to_string()),
    ];
    fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// The nearest centroid of each row of `x`.
fn nearest(centroids: &[f32], dim: usize, x: &[f32]) -> Vec<usize> {
    exact::top_k(Rows::F32(centroids), dim, x, 1)
        .into_iter()
        .map(|h| h.first().map_or(0, |h| h.id))
        .collect()
}
