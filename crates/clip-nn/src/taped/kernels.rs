//! Slice-level CPU kernels for the taped encoder: GEMM, layer norm, activation, attention.
//!
//! Every kernel overwrites its whole output (buffers come recycled from a pool with stale
//! contents) unless it says it accumulates. Reductions over rows use fixed-size chunks
//! summed in order, so results do not depend on how rayon schedules the work.

use rayon::prelude::*;

use crate::activation_op::exp_fast;
use multiversion::multiversion;

use crate::simd;
use crate::Activation;

/// A raw output pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every user writes a region no other task touches (see the call sites).
unsafe impl Send for SharedMut {}
// SAFETY: as for `Send`: shared only among tasks that write disjoint regions.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer; a method, so that closures capture the whole (Sync) wrapper.
    fn at(self, off: usize) -> *mut f32 {
        self.0.wrapping_add(off)
    }
}

/// Threads a kernel may use (candle's setting, which follows `RAYON_NUM_THREADS`).
fn threads() -> usize {
    candle_core::utils::get_num_threads().max(1)
}

fn parallelism(threads: usize) -> gemm::Parallelism {
    match threads {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// A read-only strided matrix: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

impl View {
    /// Row-major with row stride `ld`: element `(i, j)` at `ptr + i·ld + j`.
    fn rows(ptr: *const f32, ld: usize) -> Self {
        Self {
            ptr,
            rs: ld as isize,
            cs: 1,
        }
    }

    /// The transpose of [`View::rows`]: element `(i, j)` at `ptr + j·ld + i`.
    fn cols(ptr: *const f32, ld: usize) -> Self {
        Self {
            ptr,
            rs: 1,
            cs: ld as isize,
        }
    }
}

/// `dst[m, n] = (accumulate ? dst : 0) + alpha·lhs[m, k]·rhs[k, n]`, `dst` row stride `ld`,
/// on up to `threads` threads.
///
/// # Safety
/// All views must cover the addressed elements; `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    ld: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    alpha: f32,
    threads: usize,
) {
    // SAFETY: the caller guarantees the views cover every addressed element and that `dst`
    // aliases no input; the strides and sizes are passed through unchanged.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ld as isize,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism(threads),
        );
    }
}

/// `out[m, n] = (residual +) x[m, k]·w[n, k]ᵀ (+ b)`: a linear layer's forward, with the
/// residual connection that follows it folded into the output's first pass.
pub(crate) fn linear_fwd(
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    residual: Option<&[f32]>,
    k: usize,
) {
    let n = w.len() / k;
    let m = x.len() / k;
    assert!(out.len() == m * n && x.len() == m * k && w.len() == n * k);
    match (b, residual) {
        (Some(b), None) => {
            assert_eq!(b.len(), n);
            out.par_chunks_mut(n * 64)
                .for_each(|c| c.chunks_mut(n).for_each(|r| r.copy_from_slice(b)));
        }
        (b, Some(res)) => {
            assert_eq!(res.len(), out.len());
            out.par_chunks_mut(n * 64)
                .zip(res.par_chunks(n * 64))
                .for_each(|(c, rs)| match b {
                    Some(b) => c.chunks_mut(n).zip(rs.chunks(n)).for_each(|(o, r)| {
                        o.iter_mut()
                            .zip(r.iter().zip(b))
                            .for_each(|(o, (r, b))| *o = r + b)
                    }),
                    None => c.copy_from_slice(rs),
                });
        }
        (None, None) => {}
    }
    let accumulate = b.is_some() || residual.is_some();
    // SAFETY: sizes checked above; x and w are rows of k, wᵀ read with strides (1, k).
    unsafe {
        gemm_raw(
            (m, n, k),
            out.as_mut_ptr(),
            n,
            accumulate,
            View::rows(x.as_ptr(), k),
            View::cols(w.as_ptr(), k),
            1.0,
            threads(),
        );
    }
}

