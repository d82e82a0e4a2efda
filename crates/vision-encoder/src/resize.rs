//! Bicubic resampling that reproduces Pillow's `Image.resize(..., BICUBIC)` on 8-bit RGB.
//!
//! transformers' `CLIPImageProcessor` and open_clip both resize with Pillow. Pillow filters
//! horizontally first, rounds to 8 bits, then filters vertically, with fixed-point weights
//! (22 fractional bits) and a filter support widened by the scale when downsampling
//! (antialiasing). The `image` crate's Catmull-Rom runs the passes in the other order in
//! floating point, which differs by up to ~9 levels at hard edges; this matches exactly.

use image::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bicubic kernel with a = −0.5.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output index: first input index and fixed-point weights.
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // `as i64` truncates toward zero like Pillow's C cast.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|k| {
                    let k = if total != 0.0 { k / total } else { *k };
                    let r = if k < 0.0 { -0.5 } else { 0.5 };
                    (k * (1u64 << PRECISION_BITS) as f64 + r) as i64
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `img` to `w × h` exactly as Pillow's bicubic filter does.
pub fn resize_bicubic(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    let mut cur = img.clone();
    if w != iw {
        let coeffs = coefficients(iw as usize, w as usize);
        let mut out = RgbImage::new(w, ih);
        for y in 0..ih {
            for (x, (xmin, ks)) in coeffs.iter().enumerate() {
                let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
                for (j, k) in ks.iter().enumerate() {
                    let p = cur.get_pixel((xmin + j) as u32, y);
                    for c in 0..3 {
                        acc[c] += p[c] as i64 * k;
                    }
                }
                out.put_pixel(x as u32, y, image::Rgb(acc.map(clip8)));
            }
        }
        cur = out;
    }
    if h != ih {
        let coeffs = coefficients(ih as usize, h as usize);
        let mut out = RgbImage::new(w, h);
        for (y, (ymin, ks)) in coeffs.iter().enumerate() {
            for x in 0..w {
                let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
                for (j, k) in ks.iter().enumerate() {
                    let p = cur.get_pixel(x, (ymin + j) as u32);
                    for c in 0..3 {
                        acc[c] += p[c] as i64 * k;
                    }
                }
                out.put_pixel(x, y as u32, image::Rgb(acc.map(clip8)));
            }
        }
        cur = out;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_constant_images_stay_constant() {
        for (i, o) in [(17, 40), (100, 40), (48, 48), (5, 3)] {
            for (_, ks) in coefficients(i, o) {
                let s: i64 = ks.iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= ks.len() as i64,
                    "{i}->{o}"
                );
            }
        }
        let img = RgbImage::from_pixel(23, 17, image::Rgb([200, 10, 99]));
        let out = resize_bicubic(&img, 54, 40);
        assert!(out.pixels().all(|p| p.0 == [200, 10, 99]));
    }
}
