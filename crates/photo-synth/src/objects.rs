//! The objects of a scene and their shadows: balls, boxes, tents, flags and rings, shaded by
//! the scene's light and anti-aliased at their edges.

use crate::raster::{coverage, Canvas, Rgb};
use crate::scene::{Ground, Object, Scene, Shape, Time, COLOURS};

/// The soft shadow `o` casts on the ground, away from the sun.
pub(crate) fn paint_shadow(s: &Scene, o: &Object, canvas: &mut Canvas) {
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

/// Paints `o` in its colour under the scene's light.
pub(crate) fn paint(s: &Scene, o: &Object, canvas: &mut Canvas) {
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