/// A linear layer's backward: `dw = dyᵀ·x` (overwritten), `db = Σ_rows dy` (overwritten),
/// and `dx (+)= dy·w` when `dx` is given.
///
/// The two products have the same cost and share nothing, so each runs on half the threads
/// at once: on these thin shapes the GEMM kernel splitting one product across all threads
/// syncs per block, and the backward ran ≈ 8 % slower that way (`benches/train_step.rs`).
/// Without `dx`, the rows are split in two halves summed separately instead. Either way the
/// arithmetic does not depend on the thread count, so runs repeat to the bit.
pub(crate) fn linear_bwd(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    k: usize,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dx: Option<(&mut [f32], bool)>,
) {
    let n = w.len() / k;
    let m = x.len() / k;
    assert!(dy.len() == m * n && dw.len() == n * k);
    let all = threads();
    let half = all.div_ceil(2);
    let weight_grad = |dw: &mut [f32], db: Option<&mut [f32]>, threads: usize| {
        dw_rows(dy, x, n, k, 0..m, dw, threads);
        if let Some(db) = db {
            column_sums(dy, n, db);
        }
    };
    match dx {
        Some((dx, accumulate)) => {
            assert_eq!(dx.len(), m * k);
            rayon::join(
                || weight_grad(dw, db, half),
                // SAFETY: dx [m, k] = dy [m, n] · w [n, k].
                || unsafe {
                    gemm_raw(
                        (m, k, n),
                        dx.as_mut_ptr(),
                        k,
                        accumulate,
                        View::rows(dy.as_ptr(), n),
                        View::rows(w.as_ptr(), k),
                        1.0,
                        half,
                    )
                },
            );
        }
        None if m >= 512 => {
            let mid = m / 2;
            let mut upper = vec![0f32; dw.len()];
            rayon::join(
                || dw_rows(dy, x, n, k, 0..mid, dw, half),
                || dw_rows(dy, x, n, k, mid..m, &mut upper, half),
            );
            dw.iter_mut().zip(&upper).for_each(|(a, b)| *a += b);
            if let Some(db) = db {
                column_sums(dy, n, db);
            }
        }
        None => weight_grad(dw, db, all),
    }
}

/// `dw = dy[rows]ᵀ·x[rows]` for a block of rows of `dy` (`[m, n]`) and `x` (`[m, k]`).
fn dw_rows(
    dy: &[f32],
    x: &[f32],
    n: usize,
    k: usize,
    rows: std::ops::Range<usize>,
    dw: &mut [f32],
    threads: usize,
) {
    assert!(rows.end * n <= dy.len() && rows.end * k <= x.len() && dw.len() == n * k);
    // SAFETY: dw [n, k] = dyᵀ [n, rows] · x [rows, k]; dyᵀ read with strides (1, n), both
    // blocks inside their buffers (checked above).
    unsafe {
        gemm_raw(
            (n, k, rows.len()),
            dw.as_mut_ptr(),
            k,
            false,
            View::cols(dy[rows.start * n..].as_ptr(), n),
            View::rows(x[rows.start * k..].as_ptr(), k),
            1.0,
            threads,
        );
    }
}

/// Rows per parallel task for row-wise kernels of width `d`.
fn rows_per_task(d: usize) -> usize {
    (16384 / d.max(1)).max(1)
}

/// Sums of `cols` columns over all rows of `x`, in a fixed order.
pub(crate) fn column_sums(x: &[f32], cols: usize, out: &mut [f32]) {
    let parts: Vec<Vec<f32>> = x
        .par_chunks(rows_per_task(cols) * cols * 4)
        .map(|c| {
            let mut acc = vec![0f32; cols];
            add_rows(c, &mut acc);
            acc
        })
        .collect();
    out.iter_mut().for_each(|o| *o = 0.0);
    for p in parts {
        out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
    }
}

/// `acc += Σ rows` for the rows (of `acc.len()`) in `x`.
#[multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn add_rows(x: &[f32], acc: &mut [f32]) {
    for row in x.chunks_exact(acc.len()) {
        acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
    }
}

/// Layer norm over rows of width `d`; saves each row's mean and 1/std for the backward.
pub(crate) fn layer_norm_fwd(
    x: &[f32],
    g: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [f32],
    stats: &mut [f32],
) {
    let d = g.len();
    let rows = rows_per_task(d);
    out.par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d))
        .zip(stats.par_chunks_mut(rows * 2))
        .for_each(|((o, xs), st)| layer_norm_rows(xs, g, b, eps, o, st));
}

