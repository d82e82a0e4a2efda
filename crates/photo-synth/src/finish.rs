//! From the float canvas to a photo's bytes: vignette, sensor noise, 8 bits, JPEG.

use image::RgbImage;

use crate::raster::{grain_offset, tables, Canvas};
use crate::scene::Scene;
use crate::SynthError;

/// Vignette, sensor noise and rounding to 8 bits.
pub(crate) fn finish(s: &Scene, canvas: &Canvas) -> RgbImage {
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
/// Fails with [`SynthError::Invalid`] for an empty image or a side over 65,535.
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, SynthError> {
    let (w, h) = img.dimensions();
    let invalid = SynthError::Invalid;
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
