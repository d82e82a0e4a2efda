//! The AVX-512 micro-kernel of the scan: 8 queries × 32 rows of scores in registers.

use std::arch::x86_64::*;

use super::{Block, MR_MAX, NR};

pub(super) struct Micro;

impl super::Micro for Micro {
    #[inline(always)]
    fn block(q: &[f32], rows_left: usize, panel: &[f32], dim: usize, out: &mut Block) -> usize {
        assert!(rows_left > 0 && panel.len() >= NR * dim && q.len() >= rows_left.min(MR_MAX) * dim);
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
unsafe fn kernel<const MR: usize>(q: *const f32, panel: *const f32, dim: usize, out: &mut Block) {
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
