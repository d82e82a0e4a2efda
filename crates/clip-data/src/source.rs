//! Where image–caption pairs come from.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::io;
use crate::{DataError, Result};

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

/// Image bytes not yet decoded, or where to read them.
#[derive(Debug, Clone)]
pub enum ImageBytes {
    /// A file on disk.
    File(PathBuf),
    /// Bytes already in memory (from a tar shard).
    Memory(Arc<Vec<u8>>),
}

/// A pair as listed by its source, before decoding.
#[derive(Debug, Clone)]
pub struct RawSample {
    /// A readable name (path, or `shard.tar:key`).
    pub name: String,
    /// The image.
    pub image: ImageBytes,
    /// One or more captions (one is sampled per step when several).
    pub captions: Vec<String>,
}

/// What a scan could not pair up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanSkips {
    /// Images with no caption.
    pub no_caption: Vec<String>,
    /// Captions with no image.
    pub no_image: Vec<String>,
}

const IMAGE_EXTS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

fn read_caption(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    String::from_utf8(bytes)
        .map(|s| s.trim().to_string())
        .map_err(|_| DataError::BadRecord {
            path: path.to_path_buf(),
            line: 1,
            message: "caption is not valid UTF-8".into(),
        })
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

    /// Lists the pairs of this source, in a stable order.
    pub fn scan(&self, skips: &mut ScanSkips) -> Result<Vec<RawSample>> {
        self.scan_with(skips, true)
    }

    /// Lists the images of this source, captions or not (for image-only training: an
    /// image without a caption is kept with an empty caption list, and a manifest needs
    /// only its image column).
    pub fn scan_images(&self, skips: &mut ScanSkips) -> Result<Vec<RawSample>> {
        self.scan_with(skips, false)
    }

    fn scan_with(&self, skips: &mut ScanSkips, need_captions: bool) -> Result<Vec<RawSample>> {
        match self {
            Source::Folder(dir) => scan_folder(dir, skips, need_captions),
            Source::Csv(path, opts) => scan_csv(path, opts, need_captions),
            Source::Jsonl(path) => scan_jsonl(path, need_captions),
            Source::Tar(path) => scan_tar(path, skips, need_captions),
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn scan_folder(dir: &Path, skips: &mut ScanSkips, need_captions: bool) -> Result<Vec<RawSample>> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    let mut paired_txt = std::collections::HashSet::new();
    for f in files.iter().filter(|f| is_image(f)) {
        let txt = f.with_extension("txt");
        if txt.is_file() {
            paired_txt.insert(txt.clone());
            out.push(RawSample {
                name: f.display().to_string(),
                image: ImageBytes::File(f.clone()),
                captions: vec![read_caption(&txt)?],
            });
        } else if need_captions {
            skips.no_caption.push(f.display().to_string());
        } else {
            out.push(RawSample {
                name: f.display().to_string(),
                image: ImageBytes::File(f.clone()),
                captions: Vec::new(),
            });
        }
    }
    if !need_captions {
        return Ok(out);
    }
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "txt"))
    {
        if !paired_txt.contains(f) {
            skips.no_image.push(f.display().to_string());
        }
    }
    Ok(out)
}

fn scan_csv(path: &Path, opts: &CsvOptions, need_captions: bool) -> Result<Vec<RawSample>> {
    let base = path.parent().unwrap_or(Path::new("."));
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(opts.separator)
        .quoting(opts.separator != b'\t')
        .from_reader(file);
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
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| bad(i + 2, e.to_string()))?;
        let Some(img) = rec.get(ic) else {
            return Err(bad(i + 2, "row is missing a field".into()));
        };
        let captions = match cc.map(|c| rec.get(c)) {
            Some(Some(cap)) => vec![cap.to_string()],
            Some(None) => return Err(bad(i + 2, "row is missing a field".into())),
            None => Vec::new(),
        };
        let p = base.join(img);
        out.push(RawSample {
            name: p.display().to_string(),
            image: ImageBytes::File(p),
            captions,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct JsonlRecord {
    image: String,
    caption: Option<String>,
    captions: Option<Vec<String>>,
}

fn scan_jsonl(path: &Path, need_captions: bool) -> Result<Vec<RawSample>> {
    let base = path.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| DataError::BadRecord {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let rec: JsonlRecord = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let captions = match (rec.caption, rec.captions) {
            (_, Some(c)) if !c.is_empty() => c,
            (Some(c), _) => vec![c],
            _ if !need_captions => Vec::new(),
            _ => return Err(bad("needs `caption` or a non-empty `captions`".into())),
        };
        let p = base.join(&rec.image);
        out.push(RawSample {
            name: p.display().to_string(),
            image: ImageBytes::File(p),
            captions,
        });
    }
    Ok(out)
}

fn scan_tar(path: &Path, skips: &mut ScanSkips, need_captions: bool) -> Result<Vec<RawSample>> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut archive = tar::Archive::new(file);
    let mut images: Vec<(String, Vec<u8>)> = Vec::new();
    let mut texts: HashMap<String, String> = HashMap::new();
    for entry in archive.entries().map_err(io(path))? {
        let mut entry = entry.map_err(io(path))?;
        let name = entry
            .path()
            .map_err(io(path))?
            .to_string_lossy()
            .into_owned();
        let Some((key, ext)) = name.rsplit_once('.') else {
            continue;
        };
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(io(path))?;
        let ext = ext.to_ascii_lowercase();
        if ext == "txt" {
            texts.insert(
                key.to_string(),
                String::from_utf8_lossy(&bytes).trim().to_string(),
            );
        } else if IMAGE_EXTS.contains(&ext.as_str()) {
            images.push((key.to_string(), bytes));
        }
    }
    let mut out = Vec::new();
    let mut used = std::collections::HashSet::new();
    for (key, bytes) in images {
        let label = format!("{}:{key}", path.display());
        match texts.get(&key) {
            Some(cap) => {
                used.insert(key.clone());
                out.push(RawSample {
                    name: label,
                    image: ImageBytes::Memory(Arc::new(bytes)),
                    captions: vec![cap.clone()],
                });
            }
            None if need_captions => skips.no_caption.push(label),
            None => out.push(RawSample {
                name: label,
                image: ImageBytes::Memory(Arc::new(bytes)),
                captions: Vec::new(),
            }),
        }
    }
    if !need_captions {
        return Ok(out);
    }
    let mut orphans: Vec<_> = texts
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    orphans.sort();
    skips.no_image.extend(
        orphans
            .into_iter()
            .map(|k| format!("{}:{k}.txt", path.display())),
    );
    Ok(out)
}
