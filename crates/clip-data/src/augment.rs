//! Training-time augmentation, fused into one resampling pass straight to model input.

use std::borrow::Cow;

use image::RgbImage;
use rand::Rng;
use rand_xoshiro::SplitMix64;
use serde::{Deserialize, Serialize};
use vision_encoder::Preprocess;

/// Which augmentations run and how strong they are. The defaults are open_clip's
/// comparison setting: random resized crop with scale (0.7, 1) and nothing else; flipping is
/// off because captions say "left" and "right".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AugmentConfig {
    /// Fraction of the image area a crop covers, `[min, max]`.
    pub scale: [f32; 2],
    /// Aspect-ratio range of the crop.
    pub ratio: [f32; 2],
    /// Probability of a horizontal flip.
    pub hflip: f32,
    /// Colour-jitter strength: brightness, contrast and saturation factors in `[1−s, 1+s]`.
    pub color_jitter: f32,
    /// Probability of converting to greyscale.
    pub grayscale: f32,
    /// Probability of a 3×3 Gaussian blur.
    pub blur: f32,
    /// Maximum rotation in degrees (uniform in `[−r, r]`).
    pub rotation: f32,
    /// Probability of training on a random run of a caption's words instead of all of them:
    /// searches are often shorter than captions ("pizza" for "slice of pizza").
    pub caption_span: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            scale: [0.7, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
            hflip: 0.0,
            color_jitter: 0.0,
            grayscale: 0.0,
            blur: 0.0,
            rotation: 0.0,
            caption_span: 0.0,
        }
    }
}

impl AugmentConfig {
    /// Checks ranges and probabilities; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let [lo, hi] = self.scale;
        if !(0.0 < lo && lo <= hi && hi <= 1.0) {
            return Err(format!("scale = [{lo}, {hi}]: need 0 < min ≤ max ≤ 1"));
        }
        let [rlo, rhi] = self.ratio;
        if !(0.0 < rlo && rlo <= rhi) {
            return Err(format!("ratio = [{rlo}, {rhi}]: need 0 < min ≤ max"));
        }
        for (name, p) in [
            ("hflip", self.hflip),
            ("grayscale", self.grayscale),
            ("blur", self.blur),
            ("caption_span", self.caption_span),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} = {p}: a probability must lie in [0, 1]"));
            }
        }
        if !(0.0..1.0).contains(&self.color_jitter) {
            return Err(format!(
                "color_jitter = {}: must lie in [0, 1)",
                self.color_jitter
            ));
        }
        if !(0.0..=180.0).contains(&self.rotation) {
            return Err(format!(
                "rotation = {}: must lie in [0, 180] degrees",
                self.rotation
            ));
        }
        Ok(())
    }
}

/// Applies an [`AugmentConfig`] and CLIP normalisation, producing CHW floats.
#[derive(Debug, Clone)]
pub struct Augmenter {
    cfg: AugmentConfig,
    pre: Preprocess,
}

impl Augmenter {
    /// An augmenter producing `pre.image_size` squares normalised with `pre`'s mean/std.
    pub fn new(cfg: AugmentConfig, pre: Preprocess) -> Self {
        Self { cfg, pre }
    }

    /// Evaluation transform: resize + center crop (see [`vision_encoder::preprocess`]).
    pub fn eval(&self, img: &RgbImage) -> Vec<f32> {
        vision_encoder::preprocess(img, &self.pre)
    }

    /// A random crop box `(x, y, w, h)` as torchvision's `RandomResizedCrop` draws it.
    fn crop_box(&self, w: f32, h: f32, rng: &mut SplitMix64) -> (f32, f32, f32, f32) {
        let area = w * h;
        let (lr0, lr1) = (self.cfg.ratio[0].ln(), self.cfg.ratio[1].ln());
        for _ in 0..10 {
            let target = area * uniform(rng, self.cfg.scale[0], self.cfg.scale[1]);
            let ratio = uniform(rng, lr0, lr1).exp();
            let cw = (target * ratio).sqrt();
            let ch = (target / ratio).sqrt();
            if cw <= w && ch <= h {
                let x = uniform(rng, 0.0, w - cw);
                let y = uniform(rng, 0.0, h - ch);
                return (x, y, cw, ch);
            }
        }
        let s = w.min(h);
        ((w - s) / 2.0, (h - s) / 2.0, s, s)
    }

