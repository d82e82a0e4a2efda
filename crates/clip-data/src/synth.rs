//! Photo-like synthetic image–caption pairs, for scale tests and benchmarks of the data loader.
//!
//! Every sample is a small outdoor scene: a sky whose colours follow the time of day (dawn,
//! noon, dusk, night) with clouds, a sun or a moon (and stars at night), a horizon, a textured
//! ground (grass, sand, snow, water or a road) and one to three coloured objects (balls, boxes,
//! tents, flags, rings) with shading and shadows, finished with a vignette and sensor-like
//! noise so the JPEGs compress like photos rather than like flat graphics. The caption says what
//! is drawn, in varied phrasing: "a photo of a red ball next to a blue box on the grass at dusk".
//!
//! Sample `i` is a pure function of `(i, SynthConfig)`, so any range can be regenerated anywhere
//! and in any order. [`write_folder`] writes `key.jpg` + `key.txt` pairs and [`write_shards`]
//! writes webdataset tar shards laid out like img2dataset's output.
//!
//! JPEGs are written by [`encode_jpeg`] with 4:2:0 chroma subsampling, as cameras do.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::RgbImage;
use rand::{Rng, RngCore, SeedableRng};
use rand_xoshiro::SplitMix64;
use rayon::prelude::*;

/// Settings of the generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthConfig {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Seed of the whole data set: sample `i` of seed `s` is always the same.
    pub seed: u64,
    /// JPEG quality on the IJG scale, 1–100, used by the writers.
    pub jpeg_quality: u8,
}

impl Default for SynthConfig {
    /// 640×480, seed 0, JPEG quality 85.
    fn default() -> Self {
        Self {
            width: 640,
            height: 480,
            seed: 0,
            jpeg_quality: 85,
        }
    }
}

/// Samples per subfolder of [`write_folder`] (img2dataset's default shard size).
const FOLDER_SAMPLES: u64 = 10_000;
/// Samples rendered together before a shard writer appends them (bounds memory per shard).
const SHARD_CHUNK: u64 = 256;
/// Fixed modification time of tar members (2023-11-14), so shards are reproducible.
const TAR_MTIME: u64 = 1_700_000_000;

