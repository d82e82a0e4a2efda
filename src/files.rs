//! Finding the images and captions a command or program was pointed at.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use atomic_write_file::AtomicWriteFile;
use clip_data::shard_source::{self, DataPart, OpenConfig, Opener, ShardUrl};
use clip_data::{CsvOptions, SampleSet, Source};
use retrieval::ImageEntry;
use serde::{Deserialize, Serialize};

pub use clip_data::{summarize_skips, LabelTable, Skip};

use crate::error::io_at;
use crate::{Error, Result};

/// Whether `p` has an image extension the decoder reads (png, jpg, jpeg, webp).
pub fn is_image_file(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().as_str(),
            "png" | "jpg" | "jpeg" | "webp"
        )
    })
}

/// Expands files and folders into image files; a folder's images (not its subfolders') come
/// in sorted name order.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(io_at(input))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image_file(p))
                .collect();
            files.sort();
            out.extend(files);
        } else if input.is_file() {
            out.push(input.clone());
        } else {
            return Err(Error::Input(format!(
                "no such image file or folder: {}",
                input.display()
            )));
        }
    }
    Ok(out)
}

/// Reads one caption per line; an empty line is an empty caption. Invalid UTF-8 is an error
/// naming the file and line.
pub fn read_captions(path: &Path) -> Result<Vec<String>> {
    // A regular file only: a FIFO or /dev/zero given as the captions would hang or never end.
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut clip_data::open_regular(path).map_err(io_at(path))?,
        &mut bytes,
    )
    .map_err(io_at(path))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::Input(format!(
            "{} is not valid UTF-8 (line {line}, byte {at})",
            path.display()
        ))
    })?;
    Ok(text.lines().map(str::to_string).collect())
}

/// open_clip's CSV/TSV manifest options, for every `--data` that may be a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CsvColumns {
    /// Field separator (`None`: tab for .tsv, comma for .csv).
    pub separator: Option<char>,
    /// Column with image paths (relative to the manifest).
    pub img_key: String,
    /// Column with captions.
    pub caption_key: String,
}

impl Default for CsvColumns {
    fn default() -> Self {
        let o = CsvOptions::default();
        Self {
            separator: None,
            img_key: o.img_key,
            caption_key: o.caption_key,
        }
    }
}

/// Data sources for `paths`: each a folder, .csv/.tsv, .jsonl or .tar, a folder of shards,
/// or a brace pattern or glob of them.
pub fn sources(paths: &[PathBuf], csv: &CsvColumns) -> Result<Vec<Source>> {
    let mut opts = CsvOptions {
        img_key: csv.img_key.clone(),
        caption_key: csv.caption_key.clone(),
        ..CsvOptions::default()
    };
    if let Some(c) = csv.separator {
        opts.separator =
            u8::try_from(c)
                .ok()
                .filter(u8::is_ascii)
                .ok_or_else(|| Error::Config {
                    field: "csv_separator",
                    reason: format!("must be a single ASCII character, got {c:?}"),
                })?;
    }
    let mut out = Vec::new();
    // `a::b` is two parts (open_clip's separator), unless a file of that name exists.
    let parts = paths.iter().flat_map(|p| match p.to_str() {
        Some(s) if s.contains("::") && !p.exists() => shard_source::split_mixture(s)
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        _ => vec![p.clone()],
    });
    for p in parts {
        for mut s in Source::expand(&p, &opts)? {
            // An explicit separator wins over the one implied by the extension.
            if let (Source::Csv(_, o), Some(_)) = (&mut s, csv.separator) {
                o.separator = opts.separator;
            }
            out.push(s);
        }
    }
    Ok(out)
}

