//! Why a sample is left out: each skip named with its reason, and the summary a run prints.

use std::fmt;

/// Why a sample was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// An image with no caption beside it.
    NoCaption,
    /// A caption with no image.
    NoImage,
    /// The image could not be read or decoded.
    Image(String),
    /// The caption could not be read, is not UTF-8, or is empty.
    Caption(String),
    /// A shard is cut off, damaged, missing or failed past its retries; what it gave before
    /// is still used.
    Shard(String),
    /// A manifest line that cannot be used (one over the size cap), named `file:line`.
    Record(String),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NoCaption => write!(f, "image without a caption"),
            SkipReason::NoImage => write!(f, "caption without an image"),
            SkipReason::Image(why) => write!(f, "unreadable image: {why}"),
            SkipReason::Caption(why) => write!(f, "bad caption: {why}"),
            SkipReason::Shard(why) => write!(f, "{why}"),
            SkipReason::Record(why) => write!(f, "bad manifest line: {why}"),
        }
    }
}

/// A sample (or shard) left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// Path, `shard.tar:key`, or the shard.
    pub name: String,
    /// Why.
    pub reason: SkipReason,
}

impl Skip {
    /// A skip of `name` for `reason`.
    pub fn new(name: impl fmt::Display, reason: SkipReason) -> Self {
        Self {
            name: name.to_string(),
            reason,
        }
    }
}

impl SkipReason {
    /// The kind of skip, as a plural heading ("unreadable images").
    pub fn kind(&self) -> &'static str {
        match self {
            SkipReason::NoCaption => "images without a caption",
            SkipReason::NoImage => "captions without an image",
            SkipReason::Image(_) => "unreadable images",
            SkipReason::Caption(_) => "bad captions",
            SkipReason::Shard(_) => "shards cut short or missing",
            SkipReason::Record(_) => "bad manifest lines",
        }
    }
}

/// One line per kind of skip, naming up to three examples.
pub fn summarize_skips(skips: &[Skip]) -> String {
    let mut kinds: Vec<&'static str> = skips.iter().map(|s| s.reason.kind()).collect();
    let mut seen = std::collections::HashSet::new();
    kinds.retain(|k| seen.insert(*k));
    let mut lines = Vec::new();
    for kind in kinds {
        let of_kind: Vec<&Skip> = skips.iter().filter(|s| s.reason.kind() == kind).collect();
        let few: Vec<String> = of_kind
            .iter()
            .take(3)
            .map(|s| match &s.reason {
                SkipReason::NoCaption | SkipReason::NoImage => s.name.clone(),
                r => format!("{}: {r}", s.name),
            })
            .collect();
        lines.push(format!(
            "{} {kind} (e.g. {})",
            of_kind.len(),
            few.join("; ")
        ));
    }
    lines.join("\n")
}
