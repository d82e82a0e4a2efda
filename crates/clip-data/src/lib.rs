//! Image–caption data for training and evaluation: where pairs come from (folders, CSV/TSV
//! manifests, JSONL, webdataset tar shards, brace patterns and globs of them), the order a
//! run reads them in, how they are decoded and augmented, and a budgeted cache of decoded
//! samples. Nothing is decoded up front: a [`SampleSet`] lists samples and loads one at a
//! time, so memory does not grow with the dataset. Shards elsewhere (`pipe:`, http(s),
//! s3/gs/az) are read as a [`ShardStream`]: start to end, nothing listed up front.

mod augment;
mod cache;
mod error;
mod expand;
mod labels;
mod limits;
mod order;
mod samples;
mod skip;
mod source;
mod streamed;

pub use augment::{AugmentConfig, Augmenter};
pub use cache::{parse_bytes, physical_memory, CacheConfig, CacheMode, DecodedCache};
pub use error::{DataError, Result};
pub use expand::{expand_braces, expand_data_arg};
pub use labels::LabelTable;
pub use limits::{
    not_regular, open_regular, read_regular, MAX_CAPTION_BYTES, MAX_IMAGE_BYTES, MAX_RECORD_BYTES,
};
pub use order::{stream, Order, OrderConfig};
pub use samples::{error_chain, Item, Sample, SampleSet};
/// The byte layer under [`ShardStream`], for callers that build a [`StreamSpec`].
pub use shard_source;
pub use skip::{summarize_skips, Skip, SkipReason};
pub use source::{CsvOptions, Source};
pub use streamed::{
    read_shards, tar_samples, RawSample, Replay, ShardStream, StreamSpec, StreamState,
};
