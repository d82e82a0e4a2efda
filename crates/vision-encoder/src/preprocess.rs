//! CLIP's evaluation preprocessing: decode, composite alpha on white, resize the shortest
//! side (bicubic), center crop, scale to [0, 1] and normalise per channel.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Result, VisionError};

/// OpenAI CLIP's per-channel mean.
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's per-channel standard deviation.
#[allow(clippy::excessive_precision)] // OpenAI's published values, kept verbatim
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// How images become model input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Preprocess {
    /// Side length of the square model input.
    pub image_size: usize,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by.
    pub std: [f32; 3],
}

impl Default for Preprocess {
    fn default() -> Self {
        Self {
            image_size: 224,
            mean: OPENAI_MEAN,
            std: OPENAI_STD,
        }
    }
}

/// Decodes PNG/JPEG/WebP bytes into RGB, compositing any alpha channel onto white.
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    decode_image_limited(bytes, path, image::Limits::default())
}

/// [`decode_image`] under the decoder `limits` (size and allocation), for untrusted bytes
/// such as `clip serve`'s uploads.
pub fn decode_image_limited(bytes: &[u8], path: &Path, limits: image::Limits) -> Result<RgbImage> {
    let decode = || {
        let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(image::ImageError::IoError)?;
        reader.limits(limits);
        reader.decode()
    };
    let img = decode().map_err(|source| VisionError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(flatten_on_white(img))
}

/// Reads and decodes one image file (see [`decode_image`]).
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|source| VisionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_image(&bytes, path)
}

fn flatten_on_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (src, dst) in rgba.pixels().zip(out.pixels_mut()) {
        let a = src[3] as u32;
        for c in 0..3 {
            dst[c] = ((src[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

/// Resizes the shortest side to `size` (Pillow's bicubic, as transformers' `CLIPImageProcessor`),
/// then crops the centre `size × size`.
fn resize_and_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (size, ((size as u64 * h as u64) / w as u64) as u32)
    } else {
        (((size as u64 * w as u64) / h as u64) as u32, size)
    };
    let resized;
    let src = if (nw, nh) == (w, h) {
        img
    } else {
        resized = crate::resize::resize_bicubic(img, nw, nh);
        &resized
    };
    let top = (nh.saturating_sub(size)) / 2;
    let left = (nw.saturating_sub(size)) / 2;
    image::imageops::crop_imm(src, left, top, size.min(nw), size.min(nh)).to_image()
}

/// One image → normalised CHW floats of length `3·s·s`.
pub fn preprocess(img: &RgbImage, cfg: &Preprocess) -> Vec<f32> {
    let s = cfg.image_size;
    let img = resize_and_crop(img, s as u32);
    let mut out = vec![0f32; 3 * s * s];
    for (i, px) in img.pixels().enumerate().take(s * s) {
        for c in 0..3 {
            out[c * s * s + i] = (px[c] as f32 / 255.0 - cfg.mean[c]) / cfg.std[c];
        }
    }
    out
}

/// Stacks preprocessed images into a `[n, 3, s, s]` tensor.
pub fn pixels_to_tensor(images: Vec<Vec<f32>>, size: usize, device: &Device) -> Result<Tensor> {
    let n = images.len();
    let flat: Vec<f32> = images.into_iter().flatten().collect();
    Ok(Tensor::from_vec(flat, (n, 3, size, size), device)?)
}

/// Loads and preprocesses files in parallel; the first unreadable file is an error naming it.
pub fn preprocess_files(paths: &[PathBuf], cfg: &Preprocess, device: &Device) -> Result<Tensor> {
    let images = paths
        .par_iter()
        .map(|p| Ok(preprocess(&load_image(p)?, cfg)))
        .collect::<Result<Vec<_>>>()?;
    pixels_to_tensor(images, cfg.image_size, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_side_resize_then_center_crop() {
        // 20×10 image whose left half is black and right half white; shortest side 10 → 5.
        let img = RgbImage::from_fn(20, 10, |x, _| {
            if x < 10 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let out = resize_and_crop(&img, 5);
        assert_eq!(out.dimensions(), (5, 5));
        assert!(out.get_pixel(0, 2)[0] < 20);
        assert!(out.get_pixel(4, 2)[0] > 235);
    }

    #[test]
    fn transparent_pixels_become_white() {
        let mut rgba = image::RgbaImage::new(2, 1);
        rgba.put_pixel(0, 0, image::Rgba([10, 20, 30, 0]));
        rgba.put_pixel(1, 0, image::Rgba([10, 20, 30, 255]));
        let rgb = flatten_on_white(DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [10, 20, 30]);
    }

    #[test]
    fn corrupt_bytes_name_the_file() {
        let err = decode_image(b"not an image", Path::new("bad.png")).unwrap_err();
        assert!(err.to_string().contains("bad.png"), "{err}");
    }
}
