//! The dot-product kernel: queries × index rows, blocked for the caches.
//!
//! Index rows are packed, 32 at a time, into a *panel* laid out `[dim][32]`, so that one step
//! of the reduction is two 16-lane loads and the inner loop vectorises across index rows instead
//! of across the dimension (no horizontal sums). A panel is 32·dim floats (32 KiB at dim 256),
//! small enough to stay in L1 while every query block streams past it; the micro-kernel holds an
//! 8 × 32 block of scores in registers (16 AVX-512 accumulators). Each panel's scores go straight
//! to a [`Sink`] (top-k selection or a score matrix), so no `[Q, N]` matrix is ever materialised.
//!
//! Three builds of the same loop nest are dispatched at run time: AVX-512 intrinsics, the
//! portable code compiled with AVX2+FMA enabled (auto-vectorised), and the portable code for any
//! other CPU. [`Isa`] is the one place the crate picks among builds: a value exists only for an
//! instruction set this CPU was seen to support, which is what makes calling the
//! `#[target_feature]` builds sound. The plain dot product ([`dot`]) dispatches through it too.

use std::ops::Range;

use half::f16;

/// Index rows per panel.
pub(crate) const NR: usize = 32;
/// Query rows per micro-kernel call, at most.
const MR_MAX: usize = 8;
/// The scores one micro-kernel call fills: `[query row][index row of the panel]`.
type Block = [[f32; NR]; MR_MAX];
/// Batches of at most this many queries skip packing: each index row is read once, in place,
/// and dotted with every query. Packing (a transpose) costs more than it saves when there are
/// too few queries to reuse the panel, and a single query is bound by memory bandwidth anyway.
const DIRECT_MAX_Q: usize = 4;

/// A borrowed `[rows, dim]` matrix in storage precision.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl Rows<'_> {
    pub(crate) fn len_elems(&self) -> usize {
        match self {
            Rows::F32(x) => x.len(),
            Rows::F16(x) => x.len(),
        }
    }

    /// Copies rows `rows` into `out` (`rows.len() · dim` floats) as f32.
    pub(crate) fn copy_f32(&self, rows: Range<usize>, dim: usize, out: &mut [f32]) {
        let (a, b) = (rows.start * dim, rows.end * dim);
        match self {
            Rows::F32(x) => out.copy_from_slice(&x[a..b]),
            Rows::F16(x) => {
                use half::slice::HalfFloatSliceExt;
                x[a..b].convert_to_f32_slice(out)
            }
        }
    }

    /// Row `r` as f32: in place when stored as f32, else widened into `buf` (`dim` floats).
    #[inline(always)]
    pub(crate) fn row<'s>(&'s self, r: usize, dim: usize, buf: &'s mut [f32]) -> &'s [f32] {
        match self {
            Rows::F32(x) => &x[r * dim..(r + 1) * dim],
            Rows::F16(_) => {
                self.copy_f32(r..r + 1, dim, buf);
                buf
            }
        }
    }

    /// Calls `f(first_row, block)` on consecutive blocks of at most `block_rows` rows, widened
    /// to f32 a block at a time so that an f32 copy of an f16 index never exists whole.
    pub(crate) fn for_each_block(
        &self,
        dim: usize,
        block_rows: usize,
        mut f: impl FnMut(usize, &[f32]),
    ) {
        let n = self.len_elems() / dim;
        let mut buf = vec![0f32; block_rows.min(n) * dim];
        for r0 in (0..n).step_by(block_rows) {
            let r1 = (r0 + block_rows).min(n);
            let block = &mut buf[..(r1 - r0) * dim];
            self.copy_f32(r0..r1, dim, block);
            f(r0, block);
        }
    }
}

/// Receives blocks of scores: `scores[r][j]` is query `q0 + r` against index row `id0 + j`, for
/// `j < valid`.
pub(crate) trait Sink {
    fn accept(&mut self, q0: usize, id0: usize, valid: usize, scores: &[[f32; NR]]);
}

/// Top-k sink.
impl Sink for crate::topk::TopKSet {
    #[inline(always)]
    fn accept(&mut self, q0: usize, id0: usize, valid: usize, scores: &[[f32; NR]]) {
        // The low `valid` bits (1 ≤ valid ≤ NR = 32).
        let valid_mask = u32::MAX >> (NR - valid);
        for (r, row) in scores.iter().enumerate() {
            let q = q0 + r;
            let thr = self.threshold(q);
            // Branch-free compare of the whole row: compiles to a vector compare + mask move.
            let mut m = 0u32;
            for (j, &s) in row.iter().enumerate() {
                m |= ((s >= thr) as u32) << j;
            }
            m &= valid_mask;
            while m != 0 {
                let j = m.trailing_zeros() as usize;
                self.push(q, row[j], (id0 + j) as u32);
                m &= m - 1;
            }
        }
    }
}

