//! The canvas a scene is painted on, its colour arithmetic, and the noise tables its textures
//! are looked up in.

use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use rand_xoshiro::SplitMix64;

/// A colour (0–255 per channel) or a light tint (around 1), with per-channel arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Rgb(pub(crate) [f32; 3]);

impl Rgb {
    #[inline(always)]
    pub(crate) fn map(self, f: impl Fn(f32) -> f32) -> Rgb {
        Rgb(self.0.map(f))
    }

    /// `self` moved toward `to` by `t` (0: `self`, 1: `to`).
    #[inline(always)]
    pub(crate) fn lerp(self, to: Rgb, t: f32) -> Rgb {
        self + (to - self) * t
    }

    /// Paints `c` over this pixel with coverage `a`; nothing where `a` is 0.
    #[inline(always)]
    pub(crate) fn blend(&mut self, c: Rgb, a: f32) {
        if a > 0.0 {
            *self = self.lerp(c, a);
        }
    }
}

/// Per-channel `+`, `-` and `*` of two [`Rgb`]s.
macro_rules! rgb_ops {
    ($($trait:ident $f:ident $op:tt),*) => {$(
        impl std::ops::$trait for Rgb {
            type Output = Rgb;
            #[inline(always)]
            fn $f(self, o: Rgb) -> Rgb {
                Rgb(std::array::from_fn(|i| self.0[i] $op o.0[i]))
            }
        }
    )*};
}
rgb_ops!(Add add +, Sub sub -, Mul mul *);

impl std::ops::Mul<f32> for Rgb {
    type Output = Rgb;
    #[inline(always)]
    fn mul(self, s: f32) -> Rgb {
        self.map(|v| v * s)
    }
}

pub(crate) const NT: usize = 256;
/// Length of the grain table (white noise shared by all samples).
pub(crate) const GRAIN_LEN: usize = 1 << 17;

/// Fixed tables shared by all samples, so per-pixel texture is a table lookup.
pub(crate) struct Tables {
    /// Uniform values on a 256×256 lattice, for smooth value noise ([`vnoise`]).
    pub(crate) lattice: Box<[f32; NT * NT]>,
    /// Thin vertical streaks (independent columns, smooth over ~8 rows) for grass blades.
    pub(crate) blades: Box<[f32; NT * NT]>,
    /// Triangular white noise in (−1, 1).
    pub(crate) grain: Box<[f32; GRAIN_LEN]>,
}

pub(crate) fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut rng = SplitMix64::seed_from_u64(0x5EED_7AB1_E5C0_FFEE);
        let boxed = |v: Vec<f32>| -> Box<[f32; NT * NT]> { v.try_into().expect("table size") };
        let lattice = boxed((0..NT * NT).map(|_| rng.random::<f64>() as f32).collect());
        let knots: Vec<f32> = (0..NT * NT / 8)
            .map(|_| rng.random::<f64>() as f32)
            .collect();
        let mut blades = vec![0f32; NT * NT];
        for (y, row) in blades.chunks_exact_mut(NT).enumerate() {
            let (k, f) = (y / 8, (y % 8) as f32 / 8.0);
            let s = f * f * (3.0 - 2.0 * f);
            for (x, v) in row.iter_mut().enumerate() {
                let a = knots[(k % 32) * NT + x];
                let b = knots[((k + 1) % 32) * NT + x];
                *v = a + (b - a) * s;
            }
        }
        let grain: Vec<f32> = (0..GRAIN_LEN)
            .map(|_| (rng.random::<f64>() + rng.random::<f64>() - 1.0) as f32)
            .collect();
        Tables {
            lattice,
            blades: boxed(blades),
            grain: grain.try_into().expect("table size"),
        }
    })
}

#[inline(always)]
pub(crate) fn floor_i(v: f32) -> i32 {
    let i = v as i32;
    if (i as f32) > v {
        i - 1
    } else {
        i
    }
}