    /// The caption to train on: with probability `caption_span` (and more than one word) a
    /// random run of consecutive words, else the caption as it is. Draws nothing when the
    /// probability is 0, so runs without it repeat earlier ones to the bit.
    pub fn caption<'a>(&self, caption: &'a str, rng: &mut SplitMix64) -> Cow<'a, str> {
        if self.cfg.caption_span <= 0.0 || rng.random::<f64>() >= self.cfg.caption_span as f64 {
            return Cow::Borrowed(caption);
        }
        let words: Vec<&str> = caption.split_whitespace().collect();
        if words.len() < 2 {
            return Cow::Borrowed(caption);
        }
        let len = rng.random_range(1..=words.len());
        let start = rng.random_range(0..=words.len() - len);
        Cow::Owned(words[start..start + len].join(" "))
    }

    /// One augmented view, normalised, `3·s·s` floats in CHW order.
    pub fn train(&self, img: &RgbImage, rng: &mut SplitMix64) -> Vec<f32> {
        let s = self.pre.image_size;
        let (w, h) = img.dimensions();
        let (cx, cy, cw, ch) = self.crop_box(w as f32, h as f32, rng);
        let flip = rng.random::<f64>() < self.cfg.hflip as f64;
        let angle = uniform(rng, -self.cfg.rotation, self.cfg.rotation).to_radians();
        let (sin, cos) = angle.sin_cos();
        let (mx, my) = (cx + cw / 2.0, cy + ch / 2.0);
        let mut rgb = vec![0f32; 3 * s * s];
        if angle == 0.0 {
            resample_axis_aligned(img, &mut rgb, s, flip, (mx, my), (cw, ch));
        } else {
            resample_rotated(img, &mut rgb, s, flip, (mx, my), (cw, ch), (sin, cos));
        }
        if self.cfg.color_jitter > 0.0 {
            let j = self.cfg.color_jitter;
            jitter(
                &mut rgb,
                s * s,
                uniform(rng, 1.0 - j, 1.0 + j),
                uniform(rng, 1.0 - j, 1.0 + j),
                uniform(rng, 1.0 - j, 1.0 + j),
            );
        }
        if rng.random::<f64>() < self.cfg.grayscale as f64 {
            saturate(&mut rgb, s * s, 0.0);
        }
        if rng.random::<f64>() < self.cfg.blur as f64 {
            for c in 0..3 {
                blur3(&mut rgb[c * s * s..(c + 1) * s * s], s);
            }
        }
        for c in 0..3 {
            for x in &mut rgb[c * s * s..(c + 1) * s * s] {
                *x = (x.clamp(0.0, 1.0) - self.pre.mean[c]) / self.pre.std[c];
            }
        }
        rgb
    }
}

/// Offset of output pixel `i` (of `s`) from the crop centre, in source pixels.
fn offset(i: usize, s: usize, extent: f32) -> f32 {
    ((i as f32 + 0.5) / s as f32 - 0.5) * extent
}

/// Fills `rgb` (CHW, `[0, 1]`, `s×s`) with bilinear samples of `img`; `taps(u, v)` says
/// where output pixel (u, v) reads along x and y.
fn resample(img: &RgbImage, rgb: &mut [f32], s: usize, taps: impl Fn(usize, usize) -> (Tap, Tap)) {
    let (raw, stride) = (img.as_raw().as_slice(), 3 * img.width() as usize);
    for v in 0..s {
        for u in 0..s {
            let (tx, ty) = taps(u, v);
            let px = bilinear(raw, stride, &tx, &ty);
            for c in 0..3 {
                rgb[c * s * s + v * s + u] = px[c] / 255.0;
            }
        }
    }
}

/// Resamples the crop centred at `m` of size `size`, rotated by the angle of `(sin, cos)`
/// about its centre, into `rgb` (CHW, `[0, 1]`).
fn resample_rotated(
    img: &RgbImage,
    rgb: &mut [f32],
    s: usize,
    flip: bool,
    (mx, my): (f32, f32),
    (cw, ch): (f32, f32),
    (sin, cos): (f32, f32),
) {
    let (w, h) = img.dimensions();
    resample(img, rgb, s, |u, v| {
        let uu = if flip { s - 1 - u } else { u };
        let (dx, dy) = (offset(uu, s, cw), offset(v, s, ch));
        let sx = mx + cos * dx - sin * dy - 0.5;
        let sy = my + sin * dx + cos * dy - 0.5;
        (Tap::new(sx, w), Tap::new(sy, h))
    });
}

/// Where one output coordinate samples the source along one axis: the two neighbouring
/// source indices (clamped), whether each is usable (inside, or just outside the edge),
/// and the interpolation weight.
#[derive(Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    ok0: bool,
    ok1: bool,
    f: f32,
}

impl Tap {
    fn new(pos: f32, len: u32) -> Self {
        let p0 = pos.floor();
        let i = p0 as i64;
        let clamp = |k: i64| k.clamp(0, len as i64 - 1);
        let (c0, c1) = (clamp(i), clamp(i + 1));
        Self {
            i0: c0 as usize,
            i1: c1 as usize,
            ok0: (i - c0).abs() <= 1,
            ok1: (i + 1 - c1).abs() <= 1,
            f: pos - p0,
        }
    }
}

