//! int8 × uint8 products: weights per output channel, activations per row (see the module
//! above for the arithmetic and the layout).

use multiversion::multiversion;
use rayon::prelude::*;

use super::{panels, store_row, tiles, Int8Weight, Isa, PANEL};
use crate::simd;

/// Bytes of `k` per 32-bit lane.
const GROUP: usize = 4;

/// Largest `k` whose i32 sums cannot overflow: `255·127·k < 2³¹`.
pub(super) const MAX_K: usize = 66_000;

/// Weights `[n, k]` quantized per output channel and packed in panels.
#[derive(Debug, Clone)]
pub(super) struct Weights {
    /// `panels × groups × PANEL × GROUP` bytes.
    q: Vec<i8>,
    /// `s_w` per column, zero-padded to whole panels.
    scale: Vec<f32>,
    /// `Σ_k q[j, k]` per column, for the activations' zero point; zero-padded.
    col_sum: Vec<i32>,
    /// Groups of [`GROUP`] along `k` (the last one zero-padded).
    groups: usize,
}

impl Weights {
    /// Packs a weight already quantized per output channel ([`Int8Weight`]): quantizing at
    /// load and loading a quantized checkpoint both end here, so they pack the same bytes.
    pub(super) fn pack(w: &Int8Weight) -> Self {
        let (n, k) = (w.n, w.k);
        assert!(k <= MAX_K, "int8 linear: k = {k} exceeds {MAX_K}");
        let groups = k.div_ceil(GROUP);
        let np = panels(n);
        let panel_len = groups * PANEL * GROUP;
        let mut q = vec![0i8; np * panel_len];
        let mut scale = vec![0f32; np * PANEL];
        let mut col_sum = vec![0i32; np * PANEL];
        // One panel (16 output channels) per task: disjoint slices of all three outputs.
        q.par_chunks_mut(panel_len)
            .zip(scale.par_chunks_mut(PANEL))
            .zip(col_sum.par_chunks_mut(PANEL))
            .enumerate()
            .for_each(|(p, ((q, scale), col_sum))| {
                for c in 0..PANEL.min(n - p * PANEL) {
                    let j = p * PANEL + c;
                    scale[c] = w.scales[j];
                    for (kk, &qv) in w.values[j * k..][..k].iter().enumerate() {
                        col_sum[c] += qv as i32;
                        q[((kk / GROUP) * PANEL + c) * GROUP + kk % GROUP] = qv;
                    }
                }
            });
        Self {
            q,
            scale,
            col_sum,
            groups,
        }
    }

    pub(super) fn bytes(&self) -> usize {
        self.q.len() + self.scale.len() * 4 + self.col_sum.len() * 4
    }

    /// `out` (rows `row0..` of `y`, `n` wide) from the quantized rows `a`.
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
            // and VNNI on this CPU (`PackedLinear::forward_on` downgrades it otherwise).
            Isa::Avx512 => unsafe { avx512::product(&t, out) },
            _ => portable_product(&t, out),
        }
    }
}

/// Activations `[m, k]` quantized per row to `u8` with a zero point.
pub(super) struct Rows {
    /// `m × (groups·GROUP)` bytes, zero-padded.
    u: Vec<u8>,
    scale: Vec<f32>,
    zero: Vec<i32>,
    /// Row stride of `u`.
    ld: usize,
}

impl Rows {
    /// Quantizes `x [m, k]`: per row, the range `[min(x, 0), max(x, 0)]` (zero stays exact)
    /// spread over 0–255.
    pub(super) fn quantize(x: &[f32], m: usize, k: usize, isa: Isa) -> Self {
        let ld = k.div_ceil(GROUP) * GROUP;
        let mut u = vec![0u8; m * ld];
        let mut params = vec![(0f32, 0i32); m];
        u.par_chunks_mut(ld)
            .zip(x.par_chunks(k))
            .zip(params.par_iter_mut())
            .for_each(|((u, x), p)| {
                *p = match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `Isa::Avx512` is only passed where AVX-512 F and BW were
                    // detected (see `Weights::product`).
                    Isa::Avx512 => unsafe { avx512::quantize_row(x, &mut u[..k]) },
                    _ => quantize_row(x, &mut u[..k]),
                }
            });
        let (scale, zero) = params.into_iter().unzip();
        Self { u, scale, zero, ld }
    }
}