/// Smooth value noise in [0, 1), period 256 in both axes.
#[inline(always)]
pub(crate) fn vnoise(t: &[f32; NT * NT], x: f32, y: f32) -> f32 {
    let (xi, yi) = (floor_i(x), floor_i(y));
    let (fx, fy) = (x - xi as f32, y - yi as f32);
    let sx = fx * fx * (3.0 - 2.0 * fx);
    let sy = fy * fy * (3.0 - 2.0 * fy);
    let x0 = (xi & 255) as usize;
    let x1 = (x0 + 1) & 255;
    let y0 = ((yi & 255) as usize) * NT;
    let y1 = (((yi + 1) & 255) as usize) * NT;
    let a = t[(y0 + x0) & 0xFFFF];
    let b = t[(y0 + x1) & 0xFFFF];
    let c = t[(y1 + x0) & 0xFFFF];
    let d = t[(y1 + x1) & 0xFFFF];
    let top = a + (b - a) * sx;
    let bottom = c + (d - c) * sx;
    top + (bottom - top) * sy
}

#[inline(always)]
pub(crate) fn hash2(x: u32, y: u32, seed: u32) -> u32 {
    let mut h = x.wrapping_mul(0x8DA6_B343) ^ y.wrapping_mul(0xD816_3841) ^ seed;
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    h = h.wrapping_mul(0x297A_2D39);
    h ^ (h >> 15)
}

/// Where row `y` (chunk `chunk`) starts reading the grain table: a random offset per row, so
/// the shared table never shows as a pattern.
#[inline(always)]
pub(crate) fn grain_offset(y: usize, chunk: usize, seed: u32) -> usize {
    (hash2(y as u32, chunk as u32, seed) & 0xFFFF) as usize
}

#[inline(always)]
pub(crate) fn smoothstep(lo: f32, hi: f32, v: f32) -> f32 {
    let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Anti-aliased coverage of a pixel whose centre lies `d` pixels inside an edge.
#[inline(always)]
pub(crate) fn coverage(d: f32) -> f32 {
    (d + 0.5).clamp(0.0, 1.0)
}

/// `out[x] = f(x + 0.5)`, evaluated every `step` pixels and linearly interpolated between:
/// for fields that change slowly along a row.
pub(crate) fn coarse_row(out: &mut [f32], step: usize, f: impl Fn(f32) -> f32) {
    let inv = 1.0 / step as f32;
    let mut a = f(0.5);
    for (k, chunk) in out.chunks_mut(step).enumerate() {
        let b = f(((k + 1) * step) as f32 + 0.5);
        let d = (b - a) * inv;
        for (i, o) in chunk.iter_mut().enumerate() {
            *o = a + d * i as f32;
        }
        a = b;
    }
}

/// A float RGB canvas (0–255 per channel) the scene is painted on.
pub(crate) struct Canvas {
    pub(crate) w: usize,
    pub(crate) h: usize,
    pub(crate) px: Vec<Rgb>,
}

impl Canvas {
    /// Calls `f(pixel, x, y)`, with (x, y) the pixel's centre, over the float box
    /// [x0, x1) × [y0, y1) grown by a pixel for anti-aliased edges and clipped to the canvas.
    pub(crate) fn each(
        &mut self,
        [x0, y0, x1, y1]: [f32; 4],
        mut f: impl FnMut(&mut Rgb, f32, f32),
    ) {
        let cx = |v: f32| (v.max(0.0) as usize).min(self.w);
        let cy = |v: f32| (v.max(0.0) as usize).min(self.h);
        let (x0, x1) = (cx(x0 - 1.0), cx((x1 + 1.0).ceil()));
        for y in cy(y0 - 1.0)..cy((y1 + 1.0).ceil()) {
            for x in x0..x1 {
                f(&mut self.px[y * self.w + x], x as f32 + 0.5, y as f32 + 0.5);
            }
        }
    }
}