// ---------------------------------------------------------------------------------------------
// Scene description
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Time {
    Dawn,
    Noon,
    Dusk,
    Night,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ground {
    Grass,
    Sand,
    Snow,
    Water,
    Road,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Ball,
    Box,
    Tent,
    Flag,
    Ring,
}

/// Named colours objects are painted in (sRGB, 0–255).
const COLOURS: [(&str, Rgb); 11] = [
    ("red", Rgb([200.0, 30.0, 30.0])),
    ("orange", Rgb([240.0, 130.0, 20.0])),
    ("yellow", Rgb([240.0, 210.0, 40.0])),
    ("green", Rgb([40.0, 150.0, 50.0])),
    ("blue", Rgb([30.0, 70.0, 200.0])),
    ("purple", Rgb([120.0, 50.0, 160.0])),
    ("pink", Rgb([240.0, 130.0, 180.0])),
    ("brown", Rgb([110.0, 70.0, 35.0])),
    ("black", Rgb([25.0, 25.0, 25.0])),
    ("white", Rgb([235.0, 235.0, 235.0])),
    ("grey", Rgb([128.0, 128.0, 128.0])),
];

#[derive(Debug, Clone, PartialEq)]
struct Object {
    shape: Shape,
    /// Index into [`COLOURS`].
    colour: usize,
    /// Horizontal centre, pixels.
    cx: f32,
    /// Where the object touches the ground, pixels from the top.
    base: f32,
    /// Overall size, pixels.
    size: f32,
    /// +1 or −1: which way the box's side, the flag's cloth and the tent's door lean.
    dir: f32,
}

#[derive(Debug, Clone)]
struct Scene {
    w: f32,
    h: f32,
    time: Time,
    ground: Ground,
    horizon: f32,
    sky_top: Rgb,
    sky_low: Rgb,
    /// Tint multiplying the ground and objects.
    light: Rgb,
    /// Sun (or moon at night): centre and radius in pixels, and colour.
    sun: [f32; 3],
    sun_rgb: Rgb,
    clouds: f32,
    /// Height of distant hills on the horizon, pixels (0: none).
    hills: f32,
    offsets: [f32; 6],
    /// Road: vanishing-point x and centre x at the bottom edge.
    road: [f32; 2],
    /// Drawn far to near.
    objects: Vec<Object>,
    noise: f32,
    vignette: f32,
    grain_seed: u32,
    caption: String,
}

fn uni(rng: &mut SplitMix64, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f64>() as f32
}

fn pick<T: Copy>(rng: &mut SplitMix64, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn jitter(rng: &mut SplitMix64, c: [f32; 3], amount: f32) -> Rgb {
    let common = uni(rng, -amount, amount);
    Rgb(c.map(|v| (v + common + uni(rng, -amount, amount) * 0.5).clamp(0.0, 255.0)))
}

impl Scene {
    fn new(index: u64, cfg: &SynthConfig) -> Self {
        let mut rng =
            SplitMix64::seed_from_u64(cfg.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (w, h) = (cfg.width.max(1) as f32, cfg.height.max(1) as f32);
        let time = pick(
            &mut rng,
            &[Time::Dawn, Time::Noon, Time::Noon, Time::Dusk, Time::Night],
        );
        let ground = pick(
            &mut rng,
            &[
                Ground::Grass,
                Ground::Sand,
                Ground::Snow,
                Ground::Water,
                Ground::Road,
            ],
        );
        let horizon = h * uni(&mut rng, 0.34, 0.58);
        let (top, low, light, sun_rgb) = match time {
            Time::Dawn => (
                [70.0, 95.0, 160.0],
                [250.0, 180.0, 130.0],
                [0.95, 0.85, 0.78],
                [255.0, 215.0, 160.0],
            ),
            Time::Noon => (
                [35.0, 105.0, 205.0],
                [165.0, 205.0, 240.0],
                [1.0, 1.0, 1.0],
                [255.0, 252.0, 235.0],
            ),
            Time::Dusk => (
                [45.0, 40.0, 105.0],
                [250.0, 125.0, 60.0],
                [0.9, 0.72, 0.6],
                [255.0, 180.0, 110.0],
            ),
            Time::Night => (
                [4.0, 7.0, 22.0],
                [22.0, 32.0, 66.0],
                [0.42, 0.46, 0.62],
                [235.0, 235.0, 220.0],
            ),
        };
        let sky_top = jitter(&mut rng, top, 12.0);
        let sky_low = jitter(&mut rng, low, 12.0);
        let sun_x = w * uni(&mut rng, 0.1, 0.9);
        let (sun_y, sun_r) = match time {
            Time::Dawn | Time::Dusk => (
                horizon - h * uni(&mut rng, 0.03, 0.16),
                h * uni(&mut rng, 0.035, 0.05),
            ),
            Time::Noon => (horizon * uni(&mut rng, 0.12, 0.5), h * 0.035),
            Time::Night => (
                horizon * uni(&mut rng, 0.15, 0.6),
                h * uni(&mut rng, 0.025, 0.04),
            ),
        };
        let clouds = if time == Time::Night {
            0.0
        } else {
            rng.random::<f64>().powi(2) as f32
        };
        let hills = if rng.random::<f64>() < 0.45 {
            h * uni(&mut rng, 0.03, 0.12)
        } else {
            0.0
        };
        let offsets = [0; 6].map(|_| uni(&mut rng, 0.0, 256.0));
        let road = [w * uni(&mut rng, 0.35, 0.65), w * uni(&mut rng, 0.3, 0.7)];
        let mut scene = Scene {
            w,
            h,
            time,
            ground,
            horizon,
            sky_top,
            sky_low,
            light: Rgb(light),
            sun: [sun_x, sun_y, sun_r],
            sun_rgb: Rgb(sun_rgb),
            clouds,
            hills,
            offsets,
            road,
            objects: Vec::new(),
            noise: uni(&mut rng, 2.5, 6.0),
            vignette: uni(&mut rng, 0.0, 0.35),
            grain_seed: rng.next_u64() as u32,
            caption: String::new(),
        };
        scene.objects = scene.place_objects(&mut rng);
        scene.caption = scene.describe(&mut rng);
        scene.objects.sort_by(|a, b| a.base.total_cmp(&b.base));
        scene
    }

    /// Road centre and half width at depth `t` (0 at the horizon, 1 at the bottom edge).
    fn road_at(&self, t: f32) -> (f32, f32) {
        let [vx, bx] = self.road;
        (vx + (bx - vx) * t, self.w * (0.01 + 0.42 * t))
    }

    /// Objects left to right (the order the caption names them in).
    fn place_objects(&self, rng: &mut SplitMix64) -> Vec<Object> {
        let n = [1, 1, 2, 2, 3][rng.random_range(0..5)];
        let shapes: &[Shape] = if self.ground == Ground::Water {
            &[Shape::Ball, Shape::Box, Shape::Ring]
        } else {
            &[
                Shape::Ball,
                Shape::Box,
                Shape::Tent,
                Shape::Flag,
                Shape::Ring,
            ]
        };
        let clash = |c: &str| match (self.ground, c) {
            (Ground::Grass, "green") | (Ground::Snow, "white") | (Ground::Road, "grey") => true,
            (Ground::Water, "blue") => true,
            _ => self.time == Time::Night && c == "black",
        };
        let mut out: Vec<Object> = Vec::with_capacity(n);
        for i in 0..n {
            let (shape, colour) = match out.last() {
                Some(prev) if rng.random::<f64>() < 0.3 => (prev.shape, prev.colour),
                _ => {
                    let mut c = rng.random_range(0..COLOURS.len());
                    while clash(COLOURS[c].0) {
                        c = rng.random_range(0..COLOURS.len());
                    }
                    (pick(rng, shapes), c)
                }
            };
            let depth = uni(rng, 0.3, 0.95);
            let base = self.horizon + depth * (self.h - self.horizon);
            let slot = (i as f32 + uni(rng, 0.2, 0.8)) / n as f32;
            let mut cx = self.w * (0.1 + 0.8 * slot);
            if self.ground == Ground::Road {
                let (rc, hw) = self.road_at(depth);
                let lo = rc - 0.75 * hw;
                cx = lo + 1.5 * hw * (i as f32 + uni(rng, 0.25, 0.75)) / n as f32;
            }
            let size = (self.h * uni(rng, 0.2, 0.38) * (0.45 + 0.55 * depth))
                .min(base - 1.0)
                .max(1.0);
            let dir = if rng.random::<f64>() < 0.5 { -1.0 } else { 1.0 };
            out.push(Object {
                shape,
                colour,
                cx,
                base,
                size,
                dir,
            });
        }
        out
    }

    fn describe(&self, rng: &mut SplitMix64) -> String {
        // Group identical (shape, colour) objects, in the order they are first named.
        let mut groups: Vec<(Shape, usize, usize)> = Vec::new();
        for o in &self.objects {
            match groups
                .iter_mut()
                .find(|g| g.0 == o.shape && g.1 == o.colour)
            {
                Some(g) => g.2 += 1,
                None => groups.push((o.shape, o.colour, 1)),
            }
        }
        let phrases: Vec<String> = groups
            .iter()
            .map(|&(shape, colour, count)| {
                let colour = COLOURS[colour].0;
                let (one, many) = match shape {
                    Shape::Ball => pick(rng, &[("ball", "balls"), ("sphere", "spheres")]),
                    Shape::Box => pick(rng, &[("box", "boxes"), ("cube", "cubes")]),
                    Shape::Tent => ("tent", "tents"),
                    Shape::Flag => ("flag", "flags"),
                    Shape::Ring => ("ring", "rings"),
                };
                match count {
                    1 => format!("{} {colour} {one}", article(colour)),
                    2 => format!("two {colour} {many}"),
                    _ => format!("three {colour} {many}"),
                }
            })
            .collect();
        let objects = match phrases.as_slice() {
            [a] => a.clone(),
            [a, b] => {
                let join = pick(rng, &[" and ", " next to ", " beside ", " near "]);
                format!("{a}{join}{b}")
            }
            [a, b, c] => format!("{a}, {b} and {c}"),
            _ => unreachable!("one to three objects"),
        };
        let ground: &[&str] = match self.ground {
            Ground::Grass => &["on the grass", "on a grassy field", "in a meadow"],
            Ground::Sand => &["on the sand", "on a sandy beach", "on the beach"],
            Ground::Snow => &["on the snow", "on a snowy field", "in the snow"],
            Ground::Water => &["floating on the water", "on a lake", "floating on the sea"],
            Ground::Road => &["on the road", "on an empty road", "in the middle of a road"],
        };
        let time: &[&str] = match self.time {
            Time::Dawn => &["at dawn", "at sunrise", "in the early morning"],
            Time::Noon => &[
                "at noon",
                "on a sunny day",
                "under a blue sky",
                "in bright daylight",
            ],
            Time::Dusk => &["at dusk", "at sunset", "in the evening light"],
            Time::Night => &["at night", "under a night sky", "on a moonlit night"],
        };
        let (ground, time) = (pick(rng, ground), pick(rng, time));
        let sky = match self.time {
            Time::Dawn | Time::Dusk => "with the sun low in the sky",
            Time::Noon => "with the sun high in the sky",
            Time::Night => "with the moon in the sky",
        };
        let prefix = pick(
            rng,
            &[
                "a photo of ",
                "a photo of ",
                "a picture of ",
                "a photograph of ",
                "an outdoor photo of ",
                "",
            ],
        );
        // "there is a ball and two boxes", "there are two balls and a box".
        let plural = groups[0].2 > 1;
        let template = rng.random_range(0..6);
        let mut caption = match template {
            0 | 1 => format!("{prefix}{objects} {ground} {time}"),
            2 => format!("{time}, {objects} {ground}"),
            3 => format!("{prefix}{objects} {ground} {sky}"),
            4 => {
                let be = if plural { "there are" } else { "there is" };
                format!("{be} {objects} {ground} {time}")
            }
            _ => format!("{objects} {ground} {time}"),
        };
        if self.hills > 0.0 && template != 3 && rng.random::<f64>() < 0.6 {
            caption += pick(
                rng,
                &[
                    ", with hills in the distance",
                    ", hills on the horizon",
                    " with hills behind",
                ],
            );
        }
        caption
    }

    /// Sky colour at row `y` (also used for reflections in water).
    fn sky_at(&self, y: f32) -> Rgb {
        let t = (y / self.horizon).clamp(0.0, 1.0);
        let t = t * t * (3.0 - 2.0 * t) * 0.6 + t * 0.4;
        self.sky_top.lerp(self.sky_low, t)
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// A colour (0–255 per channel) or a light tint (around 1), with per-channel arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Rgb([f32; 3]);

impl Rgb {
    #[inline(always)]
    fn map(self, f: impl Fn(f32) -> f32) -> Rgb {
        Rgb(self.0.map(f))
    }

    /// `self` moved toward `to` by `t` (0: `self`, 1: `to`).
    #[inline(always)]
    fn lerp(self, to: Rgb, t: f32) -> Rgb {
        self + (to - self) * t
    }

    /// Paints `c` over this pixel with coverage `a`; nothing where `a` is 0.
    #[inline(always)]
    fn blend(&mut self, c: Rgb, a: f32) {
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

const NT: usize = 256;
/// Length of the grain table (white noise shared by all samples).
const GRAIN_LEN: usize = 1 << 17;

/// Fixed tables shared by all samples, so per-pixel texture is a table lookup.
struct Tables {
    /// Uniform values on a 256×256 lattice, for smooth value noise ([`vnoise`]).
    lattice: Box<[f32; NT * NT]>,
    /// Thin vertical streaks (independent columns, smooth over ~8 rows) for grass blades.
    blades: Box<[f32; NT * NT]>,
    /// Triangular white noise in (−1, 1).
    grain: Box<[f32; GRAIN_LEN]>,
}

fn tables() -> &'static Tables {
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
fn floor_i(v: f32) -> i32 {
    let i = v as i32;
    if (i as f32) > v {
        i - 1
    } else {
        i
    }
}

/// Smooth value noise in [0, 1), period 256 in both axes.
#[inline(always)]
fn vnoise(t: &[f32; NT * NT], x: f32, y: f32) -> f32 {
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
fn hash2(x: u32, y: u32, seed: u32) -> u32 {
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
fn grain_offset(y: usize, chunk: usize, seed: u32) -> usize {
    (hash2(y as u32, chunk as u32, seed) & 0xFFFF) as usize
}

#[inline(always)]
fn smoothstep(lo: f32, hi: f32, v: f32) -> f32 {
    let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Anti-aliased coverage of a pixel whose centre lies `d` pixels inside an edge.
#[inline(always)]
fn coverage(d: f32) -> f32 {
    (d + 0.5).clamp(0.0, 1.0)
}

/// `out[x] = f(x + 0.5)`, evaluated every `step` pixels and linearly interpolated between:
/// for fields that change slowly along a row.
fn coarse_row(out: &mut [f32], step: usize, f: impl Fn(f32) -> f32) {
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
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<Rgb>,
}

impl Canvas {
    /// Calls `f(pixel, x, y)`, with (x, y) the pixel's centre, over the float box
    /// [x0, x1) × [y0, y1) grown by a pixel for anti-aliased edges and clipped to the canvas.
    fn each(&mut self, [x0, y0, x1, y1]: [f32; 4], mut f: impl FnMut(&mut Rgb, f32, f32)) {
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

thread_local! {
    /// Each thread's canvas, kept between samples: every pixel is repainted, and a fresh
    /// 3.7 MB buffer per sample would cost a zero-fill.
    static CANVAS: std::cell::RefCell<Vec<Rgb>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The image and caption of sample `index`: a pure function of (index, cfg).
///
/// The scene is drawn from `SplitMix64::seed_from_u64(cfg.seed ^ index · 0x9E37_79B9_7F4A_7C15)`, so
/// samples can be rendered in any order and on any thread. Pixels are bit-identical for the
/// same build on the same platform (a different libm may round a few pixels differently).
/// Takes about 4 ms at 640×480 on one core of the 2-core development VM.
pub fn render(index: u64, cfg: &SynthConfig) -> (RgbImage, String) {
    let scene = Scene::new(index, cfg);
    let (w, h) = (cfg.width as usize, cfg.height as usize);
    let px = CANVAS.with_borrow_mut(std::mem::take);
    let mut canvas = Canvas { w, h, px };
    canvas.px.resize(w * h, Rgb::default());
    paint_background(&scene, &mut canvas);
    for o in &scene.objects {
        paint_shadow(&scene, o, &mut canvas);
    }
    for o in &scene.objects {
        paint_object(&scene, o, &mut canvas);
    }
    let img = finish(&scene, &canvas);
    CANVAS.with_borrow_mut(|slot| *slot = canvas.px);
    (img, scene.caption)
}

fn paint_background(s: &Scene, canvas: &mut Canvas) {
    let t = tables();
    let w = canvas.w;
    let mut buf = vec![0f32; w];
    let ridge: Vec<f32> = if s.hills > 0.0 {
        let (k, o) = (4.0 / s.w, s.offsets[5]);
        (0..w)
            .map(|x| {
                let x = x as f32 + 0.5;
                let n = 0.6 * vnoise(&t.lattice, x * k + o, o)
                    + 0.3 * vnoise(&t.lattice, x * k * 3.0 + o, o + 7.0)
                    + 0.1 * vnoise(&t.lattice, x * k * 11.0 + o, o + 3.0);
                s.horizon - s.hills * (0.15 + 0.85 * n)
            })
            .collect()
    } else {
        Vec::new()
    };
    let ridge_top = ridge.iter().copied().fold(s.horizon, f32::min);
    for (y, row) in canvas.px.chunks_exact_mut(w.max(1)).enumerate() {
        let yc = y as f32 + 0.5;
        if yc < s.horizon {
            paint_sky_row(s, row, y, t, &mut buf);
            if yc + 1.0 > ridge_top {
                paint_hills_row(s, row, y, &ridge, t);
            }
        } else {
            paint_ground_row(s, row, y, t, &mut buf);
        }
    }
    if s.time == Time::Night {
        paint_stars(s, canvas);
    }
}

fn paint_sky_row(s: &Scene, row: &mut [Rgb], y: usize, t: &Tables, buf: &mut [f32]) {
    let yc = y as f32 + 0.5;
    let base = s.sky_at(yc);
    let [sun_x, sun_y, sun_r] = s.sun;
    let inv_r2 = 1.0 / (sun_r * sun_r).max(1e-3);
    let glow = match s.time {
        Time::Night => 0.12,
        Time::Noon => 0.35,
        _ => 0.6,
    };
    let dy = yc - sun_y;
    let dy2 = dy * dy;
    // Whether this row crosses the disc itself.
    let disc = dy.abs() < sun_r + 1.0;
    for (x, p) in row.iter_mut().enumerate() {
        let dx = x as f32 + 0.5 - sun_x;
        let q = (dx * dx + dy2) * inv_r2;
        let halo = 1.0 / (1.0 + q);
        *p = base + s.sun_rgb * (glow * (halo * halo + 0.3 / (1.0 + q * 0.04)));
        if disc {
            p.blend(s.sun_rgb, coverage(sun_r - (dx * dx + dy2).sqrt()));
        }
    }
    let fade = smoothstep(0.0, 0.25 * s.horizon, s.horizon - yc) * s.clouds;
    if fade <= 0.0 {
        return;
    }
    let cloud_rgb = Rgb(match s.time {
        Time::Dawn => [250.0, 205.0, 190.0],
        Time::Dusk => [235.0, 150.0, 120.0],
        _ => [245.0, 246.0, 250.0],
    });
    let o = s.offsets;
    let k = 6.0 / s.h;
    coarse_row(buf, 8, |xc| {
        0.65 * vnoise(&t.lattice, xc * k * 0.5 + o[0], yc * k * 1.6 + o[1])
            + 0.35 * vnoise(&t.lattice, xc * k * 1.4 + o[2], yc * k * 4.0 + o[3])
    });
    let lo = 0.72 - 0.3 * s.clouds;
    let inv = 1.0 / (0.23 + 0.1 * s.clouds);
    for (p, &n) in row.iter_mut().zip(buf.iter()) {
        let c = ((n - lo) * inv).clamp(0.0, 1.0);
        p.blend(
            cloud_rgb * (0.8 + 0.25 * n),
            c * c * (3.0 - 2.0 * c) * fade * 0.9,
        );
    }
}

/// Distant hills over the sky, hazed toward the sky's colour at the horizon.
fn paint_hills_row(s: &Scene, row: &mut [Rgb], y: usize, ridge: &[f32], t: &Tables) {
    let yc = y as f32 + 0.5;
    let base = Rgb(match s.ground {
        Ground::Snow => [185.0, 190.0, 205.0],
        Ground::Sand => [165.0, 130.0, 95.0],
        _ => [55.0, 72.0, 66.0],
    });
    // Lower slopes are further hazed; the light tints them like the ground.
    let depth = ((s.horizon - yc) / s.hills.max(1.0)).clamp(0.0, 1.0);
    let c = (base * s.light).lerp(s.sky_low, 0.4 - 0.25 * depth);
    let goff = grain_offset(y, 1, s.grain_seed);
    for (x, (p, &r)) in row.iter_mut().zip(ridge).enumerate() {
        let g = 1.0 + 0.05 * t.grain[(goff + x) & (GRAIN_LEN - 1)];
        p.blend(c * g, coverage(yc - r));
    }
}

fn paint_stars(s: &Scene, canvas: &mut Canvas) {
    let mut rng = SplitMix64::seed_from_u64(u64::from(s.grain_seed) ^ 0x57A5);
    let rows = (s.horizon.max(0.0) as usize).min(canvas.h);
    let count = canvas.w * rows / 700;
    let [mx, my, mr] = s.sun;
    for _ in 0..count {
        let x = rng.random_range(0..canvas.w.max(1));
        let y = rng.random_range(0..rows.max(1));
        let (fx, fy) = (x as f32 - mx, y as f32 - my);
        if fx * fx + fy * fy < (mr * 3.0).powi(2) {
            continue;
        }
        let fade = 1.0 - y as f32 / s.horizon;
        let b = (40.0 + 180.0 * rng.random::<f64>().powi(3) as f32) * fade;
        let p = &mut canvas.px[y * canvas.w + x];
        *p = p.map(|v| v + b);
        if b > 120.0 && x + 1 < canvas.w && y + 1 < rows {
            for (dx, dy) in [(1, 0), (0, 1), (1, 1)] {
                let p = &mut canvas.px[(y + dy) * canvas.w + x + dx];
                *p = p.map(|v| v + b * 0.3);
            }
        }
    }
}

/// One row of ground. Every ground is `(base + slope·n)·(m0 + mn·n + mb·blade + mg·grain)`
/// plus haze toward the horizon, where `n` is the ground's own smooth noise along the row.
fn paint_ground_row(s: &Scene, row: &mut [Rgb], y: usize, t: &Tables, buf: &mut [f32]) {
    let yc = y as f32 + 0.5;
    let depth = ((yc - s.horizon) / (s.h - s.horizon)).clamp(1e-3, 1.0);
    let z = 1.0 / (depth + 0.03);
    let amp = depth.sqrt();
    // Haze toward the horizon: colour × keep + hz.
    let f = 0.85 * (-depth * 9.0).exp();
    let keep = 1.0 - f;
    let hz = s.sky_low * f;
    let lk = s.light * keep;
    let o = s.offsets;
    let zx = z * 2.0 / s.h;
    let half_w = s.w * 0.5;
    let step = if depth < 0.25 { 4 } else { 8 };
    let lattice = &t.lattice;
    let grain = &t.grain;
    let goff = grain_offset(y, 0, s.grain_seed);
    let g_at = |x: usize| grain[(goff + x) & (GRAIN_LEN - 1)];
    let zero = Rgb::default();
    let (base, slope, [m0, mn, mb, mg]) = match s.ground {
        Ground::Grass | Ground::Road => {
            let (dark, bright) = if s.ground == Ground::Road {
                ([80.0, 90.0, 50.0], [140.0, 130.0, 75.0])
            } else {
                ([40.0, 90.0, 30.0], [105.0, 150.0, 50.0])
            };
            coarse_row(buf, step, |xc| {
                vnoise(lattice, (xc - half_w) * zx * 1.5 + o[0], z * 1.5 + o[1])
            });
            let slope = (Rgb(bright) - Rgb(dark)) * lk;
            let m = [0.8 - 0.2 * amp, 0.0, 0.45 * amp, 0.16 * amp];
            (Rgb(dark) * lk, slope, m)
        }
        Ground::Sand => {
            coarse_row(buf, step, |xc| {
                let n = vnoise(lattice, (xc - half_w) * zx * 0.8 + o[0], z * 0.8 + o[1]);
                let r = z * 3.0 + n * 2.5;
                let r = r - floor_i(r) as f32;
                let ripple = 1.0 - (2.0 * r - 1.0).abs();
                0.9 + amp * (0.12 * ripple - 0.06) + 0.08 * (n - 0.5)
            });
            let m = [0.0, 1.0, 0.0, 0.07 * amp];
            (Rgb([212.0, 186.0, 135.0]) * lk, zero, m)
        }
        Ground::Snow => {
            coarse_row(buf, step, |xc| {
                0.45 + 0.55 * vnoise(lattice, (xc - half_w) * zx * 0.6 + o[0], z * 0.6 + o[1])
            });
            // Snow keeps the sky's blue in its shadows, even in warm light.
            let lk = match s.time {
                Time::Dawn | Time::Dusk => s.light.lerp(Rgb([0.8, 0.85, 1.0]), 0.5) * keep,
                _ => lk,
            };
            let m = [1.0, 0.0, 0.0, 0.045 * amp];
            (
                Rgb([182.0, 195.0, 225.0]) * lk,
                Rgb([66.0, 55.0, 28.0]) * lk,
                m,
            )
        }
        Ground::Water => {
            coarse_row(buf, step, |xc| {
                vnoise(lattice, (xc - half_w) * zx * 0.5 + o[0], z * 7.0 + o[1])
            });
            let reflect = s.sky_at(s.horizon - (yc - s.horizon) * 1.5);
            let fresnel = 0.3 + 0.6 * (1.0 - depth) * (1.0 - depth);
            let deep = Rgb([20.0, 55.0, 85.0]) * s.light;
            let m = [0.8, 0.4 * (0.4 + amp), 0.0, 0.04 * amp];
            (deep.lerp(reflect, fresnel) * keep, zero, m)
        }
    };
    let brow = ((y + o[3] as usize) & 255) * NT;
    let bx = o[2] as usize;
    for (x, (p, &n)) in row.iter_mut().zip(buf.iter()).enumerate() {
        let bl = t.blades[(brow + ((x + bx) & 255)) & 0xFFFF];
        *p = (base + slope * n) * (m0 + mn * n + mb * bl + mg * g_at(x)) + hz;
    }
    match s.ground {
        Ground::Road => paint_road(s, row, depth, z, buf, &g_at, (lk, hz)),
        Ground::Water => {
            // The sun's glitter on the waves below it.
            let glitter_w = s.sun[2] * (1.0 + 6.0 * depth);
            for (x, (p, &n)) in row.iter_mut().zip(buf.iter()).enumerate() {
                if n > 0.6 {
                    let dx = (x as f32 + 0.5 - s.sun[0]).abs();
                    let k = ((1.0 - dx / glitter_w) * (n - 0.6) * 2.5).clamp(0.0, 1.0);
                    p.blend(s.sun_rgb, k * 0.8);
                }
            }
        }
        _ => {}
    }
}

/// The asphalt, its dashed centre line and its edge lines, over a row of verge.
fn paint_road(
    s: &Scene,
    row: &mut [Rgb],
    depth: f32,
    z: f32,
    n: &[f32],
    g_at: &impl Fn(usize) -> f32,
    (lk, hz): (Rgb, Rgb),
) {
    let amp = depth.sqrt();
    let (rc, hw) = s.road_at(depth);
    let line_w = 0.4 + depth * s.w * 0.005;
    let dash = ((z * 0.9 + s.offsets[4]) % 1.0) < 0.45;
    let asphalt = Rgb([88.0, 88.0, 93.0]) * lk;
    let yellow = Rgb([225.0, 195.0, 70.0]) * lk + hz;
    let white = Rgb([225.0, 225.0, 225.0]) * lk + hz;
    let x0 = (rc - hw - 1.0).max(0.0) as usize;
    let x1 = ((rc + hw + 1.0).ceil().max(0.0) as usize).min(row.len());
    for (x, (p, &n)) in row.iter_mut().zip(n).enumerate().take(x1).skip(x0) {
        let dx = (x as f32 + 0.5 - rc).abs();
        let mut c = asphalt * (0.9 + 0.2 * n + 0.1 * amp * g_at(x)) + hz;
        if dash {
            c = c.lerp(yellow, coverage(line_w - dx));
        }
        c = c.lerp(white, coverage(line_w - (dx - hw * 0.9).abs()));
        p.blend(c, coverage(hw - dx));
    }
}

fn paint_shadow(s: &Scene, o: &Object, canvas: &mut Canvas) {
    let strength = match (s.time, s.ground) {
        (_, Ground::Water) => 0.15,
        (Time::Night, _) => 0.2,
        (Time::Noon, _) => 0.45,
        _ => 0.32,
    };
    let width = if o.shape == Shape::Flag { 0.35 } else { 0.6 };
    let rx = o.size * width + 1.0;
    let ry = o.size * 0.12 + 1.0;
    let cx = o.cx - (s.sun[0] - o.cx) / s.w * o.size * 0.8;
    let cy = o.base;
    canvas.each([cx - rx, cy - ry, cx + rx, cy + ry], |p, x, y| {
        let (dx, dy) = ((x - cx) / rx, (y - cy) / ry);
        let k = (1.0 - dx * dx - dy * dy).max(0.0);
        if k > 0.0 {
            *p = *p * (1.0 - strength * k.sqrt());
        }
    });
}

fn paint_object(s: &Scene, o: &Object, canvas: &mut Canvas) {
    let colour = COLOURS[o.colour].1 * s.light;
    match o.shape {
        Shape::Ball => paint_ball(s, o, colour, canvas),
        Shape::Box => paint_box(o, colour, canvas),
        Shape::Tent => paint_tent(o, colour, canvas),
        Shape::Flag => paint_flag(o, colour, Rgb([95.0, 70.0, 48.0]) * s.light, canvas),
        Shape::Ring => paint_ring(o, colour, canvas),
    }
}

fn paint_ball(s: &Scene, o: &Object, colour: Rgb, canvas: &mut Canvas) {
    let r = o.size * 0.5;
    let (cx, cy) = (o.cx, o.base - r);
    let lx = if s.sun[0] < o.cx { -0.5 } else { 0.5 };
    let l: [f32; 3] = [lx, -0.55, 0.65];
    let ln = 1.0 / (l[0] * l[0] + l[1] * l[1] + l[2] * l[2]).sqrt();
    let l = l.map(|v| v * ln);
    let spec_rgb = s.light * 255.0;
    canvas.each([cx - r, cy - r, cx + r, cy + r], |p, x, y| {
        let (nx, ny) = ((x - cx) / r, (y - cy) / r);
        let d2 = nx * nx + ny * ny;
        let nz = (1.0 - d2).max(0.0).sqrt();
        let lambert = (nx * l[0] + ny * l[1] + nz * l[2]).max(0.0);
        let c = (colour * (0.35 + 0.75 * lambert)).lerp(spec_rgb, lambert.powi(24) * 0.35);
        p.blend(c, coverage((1.0 - d2.sqrt()) * r));
    });
}

fn paint_box(o: &Object, colour: Rgb, canvas: &mut Canvas) {
    let side = o.size * 0.8;
    let (fx0, fx1) = (o.cx - side * 0.5, o.cx + side * 0.5);
    let (fy0, fy1) = (o.base - side, o.base);
    let d = side * 0.28 * o.dir;
    let dy = side * 0.28 * 0.6;
    // The side face leans back from the front's edge on the `dir` side.
    let ex = if d > 0.0 { fx1 } else { fx0 };
    let (sx0, sx1) = (ex.min(ex + d), ex.max(ex + d));
    let top = (colour * 1.18).map(|v| v.min(255.0));
    let side_c = colour * 0.68;
    let bbox = [fx0.min(fx0 + d), fy0 - dy, fx1.max(fx1 + d), fy1];
    canvas.each(bbox, |p, xc, yc| {
        // Top face: the front's top edge slid back by (d, −dy).
        let tt = ((fy0 - yc) / dy).clamp(0.0, 1.0);
        let top_d = (xc - (fx0 + tt * d))
            .min(fx1 + tt * d - xc)
            .min(yc - (fy0 - dy))
            .min(fy0 - yc + 0.5);
        p.blend(top, coverage(top_d));
        let ts = ((xc - ex) / d).clamp(0.0, 1.0);
        let side_d = (xc - sx0)
            .min(sx1 - xc)
            .min(yc - (fy0 - ts * dy))
            .min(fy1 - ts * dy - yc);
        p.blend(side_c, coverage(side_d));
        let front_d = (xc - fx0).min(fx1 - xc).min(yc - fy0).min(fy1 - yc);
        p.blend(colour, coverage(front_d));
    });
}

/// Signed distance (pixels) from `p` to the line through `a`→`b`, positive on the left.
#[inline(always)]
fn edge(a: [f32; 2], b: [f32; 2], p: [f32; 2]) -> f32 {
    let (ex, ey) = (b[0] - a[0], b[1] - a[1]);
    let len = (ex * ex + ey * ey).sqrt().max(1e-6);
    ((p[0] - a[0]) * ey - (p[1] - a[1]) * ex) / len
}

/// Coverage of triangle `t` (either winding) at `p`, anti-aliased over one pixel.
#[inline(always)]
fn triangle(t: [[f32; 2]; 3], p: [f32; 2]) -> f32 {
    // Positive inside for either winding (a degenerate triangle covers nothing anyway).
    let sign = edge(t[0], t[1], t[2]).signum();
    let inside = [(0, 1), (1, 2), (2, 0)].map(|(i, j)| sign * edge(t[i], t[j], p));
    coverage(inside.into_iter().fold(f32::INFINITY, f32::min))
}

fn paint_tent(o: &Object, colour: Rgb, canvas: &mut Canvas) {
    let (tw, th) = (o.size, o.size * 0.75);
    let apex = [o.cx + o.dir * tw * 0.08, o.base - th];
    let left = [o.cx - tw * 0.5, o.base];
    let right = [o.cx + tw * 0.5, o.base];
    let mid = [o.cx + o.dir * tw * 0.05, o.base];
    let door = [
        [apex[0] * 0.45 + mid[0] * 0.55, o.base - th * 0.45],
        [mid[0] - tw * 0.11, o.base],
        [mid[0] + tw * 0.11, o.base],
    ];
    let (lit, shaded) = if o.dir > 0.0 {
        (1.0, 0.72)
    } else {
        (0.72, 1.0)
    };
    canvas.each([left[0], apex[1], right[0], o.base], |p, x, y| {
        p.blend(colour * lit, triangle([apex, left, mid], [x, y]));
        p.blend(colour * shaded, triangle([apex, mid, right], [x, y]));
        p.blend(colour * 0.25, triangle(door, [x, y]));
    });
}

fn paint_flag(o: &Object, colour: Rgb, pole: Rgb, canvas: &mut Canvas) {
    let pw = (o.size * 0.035).max(1.0);
    let px = o.cx - o.dir * o.size * 0.3;
    let (top, bottom) = (o.base - o.size, o.base);
    let (cw, ch) = (o.size * 0.62, o.size * 0.4);
    let amp = o.size * 0.04;
    let cloth_x0 = if o.dir > 0.0 {
        px + pw * 0.5
    } else {
        px - pw * 0.5 - cw
    };
    let bbox = [
        px.min(cloth_x0) - pw,
        top - amp,
        px.max(cloth_x0 + cw) + pw,
        bottom,
    ];
    canvas.each(bbox, |p, xc, yc| {
        let pole_a = coverage(pw * 0.5 - (xc - px).abs());
        p.blend(pole, pole_a * coverage(yc - top) * coverage(bottom - yc));
        // Distance along the cloth from the pole, 0..1.
        let u = if o.dir > 0.0 {
            (xc - cloth_x0) / cw
        } else {
            (cloth_x0 + cw - xc) / cw
        };
        let phase = u * 4.7;
        let ct = top + o.size * 0.03 + amp * phase.sin() * u;
        let cloth_c = (colour * (1.0 + 0.15 * phase.cos())).map(|v| v.min(255.0));
        let cloth_a = coverage((u * cw).min((1.0 - u) * cw));
        p.blend(
            cloth_c,
            cloth_a * coverage(yc - ct) * coverage(ct + ch - yc),
        );
    });
}

fn paint_ring(o: &Object, colour: Rgb, canvas: &mut Canvas) {
    let rx = o.size * 0.6;
    let ry = rx * 0.42;
    let (cx, cy) = (o.cx, o.base - ry);
    let inner = 0.52;
    canvas.each([cx - rx, cy - ry, cx + rx, cy + ry], |p, x, y| {
        let (dx, dy) = ((x - cx) / rx, (y - cy) / ry);
        let e = (dx * dx + dy * dy).sqrt();
        // Across the tube, 0 at the inner edge and 1 at the outer edge.
        let across = ((e - inner) / (1.0 - inner)).clamp(0.0, 1.0);
        let bulge = (across * std::f32::consts::PI).sin();
        let shade = 0.5 + 0.5 * bulge + 0.15 * (-dy) * bulge;
        p.blend(
            colour * shade,
            coverage((1.0 - e) * ry) * coverage((e - inner) * ry),
        );
    });
}

/// Vignette, sensor noise and rounding to 8 bits.
fn finish(s: &Scene, canvas: &Canvas) -> RgbImage {
    const CHUNK: usize = 3 * 1024;
    let (w, h) = (canvas.w, canvas.h);
    let mut out = Vec::with_capacity(3 * w * h);
    let mut flat = Vec::with_capacity(3 * w);
    let (cx, cy) = (w as f32 * 0.5, h as f32 * 0.5);
    let k = s.vignette / (cx * cx + cy * cy).max(1.0);
    // The vignette's x term, per channel value of a row.
    let vx: Vec<f32> = (0..3 * w)
        .map(|i| {
            let dx = (i / 3) as f32 + 0.5 - cx;
            k * dx * dx
        })
        .collect();
    let amp = s.noise * 1.6;
    let grain = &tables().grain;
    let seed = s.grain_seed ^ 0xA5A5_5A5A;
    for (y, row) in canvas.px.chunks_exact(w.max(1)).enumerate() {
        flat.clear();
        flat.extend(row.iter().flat_map(|p| p.0));
        let dy = y as f32 + 0.5 - cy;
        let vy = 1.0 - k * dy * dy;
        for (c, (src, vx)) in flat.chunks(CHUNK).zip(vx.chunks(CHUNK)).enumerate() {
            let off = grain_offset(y, c, seed);
            let noise = &grain[off..off + src.len()];
            out.extend(src.iter().zip(vx).zip(noise).map(|((&p, &vx), &n)| {
                // Round with the 1.5·2^23 trick: the low byte of the bits is the
                // rounded value, and unlike `as u8` it vectorises.
                let v = (p * (vy - vx) + n * amp).clamp(0.0, 255.0);
                (v + 12_582_912.0).to_bits() as u8
            }));
        }
    }
    RgbImage::from_raw(w as u32, h as u32, out).expect("buffer size")
}

/// JPEG bytes of `img` at `quality` (1–100): baseline with 4:2:0 chroma subsampling, what
/// cameras and libjpeg write by default (the `jpeg-encoder` crate; the `image` crate's encoder
/// writes 4:4:4 and took three times as long here).
///
/// Fails with [`io::ErrorKind::InvalidInput`] for an empty image or a side over 65,535.
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> io::Result<Vec<u8>> {
    let (w, h) = img.dimensions();
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    let (Ok(w16 @ 1..), Ok(h16 @ 1..)) = (u16::try_from(w), u16::try_from(h)) else {
        return Err(invalid(format!("cannot encode a {w}×{h} image as JPEG")));
    };
    let mut out = Vec::with_capacity((w * h / 4) as usize + 1024);
    let mut enc = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    enc.encode(img.as_raw(), w16, h16, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Writers
// ---------------------------------------------------------------------------------------------

/// An I/O error that names the path it happened on.
fn at(path: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn sample_key(index: u64) -> String {
    format!("{index:09}")
}

fn render_jpeg(index: u64, cfg: &SynthConfig) -> io::Result<(Vec<u8>, String)> {
    let (img, caption) = render(index, cfg);
    Ok((encode_jpeg(&img, cfg.jpeg_quality)?, caption))
}

/// Writes samples `range` as `DIR/<key>.jpg` + `DIR/<key>.txt` (key = index zero-padded to 9
/// digits, like img2dataset), in subfolders of 10,000 (`DIR/00000/`, `DIR/00001/`, …) so no
/// folder gets huge. Parallel over samples with rayon.
///
/// Any range can be written on its own (another machine can write the next one); existing
/// files of the same names are overwritten.
pub fn write_folder(dir: &Path, range: Range<u64>, cfg: &SynthConfig) -> io::Result<()> {
    fs::create_dir_all(dir).map_err(at(dir))?;
    range.into_par_iter().try_for_each(|i| {
        let (jpg, caption) = render_jpeg(i, cfg)?;
        let folder = dir.join(format!("{:05}", i / FOLDER_SAMPLES));
        fs::create_dir_all(&folder).map_err(at(&folder))?;
        let key = sample_key(i);
        for (ext, data) in [("jpg", &jpg[..]), ("txt", caption.as_bytes())] {
            let path = folder.join(format!("{key}.{ext}"));
            fs::write(&path, data).map_err(at(&path))?;
        }
        Ok(())
    })
}

/// Writes `count` samples as webdataset shards of `per_shard` samples in img2dataset's output
/// layout: `DIR/00000.tar`, `DIR/00001.tar`, … each holding, per sample in key order,
/// `<key>.jpg`, `<key>.json` and `<key>.txt` (webdataset's `TarWriter`, which img2dataset uses,
/// writes a sample's members sorted by extension), plus a `DIR/00000_stats.json` per shard.
///
/// The key is the sample index zero-padded to 9 digits; the json holds `key`, `caption`,
/// `width`, `height`, `status` ("success") and `url` (null); the stats hold `count`,
/// `successes`, `failed_to_download` and `failed_to_resize`. Tar members are ustar, mode 0444,
/// owned by `bigdata:bigdata` (webdataset's defaults) with a fixed mtime, so shards are
/// byte-for-byte reproducible. Each shard is written to a temporary `.NAME.tar.<random>.tmp`
/// (deleted on error) and renamed when complete. Shards are written in parallel (rayon), and the samples of a shard are rendered
/// in parallel too; returns the shard paths in order.
pub fn write_shards(
    dir: &Path,
    count: u64,
    per_shard: u64,
    cfg: &SynthConfig,
) -> io::Result<Vec<PathBuf>> {
    if per_shard == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "write_shards: per_shard must be at least 1",
        ));
    }
    fs::create_dir_all(dir).map_err(at(dir))?;
    let shards = count.div_ceil(per_shard);
    (0..shards)
        .into_par_iter()
        .map(|s| {
            let start = s * per_shard;
            write_shard(dir, s, start..count.min(start + per_shard), cfg)
        })
        .collect()
}

fn write_shard(
    dir: &Path,
    shard: u64,
    range: Range<u64>,
    cfg: &SynthConfig,
) -> io::Result<PathBuf> {
    let name = format!("{shard:05}");
    let path = dir.join(format!("{name}.tar"));
    let prefix = format!(".{name}.tar.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // Readable like a file from `File::create` (tempfile defaults to owner-only).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut file = builder.tempfile_in(dir).map_err(at(dir))?;
    let tmp = file.path().to_path_buf();
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, file.as_file_mut()));
    let mut append = |name: String, data: &[u8]| -> io::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o444);
        header.set_mtime(TAR_MTIME);
        header.set_uid(0);
        header.set_gid(0);
        header.set_username("bigdata")?;
        header.set_groupname("bigdata")?;
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, data)
    };
    for start in range.clone().step_by(SHARD_CHUNK as usize) {
        let end = range.end.min(start + SHARD_CHUNK);
        let samples: Vec<(Vec<u8>, String)> = (start..end)
            .into_par_iter()
            .map(|i| render_jpeg(i, cfg))
            .collect::<io::Result<_>>()?;
        for (i, (jpg, caption)) in (start..end).zip(samples) {
            let key = sample_key(i);
            let meta = serde_json::json!({
                "key": key,
                "caption": caption,
                "width": cfg.width,
                "height": cfg.height,
                "status": "success",
                "url": null,
            });
            let meta = serde_json::to_vec_pretty(&meta).map_err(io::Error::other)?;
            append(format!("{key}.jpg"), &jpg).map_err(at(&tmp))?;
            append(format!("{key}.json"), &meta).map_err(at(&tmp))?;
            append(format!("{key}.txt"), caption.as_bytes()).map_err(at(&tmp))?;
        }
    }
    let mut out = tar.into_inner().map_err(at(&tmp))?;
    out.flush().map_err(at(&tmp))?;
    drop(out);
    file.persist(&path).map_err(|e| at(&path)(e.error))?;
    let n = range.end - range.start;
    let stats = serde_json::json!({
        "count": n,
        "successes": n,
        "failed_to_download": 0,
        "failed_to_resize": 0,
    });
    let stats_path = dir.join(format!("{name}_stats.json"));
    let stats = serde_json::to_vec_pretty(&stats).map_err(io::Error::other)?;
    fs::write(&stats_path, stats).map_err(at(&stats_path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> SynthConfig {
        SynthConfig {
            width: 64,
            height: 48,
            seed,
            jpeg_quality: 85,
        }
    }

    #[test]
    fn same_index_same_sample() {
        let cfg = small(3);
        for i in [0, 1, 17, 123_456_789] {
            assert_eq!(render(i, &cfg), render(i, &cfg));
        }
        let (img, _) = render(5, &cfg);
        assert_eq!(img.dimensions(), (64, 48));
        // The per-thread canvas and planes are reused: a render of another size in between
        // changes nothing.
        let other = SynthConfig {
            width: 90,
            height: 70,
            ..cfg.clone()
        };
        let (big, _) = render(5, &other);
        encode_jpeg(&big, 85).unwrap();
        assert_eq!(render(5, &cfg).0, img);
        assert_eq!(
            encode_jpeg(&img, 85).unwrap(),
            encode_jpeg(&img, 85).unwrap()
        );
    }

    #[test]
    fn different_indices_and_seeds_differ() {
        let cfg = small(0);
        let samples: Vec<_> = (0..40).map(|i| render(i, &cfg)).collect();
        for i in 0..samples.len() {
            for j in i + 1..samples.len() {
                assert_ne!(samples[i].0, samples[j].0, "images {i} and {j}");
            }
        }
        let captions: std::collections::HashSet<_> = samples.iter().map(|s| &s.1).collect();
        assert!(
            captions.len() >= 36,
            "{} distinct captions of 40",
            captions.len()
        );
        assert_ne!(render(0, &small(1)).0, samples[0].0);
    }

    #[test]
    fn caption_names_what_is_drawn() {
        let cfg = SynthConfig {
            width: 160,
            height: 120,
            ..small(9)
        };
        let mut seen_shapes = std::collections::HashSet::new();
        let mut seen_grounds = std::collections::HashSet::new();
        let mut seen_times = std::collections::HashSet::new();
        for i in 0..200 {
            let scene = Scene::new(i, &cfg);
            let (img, caption) = render(i, &cfg);
            assert_eq!(caption, scene.caption);
            assert!((1..=3).contains(&scene.objects.len()));
            seen_grounds.insert(format!("{:?}", scene.ground));
            seen_times.insert(format!("{:?}", scene.time));
            for o in &scene.objects {
                seen_shapes.insert(format!("{:?}", o.shape));
                let name = COLOURS[o.colour].0;
                assert!(
                    caption.contains(name),
                    "{i}: {name} missing from {caption:?}"
                );
                let nouns: &[&str] = match o.shape {
                    Shape::Ball => &["ball", "sphere"],
                    Shape::Box => &["box", "cube"],
                    Shape::Tent => &["tent"],
                    Shape::Flag => &["flag"],
                    Shape::Ring => &["ring"],
                };
                assert!(
                    nouns.iter().any(|n| caption.contains(n)),
                    "{i}: {caption:?}"
                );
            }
            let word = match scene.ground {
                Ground::Grass => ["gras", "meadow"],
                Ground::Sand => ["sand", "beach"],
                Ground::Snow => ["snow", "snow"],
                Ground::Water => ["water", "lake"],
                Ground::Road => ["road", "road"],
            };
            assert!(
                word.iter().any(|w| caption.contains(w)) || caption.contains("sea"),
                "{i}: {caption:?}"
            );
            // The frontmost object is painted in its named colour: some pixels of its box lie
            // close to the palette colour under the scene's light.
            let o = scene.objects.last().unwrap();
            let target = (COLOURS[o.colour].1 * scene.light).0;
            let (x0, x1) = (
                (o.cx - o.size * 0.5).max(0.0) as u32,
                (o.cx + o.size * 0.5) as u32,
            );
            let (y0, y1) = ((o.base - o.size).max(0.0) as u32, o.base as u32);
            let mut near = 0;
            for y in y0..y1.min(img.height()) {
                for x in x0..x1.min(img.width()) {
                    let p = img.get_pixel(x, y).0;
                    let d = (0..3)
                        .map(|c| (f32::from(p[c]) - target[c]).abs())
                        .fold(0.0, f32::max);
                    near += usize::from(d < 40.0);
                }
            }
            assert!(near >= 3, "{i}: {caption:?}: {near} pixels near {target:?}");
        }
        assert_eq!(seen_shapes.len(), 5);
        assert_eq!(seen_grounds.len(), 5);
        assert_eq!(seen_times.len(), 4);
    }

    /// Peak signal-to-noise ratio (dB, 8-bit peak) of `b` against `a`.
    fn psnr_of(a: &[f64], b: &[f64]) -> f64 {
        let se: f64 = a.iter().zip(b).map(|(u, v)| (u - v).powi(2)).sum();
        10.0 * (255.0f64 * 255.0 / (se / a.len() as f64).max(1e-9)).log10()
    }

    /// [`psnr_of`] over the channel values of two images.
    fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
        let values =
            |img: &RgbImage| -> Vec<f64> { img.as_raw().iter().map(|&v| f64::from(v)).collect() };
        psnr_of(&values(a), &values(b))
    }

    #[test]
    fn jpeg_decodes_close_to_the_source() {
        for (w, h) in [(64, 48), (61, 37), (1, 1), (17, 16)] {
            let cfg = SynthConfig {
                width: w,
                height: h,
                ..small(2)
            };
            let (img, _) = render(11, &cfg);
            // PSNR of the decoded `jpg` over the RGB values and over luma alone.
            let luma = |img: &RgbImage| -> Vec<f64> {
                let f = |p: &image::Rgb<u8>, c: usize| f64::from(p[c]);
                img.pixels()
                    .map(|p| 0.299 * f(p, 0) + 0.587 * f(p, 1) + 0.114 * f(p, 2))
                    .collect()
            };
            let decoded_psnr = |jpg: &[u8]| {
                let back = image::load_from_memory(jpg).unwrap().to_rgb8();
                assert_eq!(back.dimensions(), (w, h));
                (psnr(&img, &back), psnr_of(&luma(&img), &luma(&back)))
            };
            // The reference: the `image` crate's own encoder at the same quality. It keeps
            // full-resolution colour where ours subsamples it 4:2:0 (as photos are stored),
            // so their colour differs on small sharp-edged scenes; luma, kept whole by both,
            // must match (observed: equal to 0.1 dB). A wrong quantisation table or swapped
            // channels fails both checks.
            let mut reference = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut reference, 90)
                .encode_image(&img)
                .unwrap();
            let ((ours, ours_y), (_, theirs_y)) = (
                decoded_psnr(&encode_jpeg(&img, 90).unwrap()),
                decoded_psnr(&reference),
            );
            assert!(
                ours > 25.0 && ours_y > theirs_y - 0.5,
                "{w}×{h}: PSNR {ours:.1} dB, luma {ours_y:.1} dB vs the image crate's {theirs_y:.1} dB"
            );
        }
        let (img, _) = render(0, &small(0));
        assert!(encode_jpeg(&img, 20).unwrap().len() < encode_jpeg(&img, 95).unwrap().len());
        assert!(encode_jpeg(&RgbImage::new(0, 4), 85).is_err());
    }

    #[test]
    fn jpeg_handles_extremes() {
        let mut rng = SplitMix64::seed_from_u64(1);
        // Grey noise: 4:2:0 keeps luma at full resolution, so at q100 it survives.
        let noise = RgbImage::from_fn(40, 24, |_, _| {
            image::Rgb([rng.random_range(0..256) as u8; 3])
        });
        let flat = |v: u8| RgbImage::from_pixel(33, 17, image::Rgb([v, v, v]));
        for (img, q, min_psnr) in [
            (noise.clone(), 100, 30.0),
            (noise, 1, 0.0),
            (flat(0), 85, 40.0),
            (flat(255), 85, 40.0),
            (flat(128), 1, 30.0),
        ] {
            let back = image::load_from_memory(&encode_jpeg(&img, q).unwrap())
                .unwrap()
                .to_rgb8();
            assert_eq!(back.dimensions(), img.dimensions());
            let psnr = psnr(&img, &back);
            assert!(psnr >= min_psnr, "q{q}: PSNR {psnr:.1} dB");
        }
    }

    #[test]
    fn shards_hold_members_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small(4);
        let paths = write_shards(dir.path(), 7, 3, &cfg).unwrap();
        let names: Vec<_> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["00000.tar", "00001.tar", "00002.tar"]);
        let mut index = 0u64;
        for (s, path) in paths.iter().enumerate() {
            let mut archive = tar::Archive::new(fs::File::open(path).unwrap());
            let mut members = Vec::new();
            for entry in archive.entries().unwrap() {
                let mut entry = entry.unwrap();
                let name = entry.path().unwrap().to_str().unwrap().to_string();
                let mut data = Vec::new();
                io::Read::read_to_end(&mut entry, &mut data).unwrap();
                members.push((name, data));
            }
            let n = if s < 2 { 3 } else { 1 };
            assert_eq!(members.len(), 3 * n);
            for sample in members.chunks(3) {
                let key = format!("{index:09}");
                let names: Vec<_> = sample.iter().map(|m| m.0.as_str()).collect();
                assert_eq!(
                    names,
                    [
                        format!("{key}.jpg"),
                        format!("{key}.json"),
                        format!("{key}.txt")
                    ]
                );
                let img = image::load_from_memory(&sample[0].1).unwrap();
                assert_eq!((img.width(), img.height()), (64, 48));
                let caption = String::from_utf8(sample[2].1.clone()).unwrap();
                assert_eq!(caption, render(index, &cfg).1);
                let meta: serde_json::Value = serde_json::from_slice(&sample[1].1).unwrap();
                assert_eq!(meta["key"], key.as_str());
                assert_eq!(meta["caption"], caption.as_str());
                assert_eq!(meta["width"], 64);
                assert_eq!(meta["height"], 48);
                assert_eq!(meta["status"], "success");
                assert!(meta["url"].is_null());
                index += 1;
            }
            let stats: serde_json::Value = serde_json::from_slice(
                &fs::read(dir.path().join(format!("{s:05}_stats.json"))).unwrap(),
            )
            .unwrap();
            assert_eq!(stats["count"], n);
            assert_eq!(stats["successes"], n);
        }
        assert_eq!(index, 7);
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let want = [
            "00000.tar",
            "00000_stats.json",
            "00001.tar",
            "00001_stats.json",
        ];
        assert_eq!(left[..4], want, "no temporary file left");
        assert_eq!(left[4..], ["00002.tar", "00002_stats.json"]);
        // Reproducible to the byte.
        let again = tempfile::tempdir().unwrap();
        write_shards(again.path(), 7, 3, &cfg).unwrap();
        assert_eq!(
            fs::read(&paths[1]).unwrap(),
            fs::read(again.path().join("00001.tar")).unwrap()
        );
        assert!(write_shards(dir.path(), 1, 0, &cfg).is_err());
    }

    #[test]
    fn folder_holds_pairs_in_subfolders() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small(5);
        write_folder(dir.path(), 9_998..10_002, &cfg).unwrap();
        for i in 9_998..10_002u64 {
            let sub = dir.path().join(format!("{:05}", i / 10_000));
            let jpg = fs::read(sub.join(format!("{i:09}.jpg"))).unwrap();
            let img = image::load_from_memory(&jpg).unwrap();
            assert_eq!((img.width(), img.height()), (64, 48));
            let txt = fs::read_to_string(sub.join(format!("{i:09}.txt"))).unwrap();
            assert_eq!(txt, render(i, &cfg).1);
        }
        let count = |d: &str| fs::read_dir(dir.path().join(d)).unwrap().count();
        assert_eq!((count("00000"), count("00001")), (4, 4));
        write_folder(dir.path(), 5..5, &cfg).unwrap();
    }
}
