//! Image–caption data for training and evaluation: where pairs come from (folders, CSV/TSV
//! manifests, JSONL, webdataset tar shards), how images are decoded and augmented, and the
//! background loader that keeps batches ready ahead of the model.

mod augment;
mod dataset;
mod error;
mod labels;
mod source;

pub use augment::{AugmentConfig, Augmenter};
pub use dataset::{Dataset, Item, SkipReport};
pub use error::{DataError, Result};
pub use labels::LabelTable;
pub use source::{CsvOptions, RawSample, Source};
