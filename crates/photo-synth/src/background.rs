//! The background of a scene, row by row: sky, sun or moon, clouds, hills, stars, and the
//! textured ground (with a road's markings or the sun's glitter on water).

use rand::{Rng, SeedableRng};
use rand_xoshiro::SplitMix64;

use crate::raster::{
    coarse_row, coverage, floor_i, grain_offset, smoothstep, tables, vnoise, Canvas, Rgb, Tables,
    GRAIN_LEN, NT,
};
use crate::scene::{Ground, Scene, Time};

/// Paints the sky, hills, stars and ground of `s` over the whole canvas.
pub(crate) fn paint(s: &Scene, canvas: &mut Canvas) {
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

/// Where a row of ground lies, and what follows from it.
struct GroundRow {
    /// The row's centre, pixels from the top.
    yc: f32,
    /// 0 at the horizon, 1 at the bottom edge.
    depth: f32,
    /// Distance into the scene (1 at the bottom edge, large at the horizon).
    z: f32,
    /// Texture amplitude: textures fade toward the horizon.
    amp: f32,
    /// Haze toward the horizon: colour × `1 − haze` + sky × `haze`.
    haze: f32,
    /// The light's tint after the haze.
    lk: Rgb,
}

impl GroundRow {
    fn at(s: &Scene, y: usize) -> Self {
        let yc = y as f32 + 0.5;
        let depth = ((yc - s.horizon) / (s.h - s.horizon)).clamp(1e-3, 1.0);
        let haze = 0.85 * (-depth * 9.0).exp();
        Self {
            yc,
            depth,
            z: 1.0 / (depth + 0.03),
            amp: depth.sqrt(),
            haze,
            lk: s.light * (1.0 - haze),
        }
    }
}

/// One row of ground. Every ground is `(base + slope·n)·(m0 + mn·n + mb·blade + mg·grain)`
/// plus haze toward the horizon, where `n` is the ground's own smooth noise along the row.
fn paint_ground_row(s: &Scene, row: &mut [Rgb], y: usize, t: &Tables, buf: &mut [f32]) {
    let g = GroundRow::at(s, y);
    let hz = s.sky_low * g.haze;
    let o = s.offsets;
    let grain = &t.grain;
    let goff = grain_offset(y, 0, s.grain_seed);
    let g_at = |x: usize| grain[(goff + x) & (GRAIN_LEN - 1)];
    let (base, slope, [m0, mn, mb, mg]) = ground_material(s, &g, t, buf);
    let brow = ((y + o[3] as usize) & 255) * NT;
    let bx = o[2] as usize;
    for (x, (p, &n)) in row.iter_mut().zip(buf.iter()).enumerate() {
        let bl = t.blades[(brow + ((x + bx) & 255)) & 0xFFFF];
        *p = (base + slope * n) * (m0 + mn * n + mb * bl + mg * g_at(x)) + hz;
    }
    match s.ground {
        Ground::Road => paint_road(s, row, g.depth, g.z, buf, &g_at, (g.lk, hz)),
        Ground::Water => {
            // The sun's glitter on the waves below it.
            let glitter_w = s.sun[2] * (1.0 + 6.0 * g.depth);
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

/// The ground's `(base, slope, [m0, mn, mb, mg])` on row `g` (see [`paint_ground_row`]), with
/// its noise `n` along the row written to `buf`.
fn ground_material(s: &Scene, g: &GroundRow, t: &Tables, buf: &mut [f32]) -> (Rgb, Rgb, [f32; 4]) {
    let (z, amp, lk) = (g.z, g.amp, g.lk);
    let o = s.offsets;
    let zx = z * 2.0 / s.h;
    let half_w = s.w * 0.5;
    let step = if g.depth < 0.25 { 4 } else { 8 };
    let lattice = &t.lattice;
    let zero = Rgb::default();
    match s.ground {
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
                Time::Dawn | Time::Dusk => {
                    s.light.lerp(Rgb([0.8, 0.85, 1.0]), 0.5) * (1.0 - g.haze)
                }
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
            let reflect = s.sky_at(s.horizon - (g.yc - s.horizon) * 1.5);
            let fresnel = 0.3 + 0.6 * (1.0 - g.depth) * (1.0 - g.depth);
            let deep = Rgb([20.0, 55.0, 85.0]) * s.light;
            let m = [0.8, 0.4 * (0.4 + amp), 0.0, 0.04 * amp];
            (deep.lerp(reflect, fresnel) * (1.0 - g.haze), zero, m)
        }
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
