//! Writes photo-like synthetic image–caption pairs (the `photo-synth` crate) for scale tests and
//! benchmarks of the streaming data loader: a folder of `key.jpg` + `key.txt` pairs in
//! subfolders of 10,000, or webdataset tar shards laid out like img2dataset's output.
//!
//! ```text
//! cargo run --release --example make_photos -- --out DIR --count N [--format folder|shards]
//!     [--per-shard 1000] [--width 640] [--height 480] [--seed 0] [--quality 85]
//! ```
//!
//! Sample `i` depends only on `i` and the settings, so the same command always writes the
//! same data. Prints what it wrote, how many bytes, and how long it took.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use photo_synth::SynthConfig;

/// How the samples are laid out on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// `DIR/00000/000000000.jpg` + `.txt`, 10,000 pairs per subfolder.
    Folder,
    /// `DIR/00000.tar`, … (`key.jpg`, `key.json`, `key.txt` per sample) + `DIR/00000_stats.json`.
    Shards,
}

/// Write photo-like synthetic image–caption pairs.
#[derive(Debug, Parser)]
struct Args {
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Number of samples (indices 0..count).
    #[arg(long)]
    count: u64,
    /// Layout on disk.
    #[arg(long, value_enum, default_value_t = Format::Folder)]
    format: Format,
    /// Samples per tar shard (shards only).
    #[arg(long, default_value_t = 1000)]
    per_shard: u64,
    /// Image width in pixels.
    #[arg(long, default_value_t = 640)]
    width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 480)]
    height: u32,
    /// Data set seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// JPEG quality, 1–100.
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(1..=100))]
    quality: u8,
}

fn size_of(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.width == 0 || args.height == 0 || args.width > 65_535 || args.height > 65_535 {
        bail!("--width and --height must be 1..=65535");
    }
    if args.per_shard == 0 {
        bail!("--per-shard must be at least 1");
    }
    let cfg = SynthConfig {
        width: args.width,
        height: args.height,
        seed: args.seed,
        jpeg_quality: args.quality,
    };
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let threads = rayon::current_num_threads();
    println!(
        "writing {} {}×{} samples (seed {}, quality {}) to {} as {:?} on {threads} threads",
        args.count,
        cfg.width,
        cfg.height,
        cfg.seed,
        cfg.jpeg_quality,
        out.display(),
        args.format,
    );
    let start = Instant::now();
    let (what, bytes, jpg_bytes) = match args.format {
        Format::Folder => {
            photo_synth::write_folder(out, 0..args.count, &cfg)
                .with_context(|| format!("writing samples into {}", out.display()))?;
            let (mut jpg, mut txt) = (0, 0);
            for i in 0..args.count {
                let sub = out.join(format!("{:05}", i / 10_000));
                jpg += size_of(&sub.join(format!("{i:09}.jpg")))?;
                txt += size_of(&sub.join(format!("{i:09}.txt")))?;
            }
            let folders = args.count.div_ceil(10_000);
            (
                format!("{} jpg+txt pairs in {folders} subfolders", args.count),
                jpg + txt,
                Some(jpg),
            )
        }
        Format::Shards => {
            let paths = photo_synth::write_shards(out, args.count, args.per_shard, &cfg)
                .with_context(|| format!("writing shards into {}", out.display()))?;
            let mut bytes = 0;
            for p in &paths {
                bytes += size_of(p)?;
                let name = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                bytes += size_of(&p.with_file_name(format!("{name}_stats.json")))?;
            }
            let shown = match paths.as_slice() {
                [] => String::new(),
                [a] => format!(" ({})", a.display()),
                [a, .., b] => format!(" ({} … {})", a.display(), b.display()),
            };
            (
                format!(
                    "{} samples in {} shards of up to {}{shown}",
                    args.count,
                    paths.len(),
                    args.per_shard
                ),
                bytes,
                None,
            )
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let n = args.count.max(1) as f64;
    println!("wrote {what}");
    println!(
        "{:.1} MB in all, {:.1} KB per sample{}",
        mb(bytes),
        bytes as f64 / n / 1e3,
        jpg_bytes
            .map(|j| format!(" ({:.1} KB of it JPEG)", j as f64 / n / 1e3))
            .unwrap_or_default(),
    );
    println!(
        "{secs:.2} s: {:.2} ms per sample, {:.2} ms of one thread per sample ({threads} threads), {:.1} MB/s",
        secs * 1e3 / n,
        secs * 1e3 * threads as f64 / n,
        mb(bytes) / secs.max(1e-9),
    );
    Ok(())
}