/// One row to `u8`: returns its scale and zero point. A row of zeros (or non-finite values,
/// which a model in good health never produces) gets scale 1 and zero point 0. Rounding is
/// to nearest, ties to even, as the AVX-512 path's conversion does.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
fn quantize_row(x: &[f32], u: &mut [u8]) -> (f32, i32) {
    let (lo, hi) = (simd::min(x).min(0.0), simd::max(x).max(0.0));
    let Some((scale, inv, zero)) = row_scale(lo, hi) else {
        u.fill(0);
        return (1.0, 0);
    };
    for (u, &v) in u.iter_mut().zip(x) {
        *u = ((v * inv + zero).round_ties_even() as i32).clamp(0, 255) as u8;
    }
    (scale, zero as i32)
}

/// Scale, its inverse and the zero point (a whole number in 0–255) of a row whose values
/// span `lo ≤ 0 ≤ hi`; `None` when the range is empty or not finite.
#[inline(always)]
fn row_scale(lo: f32, hi: f32) -> Option<(f32, f32, f32)> {
    let range = hi - lo;
    if !(range > 0.0 && range.is_finite()) {
        return None;
    }
    let inv = 255.0 / range;
    Some((
        range / 255.0,
        inv,
        (-lo * inv).round_ties_even().clamp(0.0, 255.0),
    ))
}

/// `v` to the nearest integer (halves away from zero), saturating to ±127: no libm call.
#[inline(always)]
pub(super) fn round_to_i8(v: f32) -> i8 {
    let r = (v + 0.5f32.copysign(v)) as i32;
    r.clamp(-127, 127) as i8
}

#[cfg(test)]
impl Rows {
    /// `s_x·(u − z)`: the values the kernels actually multiply, `[m, k]`.
    pub(super) fn dequantized(&self, m: usize, k: usize) -> Vec<f32> {
        (0..m * k)
            .map(|i| {
                let (r, t) = (i / k, i % k);
                self.scale[r] * (self.u[r * self.ld + t] as i32 - self.zero[r]) as f32
            })
            .collect()
    }
}

#[cfg(test)]
impl Weights {
    /// `s_w·q` back in `[n, k]` row-major order.
    pub(super) fn dequantized(&self, n: usize, k: usize) -> Vec<f32> {
        (0..n * k)
            .map(|i| {
                let (j, t) = (i / k, i % k);
                let (p, c, g, e) = (j / PANEL, j % PANEL, t / GROUP, t % GROUP);
                let q = self.q[((p * self.groups + g) * PANEL + c) * GROUP + e];
                self.scale[j] * q as f32
            })
            .collect()
    }
}

/// What one parallel task computes: rows `row0..row0 + out.len()/n` of the product.
pub(super) struct Task<'a> {
    w: &'a Weights,
    a: &'a Rows,
    row0: usize,
    bias: &'a [f32],
    n: usize,
}

impl Task<'_> {
    /// `s_x·s_w·(acc − z·Σq) + b` for row `r` (absolute) and panel `p`, lanes as computed.
    #[inline(always)]
    fn finish(&self, r: usize, p: usize, acc: &[i32; PANEL]) -> [f32; PANEL] {
        let (sx, z) = (self.a.scale[r], self.a.zero[r]);
        let c0 = p * PANEL;
        std::array::from_fn(|c| {
            let exact = acc[c] - z * self.w.col_sum[c0 + c];
            sx * self.w.scale[c0 + c] * exact as f32 + self.bias[c0 + c]
        })
    }
}

