//! Where image–caption pairs come from.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::io_err;
use crate::limits::{self, open_regular, MAX_RECORD_BYTES};
use crate::{DataError, Result, Skip, SkipReason};

/// Column and separator settings for CSV/TSV manifests (open_clip's `--csv-*` options).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CsvOptions {
    /// Field separator; tab by default as in open_clip.
    pub separator: u8,
    /// Column holding the image path (relative to the manifest).
    pub img_key: String,
    /// Column holding the caption.
    pub caption_key: String,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            separator: b'\t',
            img_key: "filepath".into(),
            caption_key: "title".into(),
        }
    }
}

/// One kind of data source.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A folder searched recursively: `x.png` pairs with `x.txt` beside it.
    Folder(PathBuf),
    /// A CSV/TSV manifest.
    Csv(PathBuf, CsvOptions),
    /// JSON lines with `image` and `caption` (or `captions`: [...]).
    Jsonl(PathBuf),
    /// A webdataset tar shard: `key.{jpg,png,webp}` + `key.txt`.
    Tar(PathBuf),
}

pub(crate) const IMAGE_EXTS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

impl Source {
    /// Picks the source kind from the path: a folder, `.csv`/`.tsv`, `.jsonl` or `.tar`.
    pub fn from_path(path: &Path, csv: &CsvOptions) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if path.is_dir() {
            return Ok(Source::Folder(path.to_path_buf()));
        }
        if !path.exists() {
            return Err(DataError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            });
        }
        // A FIFO or device named `x.jsonl` would block or never end; only regular files are read.
        let md = std::fs::metadata(path).map_err(io_err(path))?;
        if let Some(what) = limits::not_regular(&md) {
            return Err(DataError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{what}, not a regular file"),
                ),
            });
        }
        match ext.as_deref() {
            Some("csv") => Ok(Source::Csv(
                path.to_path_buf(),
                CsvOptions {
                    separator: b',',
                    ..csv.clone()
                },
            )),
            Some("tsv") => Ok(Source::Csv(path.to_path_buf(), csv.clone())),
            Some("jsonl") => Ok(Source::Jsonl(path.to_path_buf())),
            Some("tar") => Ok(Source::Tar(path.to_path_buf())),
            _ => Err(DataError::UnknownSource {
                path: path.to_path_buf(),
            }),
        }
    }

    /// The path this source reads.
    pub fn path(&self) -> &Path {
        match self {
            Source::Folder(p) | Source::Csv(p, _) | Source::Jsonl(p) | Source::Tar(p) => p,
        }
    }

    /// The sources a `--data` argument names: brace patterns and globs expand
    /// ([`crate::expand_data_arg`]), and a folder whose top level holds `.tar` files and no
    /// images is a folder of shards (img2dataset's output as it is).
    pub fn expand(arg: &Path, csv: &CsvOptions) -> Result<Vec<Self>> {
        let mut out = Vec::new();
        for path in crate::expand_data_arg(arg)? {
            if path.is_dir() {
                if let Some(shards) = shard_folder(&path)? {
                    out.extend(shards.into_iter().map(Source::Tar));
                    continue;
                }
            }
            out.push(Source::from_path(&path, csv)?);
        }
        Ok(out)
    }

    /// Lists this source's samples without decoding anything: file paths, manifest rows, or
    /// tar member offsets read from the headers alone. `need_captions` drops images that
    /// have no caption (listed in `skips`); without it captions are not required.
    pub(crate) fn scan(&self, out: &mut Listing, need_captions: bool) -> Result<()> {
        match self {
            Source::Folder(dir) => scan_folder(dir, out, need_captions),
            Source::Csv(path, opts) => scan_csv(path, opts, out, need_captions),
            Source::Jsonl(path) => scan_jsonl(path, out, need_captions),
            Source::Tar(path) => scan_tar(path, out, need_captions),
        }
    }
}

/// The `.tar` files at the top of `dir`, sorted, when it holds shards and no images.
fn shard_folder(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    let mut tars = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if is_image(&path) {
            return Ok(None);
        }
        if path.is_file()
            && path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("tar"))
        {
            tars.push(path);
        }
    }
    tars.sort();
    Ok((!tars.is_empty()).then_some(tars))
}