/// [`resample_rotated`] without rotation: the source position of a pixel is separable, so
/// the taps of each column and row are computed once. Same arithmetic, same bits.
fn resample_axis_aligned(
    img: &RgbImage,
    rgb: &mut [f32],
    s: usize,
    flip: bool,
    (mx, my): (f32, f32),
    (cw, ch): (f32, f32),
) {
    let (w, h) = img.dimensions();
    let taps = |n: usize, flip: bool, m: f32, extent: f32, len: u32| -> Vec<Tap> {
        let at = |i: usize| if flip { n - 1 - i } else { i };
        (0..n)
            .map(|i| Tap::new(m + offset(at(i), n, extent) - 0.5, len))
            .collect()
    };
    let (cols, rows) = (taps(s, flip, mx, cw, w), taps(s, false, my, ch, h));
    resample(img, rgb, s, |u, v| (cols[u], rows[v]));
}

fn uniform(rng: &mut SplitMix64, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f64>() as f32
}

/// Bilinear sample between taps `x` and `y`; outside the image is white, like the emoji and
/// product-shot backgrounds CLIP data usually has (edge pixels clamp when just outside).
/// `raw` is the RGB image row by row, `stride` bytes a row.
fn bilinear(raw: &[u8], stride: usize, x: &Tap, y: &Tap) -> [f32; 3] {
    let get = |xi: usize, okx: bool, yi: usize, oky: bool| -> [f32; 3] {
        if okx && oky {
            let p = &raw[yi * stride + 3 * xi..][..3];
            [f32::from(p[0]), f32::from(p[1]), f32::from(p[2])]
        } else {
            [255.0; 3]
        }
    };
    let (a, b) = (get(x.i0, x.ok0, y.i0, y.ok0), get(x.i1, x.ok1, y.i0, y.ok0));
    let (c, d) = (get(x.i0, x.ok0, y.i1, y.ok1), get(x.i1, x.ok1, y.i1, y.ok1));
    std::array::from_fn(|k| {
        let top = a[k] + (b[k] - a[k]) * x.f;
        let bot = c[k] + (d[k] - c[k]) * x.f;
        top + (bot - top) * y.f
    })
}

fn saturate(rgb: &mut [f32], n: usize, factor: f32) {
    for i in 0..n {
        let g = 0.299 * rgb[i] + 0.587 * rgb[n + i] + 0.114 * rgb[2 * n + i];
        for c in 0..3 {
            rgb[c * n + i] = g + (rgb[c * n + i] - g) * factor;
        }
    }
}

fn jitter(rgb: &mut [f32], n: usize, brightness: f32, contrast: f32, saturation: f32) {
    rgb.iter_mut().for_each(|x| *x *= brightness);
    let mean = (0..n)
        .map(|i| 0.299 * rgb[i] + 0.587 * rgb[n + i] + 0.114 * rgb[2 * n + i])
        .sum::<f32>()
        / n as f32;
    rgb.iter_mut()
        .for_each(|x| *x = mean + (*x - mean) * contrast);
    saturate(rgb, n, saturation);
}