/// [`layer_norm_fwd`] over one block of rows.
#[multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn layer_norm_rows(xs: &[f32], g: &[f32], b: &[f32], eps: f32, o: &mut [f32], st: &mut [f32]) {
    let d = g.len();
    for ((orow, xrow), s) in o.chunks_mut(d).zip(xs.chunks(d)).zip(st.chunks_mut(2)) {
        let mean = simd::sum_map(xrow, |v| v) / d as f32;
        let var = simd::sum_map(xrow, |v| (v - mean) * (v - mean)) / d as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((o, &x), &g), &b) in orow.iter_mut().zip(xrow).zip(g).zip(b) {
            *o = (x - mean) * rstd * g + b;
        }
        s[0] = mean;
        s[1] = rstd;
    }
}

/// Layer norm backward: `dx (+)= rstd·(h − mean(h) − x̂·mean(h·x̂))` with `h = dy·γ`;
/// `dg = Σ dy·x̂` and `db = Σ dy` are overwritten.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_bwd(
    dy: &[f32],
    x: &[f32],
    stats: &[f32],
    g: &[f32],
    dx: &mut [f32],
    accumulate: bool,
    dg: &mut [f32],
    db: &mut [f32],
) {
    let d = g.len();
    let rows = rows_per_task(d);
    let parts: Vec<Vec<f32>> = dx
        .par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d))
        .zip(dy.par_chunks(rows * d).zip(stats.par_chunks(rows * 2)))
        .map(|((o, xs), (ds, st))| {
            let mut acc = vec![0f32; 2 * d];
            // x̂ of one row, reused by both passes over it.
            let mut xh = vec![0f32; d];
            layer_norm_bwd_rows(xs, ds, st, g, o, accumulate, &mut acc, &mut xh);
            acc
        })
        .collect();
    dg.iter_mut().for_each(|v| *v = 0.0);
    db.iter_mut().for_each(|v| *v = 0.0);
    for p in parts {
        dg.iter_mut().zip(&p[..d]).for_each(|(o, v)| *o += v);
        db.iter_mut().zip(&p[d..]).for_each(|(o, v)| *o += v);
    }
}

/// [`layer_norm_bwd`] over one block of rows; `acc` collects `[Σ dy·x̂, Σ dy]`.
#[allow(clippy::too_many_arguments)]
#[multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn layer_norm_bwd_rows(
    xs: &[f32],
    ds: &[f32],
    st: &[f32],
    g: &[f32],
    o: &mut [f32],
    accumulate: bool,
    acc: &mut [f32],
    xh: &mut [f32],
) {
    let d = g.len();
    let (dg, db) = acc.split_at_mut(d);
    for (((orow, xrow), drow), s) in o
        .chunks_mut(d)
        .zip(xs.chunks(d))
        .zip(ds.chunks(d))
        .zip(st.chunks(2))
    {
        let (mean, rstd) = (s[0], s[1]);
        xh.iter_mut()
            .zip(xrow)
            .for_each(|(h, &x)| *h = (x - mean) * rstd);
        dg.iter_mut()
            .zip(drow)
            .zip(&*xh)
            .for_each(|((a, &dy), &h)| *a += dy * h);
        db.iter_mut().zip(drow).for_each(|(a, &dy)| *a += dy);
        let mh = simd::sum_zip(drow, g, |dy, g| dy * g) / d as f32;
        let mhx = simd::dot3(drow, g, xh) / d as f32;
        for (((o, &dy), &g), &h) in orow.iter_mut().zip(drow).zip(g).zip(&*xh) {
            let v = rstd * (dy * g - mh - h * mhx);
            *o = if accumulate { *o + v } else { v };
        }
    }
}

/// `out = act(x)`.
pub(crate) fn activation_fwd(act: Activation, x: &[f32], out: &mut [f32]) {
    crate::activation_op::map_values(act, x, out);
}

/// `dx = dy·act'(x)`, in place over `dy`.
pub(crate) fn activation_bwd(act: Activation, x: &[f32], dy: &mut [f32]) {
    crate::activation_op::scale_by_derivatives(act, x, dy);
}