/// Where a sample's image is.
#[derive(Debug, Clone)]
pub(crate) enum ImageRef {
    /// A file on disk.
    File(PathBuf),
    /// A member of tar shard number `shard`: `len` bytes at `offset`.
    Member { shard: u32, offset: u64, len: u64 },
    /// Already decoded (samples built in memory).
    Decoded(Arc<RgbImage>),
}

/// Where a sample's captions are; read when the sample is loaded, so a bad caption is a
/// skipped sample, not a failed start.
#[derive(Debug, Clone)]
pub(crate) enum CaptionRef {
    /// No caption (image-only data).
    None,
    /// Captions given in a manifest or in memory.
    Inline(Vec<String>),
    /// A `.txt` file beside the image.
    File(PathBuf),
    /// A tar member, as [`ImageRef::Member`].
    Member { shard: u32, offset: u64, len: u64 },
}

/// One listed sample.
#[derive(Debug, Clone)]
pub(crate) struct SampleRef {
    pub name: String,
    pub image: ImageRef,
    pub caption: CaptionRef,
}

/// What scanning produced: samples, the shards they point into, the sample range of each
/// shard, and what could not be paired.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub samples: Vec<SampleRef>,
    pub shards: Vec<PathBuf>,
    pub shard_ranges: Vec<std::ops::Range<usize>>,
    pub skips: Vec<Skip>,
}

impl Listing {
    /// Lists an image file, named by its path.
    fn push_file(&mut self, image: PathBuf, caption: CaptionRef) {
        self.samples.push(SampleRef {
            name: image.display().to_string(),
            image: ImageRef::File(image),
            caption,
        });
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        if entry.file_type().map_err(io_err(&path))?.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn scan_folder(dir: &Path, out: &mut Listing, need_captions: bool) -> Result<()> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    let names: HashSet<&Path> = files.iter().map(PathBuf::as_path).collect();
    let mut paired_txt = HashSet::new();
    for f in files.iter().filter(|f| is_image(f)) {
        let txt = f.with_extension("txt");
        let caption = if names.contains(txt.as_path()) {
            paired_txt.insert(txt.clone());
            CaptionRef::File(txt)
        } else if need_captions {
            out.skips
                .push(Skip::new(f.display(), SkipReason::NoCaption));
            continue;
        } else {
            CaptionRef::None
        };
        out.push_file(f.clone(), caption);
    }
    if need_captions {
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "txt") && !paired_txt.contains(*f))
        {
            out.skips.push(Skip::new(f.display(), SkipReason::NoImage));
        }
    }
    Ok(())
}

fn scan_csv(path: &Path, opts: &CsvOptions, out: &mut Listing, need_captions: bool) -> Result<()> {
    let base = path.parent().unwrap_or(Path::new("."));
    let file = open_regular(path).map_err(io_err(path))?;
    // The csv crate grows its record buffer as far as a record goes: cap each record.
    let (file, record_cap) = limits::Capped::new(file, MAX_RECORD_BYTES);
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(opts.separator)
        .quoting(opts.separator != b'\t')
        .from_reader(std::io::BufReader::new(file));
    let bad = |line: usize, message: String| DataError::BadRecord {
        path: path.to_path_buf(),
        line,
        message,
    };
    let headers = rdr.headers().map_err(|e| bad(1, e.to_string()))?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| DataError::MissingColumn {
                path: path.to_path_buf(),
                column: name.to_string(),
                found: headers.iter().collect::<Vec<_>>().join(", "),
            })
    };
    let ic = col(&opts.img_key)?;
    let cc = match col(&opts.caption_key) {
        Ok(c) => Some(c),
        Err(_) if !need_captions => None,
        Err(e) => return Err(e),
    };
    let mut rec = csv::StringRecord::new();
    for i in 0.. {
        let start = rdr.position().byte();
        record_cap.allow(start, MAX_RECORD_BYTES);
        if !rdr
            .read_record(&mut rec)
            .map_err(|e| bad(i + 2, e.to_string()))?
        {
            break;
        }
        // The reader's cap bounds memory; this makes the limit exact.
        if rdr.position().byte() - start > MAX_RECORD_BYTES {
            return Err(bad(i + 2, limits::record_too_long()));
        }
        let Some(img) = rec.get(ic) else {
            return Err(bad(i + 2, "row is missing a field".into()));
        };
        let caption = match cc.map(|c| rec.get(c)) {
            Some(Some(cap)) => CaptionRef::Inline(vec![cap.to_string()]),
            Some(None) => return Err(bad(i + 2, "row is missing a field".into())),
            None => CaptionRef::None,
        };
        out.push_file(base.join(img), caption);
    }
    Ok(())
}