/// Separable [1, 2, 1]/4 blur with clamped borders: a pass along x, then one along y.
fn blur3(ch: &mut [f32], s: usize) {
    let last = s as isize - 1;
    for (dx, dy) in [(1, 0), (0, 1)] {
        let src = ch.to_vec();
        let at =
            |x: isize, y: isize| src[y.clamp(0, last) as usize * s + x.clamp(0, last) as usize];
        for y in 0..s as isize {
            for x in 0..s as isize {
                ch[y as usize * s + x as usize] =
                    (at(x - dx, y - dy) + 2.0 * at(x, y) + at(x + dx, y + dy)) / 4.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn pre(size: usize) -> Preprocess {
        Preprocess {
            image_size: size,
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }

    #[test]
    fn full_crop_without_extras_reproduces_the_image() {
        let img = RgbImage::from_fn(8, 8, |x, y| image::Rgb([(x * 30) as u8, (y * 30) as u8, 7]));
        let cfg = AugmentConfig {
            scale: [1.0, 1.0],
            ratio: [1.0, 1.0],
            ..Default::default()
        };
        let out = Augmenter::new(cfg, pre(8)).train(&img, &mut SplitMix64::seed_from_u64(1));
        for y in 0..8 {
            for x in 0..8 {
                assert!((out[y * 8 + x] - (x * 30) as f32 / 255.0).abs() < 1e-5);
                assert!((out[64 + y * 8 + x] - (y * 30) as f32 / 255.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn flip_mirrors_and_grayscale_equalises_channels() {
        let img = RgbImage::from_fn(8, 8, |x, _| image::Rgb([(x * 30) as u8, 0, 200]));
        let base = AugmentConfig {
            scale: [1.0, 1.0],
            ratio: [1.0, 1.0],
            ..Default::default()
        };
        let flipped = Augmenter::new(
            AugmentConfig {
                hflip: 1.0,
                ..base.clone()
            },
            pre(8),
        )
        .train(&img, &mut SplitMix64::seed_from_u64(1));
        assert!((flipped[0] - 210.0 / 255.0).abs() < 1e-5 && flipped[7].abs() < 1e-5);
        let grey = Augmenter::new(
            AugmentConfig {
                grayscale: 1.0,
                ..base
            },
            pre(8),
        )
        .train(&img, &mut SplitMix64::seed_from_u64(1));
        for i in 0..64 {
            assert!(
                (grey[i] - grey[64 + i]).abs() < 1e-6 && (grey[i] - grey[128 + i]).abs() < 1e-6
            );
        }
    }

    #[test]
    fn axis_aligned_resampling_equals_the_general_one_bit_for_bit() {
        let img = RgbImage::from_fn(37, 23, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x * y) % 251) as u8])
        });
        let s = 16;
        let mut rng = SplitMix64::seed_from_u64(3);
        for case in 0..50 {
            let flip = case % 2 == 0;
            // Crops inside, across the edges, and wholly outside (white).
            let m = (
                rng.random::<f64>() as f32 * 60.0 - 10.0,
                rng.random::<f64>() as f32 * 40.0 - 8.0,
            );
            let size = (
                1.0 + rng.random::<f64>() as f32 * 50.0,
                1.0 + rng.random::<f64>() as f32 * 30.0,
            );
            let mut fast = vec![0f32; 3 * s * s];
            let mut general = vec![0f32; 3 * s * s];
            resample_axis_aligned(&img, &mut fast, s, flip, m, size);
            resample_rotated(&img, &mut general, s, flip, m, size, 0f32.sin_cos());
            assert!(fast.iter().all(|x| x.is_finite()));
            assert_eq!(fast, general, "case {case}: {m:?} {size:?}");
        }
    }

    #[test]
    fn crops_respect_the_scale_range_and_same_seed_repeats() {
        let aug = Augmenter::new(AugmentConfig::default(), pre(16));
        let mut rng = SplitMix64::seed_from_u64(5);
        for _ in 0..200 {
            let (_, _, w, h) = aug.crop_box(64.0, 48.0, &mut rng);
            let frac = w * h / (64.0 * 48.0);
            assert!((0.69..=1.001).contains(&frac), "{frac}");
        }
        let img = RgbImage::from_fn(20, 20, |x, y| image::Rgb([(x * 9) as u8, (y * 9) as u8, 0]));
        let a = aug.train(&img, &mut SplitMix64::seed_from_u64(9));
        let b = aug.train(&img, &mut SplitMix64::seed_from_u64(9));
        assert_eq!(a, b);
        assert!(AugmentConfig {
            scale: [0.0, 1.0],
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .contains("scale"));
    }

    #[test]
    fn caption_runs_are_consecutive_words_and_off_draws_nothing() {
        let with = |p| {
            let cfg = AugmentConfig {
                caption_span: p,
                ..Default::default()
            };
            Augmenter::new(cfg, pre(8))
        };
        // Off: the caption itself, and the random stream untouched (runs repeat to the bit).
        let mut rng = SplitMix64::seed_from_u64(3);
        assert!(matches!(
            with(0.0).caption("slice of pizza", &mut rng),
            Cow::Borrowed("slice of pizza")
        ));
        assert_eq!(
            rng.random::<u64>(),
            SplitMix64::seed_from_u64(3).random::<u64>()
        );
        // Always on: a run of consecutive words every time, each run among the draws.
        let caption = "smiling face with sunglasses";
        let words: Vec<&str> = caption.split(' ').collect();
        let aug = with(1.0);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let run = aug.caption(caption, &mut rng).into_owned();
            let n = run.split(' ').count();
            assert!(
                words.windows(n).any(|w| w.join(" ") == run),
                "{run:?} is not a run of {caption:?}"
            );
            seen.insert(run);
        }
        assert_eq!(seen.len(), 4 + 3 + 2 + 1, "{seen:?}");
        // One word has no shorter run.
        assert_eq!(aug.caption("rocket", &mut rng), "rocket");
        let bad = AugmentConfig {
            caption_span: 1.5,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("caption_span"));
    }
}
