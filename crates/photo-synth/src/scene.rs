//! The scene of a sample: what is drawn where, in which light, drawn from its seed.

use rand::{Rng, RngCore, SeedableRng};
use rand_xoshiro::SplitMix64;

use crate::raster::Rgb;
use crate::SynthConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Time {
    Dawn,
    Noon,
    Dusk,
    Night,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ground {
    Grass,
    Sand,
    Snow,
    Water,
    Road,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Ball,
    Box,
    Tent,
    Flag,
    Ring,
}

/// Named colours objects are painted in (sRGB, 0–255).
pub(crate) const COLOURS: [(&str, Rgb); 11] = [
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
pub(crate) struct Object {
    pub(crate) shape: Shape,
    /// Index into [`COLOURS`].
    pub(crate) colour: usize,
    /// Horizontal centre, pixels.
    pub(crate) cx: f32,
    /// Where the object touches the ground, pixels from the top.
    pub(crate) base: f32,
    /// Overall size, pixels.
    pub(crate) size: f32,
    /// +1 or −1: which way the box's side, the flag's cloth and the tent's door lean.
    pub(crate) dir: f32,
}

#[derive(Debug, Clone)]
pub(crate) struct Scene {
    pub(crate) w: f32,
    pub(crate) h: f32,
    pub(crate) time: Time,
    pub(crate) ground: Ground,
    pub(crate) horizon: f32,
    pub(crate) sky_top: Rgb,
    pub(crate) sky_low: Rgb,
    /// Tint multiplying the ground and objects.
    pub(crate) light: Rgb,
    /// Sun (or moon at night): centre and radius in pixels, and colour.
    pub(crate) sun: [f32; 3],
    pub(crate) sun_rgb: Rgb,
    pub(crate) clouds: f32,
    /// Height of distant hills on the horizon, pixels (0: none).
    pub(crate) hills: f32,
    pub(crate) offsets: [f32; 6],
    /// Road: vanishing-point x and centre x at the bottom edge.
    pub(crate) road: [f32; 2],
    /// Drawn far to near.
    pub(crate) objects: Vec<Object>,
    pub(crate) noise: f32,
    pub(crate) vignette: f32,
    pub(crate) grain_seed: u32,
    pub(crate) caption: String,
}

pub(crate) fn uni(rng: &mut SplitMix64, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f64>() as f32
}

pub(crate) fn pick<T: Copy>(rng: &mut SplitMix64, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

pub(crate) fn jitter(rng: &mut SplitMix64, c: [f32; 3], amount: f32) -> Rgb {
    let common = uni(rng, -amount, amount);
    Rgb(c.map(|v| (v + common + uni(rng, -amount, amount) * 0.5).clamp(0.0, 255.0)))
}

impl Scene {
    pub(crate) fn new(index: u64, cfg: &SynthConfig) -> Self {
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
        let [top, low, light, sun_rgb] = palette(time);
        let sky_top = jitter(&mut rng, top, 12.0);
        let sky_low = jitter(&mut rng, low, 12.0);
        let sun_x = w * uni(&mut rng, 0.1, 0.9);
        let (sun_y, sun_r) = sun_height(&mut rng, time, horizon, h);
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
    pub(crate) fn road_at(&self, t: f32) -> (f32, f32) {
        let [vx, bx] = self.road;
        (vx + (bx - vx) * t, self.w * (0.01 + 0.42 * t))
    }

    /// Objects left to right (the order the caption names them in).
    pub(crate) fn place_objects(&self, rng: &mut SplitMix64) -> Vec<Object> {
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

    /// Sky colour at row `y` (also used for reflections in water).
    pub(crate) fn sky_at(&self, y: f32) -> Rgb {
        let t = (y / self.horizon).clamp(0.0, 1.0);
        let t = t * t * (3.0 - 2.0 * t) * 0.6 + t * 0.4;
        self.sky_top.lerp(self.sky_low, t)
    }
}

/// Top and horizon colours of the sky, the light's tint and the sun's (or moon's) colour at
/// `time`, before each scene's jitter.
fn palette(time: Time) -> [[f32; 3]; 4] {
    match time {
        Time::Dawn => [
            [70.0, 95.0, 160.0],
            [250.0, 180.0, 130.0],
            [0.95, 0.85, 0.78],
            [255.0, 215.0, 160.0],
        ],
        Time::Noon => [
            [35.0, 105.0, 205.0],
            [165.0, 205.0, 240.0],
            [1.0, 1.0, 1.0],
            [255.0, 252.0, 235.0],
        ],
        Time::Dusk => [
            [45.0, 40.0, 105.0],
            [250.0, 125.0, 60.0],
            [0.9, 0.72, 0.6],
            [255.0, 180.0, 110.0],
        ],
        Time::Night => [
            [4.0, 7.0, 22.0],
            [22.0, 32.0, 66.0],
            [0.42, 0.46, 0.62],
            [235.0, 235.0, 220.0],
        ],
    }
}

/// Height of the sun's (or moon's) centre and its radius, pixels: low near the horizon at dawn
/// and dusk, high at noon.
fn sun_height(rng: &mut SplitMix64, time: Time, horizon: f32, h: f32) -> (f32, f32) {
    match time {
        Time::Dawn | Time::Dusk => (
            horizon - h * uni(rng, 0.03, 0.16),
            h * uni(rng, 0.035, 0.05),
        ),
        Time::Noon => (horizon * uni(rng, 0.12, 0.5), h * 0.035),
        Time::Night => (horizon * uni(rng, 0.15, 0.6), h * uni(rng, 0.025, 0.04)),
    }
}
