//! Sources scanned, images decoded once and kept in memory, bad samples skipped and counted.

use image::RgbImage;
use rayon::prelude::*;

use crate::source::{ImageBytes, ScanSkips};
use crate::{DataError, RawSample, Result, Source};

/// One usable pair.
#[derive(Debug, Clone)]
pub struct Item {
    /// Where it came from (path or `shard.tar:key`).
    pub name: String,
    /// The decoded image, alpha composited on white, downscaled to at most twice the
    /// model's input size on its shortest side (augmentation never needs more).
    pub image: RgbImage,
    /// Its captions (one is sampled per step when several).
    pub captions: Vec<String>,
}

/// What was left out, and why.
#[derive(Debug, Clone, Default)]
pub struct SkipReport {
    /// Images without a caption.
    pub no_caption: Vec<String>,
    /// Captions without an image.
    pub no_image: Vec<String>,
    /// Images that could not be read or decoded, with the reason.
    pub unreadable: Vec<(String, String)>,
}

impl SkipReport {
    /// Total skipped.
    pub fn total(&self) -> usize {
        self.no_caption.len() + self.no_image.len() + self.unreadable.len()
    }

    /// One line per kind of skip, naming up to three examples.
    pub fn summary(&self) -> String {
        let mut lines = Vec::new();
        let few = |v: &[String]| v.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        if !self.no_caption.is_empty() {
            lines.push(format!(
                "{} images without a caption (e.g. {})",
                self.no_caption.len(),
                few(&self.no_caption)
            ));
        }
        if !self.no_image.is_empty() {
            lines.push(format!(
                "{} captions without an image (e.g. {})",
                self.no_image.len(),
                few(&self.no_image)
            ));
        }
        if !self.unreadable.is_empty() {
            let names: Vec<String> = self
                .unreadable
                .iter()
                .take(3)
                .map(|(n, why)| format!("{n}: {why}"))
                .collect();
            lines.push(format!(
                "{} unreadable images (e.g. {})",
                self.unreadable.len(),
                names.join("; ")
            ));
        }
        lines.join("\n")
    }
}

/// Decoded image–caption pairs from one or more sources.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// The usable pairs, in source order.
    pub items: Vec<Item>,
    /// What was skipped.
    pub skipped: SkipReport,
}

fn decode(raw: &RawSample, max_short_side: u32) -> std::result::Result<RgbImage, String> {
    let img = match &raw.image {
        ImageBytes::File(p) => vision_encoder::load_image(p),
        ImageBytes::Memory(b) => vision_encoder::decode_image(b, std::path::Path::new(&raw.name)),
    }
    .map_err(|e| {
        let mut msg = e.to_string();
        if let Some(src) = std::error::Error::source(&e) {
            msg = format!("{msg}: {src}");
        }
        msg
    })?;
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err("image is empty".into());
    }
    let short = w.min(h);
    if short <= max_short_side {
        return Ok(img);
    }
    let (nw, nh) = if w <= h {
        (
            max_short_side,
            (h as u64 * max_short_side as u64 / w as u64) as u32,
        )
    } else {
        (
            (w as u64 * max_short_side as u64 / h as u64) as u32,
            max_short_side,
        )
    };
    Ok(vision_encoder::resize_bicubic(&img, nw, nh))
}

impl Dataset {
    /// Scans every source, decodes all images in parallel and keeps what is usable.
    ///
    /// Missing captions, orphan captions and unreadable images are skipped and counted;
    /// an empty result is an error that says what was skipped.
    pub fn load(sources: &[Source], image_size: usize) -> Result<Self> {
        Self::load_with(sources, image_size, true)
    }

    /// Like [`Dataset::load`] but keeps images that have no caption (image-only training);
    /// their caption list is empty.
    pub fn load_images(sources: &[Source], image_size: usize) -> Result<Self> {
        Self::load_with(sources, image_size, false)
    }

    fn load_with(sources: &[Source], image_size: usize, need_captions: bool) -> Result<Self> {
        let mut skips = ScanSkips::default();
        let mut raw = Vec::new();
        for s in sources {
            raw.extend(if need_captions {
                s.scan(&mut skips)?
            } else {
                s.scan_images(&mut skips)?
            });
        }
        let max_side = (2 * image_size).max(1) as u32;
        let decoded: Vec<std::result::Result<RgbImage, String>> =
            raw.par_iter().map(|r| decode(r, max_side)).collect();
        let mut ds = Dataset {
            items: Vec::with_capacity(raw.len()),
            skipped: SkipReport {
                no_caption: skips.no_caption,
                no_image: skips.no_image,
                unreadable: Vec::new(),
            },
        };
        for (r, img) in raw.into_iter().zip(decoded) {
            match img {
                Ok(image) => ds.items.push(Item {
                    name: r.name,
                    image,
                    captions: r.captions,
                }),
                Err(why) => ds.skipped.unreadable.push((r.name, why)),
            }
        }
        if ds.items.is_empty() {
            let names: Vec<String> = sources
                .iter()
                .map(|s| s.path().display().to_string())
                .collect();
            let detail = if ds.skipped.total() > 0 {
                format!(" (skipped: {})", ds.skipped.summary().replace('\n', "; "))
            } else {
                String::new()
            };
            return Err(DataError::Empty {
                sources: names.join(", "),
                detail,
            });
        }
        Ok(ds)
    }

    /// Number of usable pairs.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CsvOptions;
    use std::io::Write;

