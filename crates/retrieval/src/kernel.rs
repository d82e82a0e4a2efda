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
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Block, MR_MAX, NR};

    pub(super) struct Micro;

    impl super::Micro for Micro {
        #[inline(always)]
        fn block(q: &[f32], rows_left: usize, panel: &[f32], dim: usize, out: &mut Block) -> usize {
            assert!(
                rows_left > 0 && panel.len() >= NR * dim && q.len() >= rows_left.min(MR_MAX) * dim
            );
            // SAFETY: only reached from `scan_avx512`, which runs only where `supported` saw
            // AVX-512F; the assert is `kernel`'s bounds requirement (each arm reads
            // `rows_left.min(MR_MAX)` ≥ 1 queries).
            unsafe {
                match rows_left {
                    1 => kernel::<1>(q.as_ptr(), panel.as_ptr(), dim, out),
                    2 => kernel::<2>(q.as_ptr(), panel.as_ptr(), dim, out),
                    3 => kernel::<3>(q.as_ptr(), panel.as_ptr(), dim, out),
                    4 => kernel::<4>(q.as_ptr(), panel.as_ptr(), dim, out),
                    5 => kernel::<5>(q.as_ptr(), panel.as_ptr(), dim, out),
                    6 => kernel::<6>(q.as_ptr(), panel.as_ptr(), dim, out),
                    7 => kernel::<7>(q.as_ptr(), panel.as_ptr(), dim, out),
                    _ => kernel::<8>(q.as_ptr(), panel.as_ptr(), dim, out),
                }
            }
            rows_left.min(MR_MAX)
        }

        #[inline(always)]
        fn direct(q: &[f32], nq: usize, rows: &[f32], valid: usize, dim: usize, out: &mut Block) {
            assert!(q.len() >= nq * dim && rows.len() >= valid * dim && valid <= NR);
            // SAFETY: AVX-512F as in `block`; the assert is `direct`'s bounds requirement, and
            // each arm reads exactly `nq` queries (no arm for 0 or more than 4: those panic).
            unsafe {
                match nq {
                    1 => direct::<1>(q.as_ptr(), rows.as_ptr(), valid, dim, out),
                    2 => direct::<2>(q.as_ptr(), rows.as_ptr(), valid, dim, out),
                    3 => direct::<3>(q.as_ptr(), rows.as_ptr(), valid, dim, out),
                    4 => direct::<4>(q.as_ptr(), rows.as_ptr(), valid, dim, out),
                    _ => unreachable!("direct scan of {nq} queries"),
                }
            }
        }
    }

    /// NQ queries against `valid` unpacked rows, four rows at a time so that 4·NQ independent
    /// accumulator chains hide the FMA latency; a masked load covers a dimension that is not a
    /// multiple of 16.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX-512F; `q` points to `NQ·dim` readable floats and `rows` to
    /// `valid·dim`, with `valid ≤ NR`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn direct<const NQ: usize>(
        q: *const f32,
        rows: *const f32,
        valid: usize,
        dim: usize,
        out: &mut Block,
    ) {
        let full = dim / 16;
        let tail_mask: __mmask16 = ((1u32 << (dim % 16)) - 1) as __mmask16;
        let mut j = 0;
        while j < valid {
            let nr = (valid - j).min(4);
            let mut acc = [[_mm512_setzero_ps(); 4]; NQ];
            let step = |c: usize, mask: __mmask16, acc: &mut [[__m512; 4]; NQ]| {
                let mut x = [_mm512_setzero_ps(); 4];
                for (i, xi) in x.iter_mut().enumerate().take(nr) {
                    // SAFETY: row j + i < valid, lanes c·16.. up to `dim` (the mask stops the
                    // last chunk at `dim`): inside `rows` by the caller's contract.
                    *xi = unsafe { _mm512_maskz_loadu_ps(mask, rows.add((j + i) * dim + c * 16)) };
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    // SAFETY: query r < NQ, lanes as above: inside `q` by the caller's contract.
                    let qv = unsafe { _mm512_maskz_loadu_ps(mask, q.add(r * dim + c * 16)) };
                    for i in 0..4 {
                        acc_r[i] = _mm512_fmadd_ps(qv, x[i], acc_r[i]);
                    }
                }
            };
            for c in 0..full {
                step(c, !0, &mut acc);
            }
            if tail_mask != 0 {
                step(full, tail_mask, &mut acc);
            }
            for r in 0..NQ {
                for i in 0..nr {
                    out[r][j + i] = _mm512_reduce_add_ps(acc[r][i]);
                }
            }
            j += nr;
        }
    }

    /// MR query rows × 32 index rows: 2·MR zmm accumulators, one broadcast per query row and
    /// two panel loads per step of the reduction.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX-512F; `q` points to `MR·dim` readable floats and `panel` to
    /// `NR·dim`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const MR: usize>(
        q: *const f32,
        panel: *const f32,
        dim: usize,
        out: &mut Block,
    ) {
        let mut lo = [_mm512_setzero_ps(); MR];
        let mut hi = [_mm512_setzero_ps(); MR];
        for d in 0..dim {
            // SAFETY: panel row d < dim holds NR = 32 floats, inside `panel` by the contract.
            let (x0, x1) = unsafe {
                (
                    _mm512_loadu_ps(panel.add(d * NR)),
                    _mm512_loadu_ps(panel.add(d * NR + 16)),
                )
            };
            for r in 0..MR {
                // SAFETY: element d < dim of query r < MR, inside `q` by the contract.
                let a = _mm512_set1_ps(unsafe { *q.add(r * dim + d) });
                lo[r] = _mm512_fmadd_ps(a, x0, lo[r]);
                hi[r] = _mm512_fmadd_ps(a, x1, hi[r]);
            }
        }
        for r in 0..MR {
            let (lo_half, hi_half) = out[r].split_at_mut(16);
            // SAFETY: each half of a 32-float row is 16 writable floats.
            unsafe {
                _mm512_storeu_ps(lo_half.as_mut_ptr(), lo[r]);
                _mm512_storeu_ps(hi_half.as_mut_ptr(), hi[r]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f64 reference scores, row-major `[queries, rows]`, rounded to f32.
    fn reference(base: &[f32], queries: &[f32], dim: usize) -> Vec<f32> {
        let s = crate::testing::scores(base, dim, queries);
        s.concat().into_iter().map(|x| x as f32).collect()
    }

    #[test]
    fn every_kernel_matches_the_reference_on_ragged_shapes() {
        // Odd dimension, row count not a multiple of 32, query count not a multiple of 8.
        for (n, nq, dim) in [
            (75, 11, 13),
            (32, 8, 16),
            (1, 1, 1),
            (100, 3, 40),
            (70, 4, 33),
            (67, 2, 16),
        ] {
            let base = crate::testing::unit_rows(n, dim, n as u64);
            let queries = crate::testing::unit_rows(nq, dim, 1000 + nq as u64);
            let want = reference(&base, &queries, dim);
            for isa in supported() {
                let mut out = vec![f32::NAN; nq * n];
                let mut sink = MatrixSink {
                    out: &mut out,
                    cols: n,
                };
                let mut scanner = Scanner::with_isa(isa, dim);
                // Two calls over split ranges, as the parallel driver does.
                for part in [0..n / 2, n / 2..n] {
                    scanner.scan(Rows::F32(&base), part, &queries, &mut sink);
                }
                for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "{isa:?} n={n} dim={dim} at {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// No queries or no rows: nothing reaches a kernel (the AVX-512 direct kernel used to read
    /// four queries from an empty slice), on every instruction set this CPU has.
    #[test]
    fn empty_queries_and_empty_rows_score_nothing() {
        struct Count(usize);
        impl Sink for Count {
            fn accept(&mut self, _: usize, _: usize, valid: usize, scores: &[[f32; NR]]) {
                self.0 += valid * scores.len();
            }
        }
        let dim = 40;
        let base = crate::testing::unit_rows(70, dim, 7);
        let base16: Vec<f16> = base.iter().map(|&v| f16::from_f32(v)).collect();
        let one = crate::testing::unit_rows(1, dim, 8);
        let nine = crate::testing::unit_rows(9, dim, 9);
        let isas = supported();
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            assert_eq!(isas.len(), 3, "an AVX-512 CPU offers every level");
        }
        for isa in isas {
            let mut s = Scanner::with_isa(isa, dim);
            for rows in [Rows::F32(&base), Rows::F16(&base16)] {
                let mut c = Count(0);
                s.scan(rows, 0..70, &[], &mut c);
                s.scan(rows, 5..5, &one, &mut c);
                s.scan(rows, 70..70, &nine, &mut c);
                s.scan(Rows::F32(&[]), 0..0, &nine, &mut c);
                assert_eq!(c.0, 0, "{isa:?}");
                // The same scanner still scores a real batch afterwards.
                s.scan(rows, 0..70, &one, &mut c);
                s.scan(rows, 0..70, &nine, &mut c);
                assert_eq!(c.0, 70 * 10, "{isa:?}");
            }
        }
    }

    #[test]
    fn f16_rows_are_widened() {
        let dim = 5;
        let base32: Vec<f32> = (0..40 * dim).map(|i| (i % 7) as f32 * 0.25).collect();
        let base16: Vec<f16> = base32.iter().map(|&v| f16::from_f32(v)).collect();
        let queries = vec![1.0f32, -1.0, 0.5, 0.0, 2.0];
        let want = reference(&base32, &queries, dim);
        let mut out = vec![0f32; 40];
        let mut sink = MatrixSink {
            out: &mut out,
            cols: 40,
        };
        Scanner::new(dim).scan(Rows::F16(&base16), 0..40, &queries, &mut sink);
        assert_eq!(out, want, "values exactly representable in f16");
    }
}