/// Whether any of `paths` names remote shards (`pipe:`, http(s), s3/gs/az), which are
/// streamed rather than listed.
pub fn names_remote(paths: &[PathBuf]) -> Result<bool> {
    for p in paths {
        let parts = shard_source::parse_data_arg(&p.to_string_lossy()).map_err(data_err)?;
        if parts.iter().any(|p| matches!(p, DataPart::Remote(_))) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Every shard `paths` name, remote and local, in order (`::` splits a path into parts, as
/// in open_clip); a local part must be tar shards.
pub fn shard_urls(paths: &[PathBuf], csv: &CsvColumns) -> Result<Vec<ShardUrl>> {
    let mut out = Vec::new();
    for p in paths {
        for part in shard_source::parse_data_arg(&p.to_string_lossy()).map_err(data_err)? {
            match part {
                DataPart::Remote(urls) => out.extend(urls),
                DataPart::Local(pattern) => {
                    for s in sources(&[PathBuf::from(&pattern)], csv)? {
                        match s {
                            Source::Tar(p) => out.push(ShardUrl::Local(p)),
                            other => return Err(not_shards(other.path())),
                        }
                    }
                }
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Config {
            field: "data",
            reason: "names no shard".into(),
        });
    }
    Ok(out)
}

fn not_shards(path: &Path) -> Error {
    Error::Config {
        field: "data",
        reason: format!(
            "{} is not a tar shard: streamed data (remote shards, or resampling) is read as \
             webdataset shards only",
            path.display()
        ),
    }
}

fn data_err(e: shard_source::ShardError) -> Error {
    Error::Data(e.into())
}

/// What opens shards: retries and timeouts at their defaults, and `endpoint` (or the
/// environment's) for S3-compatible stores.
pub fn opener(endpoint: Option<&str>) -> Opener {
    Opener::new(OpenConfig {
        endpoint: endpoint.map(str::to_string),
        ..OpenConfig::default()
    })
}

/// The image–caption pairs of `paths` for evaluation: listed when local
/// ([`SampleSet::scan`]); remote shards are read once, in order, and held decoded.
pub fn samples(paths: &[PathBuf], csv: &CsvColumns, endpoint: Option<&str>) -> Result<SampleSet> {
    if names_remote(paths)? {
        let shards = shard_urls(paths, csv)?;
        return Ok(clip_data::read_shards(&shards, &opener(endpoint), true)?);
    }
    Ok(SampleSet::scan(&sources(paths, csv)?)?)
}

/// Writes `path` whole or not at all: `write` fills a temporary file in the same folder,
/// which is synced and renamed over `path` (the `atomic-write-file` crate), so a crash never
/// leaves half a file and the folder's entry is durable.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let mut file = AtomicWriteFile::open(path).map_err(io_at(path))?;
    write(file.as_file_mut()).map_err(io_at(path))?;
    file.commit().map_err(io_at(path))
}

/// Files that could not be used, with the reason.
pub type Skipped = Vec<(PathBuf, String)>;

/// Image files under `root`, recursively, in sorted relative-path order, with size and mtime
/// (what an index refresh compares). Directory links are not followed, so a link cycle cannot
/// loop forever; files whose name is not UTF-8 (the manifest is JSON) are skipped.
pub fn scan_images(root: &Path) -> Result<(Vec<ImageEntry>, Skipped)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)
            .map_err(io_at(&dir))?
            .filter_map(|e| e.ok())
        {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(path);
            } else if is_image_file(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    let mut entries = Vec::with_capacity(found.len());
    let mut skipped = Vec::new();
    for path in found {
        let rel = path
            .strip_prefix(root)
            .expect("walked from root")
            .to_path_buf();
        if rel.to_str().is_none() {
            skipped.push((rel, "file name is not valid UTF-8".to_string()));
            continue;
        }
        let md = match std::fs::metadata(&path) {
            Ok(md) => md,
            Err(e) => {
                skipped.push((rel, e.to_string()));
                continue;
            }
        };
        // A link to /dev/zero or a FIFO named like an image would be read forever: listed.
        match clip_data::not_regular(&md) {
            Some(what) => skipped.push((rel, format!("{what}, not a regular file"))),
            None => {
                let mtime_ns = md
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos() as i64);
                entries.push(ImageEntry {
                    path: rel,
                    size: md.len(),
                    mtime_ns,
                });
            }
        }
    }
    Ok((entries, skipped))
}
