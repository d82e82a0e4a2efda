//! bf16 × bf16 products summed in f32 (see the module above for the layout).

use half::bf16;
use multiversion::multiversion;
use rayon::prelude::*;

use super::{panels, store_row, tiles, Isa, PANEL};

/// bf16 values of `k` per 32-bit lane.
const GROUP: usize = 2;

/// Weights `[n, k]` rounded to bf16 (nearest, ties to even) and packed in panels.
#[derive(Debug, Clone)]
pub(super) struct Weights {
    /// `panels × groups × PANEL × GROUP` values.
    w: Vec<bf16>,
    groups: usize,
}

impl Weights {
    /// Rounds and packs a row-major `[n, k]` weight.
    pub(super) fn pack(w: &[f32], n: usize, k: usize) -> Self {
        let groups = k.div_ceil(GROUP);
        let panel_len = groups * PANEL * GROUP;
        let mut packed = vec![bf16::ZERO; panels(n) * panel_len];
        packed
            .par_chunks_mut(panel_len)
            .enumerate()
            .for_each(|(p, panel)| {
                for c in 0..PANEL.min(n - p * PANEL) {
                    let row = &w[(p * PANEL + c) * k..][..k];
                    for (kk, &v) in row.iter().enumerate() {
                        panel[((kk / GROUP) * PANEL + c) * GROUP + kk % GROUP] = bf16::from_f32(v);
                    }
                }
            });
        Self { w: packed, groups }
    }

    pub(super) fn bytes(&self) -> usize {
        self.w.len() * 2
    }

    /// `out` (rows `row0..` of `y`, `n` wide) from the converted rows `a`.
    pub(super) fn product(
        &self,
        a: &Rows,
        row0: usize,
        out: &mut [f32],
        bias: &[f32],
        n: usize,
        isa: Isa,
    ) {
        let t = Task {
            w: self,
            a,
            row0,
            bias,
            n,
        };
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx512` is only passed where `Isa::best` detected AVX-512 F, BW
            // and BF16 on this CPU (`PackedLinear::forward_on` downgrades it otherwise).
            Isa::Avx512 => unsafe { avx512::product(&t, out) },
            _ => portable_product(&t, out),
        }
    }
}

/// Activations `[m, k]` rounded to bf16, rows zero-padded to whole groups.
pub(super) struct Rows {
    x: Vec<bf16>,
    ld: usize,
}

impl Rows {
    pub(super) fn convert(x: &[f32], m: usize, k: usize) -> Self {
        let ld = k.div_ceil(GROUP) * GROUP;
        let mut out = vec![bf16::ZERO; m * ld];
        out.par_chunks_mut(ld)
            .zip(x.par_chunks(k))
            .for_each(|(o, x)| {
                o.iter_mut()
                    .zip(x)
                    .for_each(|(o, &v)| *o = bf16::from_f32(v))
            });
        Self { x: out, ld }
    }
}

pub(super) struct Task<'a> {
    w: &'a Weights,
    a: &'a Rows,
    row0: usize,
    bias: &'a [f32],
    n: usize,
}

/// The portable path (bf16 widened to f32, products summed in f32), compiled again for
/// AVX2 + FMA.
#[multiversion(targets("x86_64+avx2+fma"))]
pub(super) fn portable_product(t: &Task, out: &mut [f32]) {
    let (n, groups) = (t.n, t.w.groups);
    let m = out.len() / n;
    tiles(m, panels(n), |r, mr, p, pn| {
        for i in r..r + mr {
            let row = &t.a.x[(t.row0 + i) * t.a.ld..][..groups * GROUP];
            for pp in p..p + pn {
                let panel = &t.w.w[pp * groups * PANEL * GROUP..][..groups * PANEL * GROUP];
                let mut acc = [0f32; PANEL];
                for (a, b) in row
                    .chunks_exact(GROUP)
                    .zip(panel.chunks_exact(PANEL * GROUP))
                {
                    let (a0, a1) = (a[0].to_f32(), a[1].to_f32());
                    for (c, b) in b.chunks_exact(GROUP).enumerate() {
                        acc[c] += a0 * b[0].to_f32() + a1 * b[1].to_f32();
                    }
                }
                let c0 = pp * PANEL;
                let v: [f32; PANEL] = std::array::from_fn(|c| acc[c] + t.bias[c0 + c]);
                store_row(&mut out[i * n + c0..], &v, PANEL.min(n - c0));
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Task, GROUP, PANEL};
    use crate::quant::{panels, tiles};

    /// [`super::portable_product`] with `vdpbf16ps`: up to 8 rows × 2 panels per tile, the
    /// accumulators in registers for the whole `k`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn product(t: &Task, out: &mut [f32]) {
        let n = t.n;
        let m = out.len() / n;
        tiles(m, panels(n), |r, mr, p, pn| {
            // SAFETY: the caller guarantees the features; `tile` checks its slices' bounds
            // before reading through pointers and writes `out` through slices.
            unsafe { crate::quant::each_tile!(tile, t, out, r, p, mr, pn) }
        });
    }

    /// Rows `r..r + R` and panels `p..p + P` of the task's output.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile<const R: usize, const P: usize>(t: &Task, out: &mut [f32], r: usize, p: usize) {
        let groups = t.w.groups;
        let panel_len = groups * PANEL * GROUP;
        let ld = t.a.ld;
        let first = (t.row0 + r) * ld;
        let rows = &t.a.x[first..first + (R - 1) * ld + groups * GROUP];
        let w = &t.w.w[p * panel_len..(p + P) * panel_len];
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for g in 0..groups {
            let mut b = [_mm512_setzero_si512(); P];
            for (j, b) in b.iter_mut().enumerate() {
                // SAFETY: group g of panel p + j is 64 bytes inside `w`.
                *b = unsafe {
                    _mm512_loadu_si512(w.as_ptr().add(j * panel_len + g * PANEL * GROUP).cast())
                };
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row i's group g (two bf16) is inside `rows` (checked above).
                let pair = unsafe {
                    rows.as_ptr()
                        .add(i * ld + g * GROUP)
                        .cast::<i32>()
                        .read_unaligned()
                };
                let a = as_bh(_mm512_set1_epi32(pair));
                for j in 0..P {
                    acc[j] = _mm512_dpbf16_ps(acc[j], a, as_bh(b[j]));
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (j, acc) in acc.iter().enumerate() {
                let c0 = (p + j) * PANEL;
                let mut v = [0f32; PANEL];
                // SAFETY: `v` and the bias slice hold 16 f32 each (the bias is padded to
                // whole panels).
                unsafe {
                    let b = _mm512_loadu_ps(t.bias[c0..c0 + PANEL].as_ptr());
                    _mm512_storeu_ps(v.as_mut_ptr(), _mm512_add_ps(*acc, b));
                }
                let valid = PANEL.min(t.n - c0);
                super::store_row(&mut out[(r + i) * t.n + c0..], &v, valid);
            }
        }
    }

    /// The same 512 bits read as 32 bf16 values.
    #[inline(always)]
    fn as_bh(v: __m512i) -> __m512bh {
        // SAFETY: both are plain 512-bit vectors; every bit pattern is a valid bf16 vector.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }
}