/// Writes scores into a row-major `[queries, cols]` matrix, one column per index row.
pub(crate) struct MatrixSink<'a> {
    pub(crate) out: &'a mut [f32],
    pub(crate) cols: usize,
}

impl Sink for MatrixSink<'_> {
    #[inline(always)]
    fn accept(&mut self, q0: usize, id0: usize, valid: usize, scores: &[[f32; NR]]) {
        for (r, row) in scores.iter().enumerate() {
            let start = (q0 + r) * self.cols + id0;
            self.out[start..start + valid].copy_from_slice(&row[..valid]);
        }
    }
}

/// An instruction set the kernels run with, one this CPU supports: only [`supported`] makes
/// one (the field is private to this module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Isa(Level);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Portable,
    /// AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// AVX-512F, AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// Every instruction set this CPU supports, best last.
pub(crate) fn supported() -> Vec<Isa> {
    #[allow(unused_mut)]
    let mut v = vec![Isa(Level::Portable)];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") {
            v.push(Isa(Level::Avx2Fma));
            if has!("avx512f") {
                v.push(Isa(Level::Avx512));
            }
        }
    }
    v
}

/// The best instruction set this CPU supports, detected once.
pub(crate) fn detect() -> Isa {
    static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| *supported().last().expect("portable is always supported"))
}

/// `a · b` (over the shorter length) with the best build for this CPU.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    match detect().0 {
        Level::Portable => dot_lanes(a, b),
        // SAFETY: an `Isa` above `Portable` exists only if `supported` detected AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2Fma | Level::Avx512 => unsafe { dot_avx2(a, b) },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

/// Scratch for scanning rows of dimension `dim` with one instruction set: a packed panel
/// (`NR · dim` floats) and one widened row. One per thread.
pub(crate) struct Scanner {
    isa: Isa,
    dim: usize,
    panel: Vec<f32>,
    row: Vec<f32>,
}

impl Scanner {
    /// A scanner with the best build for this CPU.
    pub(crate) fn new(dim: usize) -> Self {
        Self::with_isa(detect(), dim)
    }

    pub(crate) fn with_isa(isa: Isa, dim: usize) -> Self {
        Self {
            isa,
            dim,
            panel: vec![0.0; NR * dim],
            row: vec![0.0; dim],
        }
    }

    /// Scores `queries` (`[nq, dim]`, row-major f32) against index rows `rows` of `base`,
    /// feeding every score to `sink`. No rows or no queries: nothing to score, and no kernel
    /// is called (the kernels assume at least one of each).
    pub(crate) fn scan<S: Sink>(
        &mut self,
        base: Rows<'_>,
        rows: Range<usize>,
        queries: &[f32],
        sink: &mut S,
    ) {
        let dim = self.dim;
        assert!(
            queries.len().is_multiple_of(dim) && rows.end * dim <= base.len_elems(),
            "scan of rows {rows:?} of {} floats with {} query floats, dimension {dim}",
            base.len_elems(),
            queries.len()
        );
        if rows.is_empty() || queries.is_empty() {
            return;
        }
        match self.isa.0 {
            // SAFETY: an `Isa` of this level exists only if `supported` detected its features.
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { scan_avx512(self, base, rows, queries, sink) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2Fma => unsafe { scan_avx2(self, base, rows, queries, sink) },
            Level::Portable => scan_with::<Portable<false>, S>(self, base, rows, queries, sink),
        }
    }
}

/// The `#[target_feature]` builds of [`scan_with`]: the same loop nest compiled for more
/// instructions.
macro_rules! scan_build {
    ($name:ident, $features:literal, $micro:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        fn $name<S: Sink>(
            s: &mut Scanner,
            base: Rows<'_>,
            rows: Range<usize>,
            q: &[f32],
            sink: &mut S,
        ) {
            scan_with::<$micro, S>(s, base, rows, q, sink)
        }
    };
}
scan_build!(scan_avx512, "avx512f,avx2,fma", avx512::Micro);
scan_build!(scan_avx2, "avx2,fma", Portable<true>);

/// A micro-kernel: `out[r][j] = Σ_d q[r·dim + d] · panel[d·NR + j]` for `r < rows`, where `rows`
/// is what the kernel chose to do (at most `rows_left`), returned.
trait Micro {
    fn block(q: &[f32], rows_left: usize, panel: &[f32], dim: usize, out: &mut Block) -> usize;

