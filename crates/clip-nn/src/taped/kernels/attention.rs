//! Multi-head attention over packed sequences, forward and backward, reading and writing
//! column blocks of the fused q/k/v buffer in place.

use rayon::prelude::*;

use super::gemm::{gemm_raw, View};
use super::rows::{softmax_grad, softmax_row};

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
