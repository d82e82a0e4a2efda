//! The training data pipeline alone, no model: list the samples, then read, decode,
//! augment and tokenize them into batches exactly as `clip train` does, on the rayon pool
//! (`RAYON_NUM_THREADS` threads). Prints samples/s, the listing time, the time to the first
//! batch and the peak RSS, to hold beside `../shared/bench/openclip_loader.py` on the same
//! shards (`scripts/bench_loader.sh` runs both).
//!
//! Remote shards (`pipe:`, http(s), s3/gs/az; `AWS_ENDPOINT_URL` for a local S3 server), or
//! local ones with `LOADER_STREAM=1`, go through the streamed loader (`ShardStream`, the
//! `--data-workers` default, a 1000-sample buffer) instead of the listed one.
//!
//! usage: cargo bench --bench loader -- 'SHARDS_{000..009}.tar' IMAGE_SIZE BATCH [BATCHES] [CACHE]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clip_data::shard_source::{parse_data_arg, DataPart, OpenConfig, Opener, ShardUrl};
use clip_data::{
    AugmentConfig, Augmenter, CacheConfig, CacheMode, DecodedCache, OrderConfig, SampleSet, Source,
    StreamSpec,
};
use clip_model::Preprocess;
use clip_train::{Feed, Loader, LoaderMode, LoaderSpec, Share};

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The shards of `parts` streamed as `clip train` streams them (its default workers and
/// buffer), an epoch of `samples`.
fn streamed_feed(parts: Vec<DataPart>, samples: u64) -> Feed {
    let mut shards = Vec::new();
    for part in parts {
        match part {
            DataPart::Remote(urls) => shards.extend(urls),
            DataPart::Local(p) => shards.extend(
                Source::expand(&PathBuf::from(p), &Default::default())
                    .expect("data")
                    .into_iter()
                    .map(|s| ShardUrl::Local(s.path().to_path_buf())),
            ),
        }
    }
    let order = OrderConfig::default();
    let spec = Arc::new(StreamSpec {
        shards,
        opener: Arc::new(Opener::new(OpenConfig::default())),
        epoch_samples: samples,
        resampled: false,
        workers: order.workers,
        shuffle_buffer: order.shuffle_buffer,
        need_captions: true,
    });
    Feed::Streamed { spec, streams: 1 }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [pattern, size, batch, rest @ ..] = args.as_slice() else {
        eprintln!(
            "usage: loader 'SHARDS_{{000..009}}.tar' IMAGE_SIZE BATCH [BATCHES] [auto|on|off]"
        );
        std::process::exit(2);
    };
    let size: usize = size.parse().expect("IMAGE_SIZE is a number");
    let batch: usize = batch.parse().expect("BATCH is a number");
    let t0 = Instant::now();
    let parts = parse_data_arg(pattern).expect("data");
    let remote = parts.iter().any(|p| matches!(p, DataPart::Remote(_)));
    let streamed = remote || std::env::var("LOADER_STREAM").is_ok_and(|v| v == "1");
    let batches: Option<usize> = rest
        .first()
        .map(|s| s.parse().expect("BATCHES is a number"));
    let mode = match rest.get(1).map(String::as_str) {
        Some("on") => CacheMode::On,
        Some("auto") => CacheMode::Auto,
        _ => CacheMode::Off,
    };
    let (feed, listed_samples, steps) = if streamed {
        let steps = batches.expect("streamed data needs BATCHES (nothing is listed)");
        (streamed_feed(parts, (steps * batch) as u64), 0, steps)
    } else {
        let sources = Source::expand(&PathBuf::from(pattern), &Default::default()).expect("data");
        let data = Arc::new(SampleSet::scan(&sources).expect("samples"));
        let (n, steps) = (data.len(), batches.unwrap_or(data.len() / batch));
        let cache = Arc::new(DecodedCache::new(&CacheConfig {
            mode,
            mem_bytes: None,
        }));
        let order = OrderConfig::default();
        (Feed::Listed { data, cache, order }, n, steps)
    };
    let listed = t0.elapsed().as_secs_f64();
    let tok_file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tokenizer.json");
    let tokenizer = clip_model::ClipTokenizer::from_file(&tok_file, 77).expect("tokenizer");
    let spec = LoaderSpec {
        feed,
        aug: Augmenter::new(
            AugmentConfig::default(),
            Preprocess {
                image_size: size,
                ..Preprocess::default()
            },
        ),
        mode: LoaderMode::Captions(Box::new(tokenizer)),
        batch,
        seed: 0,
        max_short_side: 2 * size as u32,
        share: Share::WHOLE,
    };
    let loader = Loader::spawn(spec, 0..steps, 0, 4);
    let mut first = None;
    let mut n = 0;
    for _ in 0..steps {
        let b = loader.next().expect("batch");
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        n += b.items.len();
    }
    let total = t0.elapsed().as_secs_f64();
    // Over the whole time, listing included, as the open_clip side counts its start-up.
    let rate = n as f64 / total;
    println!(
        "{rate:.1} samples/s over {n} samples in {total:.1} s (listing {listed_samples} samples {listed:.2} s, first batch {:.1} s), peak RSS {:.0} MB",
        first.unwrap_or(f64::NAN),
        peak_rss_mb()
    );
}
