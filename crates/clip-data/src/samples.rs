//! The listed samples of one or more sources, loaded one at a time: nothing is decoded until
//! a batch asks for it, so memory does not grow with the dataset.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

use crate::limits::{self, open_regular, read_regular, MAX_CAPTION_BYTES, MAX_IMAGE_BYTES};
use crate::source::{CaptionRef, ImageRef, Listing, SampleRef};
use crate::{summarize_skips, DataError, Result, Skip, SkipReason, Source};

/// A loaded sample: the decoded image (downscaled, see [`SampleSet::load`]) and its captions.
#[derive(Debug, Clone)]
pub struct Sample {
    /// RGB, alpha composited on white.
    pub image: Arc<RgbImage>,
    /// Its captions; empty for image-only data.
    pub captions: Vec<String>,
}

impl Sample {
    /// Bytes this sample holds (for the cache's budget).
    pub fn bytes(&self) -> usize {
        let (w, h) = self.image.dimensions();
        3 * w as usize * h as usize + self.captions.iter().map(|c| c.len() + 24).sum::<usize>() + 64
    }
}

/// An image–caption pair given in memory (tests, and library users with their own images).
#[derive(Debug, Clone)]
pub struct Item {
    /// A readable name.
    pub name: String,
    /// The image.
    pub image: RgbImage,
    /// Its captions.
    pub captions: Vec<String>,
}

/// The samples of one or more sources, listed but not loaded.
#[derive(Debug, Clone, Default)]
pub struct SampleSet {
    samples: Vec<SampleRef>,
    shards: Vec<PathBuf>,
    shard_ranges: Vec<Range<usize>>,
    skips: Vec<Skip>,
    need_captions: bool,
}

impl SampleSet {
    /// Lists image–caption pairs: file names, manifest rows and tar headers only. Images
    /// without captions and captions without images are skipped and listed in
    /// [`SampleSet::scan_skips`]; nothing left is an error that says what was skipped.
    pub fn scan(sources: &[Source]) -> Result<Self> {
        Self::scan_with(sources, true)
    }

    /// Like [`SampleSet::scan`] but keeps images without captions (image-only training).
    pub fn scan_images(sources: &[Source]) -> Result<Self> {
        Self::scan_with(sources, false)
    }

    fn scan_with(sources: &[Source], need_captions: bool) -> Result<Self> {
        let mut listing = Listing::default();
        for s in sources {
            s.scan(&mut listing, need_captions)?;
        }
        let set = Self {
            samples: listing.samples,
            shards: listing.shards,
            shard_ranges: listing.shard_ranges,
            skips: listing.skips,
            need_captions,
        };
        if set.samples.is_empty() {
            return Err(empty_error(sources, &set.skips));
        }
        Ok(set)
    }

    /// Samples given in memory, in order.
    pub fn from_items(items: Vec<Item>) -> Self {
        let need_captions = items.iter().all(|i| !i.captions.is_empty());
        let samples = items
            .into_iter()
            .map(|i| SampleRef {
                name: i.name,
                image: ImageRef::Decoded(Arc::new(i.image)),
                caption: if i.captions.is_empty() {
                    CaptionRef::None
                } else {
                    CaptionRef::Inline(i.captions)
                },
            })
            .collect();
        Self {
            samples,
            need_captions,
            ..Self::default()
        }
    }

    /// The set with `skips` listed as what was left out ([`SampleSet::scan_skips`]).
    pub fn with_skips(mut self, skips: Vec<Skip>) -> Self {
        self.skips = skips;
        self
    }

    /// Number of listed samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The readable name of sample `i` (path or `shard.tar:key`).
    pub fn name(&self, i: usize) -> &str {
        &self.samples[i].name
    }

    /// What scanning left out (unpaired files, damaged shards).
    pub fn scan_skips(&self) -> &[Skip] {
        &self.skips
    }

    /// The sample range of each tar shard, in listing order; empty when no source is a
    /// shard (every sample is then a file that can be read in any order).
    pub fn shard_ranges(&self) -> &[Range<usize>] {
        &self.shard_ranges
    }

    /// Reads, decodes and downscales sample `i` so its shortest side is at most
    /// `max_short_side` (augmentation never needs more); reads its captions when the set
    /// needs them. An error is the reason to skip it.
    pub fn load(&self, i: usize, max_short_side: u32) -> std::result::Result<Sample, SkipReason> {
        let s = &self.samples[i];
        let captions = if self.need_captions {
            self.captions(&s.caption).map_err(SkipReason::Caption)?
        } else {
            Vec::new()
        };
        let image = match &s.image {
            ImageRef::Decoded(img) => Arc::clone(img),
            ImageRef::File(p) => {
                let bytes = read_regular(p, MAX_IMAGE_BYTES)
                    .map_err(|e| SkipReason::Image(format!("cannot read {}: {e}", p.display())))?;
                decode_downscaled(&bytes, p, max_short_side)?
            }
            ImageRef::Member { shard, offset, len } => {
                let bytes = self
                    .read_member(*shard, *offset, *len, MAX_IMAGE_BYTES)
                    .map_err(SkipReason::Image)?;
                decode_downscaled(&bytes, Path::new(&s.name), max_short_side)?
            }
        };
        Ok(Sample { image, captions })
    }