/// A read-only `[rows, width]` block inside a wider row-major buffer: element `(r, c)` at
/// `data[r·ld + c]` (e.g. the `k` columns of a fused `[rows, 3·width]` q/k/v buffer).
#[derive(Clone, Copy)]
pub(crate) struct Cols<'a> {
    data: &'a [f32],
    ld: usize,
    /// Columns in the block: what the unsafe GEMMs may address in each row, asserted by the
    /// kernels that take a `Cols`.
    width: usize,
}

impl<'a> Cols<'a> {
    /// Columns `col..col + width` of the `[rows, ld]` buffer `buf`.
    pub(crate) fn new(buf: &'a [f32], ld: usize, col: usize, width: usize) -> Self {
        assert!(ld > 0 && col + width <= ld && buf.len().is_multiple_of(ld));
        Self {
            data: &buf[col..],
            ld,
            width,
        }
    }

    fn rows(&self) -> usize {
        self.data.len().div_ceil(self.ld)
    }

    fn view(&self, off: usize) -> View {
        View::rows(self.data[off..].as_ptr(), self.ld)
    }

    /// The block transposed: element `(c, r)`.
    fn view_t(&self, off: usize) -> View {
        View::cols(self.data[off..].as_ptr(), self.ld)
    }
}

/// Writable column blocks of one buffer (see [`Cols`]); several may share the buffer when
/// their columns do not overlap.
#[derive(Clone, Copy)]
pub(crate) struct ColsMut<'a> {
    ptr: SharedMut,
    ld: usize,
    rows: usize,
    /// Columns in the block (see [`Cols`]).
    width: usize,
    _buf: std::marker::PhantomData<&'a mut [f32]>,
}

/// Splits `buf` (`[rows, ld]`) into writable blocks of `width` columns starting at `cols`.
pub(crate) fn cols_mut<const N: usize>(
    buf: &mut [f32],
    ld: usize,
    cols: [usize; N],
    width: usize,
) -> [ColsMut<'_>; N] {
    assert!(ld > 0 && buf.len().is_multiple_of(ld));
    let mut sorted = cols;
    sorted.sort_unstable();
    assert!(sorted.windows(2).all(|p| p[0] + width <= p[1]));
    assert!(sorted.last().is_none_or(|&c| c + width <= ld));
    let rows = buf.len() / ld;
    let base = buf.as_mut_ptr();
    // The blocks are disjoint column ranges of `buf`, which stays mutably borrowed for as
    // long as any of them lives.
    cols.map(|c| ColsMut {
        ptr: SharedMut(base.wrapping_add(c)),
        ld,
        rows,
        width,
        _buf: std::marker::PhantomData,
    })
}

/// Where the sequences of a batch lie in a `[rows, width]` activation buffer: sequence `i`
/// is rows `start(i)..start(i) + len(i)`, one after another.
///
/// An image tower's sequences all have the same length; a text tower's end at each
/// caption's end-of-text token (attention is causal, so the padding after it cannot reach
/// the pooled token), which skips the padding's share of every product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seqs {
    starts: Vec<usize>,
    lens: Vec<usize>,
}

impl Seqs {
    /// `batch` sequences of `len` rows each.
    pub fn uniform(batch: usize, len: usize) -> Self {
        Self::ragged(vec![len; batch])
    }

    /// Sequences of the given lengths, packed in order.
    pub fn ragged(lens: Vec<usize>) -> Self {
        let starts = offsets(lens.iter().copied());
        Self { starts, lens }
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.lens.len()
    }

    /// Total rows.
    pub fn rows(&self) -> usize {
        self.lens.iter().sum()
    }

    /// First row of sequence `i`.
    pub fn start(&self, i: usize) -> usize {
        self.starts[i]
    }

    /// Rows of sequence `i`.
    pub fn len(&self, i: usize) -> usize {
        self.lens[i]
    }

    /// Whether there are no sequences.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }
}

/// Shapes of one multi-head attention call over the sequences `seqs` (keys and values:
/// every row).
///
/// Queries are either every row (`pooled: None`) or one row per sequence (`pooled:
/// Some(positions)`, `batch` rows): the last block of a tower only needs the token it pools,
/// and its other queries would be wasted work.
#[derive(Clone, Copy)]
pub(crate) struct AttnShape<'a> {
    pub seqs: &'a Seqs,
    pub heads: usize,
    /// The factor on `q·kᵀ` (the layer's, usually `1/√head_dim`).
    pub scale: f32,
    pub width: usize,
    pub causal: bool,
    pub pooled: Option<&'a [usize]>,
}

