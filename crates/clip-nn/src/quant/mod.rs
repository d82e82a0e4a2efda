//! Reduced-precision inference of linear layers on the CPU: int8 and bf16 weights packed once
//! at load, activations converted on every call.
//!
//! - **int8**: weights symmetric per output channel (`w[j, k] ≈ s_w[j]·q[j, k]`,
//!   `q ∈ [−127, 127]`), activations asymmetric per row (`x[i, k] ≈ s_x[i]·(u[i, k] − z[i])`,
//!   `u ∈ [0, 255]`), so `y[i, j] = s_x[i]·s_w[j]·(Σ_k u·q − z[i]·Σ_k q) + b[j]`. The sums
//!   `Σ u·q` are the unsigned × signed byte dot products that AVX-512 VNNI's `vpdpbusd` adds
//!   four at a time into i32 lanes; `Σ_k q` is stored per column at packing time.
//!   Per-row activation scales follow each token's own range (one outlier token does not
//!   coarsen the others), and the zero point spends all 256 levels on rows that are mostly
//!   positive, as GELU outputs are.
//! - **bf16**: weights and activations rounded to bfloat16, products summed in f32
//!   (AVX512_BF16's `vdpbf16ps`, two pairs per 32-bit lane).
//!
//! Packed layout (both kinds): output columns in panels of [`PANEL`] (16: one 512-bit register
//! of i32 or f32 results), each panel's `k` in groups of four bytes or two bf16 (one 32-bit
//! lane), so group `g` of panel `p` is 64 contiguous bytes, `[column][element]`. A micro-kernel
//! loads one group of a panel as one register and broadcasts the same 32 bits of each row.
//! Padding columns and padding `k` are zero, so they add nothing.
//!
//! Every micro-kernel exists twice: with AVX-512 intrinsics, and as a portable loop that the
//! `multiversion` crate (the workspace's one CPU dispatcher) also compiles for AVX2 + FMA; the
//! dispatched function picks one at run time, and the tests hold each path the machine has
//! against a naive reference.

mod bf16;
mod int8;
#[cfg(test)]
mod tests;

use rayon::prelude::*;

/// Output columns per packed panel: one 512-bit register of 32-bit results.
pub const PANEL: usize = 16;

/// Rows one micro-kernel call covers at most (its accumulators: `MR × 2` registers).
const MR: usize = 8;

/// The arithmetic of a model's linear layers at inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Precision {
    /// The checkpoint's f32 weights, f32 arithmetic (the reference).
    #[default]
    F32,
    /// bfloat16 weights and activations, f32 accumulation.
    Bf16,
    /// int8 weights per output channel, activations quantized per row, i32 accumulation.
    Int8,
}

impl Precision {
    /// Every precision, in the order the command line lists them.
    pub const ALL: [Precision; 3] = [Self::F32, Self::Bf16, Self::Int8];

    /// The name used on the command line and in saved configs.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown precision {s:?}; expected f32, bf16 or int8"))
    }
}

/// The instruction set a packed product runs on; [`Isa::best`] is what the dispatcher picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust loops (compiled again for AVX2 + FMA where the CPU has it).
    Portable,
    /// AVX-512 with VNNI (int8) or BF16 (bf16).
    Avx512,
}

impl Isa {
    /// The fastest instruction set this CPU offers for `precision`.
    pub fn best(precision: Precision) -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let base = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw");
            let has = match precision {
                Precision::Int8 => base && std::arch::is_x86_feature_detected!("avx512vnni"),
                Precision::Bf16 => base && std::arch::is_x86_feature_detected!("avx512bf16"),
                Precision::F32 => false,
            };
            if has {
                return Isa::Avx512;
            }
        }
        let _ = precision;
        Isa::Portable
    }
}

/// A `[n, k]` weight quantized symmetrically per output channel: `w[j, k] ≈ scales[j] ·
/// values[j·k + k]`, `values ∈ [−127, 127]` — what a quantized checkpoint stores (row-major,
/// as the f32 weight was) and what [`PackedLinear`] packs for the int8 kernels.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Weight {
    /// Output channels.
    pub n: usize,
    /// Input width.
    pub k: usize,
    /// `n × k` quantized values, row-major.
    pub values: Vec<i8>,
    /// One scale per output channel.
    pub scales: Vec<f32>,
}