    fn captions(&self, c: &CaptionRef) -> std::result::Result<Vec<String>, String> {
        match c {
            CaptionRef::None => Err("no caption".into()),
            CaptionRef::Inline(v) => {
                if let Some(c) = v.iter().find(|c| c.len() as u64 > MAX_CAPTION_BYTES) {
                    return Err(limits::too_big(c.len() as u64, MAX_CAPTION_BYTES).to_string());
                }
                non_empty(v.iter().map(|c| c.trim().to_string()).collect())
            }
            CaptionRef::File(p) => caption_text(
                read_regular(p, MAX_CAPTION_BYTES).map_err(|e| format!("{}: {e}", p.display()))?,
            ),
            CaptionRef::Member { shard, offset, len } => {
                caption_text(self.read_member(*shard, *offset, *len, MAX_CAPTION_BYTES)?)
            }
        }
    }

    /// Member bytes `offset..offset + len` of shard `shard`, if `len` is at most `max`.
    fn read_member(
        &self,
        shard: u32,
        offset: u64,
        len: u64,
        max: u64,
    ) -> std::result::Result<Vec<u8>, String> {
        let path = &self.shards[shard as usize];
        if len > max {
            return Err(format!("member of {}", limits::too_big(len, max)));
        }
        let read = || -> std::io::Result<Vec<u8>> {
            let mut f = open_regular(path)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact(&mut buf)?;
            Ok(buf)
        };
        read().map_err(|e| format!("cannot read {}: {e}", path.display()))
    }
}

/// An image's bytes decoded (alpha on white) and downscaled as [`SampleSet::load`] says;
/// `name` names it in the reason to skip it.
pub(crate) fn decode_downscaled(
    bytes: &[u8],
    name: &Path,
    max_short_side: u32,
) -> std::result::Result<Arc<RgbImage>, SkipReason> {
    let img = vision_encoder::decode_image(bytes, name)
        .map_err(|e| SkipReason::Image(error_chain(&e)))?;
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(SkipReason::Image("image is empty".into()));
    }
    Ok(Arc::new(downscale(img, max_short_side)))
}

/// A caption file's bytes as its one caption: UTF-8, trimmed, not empty.
pub(crate) fn caption_text(bytes: Vec<u8>) -> std::result::Result<Vec<String>, String> {
    let text = String::from_utf8(bytes).map_err(|_| "not valid UTF-8".to_string())?;
    non_empty(vec![text.trim().to_string()])
}

fn non_empty(caps: Vec<String>) -> std::result::Result<Vec<String>, String> {
    let caps: Vec<String> = caps.into_iter().filter(|c| !c.is_empty()).collect();
    if caps.is_empty() {
        return Err("empty caption".into());
    }
    Ok(caps)
}

/// The error for data with no usable sample, naming the sources and what was skipped.
fn empty_error(sources: &[Source], skipped: &[Skip]) -> DataError {
    let names: Vec<String> = sources
        .iter()
        .map(|s| s.path().display().to_string())
        .collect();
    let detail = if skipped.is_empty() {
        String::new()
    } else {
        format!(
            " (skipped: {})",
            summarize_skips(skipped).replace('\n', "; ")
        )
    };
    DataError::Empty {
        sources: names.join(", "),
        detail,
    }
}

/// `e` and its causes joined with `: `, as one line (a skipped file's reason).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}

/// Downscale to a shortest side of `max_short_side`; smaller images stay as they are.
///
/// Catmull-Rom (bicubic) convolution by `fast_image_resize` (SIMD, integer arithmetic): the
/// loader pays this once per decoded sample, and the Pillow-exact `resize_bicubic` that
/// evaluation preprocessing needs took 10 ms of a 16 ms sample at 640×480 → 224 (one thread).
fn downscale(img: RgbImage, max_short_side: u32) -> RgbImage {
    use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
    let (w, h) = img.dimensions();
    if w.min(h) <= max_short_side {
        return img;
    }
    let m = max_short_side as u64;
    let (nw, nh) = if w <= h {
        (max_short_side, (h as u64 * m / w as u64) as u32)
    } else {
        ((w as u64 * m / h as u64) as u32, max_short_side)
    };
    let mut out = RgbImage::new(nw, nh);
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    match Resizer::new().resize(&img, &mut out, &opts) {
        Ok(()) => out,
        // Only unsupported pixel layouts fail, and an RgbImage is always supported.
        Err(_) => vision_encoder::resize_bicubic(&img, nw, nh),
    }
}

#[cfg(test)]
mod tests;
