//! Where training shards come from, as bytes: the byte layer under a streaming webdataset
//! loader. No tar parsing, images or tensors here.
//!
//! - [`parse_data_arg`]: a `--data` string → local patterns (left to the caller) and remote
//!   shards ([`ShardUrl`]: `pipe:` commands, http(s) URLs, s3/gs/az objects), braces
//!   expanded ([`expand_braces`]), mixtures split at `::`.
//! - [`Opener::open`]: a shard as a blocking sequential [`std::io::Read`] ([`ShardReader`])
//!   that reconnects at the offset reached after a dropped connection (HTTP `Range`, ranged
//!   object GETs, a re-run command), with backoff, a bounded number of times
//!   ([`RetryPolicy`]); a missing shard and a shard given up on are distinct errors
//!   ([`ShardError::Missing`], [`ShardError::Failed`]) naming the URL and offset.
//! - [`epoch_size`]: samples per epoch from an explicit number or the sidecar files
//!   (`sizes.json`, `_info.json`, img2dataset's `*_stats.json`).
//! - [`rank_shards`], [`RankShards`], [`resampled_shard`]: which shards each rank reads, as
//!   pure functions of seed, epoch or position, and rank.

mod assign;
mod error;
mod expand;
mod http;
mod opener;
mod pipe;
mod profile;
mod sizes;
mod spec;
mod store;
mod stream;

pub use assign::{epoch_permutation, rank_count, rank_shards, resampled_shard, stream, RankShards};
pub use error::{Cause, Result, ShardError};
pub use expand::{expand_braces, MAX_EXPANSION};
pub use opener::{OpenConfig, Opener};
pub use sizes::{
    epoch_size, parse_info_json, parse_sizes_json, parse_stats_json, shard_sizes, EpochSize,
    ShardSizes, SizeFrom, MAX_SIDECAR_BYTES,
};
pub use spec::{parse_data_arg, split_mixture, DataPart, ShardUrl, StoreKind};
pub use stream::{RetryPolicy, ShardReader};