impl AttnShape<'_> {
    fn head_dim(&self) -> usize {
        self.width / self.heads
    }

    /// The bounds the attention kernels' unsafe GEMMs rely on: every head's `head_dim`
    /// columns lie inside `width`, and every column block handed in is `width` wide.
    fn assert_widths(&self, blocks: &[usize]) {
        assert!(self.heads > 0 && self.heads * self.head_dim() <= self.width);
        assert!(
            blocks.iter().all(|&b| b == self.width),
            "attention over width {} got column blocks of widths {blocks:?}",
            self.width
        );
    }

    /// Queries of sequence `bi`.
    fn tq(&self, bi: usize) -> usize {
        if self.pooled.is_some() {
            1
        } else {
            self.seqs.len(bi)
        }
    }

    /// First query row of sequence `bi`.
    fn q_start(&self, bi: usize) -> usize {
        if self.pooled.is_some() {
            bi
        } else {
            self.seqs.start(bi)
        }
    }

    /// Query rows in all.
    pub(crate) fn q_rows(&self) -> usize {
        (0..self.seqs.batch()).map(|bi| self.tq(bi)).sum()
    }

    /// Length of the probabilities buffer: `tq × len` per sequence and head.
    pub(crate) fn probs_len(&self) -> usize {
        (0..self.seqs.batch())
            .map(|bi| self.heads * self.tq(bi) * self.seqs.len(bi))
            .sum()
    }

    /// How many keys query `i` of sequence `bi` may attend to.
    fn visible(&self, bi: usize, i: usize) -> usize {
        match (self.causal, self.pooled) {
            (false, _) => self.seqs.len(bi),
            (true, None) => i + 1,
            (true, Some(pos)) => pos[bi] + 1,
        }
    }

    /// `(sequence, head)` of every task, in the order of the probabilities buffer, with the
    /// length of its `tq × len` block.
    fn tasks(&self) -> Vec<(usize, usize, usize)> {
        (0..self.seqs.batch())
            .flat_map(|bi| {
                let n = self.tq(bi) * self.seqs.len(bi);
                (0..self.heads).map(move |h| (bi, h, n))
            })
            .collect()
    }
}

/// Where each of consecutive blocks of the given lengths starts.
fn offsets(lens: impl Iterator<Item = usize>) -> Vec<usize> {
    lens.scan(0, |next, len| {
        let start = *next;
        *next += len;
        Some(start)
    })
    .collect()
}

/// Splits `buf` into consecutive blocks of the given lengths.
fn split_blocks<T>(mut buf: &mut [T], lens: impl Iterator<Item = usize>) -> Vec<&mut [T]> {
    let mut out = Vec::new();
    for n in lens {
        let (head, rest) = std::mem::take(&mut buf).split_at_mut(n);
        out.push(head);
        buf = rest;
    }
    out
}