/// The portable path, compiled again for AVX2 + FMA (where LLVM widens the byte products
/// to 16-bit multiply-adds).
#[multiversion(targets("x86_64+avx2+fma"))]
pub(super) fn portable_product(t: &Task, out: &mut [f32]) {
    let (n, groups) = (t.n, t.w.groups);
    let m = out.len() / n;
    tiles(m, panels(n), |r, mr, p, pn| {
        for i in r..r + mr {
            let row = &t.a.u[(t.row0 + i) * t.a.ld..][..groups * GROUP];
            for pp in p..p + pn {
                let panel = &t.w.q[pp * groups * PANEL * GROUP..][..groups * PANEL * GROUP];
                let mut acc = [0i32; PANEL];
                for (a, b) in row
                    .chunks_exact(GROUP)
                    .zip(panel.chunks_exact(PANEL * GROUP))
                {
                    for (c, b) in b.chunks_exact(GROUP).enumerate() {
                        acc[c] += (0..GROUP).map(|e| a[e] as i32 * b[e] as i32).sum::<i32>();
                    }
                }
                let v = t.finish(t.row0 + i, pp, &acc);
                let valid = PANEL.min(n - pp * PANEL);
                store_row(&mut out[i * n + pp * PANEL..], &v, valid);
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{row_scale, Task, GROUP, PANEL};
    use crate::quant::{panels, tiles};

    /// [`super::quantize_row`] sixteen values at a time: the same scale, zero point and
    /// rounding (the conversion rounds to nearest even under the default MXCSR).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_row(x: &[f32], u: &mut [u8]) -> (f32, i32) {
        let (body, tail) = x.split_at(x.len() / 16 * 16);
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for c in body.chunks_exact(16) {
            // SAFETY: `c` holds 16 f32.
            let v = unsafe { _mm512_loadu_ps(c.as_ptr()) };
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
        }
        let tail_lo = tail.iter().fold(0f32, |m, &v| if v < m { v } else { m });
        let tail_hi = tail.iter().fold(0f32, |m, &v| if v > m { v } else { m });
        let lo = _mm512_reduce_min_ps(lo).min(tail_lo);
        let hi = _mm512_reduce_max_ps(hi).max(tail_hi);
        let Some((scale, inv, zero)) = row_scale(lo, hi) else {
            u.fill(0);
            return (1.0, 0);
        };
        let (vi, vz) = (_mm512_set1_ps(inv), _mm512_set1_ps(zero));
        let (ub, ut) = u.split_at_mut(body.len());
        for (c, o) in body.chunks_exact(16).zip(ub.chunks_exact_mut(16)) {
            // SAFETY: `c` holds 16 f32 and `o` 16 bytes.
            unsafe {
                let v = _mm512_fmadd_ps(_mm512_loadu_ps(c.as_ptr()), vi, vz);
                let q = _mm512_max_epi32(_mm512_cvtps_epi32(v), _mm512_setzero_si512());
                _mm_storeu_si128(o.as_mut_ptr().cast(), _mm512_cvtusepi32_epi8(q));
            }
        }
        for (o, &v) in ut.iter_mut().zip(tail) {
            *o = ((v * inv + zero).round_ties_even() as i32).clamp(0, 255) as u8;
        }
        (scale, zero as i32)
    }

    /// [`super::portable_product`] with `vpdpbusd`: a tile of up to 8 rows × 2 panels keeps
    /// its 16 accumulators in registers for the whole `k`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn product(t: &Task, out: &mut [f32]) {
        let n = t.n;
        let m = out.len() / n;
        tiles(m, panels(n), |r, mr, p, pn| {
            // SAFETY: the caller guarantees the features; `tile` reads rows r..r+mr of the
            // task (inside `t.a.u`, checked by `rows_of`) and panels p..p+pn (inside
            // `t.w.q`, checked by `panel_of`), and writes `out` through slices.
            unsafe { crate::quant::each_tile!(tile, t, out, r, p, mr, pn) }
        });
    }

    /// Rows `r..r + R` and panels `p..p + P` of the task's output.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const R: usize, const P: usize>(t: &Task, out: &mut [f32], r: usize, p: usize) {
        let groups = t.w.groups;
        let panel_len = groups * PANEL * GROUP;
        // Bounds are checked once here, so the loop below can read with raw pointers.
        let ld = t.a.ld;
        let first = (t.row0 + r) * ld;
        let rows = &t.a.u[first..first + (R - 1) * ld + groups * GROUP];
        let w = &t.w.q[p * panel_len..(p + P) * panel_len];
        let mut acc = [[_mm512_setzero_si512(); P]; R];
        for g in 0..groups {
            let mut b = [_mm512_setzero_si512(); P];
            for (j, b) in b.iter_mut().enumerate() {
                // SAFETY: group g of panel p + j is 64 bytes inside `w` (its length is
                // P·panel_len and g < groups); unaligned loads are allowed.
                *b = unsafe {
                    _mm512_loadu_si512(w.as_ptr().add(j * panel_len + g * PANEL * GROUP).cast())
                };
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row i's group g is 4 bytes inside `rows` (checked above).
                let a4 = unsafe {
                    rows.as_ptr()
                        .add(i * ld + g * GROUP)
                        .cast::<i32>()
                        .read_unaligned()
                };
                let a = _mm512_set1_epi32(a4);
                for j in 0..P {
                    acc[j] = _mm512_dpbusd_epi32(acc[j], a, b[j]);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (j, acc) in acc.iter().enumerate() {
                let mut lanes = [0i32; PANEL];
                // SAFETY: `lanes` holds 16 i32, one register.
                unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), *acc) };
                let v = t.finish(t.row0 + r + i, p + j, &lanes);
                let c0 = (p + j) * PANEL;
                let valid = PANEL.min(t.n - c0);
                super::store_row(&mut out[(r + i) * t.n + c0..], &v, valid);
            }
        }
    }
}