#[derive(Deserialize)]
struct JsonlRecord {
    image: String,
    caption: Option<String>,
    captions: Option<Vec<String>>,
}

fn scan_jsonl(path: &Path, out: &mut Listing, need_captions: bool) -> Result<()> {
    let base = path.parent().unwrap_or(Path::new("."));
    let file = open_regular(path).map_err(io_err(path))?;
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    for i in 0.. {
        let Some(len) = limits::read_line_capped(&mut reader, &mut line, MAX_RECORD_BYTES)
            .map_err(io_err(path))?
        else {
            break;
        };
        if len > MAX_RECORD_BYTES {
            // Read to its end without keeping it: one bad line is a listed skip.
            out.skips.push(Skip::new(
                format!("{}:{}", path.display(), i + 1),
                SkipReason::Record(format!(
                    "line of {} is over the {} cap",
                    limits::bytes(len),
                    limits::bytes(MAX_RECORD_BYTES)
                )),
            ));
            continue;
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let bad = |message: String| DataError::BadRecord {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let rec: JsonlRecord = serde_json::from_slice(&line).map_err(|e| bad(e.to_string()))?;
        let caption = match (rec.caption, rec.captions) {
            (_, Some(c)) if !c.is_empty() => CaptionRef::Inline(c),
            (Some(c), _) => CaptionRef::Inline(vec![c]),
            _ if !need_captions => CaptionRef::None,
            _ => return Err(bad("needs `caption` or a non-empty `captions`".into())),
        };
        out.push_file(base.join(&rec.image), caption);
    }
    Ok(())
}

/// Splits a member name into webdataset's key (everything before the first dot of the
/// file name) and extension.
pub(crate) fn split_key(name: &str) -> Option<(&str, &str)> {
    let start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[start..].find('.')? + start;
    Some((&name[..dot], &name[dot + 1..]))
}

/// Indexes a shard from its headers alone (the reader seeks over member data). A shard cut
/// off mid-member keeps the members that lie wholly inside the file and reports the cut.
fn scan_tar(path: &Path, out: &mut Listing, need_captions: bool) -> Result<()> {
    let file = open_regular(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let shard = out.shards.len() as u32;
    let mut archive = tar::Archive::new(file);
    let mut images: Vec<(String, u64, u64)> = Vec::new();
    let mut texts: HashMap<String, (u64, u64)> = HashMap::new();
    let mut cut: Option<String> = None;
    let entries = archive.entries_with_seek().map_err(io_err(path))?;
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                cut = Some(format!("shard is cut off or damaged: {e}"));
                break;
            }
        };
        let (offset, len) = (entry.raw_file_position(), entry.size());
        let name = match entry.path() {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(_) => continue,
        };
        if offset + len > file_len {
            cut = Some(format!("shard is cut off in the middle of member {name}"));
            break;
        }
        let Some((key, ext)) = split_key(&name) else {
            continue;
        };
        let ext = ext.to_ascii_lowercase();
        if ext == "txt" {
            texts.insert(key.to_string(), (offset, len));
        } else if IMAGE_EXTS.contains(&ext.as_str()) {
            images.push((key.to_string(), offset, len));
        }
    }
    if let Some(why) = cut {
        out.skips
            .push(Skip::new(path.display(), SkipReason::Shard(why)));
    }
    let start = out.samples.len();
    let mut used = HashSet::new();
    for (key, offset, len) in images {
        let name = format!("{}:{key}", path.display());
        let caption = match texts.get(&key) {
            Some(&(offset, len)) => {
                used.insert(key);
                CaptionRef::Member { shard, offset, len }
            }
            None if need_captions => {
                out.skips.push(Skip::new(name, SkipReason::NoCaption));
                continue;
            }
            None => CaptionRef::None,
        };
        out.samples.push(SampleRef {
            name,
            image: ImageRef::Member { shard, offset, len },
            caption,
        });
    }
    if need_captions {
        let mut orphans: Vec<&String> = texts.keys().filter(|k| !used.contains(*k)).collect();
        orphans.sort();
        for k in orphans {
            out.skips.push(Skip::new(
                format!("{}:{k}.txt", path.display()),
                SkipReason::NoImage,
            ));
        }
    }
    out.shards.push(path.to_path_buf());
    out.shard_ranges.push(start..out.samples.len());
    Ok(())
}
