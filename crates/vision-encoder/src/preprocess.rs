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
    if bytes.starts_with(PNG_SIGNATURE) {
        return decode_png_8bit(bytes, &limits)
            .map(flatten_on_white)
            .map_err(|source| VisionError::Decode {
                path: path.to_path_buf(),
                source,
            });
    }
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

/// The eight bytes every PNG file starts with.
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// A PNG decoded straight to 8 bits per channel: palettes expanded, 16-bit samples cut to
/// their high byte (as Pillow reads them), so a 16-bit upload never exists in memory at full
/// depth. The decoder's allocations and the frame buffer are held to `limits`.
fn decode_png_8bit(
    bytes: &[u8],
    limits: &image::Limits,
) -> std::result::Result<DynamicImage, image::ImageError> {
    use image::error::{DecodingError, ImageFormatHint, LimitError, LimitErrorKind};
    let hint = || ImageFormatHint::Exact(image::ImageFormat::Png);
    let decoding =
        |e: png::DecodingError| image::ImageError::Decoding(DecodingError::new(hint(), e));
    let too_big =
        || image::ImageError::Limits(LimitError::from_kind(LimitErrorKind::InsufficientMemory));
    let max_alloc = usize::try_from(limits.max_alloc.unwrap_or(u64::MAX)).unwrap_or(usize::MAX);
    let mut decoder = png::Decoder::new_with_limits(
        std::io::Cursor::new(bytes),
        png::Limits { bytes: max_alloc },
    );
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(decoding)?;
    let (w, h) = reader.info().size();
    if limits.max_image_width.is_some_and(|m| w > m)
        || limits.max_image_height.is_some_and(|m| h > m)
    {
        return Err(image::ImageError::Limits(LimitError::from_kind(
            LimitErrorKind::DimensionError,
        )));
    }
    let size = reader.output_buffer_size().ok_or_else(too_big)?;
    if size > max_alloc {
        return Err(too_big());
    }
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(decoding)?;
    buf.truncate(frame.buffer_size());
    let bad_size = || {
        image::ImageError::Decoding(DecodingError::new(hint(), "frame buffer of the wrong size"))
    };
    Ok(match frame.color_type {
        png::ColorType::Grayscale => {
            DynamicImage::ImageLuma8(image::ImageBuffer::from_raw(w, h, buf).ok_or_else(bad_size)?)
        }
        png::ColorType::GrayscaleAlpha => {
            DynamicImage::ImageLumaA8(image::ImageBuffer::from_raw(w, h, buf).ok_or_else(bad_size)?)
        }
        png::ColorType::Rgb => {
            DynamicImage::ImageRgb8(image::ImageBuffer::from_raw(w, h, buf).ok_or_else(bad_size)?)
        }
        png::ColorType::Rgba => {
            DynamicImage::ImageRgba8(image::ImageBuffer::from_raw(w, h, buf).ok_or_else(bad_size)?)
        }
        png::ColorType::Indexed => return Err(bad_size()),
    })
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

    /// PNG bytes of `img` as the `image` crate writes them.
    fn png_bytes(img: DynamicImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// A 16-bit RGBA PNG decodes to its high bytes composited on white, as the 8-bit image
    /// of those high bytes does; a grey PNG to grey RGB; and a frame over the allocation
    /// limit is an error naming the file.
    #[test]
    fn pngs_decode_straight_to_eight_bits() {
        let wide = image::ImageBuffer::from_fn(7, 5, |x, y| {
            let v = |c: u32| ((x * 9000 + y * 3000 + c * 700) % 65536) as u16;
            image::Rgba([v(0), v(1), v(2), if x == 0 { 0 } else { v(3) | 0x8000 }])
        });
        let narrow = image::RgbaImage::from_fn(7, 5, |x, y| {
            let p = wide.get_pixel(x, y).0;
            image::Rgba(p.map(|v| (v >> 8) as u8))
        });
        let path = Path::new("x.png");
        let got = decode_image(&png_bytes(DynamicImage::ImageRgba16(wide.clone())), path).unwrap();
        let want = flatten_on_white(DynamicImage::ImageRgba8(narrow));
        assert_eq!(got.dimensions(), (7, 5));
        assert_eq!(got, want);
        assert_eq!(got.get_pixel(0, 0).0, [255, 255, 255]);
        let gray = image::GrayImage::from_fn(3, 2, |x, y| image::Luma([(x * 80 + y * 7) as u8]));
        let got = decode_image(&png_bytes(DynamicImage::ImageLuma8(gray.clone())), path).unwrap();
        assert_eq!(got, DynamicImage::ImageLuma8(gray).into_rgb8());
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(7 * 5 * 4 - 1);
        let bytes = png_bytes(DynamicImage::ImageRgba16(wide));
        let err = decode_image_limited(&bytes, path, limits).unwrap_err();
        assert!(err.to_string().contains("x.png"), "{err}");
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