/// `probs = softmax(q·kᵀ/√d + mask)` per sequence and head (blocks of `tq × len`, saved),
/// and `ctx = probs·v` written head by head into `ctx` (`[query rows, w]`).
pub(crate) fn attention_fwd(
    s: AttnShape,
    (q, k, v): (Cols, Cols, Cols),
    probs: &mut [f32],
    ctx: &mut [f32],
) {
    let (w, d) = (s.width, s.head_dim());
    let rows = s.seqs.rows();
    assert!(probs.len() == s.probs_len() && ctx.len() == s.q_rows() * w);
    assert!(q.rows() == s.q_rows() && k.rows() == rows && v.rows() == rows);
    s.assert_widths(&[q.width, k.width, v.width]);
    let out = SharedMut(ctx.as_mut_ptr());
    let tasks = s.tasks();
    split_blocks(probs, tasks.iter().map(|t| t.2))
        .into_par_iter()
        .zip(tasks.par_iter())
        .for_each(|(p, &(bi, h, _))| {
            let (t, tq) = (s.seqs.len(bi), s.tq(bi));
            let (q0, kv0) = (s.q_start(bi), s.seqs.start(bi));
            let (qo, ko, vo) = (q0 * q.ld + h * d, kv0 * k.ld + h * d, kv0 * v.ld + h * d);
            // SAFETY: the q block is tq rows of columns h·d..(h+1)·d ≤ heads·d ≤ width, the
            // k/v blocks t rows of the same columns: inside their buffers (`Cols::new` checked
            // that `width` columns fit each row, `assert_widths` that the heads fit `width`,
            // the asserts above the rows); p is this task's own tq×t block; the ctx block
            // (bi, h) is written by this task only.
            unsafe {
                gemm_raw(
                    (tq, t, d),
                    p.as_mut_ptr(),
                    t,
                    false,
                    q.view(qo),
                    k.view_t(ko),
                    s.scale,
                    1,
                );
            }
            for (i, row) in p.chunks_mut(t).enumerate() {
                softmax_row(row, s.visible(bi, i));
            }
            let rows = View::rows(p.as_ptr(), t);
            // SAFETY: as above.
            unsafe {
                gemm_raw(
                    (tq, d, t),
                    out.at(q0 * w + h * d),
                    w,
                    false,
                    rows,
                    v.view(vo),
                    1.0,
                    1,
                );
            }
        });
}

/// Softmax of every row (of width `d`) of `x`, in place, rows in parallel.
pub(crate) fn softmax_rows(x: &mut [f32], d: usize) {
    x.par_chunks_mut(rows_per_task(d) * d)
        .for_each(|c| c.chunks_mut(d).for_each(|row| softmax_row(row, d)));
}

/// [`softmax_grad`] over rows of width `d`, rows in parallel.
pub(crate) fn softmax_grad_rows(ds: &mut [f32], p: &[f32], d: usize) {
    assert_eq!(ds.len(), p.len());
    ds.par_chunks_mut(rows_per_task(d) * d)
        .zip(p.par_chunks(rows_per_task(d) * d))
        .for_each(|(ds, p)| softmax_grad(ds, p, d));
}

/// `row[..valid] = softmax(row[..valid])`, the masked rest zeroed.
#[multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn softmax_row(row: &mut [f32], valid: usize) {
    let max = simd::max(&row[..valid]);
    row[..valid]
        .iter_mut()
        .for_each(|x| *x = exp_fast(*x - max));
    let inv = 1.0 / simd::sum_map(&row[..valid], |x| x);
    row[..valid].iter_mut().for_each(|x| *x *= inv);
    row[valid..].iter_mut().for_each(|x| *x = 0.0);
}

/// Softmax backward row by row (rows of `t`), in place: `dP ← P ⊙ (dP − Σ_j dP·P)`.
#[multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn softmax_grad(ds: &mut [f32], p: &[f32], t: usize) {
    for (drow, prow) in ds.chunks_mut(t).zip(p.chunks(t)) {
        let dot = simd::sum_zip(drow, prow, |a, b| a * b);
        drow.iter_mut()
            .zip(prow)
            .for_each(|(g, &pv)| *g = pv * (*g - dot));
    }
}