    /// `out[r][j] = q_r · rows_j` for `r < nq ≤ DIRECT_MAX_Q`, `j < valid ≤ NR`, on unpacked
    /// row-major `rows`.
    #[inline(always)]
    fn direct(q: &[f32], nq: usize, rows: &[f32], valid: usize, dim: usize, out: &mut Block) {
        for j in 0..valid {
            let x = &rows[j * dim..(j + 1) * dim];
            for r in 0..nq {
                out[r][j] = dot_lanes(&q[r * dim..(r + 1) * dim], x);
            }
        }
    }
}

/// A dot product in 16 independent lanes, which the compiler vectorises.
#[inline(always)]
pub(crate) fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn scan_with<M: Micro, S: Sink>(
    s: &mut Scanner,
    base: Rows<'_>,
    rows: Range<usize>,
    queries: &[f32],
    sink: &mut S,
) {
    let dim = s.dim;
    let nq = queries.len() / dim;
    let panel = &mut s.panel[..NR * dim];
    let row_buf = &mut s.row[..dim];
    let mut out = [[0f32; NR]; MR_MAX];
    let mut p0 = rows.start;
    if let (true, Rows::F32(x)) = (nq <= DIRECT_MAX_Q, base) {
        while p0 < rows.end {
            let valid = NR.min(rows.end - p0);
            let x = &x[p0 * dim..(p0 + valid) * dim];
            M::direct(queries, nq, x, valid, dim, &mut out);
            sink.accept(0, p0, valid, &out[..nq]);
            p0 += NR;
        }
        return;
    }
    while p0 < rows.end {
        let valid = NR.min(rows.end - p0);
        pack(base, dim, p0, valid, panel, row_buf);
        let mut q0 = 0;
        while q0 < nq {
            let done = M::block(&queries[q0 * dim..], nq - q0, panel, dim, &mut out);
            sink.accept(q0, p0, valid, &out[..done]);
            q0 += done;
        }
        p0 += NR;
    }
}

/// Transposes `valid` rows starting at `r0` into `panel[d·NR + j]`, zero-filling the rest.
#[inline(always)]
fn pack(
    base: Rows<'_>,
    dim: usize,
    r0: usize,
    valid: usize,
    panel: &mut [f32],
    row_buf: &mut [f32],
) {
    for j in 0..valid {
        for (d, &v) in base.row(r0 + j, dim, row_buf).iter().enumerate() {
            panel[d * NR + j] = v;
        }
    }
    if valid < NR {
        for d in 0..dim {
            panel[d * NR + valid..(d + 1) * NR].fill(0.0);
        }
    }
}

/// Portable micro-kernel of up to 2 rows, or with `FMA` 3 rows (3 rows × 4 ymm accumulators +
/// 4 loads fill the 16 AVX2 registers) of fused multiply-adds (only sensible where the target
/// has them, else `mul_add` is a slow library call).
struct Portable<const FMA: bool>;

impl<const FMA: bool> Micro for Portable<FMA> {
    #[inline(always)]
    fn block(q: &[f32], rows_left: usize, panel: &[f32], dim: usize, out: &mut Block) -> usize {
        let rows = rows_left.min(if FMA { 3 } else { 2 });
        match rows {
            1 => micro_portable::<1, FMA>(q, panel, dim, out),
            2 => micro_portable::<2, FMA>(q, panel, dim, out),
            _ => micro_portable::<3, FMA>(q, panel, dim, out),
        }
        rows
    }
}

#[inline(always)]
fn micro_portable<const MR: usize, const FMA: bool>(
    q: &[f32],
    panel: &[f32],
    dim: usize,
    out: &mut Block,
) {
    let mut acc = [[0f32; NR]; MR];
    for d in 0..dim {
        let x: &[f32; NR] = panel[d * NR..(d + 1) * NR].try_into().expect("panel row");
        for r in 0..MR {
            let a = q[r * dim + d];
            for j in 0..NR {
                acc[r][j] = if FMA {
                    a.mul_add(x[j], acc[r][j])
                } else {
                    acc[r][j] + a * x[j]
                };
            }
        }
    }
    out[..MR].copy_from_slice(&acc);
}

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests;