impl Int8Weight {
    /// The one quantization rule: each row's largest magnitude maps to 127, values round
    /// to the nearest level (halves away from zero). A row of zeros (or one holding a
    /// non-finite value, which no trained layer has) gets scale 1.
    ///
    /// # Panics
    /// When `weight` is not `n × k` long (a caller's bug, not input).
    pub fn quantize(weight: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(weight.len(), n * k, "int8 weight: {n}×{k} expected");
        let mut values = vec![0i8; n * k];
        let mut scales = vec![0f32; n];
        values
            .par_chunks_mut(k.max(1))
            .zip(scales.par_iter_mut())
            .zip(weight.par_chunks(k.max(1)))
            .for_each(|((q, s), row)| {
                let max = crate::simd::max(&row.iter().map(|v| v.abs()).collect::<Vec<_>>());
                *s = if max > 0.0 && max.is_finite() {
                    max / 127.0
                } else {
                    1.0
                };
                let inv = 1.0 / *s;
                for (q, &v) in q.iter_mut().zip(row) {
                    *q = int8::round_to_i8(v * inv);
                }
            });
        Self {
            n,
            k,
            values,
            scales,
        }
    }

    /// Checks the sizes agree and every scale is finite and positive; the reason otherwise
    /// (for a checkpoint's error message).
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.values.len() != self.n * self.k {
            return Err(format!(
                "{} values for a {}×{} weight",
                self.values.len(),
                self.n,
                self.k
            ));
        }
        if self.scales.len() != self.n {
            return Err(format!(
                "{} scales for {} output channels",
                self.scales.len(),
                self.n
            ));
        }
        if self.k > int8::MAX_K {
            return Err(format!("input width {} exceeds {}", self.k, int8::MAX_K));
        }
        if let Some(j) = self
            .scales
            .iter()
            .position(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(format!(
                "scale {} of channel {j} is not a positive number",
                self.scales[j]
            ));
        }
        Ok(())
    }
}

/// A linear layer `y = x·Wᵀ + b` (`W` is `[n, k]`) packed for int8 or bf16 inference.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    n: usize,
    k: usize,
    weights: Packed,
    /// `b`, zero-padded to whole panels (zeros when the layer has none).
    bias: Vec<f32>,
}

#[derive(Debug, Clone)]
enum Packed {
    Int8(int8::Weights),
    Bf16(bf16::Weights),
}

impl PackedLinear {
    /// Packs the row-major `[n, k]` weight (and `[n]` bias) for `precision`; `None` for
    /// [`Precision::F32`], which needs no packing.
    ///
    /// # Panics
    /// When the slices do not have the sizes `n` and `k` say (a caller's bug, not input).
    pub fn new(
        weight: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        k: usize,
        precision: Precision,
    ) -> Option<Self> {
        assert_eq!(weight.len(), n * k, "packed weight: {n}×{k} expected");
        let weights = match precision {
            Precision::F32 => return None,
            Precision::Int8 => {
                Packed::Int8(int8::Weights::pack(&Int8Weight::quantize(weight, n, k)))
            }
            Precision::Bf16 => Packed::Bf16(bf16::Weights::pack(weight, n, k)),
        };
        Some(Self::with_bias(weights, bias, n, k))
    }

    /// Packs a weight quantized earlier (a quantized checkpoint): the same packed bytes as
    /// [`PackedLinear::new`] gives for the f32 weight it was quantized from.
    ///
    /// # Panics
    /// When `bias` is not `weight.n` long (a caller's bug, not input).
    pub fn from_int8(weight: &Int8Weight, bias: Option<&[f32]>) -> Self {
        let weights = Packed::Int8(int8::Weights::pack(weight));
        Self::with_bias(weights, bias, weight.n, weight.k)
    }

