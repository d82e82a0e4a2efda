//! A run's training data as the trainer takes it: listed (folders, manifests, local shards)
//! or streamed (remote shards, or any shards with `resampled`), from the `data` strings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clip_data::shard_source::{self, SizeFrom};
use clip_data::StreamSpec;
use clip_train::TrainData;

use super::run::{Listing, RunConfig};
use crate::files::{names_remote, opener, shard_urls};
use crate::{Error, Result};

/// Whether `data` needs the stream: a remote part (`pipe:`, http(s), s3/gs/az), or
/// resampling asked for.
pub(crate) fn is_streamed(data: &[PathBuf], resampled: bool) -> Result<bool> {
    Ok(resampled || names_remote(data)?)
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
        let opener = Arc::new(opener(self.data_endpoint.as_deref()));
        let order = &self.train.order;
        let explicit = order.epoch_samples.map(|n| n as u64);
        let size = shard_source::epoch_size(explicit, &shards, &opener)
            .map_err(|e| Error::Data(e.into()))?;
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
