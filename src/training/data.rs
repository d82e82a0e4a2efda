//! A run's training data as the trainer takes it: listed (folders, manifests, local shards)
//! or streamed (remote shards, or any shards with `resampled`), from the `data` strings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clip_data::shard_source::{self, DataPart, OpenConfig, Opener, ShardUrl, SizeFrom};
use clip_data::{Source, StreamSpec};
use clip_train::TrainData;

use super::run::{Listing, RunConfig};
use crate::files::{sources, CsvColumns};
use crate::{Error, Result};

/// Whether `data` needs the stream: a remote part (`pipe:`, http(s), s3/gs/az), or
/// resampling asked for.
pub(crate) fn is_streamed(data: &[PathBuf], resampled: bool) -> Result<bool> {
    if resampled {
        return Ok(true);
    }
    for d in data {
        let parts = shard_source::parse_data_arg(&d.to_string_lossy()).map_err(data_err)?;
        if parts.iter().any(|p| matches!(p, DataPart::Remote(_))) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Every shard `data` names, remote and local, in order; a local part must be shards.
fn shard_urls(data: &[PathBuf], csv: &CsvColumns) -> Result<Vec<ShardUrl>> {
    let mut out = Vec::new();
    for d in data {
        for part in shard_source::parse_data_arg(&d.to_string_lossy()).map_err(data_err)? {
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
    Ok(out)
}

fn not_shards(path: &Path) -> Error {
    Error::Config {
        field: "data",
        reason: format!(
            "{} is not a tar shard: streamed data (remote shards, or `resampled`) is read \
             as webdataset shards only",
            path.display()
        ),
    }
}

fn data_err(e: shard_source::ShardError) -> Error {
    Error::Data(e.into())
}

impl RunConfig {
    /// The stream this run's `data` names: its shards, how they are reached, and the epoch
    /// size (given, or from the shards' sidecar files).
    pub(crate) fn stream(&self, what: &'static str) -> Result<(TrainData, Listing)> {
        let t0 = Instant::now();
        if self.labels.is_some() {
            return Err(Error::Config {
                field: "labels",
                reason: "label files name listed files; streamed shards have none".into(),
            });
        }
        let shards = shard_urls(&self.data, &self.csv)?;
        if shards.is_empty() {
            return Err(Error::Config {
                field: "data",
                reason: "names no shard".into(),
            });
        }
        let mut open = OpenConfig::default();
        open.endpoint.clone_from(&self.data_endpoint);
        let opener = Arc::new(Opener::new(open));
        let order = &self.train.order;
        let explicit = order.epoch_samples.map(|n| n as u64);
        let size = shard_source::epoch_size(explicit, &shards, &opener).map_err(data_err)?;
        let images_only = self.train.objective == clip_train::Objective::Images;
        let listing = Listing {
            what,
            samples: size.samples as usize,
            images_only,
            sources: shards.len(),
            seconds: t0.elapsed().as_secs_f64(),
            skips: Vec::new(),
            streamed: Some(match size.from {
                SizeFrom::Explicit => "per epoch, as given".to_string(),
                SizeFrom::Files(files) => format!("per epoch, from {}", files.join(", ")),
            }),
        };
        let spec = StreamSpec {
            shards,
            opener,
            epoch_samples: size.samples,
            resampled: order.resampled,
            workers: order.workers,
            shuffle_buffer: order.shuffle_buffer,
            need_captions: !images_only,
        };
        Ok((spec.into(), listing))
    }
}
