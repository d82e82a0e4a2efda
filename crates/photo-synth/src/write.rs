//! Writing samples to disk: a folder of `key.jpg` + `key.txt` pairs, or webdataset tar shards
//! laid out like img2dataset's output.

use std::fs;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use atomic_write_file::AtomicWriteFile;
use rayon::prelude::*;

use crate::error::io_err;
use crate::{encode_jpeg, render, SynthConfig, SynthError};

/// Samples per subfolder of [`write_folder`] (img2dataset's default shard size).
const FOLDER_SAMPLES: u64 = 10_000;
/// Samples rendered together before a shard writer appends them (bounds memory per shard).
const SHARD_CHUNK: u64 = 256;
/// Fixed modification time of tar members (2023-11-14), so shards are reproducible.
const TAR_MTIME: u64 = 1_700_000_000;

fn sample_key(index: u64) -> String {
    format!("{index:09}")
}

fn render_jpeg(index: u64, cfg: &SynthConfig) -> Result<(Vec<u8>, String), SynthError> {
    let (img, caption) = render(index, cfg);
    Ok((encode_jpeg(&img, cfg.jpeg_quality)?, caption))
}

/// Writes samples `range` as `DIR/<key>.jpg` + `DIR/<key>.txt` (key = index zero-padded to 9
/// digits, like img2dataset), in subfolders of 10,000 (`DIR/00000/`, `DIR/00001/`, …) so no
/// folder gets huge. Parallel over samples with rayon.
///
/// Any range can be written on its own (another machine can write the next one); existing
/// files of the same names are overwritten.
pub fn write_folder(dir: &Path, range: Range<u64>, cfg: &SynthConfig) -> Result<(), SynthError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    range.into_par_iter().try_for_each(|i| {
        let (jpg, caption) = render_jpeg(i, cfg)?;
        let folder = dir.join(format!("{:05}", i / FOLDER_SAMPLES));
        fs::create_dir_all(&folder).map_err(io_err(&folder))?;
        let key = sample_key(i);
        for (ext, data) in [("jpg", &jpg[..]), ("txt", caption.as_bytes())] {
            let path = folder.join(format!("{key}.{ext}"));
            fs::write(&path, data).map_err(io_err(&path))?;
        }
        Ok(())
    })
}

/// Writes `count` samples as webdataset shards of `per_shard` samples in img2dataset's output
/// layout: `DIR/00000.tar`, `DIR/00001.tar`, … each holding, per sample in key order,
/// `<key>.jpg`, `<key>.json` and `<key>.txt` (webdataset's `TarWriter`, which img2dataset uses,
/// writes a sample's members sorted by extension), plus a `DIR/00000_stats.json` per shard.
///
/// The key is the sample index zero-padded to 9 digits; the json holds `key`, `caption`,
/// `width`, `height`, `status` ("success") and `url` (null); the stats hold `count`,
/// `successes`, `failed_to_download` and `failed_to_resize`. Tar members are ustar, mode 0444,
/// owned by `bigdata:bigdata` (webdataset's defaults) with a fixed mtime, so shards are
/// byte-for-byte reproducible. Each shard is written whole or not at all (`atomic-write-file`:
/// a temporary `.NAME.tar.<random>`, renamed when complete). Shards are written in parallel
/// (rayon), and the samples of a shard are rendered in parallel too; returns the shard paths
/// in order.
pub fn write_shards(
    dir: &Path,
    count: u64,
    per_shard: u64,
    cfg: &SynthConfig,
) -> Result<Vec<PathBuf>, SynthError> {
    if per_shard == 0 {
        return Err(SynthError::Invalid(
            "write_shards: per_shard must be at least 1".into(),
        ));
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let shards = count.div_ceil(per_shard);
    (0..shards)
        .into_par_iter()
        .map(|s| {
            let start = s * per_shard;
            write_shard(dir, s, start..count.min(start + per_shard), cfg)
        })
        .collect()
}

fn write_shard(
    dir: &Path,
    shard: u64,
    range: Range<u64>,
    cfg: &SynthConfig,
) -> Result<PathBuf, SynthError> {
    let name = format!("{shard:05}");
    let path = dir.join(format!("{name}.tar"));
    let mut file = AtomicWriteFile::open(&path).map_err(io_err(&path))?;
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, &mut *file));
    for start in range.clone().step_by(SHARD_CHUNK as usize) {
        let end = range.end.min(start + SHARD_CHUNK);
        let samples: Vec<(Vec<u8>, String)> = (start..end)
            .into_par_iter()
            .map(|i| render_jpeg(i, cfg))
            .collect::<Result<_, _>>()?;
        for (i, (jpg, caption)) in (start..end).zip(samples) {
            let key = sample_key(i);
            let meta = serde_json::json!({
                "key": key,
                "caption": caption,
                "width": cfg.width,
                "height": cfg.height,
                "status": "success",
                "url": null,
            });
            let meta = serde_json::to_vec_pretty(&meta).expect("a JSON value serialises");
            let members = [
                ("jpg", &jpg[..]),
                ("json", &meta),
                ("txt", caption.as_bytes()),
            ];
            for (ext, data) in members {
                append(&mut tar, format!("{key}.{ext}"), data).map_err(io_err(&path))?;
            }
        }
    }
    let mut out = tar.into_inner().map_err(io_err(&path))?;
    out.flush().map_err(io_err(&path))?;
    drop(out);
    file.commit().map_err(io_err(&path))?;
    let n = range.end - range.start;
    let stats = serde_json::json!({
        "count": n,
        "successes": n,
        "failed_to_download": 0,
        "failed_to_resize": 0,
    });
    let stats_path = dir.join(format!("{name}_stats.json"));
    let stats = serde_json::to_vec_pretty(&stats).expect("a JSON value serialises");
    fs::write(&stats_path, stats).map_err(io_err(&stats_path))?;
    Ok(path)
}

/// Appends member `name` holding `data` with webdataset's header: ustar, mode 0444, owned by
/// `bigdata:bigdata`, a fixed mtime.
fn append(tar: &mut tar::Builder<impl Write>, name: String, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o444);
    header.set_mtime(TAR_MTIME);
    header.set_uid(0);
    header.set_gid(0);
    header.set_username("bigdata")?;
    header.set_groupname("bigdata")?;
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, data)
}