/// Backward of [`attention_fwd`]: overwrites the `dq`, `dk`, `dv` blocks from `dctx`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_bwd(
    s: AttnShape,
    (q, k, v): (Cols, Cols, Cols),
    probs: &[f32],
    dctx: &[f32],
    [dq, dk, dv]: [ColsMut<'_>; 3],
) {
    let (w, d) = (s.width, s.head_dim());
    let (rows, q_rows) = (s.seqs.rows(), s.q_rows());
    assert!(probs.len() == s.probs_len() && dctx.len() == q_rows * w);
    assert!(q.rows() == q_rows && k.rows() == rows && v.rows() == rows);
    assert!(dq.rows == q_rows && dk.rows == rows && dv.rows == rows);
    s.assert_widths(&[q.width, k.width, v.width, dq.width, dk.width, dv.width]);
    let dctx = Cols::new(dctx, w, 0, w);
    let tasks = s.tasks();
    let starts = offsets(tasks.iter().map(|t| t.2));
    tasks
        .par_iter()
        .zip(&starts)
        .for_each(|(&(bi, h, n), &off)| {
            let p = &probs[off..off + n];
            let (t, tq) = (s.seqs.len(bi), s.tq(bi));
            let q_at = |ld: usize| s.q_start(bi) * ld + h * d;
            let kv_at = |ld: usize| s.seqs.start(bi) * ld + h * d;
            let mut ds = vec![0f32; tq * t];
            let p_t = View::cols(p.as_ptr(), t);
            // SAFETY: blocks as in the forward (widths and rows asserted above for the inputs
            // and for dq, dk, dv); each task writes only its own (bi, h) blocks of dq, dk and
            // dv (disjoint columns of their buffers), and its local ds.
            unsafe {
                // dP = dctx·vᵀ
                gemm_raw(
                    (tq, t, d),
                    ds.as_mut_ptr(),
                    t,
                    false,
                    dctx.view(q_at(w)),
                    v.view_t(kv_at(v.ld)),
                    1.0,
                    1,
                );
                // dv = Pᵀ·dctx
                gemm_raw(
                    (t, d, tq),
                    dv.ptr.at(kv_at(dv.ld)),
                    dv.ld,
                    false,
                    p_t,
                    dctx.view(q_at(w)),
                    1.0,
                    1,
                );
            }
            softmax_grad(&mut ds, p, t);
            let ds_v = View::rows(ds.as_ptr(), t);
            let ds_t = View::cols(ds.as_ptr(), t);
            // SAFETY: as above.
            unsafe {
                // dq = scale·dS·k
                gemm_raw(
                    (tq, d, t),
                    dq.ptr.at(q_at(dq.ld)),
                    dq.ld,
                    false,
                    ds_v,
                    k.view(kv_at(k.ld)),
                    s.scale,
                    1,
                );
                // dk = scale·dSᵀ·q
                gemm_raw(
                    (t, d, tq),
                    dk.ptr.at(kv_at(dk.ld)),
                    dk.ld,
                    false,
                    ds_t,
                    q.view(q_at(q.ld)),
                    s.scale,
                    1,
                );
            }
        });
}

#[cfg(test)]
mod width_checks {
    use super::*;

    fn shape(seqs: &Seqs, width: usize) -> AttnShape<'_> {
        AttnShape {
            seqs,
            heads: 2,
            scale: 1.0,
            width,
            causal: false,
            pooled: None,
        }
    }

    /// A key block narrower than the attention's width would have the GEMMs read past each row
    /// of it (and past the buffer's end on the last row): refused before any unsafe call.
    #[test]
    #[should_panic(expected = "column blocks of widths [8, 4, 8]")]
    fn attention_refuses_a_block_narrower_than_its_width() {
        let (w, rows) = (8, 3);
        let seqs = Seqs::uniform(1, rows);
        let full = vec![0.5f32; rows * w];
        let narrow = vec![0.5f32; rows * 4];
        let (q, k, v) = (
            Cols::new(&full, w, 0, w),
            Cols::new(&narrow, 4, 0, 4),
            Cols::new(&full, w, 0, w),
        );
        let s = shape(&seqs, w);
        let mut probs = vec![0f32; s.probs_len()];
        let mut ctx = vec![0f32; rows * w];
        attention_fwd(s, (q, k, v), &mut probs, &mut ctx);
    }

    /// The same for a gradient block of the backward.
    #[test]
    #[should_panic(expected = "column blocks of widths [8, 8, 8, 8, 8, 4]")]
    fn attention_bwd_refuses_a_narrow_gradient_block() {
        let (w, rows) = (8, 3);
        let seqs = Seqs::uniform(1, rows);
        let full = vec![0.5f32; rows * w];
        let q = Cols::new(&full, w, 0, w);
        let s = shape(&seqs, w);
        let probs = vec![1.0 / rows as f32; s.probs_len()];
        let dctx = vec![0.1f32; rows * w];
        let (mut a, mut b, mut c) = (
            vec![0f32; rows * w],
            vec![0f32; rows * w],
            vec![0f32; rows * 4],
        );
        let [dq] = cols_mut(&mut a, w, [0], w);
        let [dk] = cols_mut(&mut b, w, [0], w);
        let [dv] = cols_mut(&mut c, 4, [0], 4);
        attention_bwd(s, (q, q, q), &probs, &dctx, [dq, dk, dv]);
    }
}