    fn png(path: &std::path::Path, shade: u8) {
        RgbImage::from_pixel(8, 6, image::Rgb([shade, 0, 0]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn folder_pairs_skips_and_counts() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        png(&d.path().join("a.png"), 10);
        std::fs::write(d.path().join("a.txt"), "red square\n").unwrap();
        png(&sub.join("b.png"), 20);
        std::fs::write(sub.join("b.txt"), "nested").unwrap();
        png(&d.path().join("lonely.png"), 30);
        std::fs::write(d.path().join("orphan.txt"), "no image").unwrap();
        std::fs::write(d.path().join("broken.png"), b"garbage").unwrap();
        std::fs::write(d.path().join("broken.txt"), "broken").unwrap();
        let ds = Dataset::load(&[Source::Folder(d.path().to_path_buf())], 4).unwrap();
        let caps: Vec<&str> = ds.items.iter().map(|i| i.captions[0].as_str()).collect();
        assert_eq!(caps, ["red square", "nested"]);
        assert_eq!(ds.skipped.no_caption.len(), 1);
        assert_eq!(ds.skipped.no_image.len(), 1);
        assert_eq!(ds.skipped.unreadable.len(), 1);
        assert!(ds.skipped.summary().contains("broken.png"));
        // Shortest side 6 > 2·4 = 8? no: kept as is.
        assert_eq!(ds.items[0].image.dimensions(), (8, 6));
    }

    #[test]
    fn csv_jsonl_and_tar_sources() {
        let d = tempfile::tempdir().unwrap();
        png(&d.path().join("x.png"), 1);
        png(&d.path().join("y.png"), 2);
        std::fs::write(
            d.path().join("m.tsv"),
            "filepath\ttitle\nx.png\ta cat\ny.png\ta dog\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("m.csv"),
            "img,text\nx.png,\"a cat, sitting\"\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("m.jsonl"),
            "{\"image\": \"x.png\", \"caption\": \"c1\"}\n{\"image\": \"y.png\", \"captions\": [\"c2\", \"c3\"]}\n",
        )
        .unwrap();
        let mut builder = tar::Builder::new(std::fs::File::create(d.path().join("s.tar")).unwrap());
        builder
            .append_path_with_name(d.path().join("x.png"), "k1.png")
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_cksum();
        builder
            .append_data(&mut h, "k1.txt", &b"shard"[..])
            .unwrap();
        builder.into_inner().unwrap().flush().unwrap();
        let opts = CsvOptions::default();
        let src = |n: &str| Source::from_path(&d.path().join(n), &opts).unwrap();
        let tsv = Dataset::load(&[src("m.tsv")], 4).unwrap();
        assert_eq!(tsv.items[1].captions, ["a dog"]);
        let csv = Source::Csv(
            d.path().join("m.csv"),
            CsvOptions {
                separator: b',',
                img_key: "img".into(),
                caption_key: "text".into(),
            },
        );
        assert_eq!(
            Dataset::load(&[csv], 4).unwrap().items[0].captions,
            ["a cat, sitting"]
        );
        let js = Dataset::load(&[src("m.jsonl")], 4).unwrap();
        assert_eq!(js.items[1].captions, ["c2", "c3"]);
        let tar = Dataset::load(&[src("s.tar")], 4).unwrap();
        assert_eq!(tar.items[0].captions, ["shard"]);
        let both = Dataset::load(&[src("m.tsv"), src("s.tar")], 4).unwrap();
        assert_eq!(both.len(), 3);
    }

    #[test]
    fn image_only_loading_keeps_uncaptioned_images() {
        let d = tempfile::tempdir().unwrap();
        png(&d.path().join("a.png"), 10);
        std::fs::write(d.path().join("a.txt"), "captioned").unwrap();
        png(&d.path().join("b.png"), 20);
        std::fs::write(d.path().join("broken.png"), b"garbage").unwrap();
        let ds = Dataset::load_images(&[Source::Folder(d.path().to_path_buf())], 4).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.items[1].captions.len(), 0);
        assert_eq!(ds.skipped.unreadable.len(), 1);
        // A labels manifest without a caption column is enough for images.
        std::fs::write(
            d.path().join("l.tsv"),
            "filepath\tlabel\na.png\t3\nb.png\t4\n",
        )
        .unwrap();
        let src = Source::from_path(&d.path().join("l.tsv"), &CsvOptions::default()).unwrap();
        assert_eq!(
            Dataset::load_images(std::slice::from_ref(&src), 4)
                .unwrap()
                .len(),
            2
        );
        let err = Dataset::load(&[src], 4).unwrap_err().to_string();
        assert!(err.contains("`title`"), "{err}");
    }

    #[test]
    fn bad_manifests_and_empty_data_are_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("m.tsv"), "path\tcaption\nx.png\thi\n").unwrap();
        let err = Dataset::load(
            &[Source::from_path(&d.path().join("m.tsv"), &CsvOptions::default()).unwrap()],
            4,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("m.tsv") && err.contains("`filepath`") && err.contains("path, caption"),
            "{err}"
        );
        std::fs::write(d.path().join("m.jsonl"), "{\"image\": \"x.png\"}\n").unwrap();
        let err = Dataset::load(&[Source::Jsonl(d.path().join("m.jsonl"))], 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("m.jsonl:1"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join("a.txt"), "caption only").unwrap();
        let err = Dataset::load(&[Source::Folder(empty.path().to_path_buf())], 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no usable") && err.contains("captions without an image"),
            "{err}"
        );
        let err = Source::from_path(&d.path().join("missing"), &CsvOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