    fn with_bias(weights: Packed, bias: Option<&[f32]>, n: usize, k: usize) -> Self {
        let mut padded = vec![0f32; panels(n) * PANEL];
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "packed bias: {n} expected");
            padded[..n].copy_from_slice(b);
        }
        Self {
            n,
            k,
            weights,
            bias: padded,
        }
    }

    /// Output width `n`.
    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// Input width `k`.
    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// The precision it was packed for.
    pub fn precision(&self) -> Precision {
        match self.weights {
            Packed::Int8(_) => Precision::Int8,
            Packed::Bf16(_) => Precision::Bf16,
        }
    }

    /// Bytes held by the packed weights, scales and bias.
    pub fn bytes(&self) -> usize {
        let w = match &self.weights {
            Packed::Int8(w) => w.bytes(),
            Packed::Bf16(w) => w.bytes(),
        };
        w + self.bias.len() * 4
    }

    /// `x [m, k]` (row-major) → `y [m, n]` on the best instruction set the CPU has.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        self.forward_on(x, Isa::best(self.precision()))
    }

    /// [`PackedLinear::forward`] on a given instruction set; [`Isa::Avx512`] where the CPU
    /// lacks it runs the portable path instead (so tests can ask for both anywhere).
    pub fn forward_on(&self, x: &[f32], isa: Isa) -> Vec<f32> {
        assert_eq!(
            x.len() % self.k.max(1),
            0,
            "input rows of {} expected",
            self.k
        );
        let m = x.len().checked_div(self.k).unwrap_or(0);
        let mut out = vec![0f32; m * self.n];
        if m == 0 || self.n == 0 {
            return out;
        }
        let isa = if isa == Isa::best(self.precision()) {
            isa
        } else {
            Isa::Portable
        };
        let rows = rows_per_task(m);
        match &self.weights {
            Packed::Int8(w) => {
                let a = int8::Rows::quantize(x, m, self.k, isa);
                out.par_chunks_mut(rows * self.n)
                    .enumerate()
                    .for_each(|(t, out)| w.product(&a, t * rows, out, &self.bias, self.n, isa));
            }
            Packed::Bf16(w) => {
                let a = bf16::Rows::convert(x, m, self.k);
                out.par_chunks_mut(rows * self.n)
                    .enumerate()
                    .for_each(|(t, out)| w.product(&a, t * rows, out, &self.bias, self.n, isa));
            }
        }
        out
    }
}

/// Panels that cover `n` columns.
fn panels(n: usize) -> usize {
    n.div_ceil(PANEL)
}

/// Rows each parallel task computes: about four tasks per thread (for balance), a multiple of
/// the micro-kernel's rows, and at most 64 so a task's packed rows stay in the L1 cache.
fn rows_per_task(m: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    m.div_ceil(threads * 4).next_multiple_of(MR).clamp(MR, 64)
}

/// Calls `f(row0, rows, panel0, panels)` over a task's rows in blocks of up to [`MR`] and its
/// panels in pairs (one left over when the count is odd): the tiles of its micro-kernels.
#[inline(always)]
fn tiles(m: usize, np: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    let mut r = 0;
    while r < m {
        let mr = MR.min(m - r);
        let mut p = 0;
        while p < np {
            let pn = 2.min(np - p);
            f(r, mr, p, pn);
            p += pn;
        }
        r += mr;
    }
}

/// Calls the micro-kernel `tile::<R, P>(t, out, r, p)` whose const rows `R` (1..=8) and
/// panels `P` (1 or 2) are the run-time `mr` and `pn` of one tile from [`tiles`]: the one
/// place that turns a tile's size into a kernel with its accumulators in registers.
#[cfg(target_arch = "x86_64")]
macro_rules! each_tile {
    ($tile:ident, $t:expr, $out:expr, $r:expr, $p:expr, $mr:expr, $pn:expr) => {{
        const _: () = assert!($crate::quant::MR == 8, "the arms cover 1..=8 rows");
        match ($mr, $pn) {
            (8, 2) => $tile::<8, 2>($t, $out, $r, $p),
            (8, _) => $tile::<8, 1>($t, $out, $r, $p),
            (7, 2) => $tile::<7, 2>($t, $out, $r, $p),
            (7, _) => $tile::<7, 1>($t, $out, $r, $p),
            (6, 2) => $tile::<6, 2>($t, $out, $r, $p),
            (6, _) => $tile::<6, 1>($t, $out, $r, $p),
            (5, 2) => $tile::<5, 2>($t, $out, $r, $p),
            (5, _) => $tile::<5, 1>($t, $out, $r, $p),
            (4, 2) => $tile::<4, 2>($t, $out, $r, $p),
            (4, _) => $tile::<4, 1>($t, $out, $r, $p),
            (3, 2) => $tile::<3, 2>($t, $out, $r, $p),
            (3, _) => $tile::<3, 1>($t, $out, $r, $p),
            (2, 2) => $tile::<2, 2>($t, $out, $r, $p),
            (2, _) => $tile::<2, 1>($t, $out, $r, $p),
            (_, 2) => $tile::<1, 2>($t, $out, $r, $p),
            _ => $tile::<1, 1>($t, $out, $r, $p),
        }
    }};
}
#[cfg(target_arch = "x86_64")]
pub(crate) use each_tile;

/// Writes the first `valid` of 16 results of one row's panel: `out[c] = v[c]`.
#[inline(always)]
fn store_row(out: &mut [f32], v: &[f32; PANEL], valid: usize) {
    out[..valid].copy_from_slice(&v[..valid]);
}
