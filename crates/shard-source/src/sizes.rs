//! How many samples an epoch has, when nothing is listed up front: an explicit number, else
//! what the files written beside the shards say, read through the same [`Opener`]:
//!
//! - webdataset's `sizes.json` (open_clip reads it): `{"00000.tar": 10000, …}`;
//! - `_info.json`, as timm writes it (`splits.<name>.filenames` beside
//!   `splits.<name>.shard_lengths`) or as a wids shard index (`shardlist: [{url, nsamples}]`);
//! - img2dataset's `00000_stats.json` beside each `00000.tar` (`successes`).
//!
//! A folder's `sizes.json` is tried first, then its `_info.json`, then one stats file per
//! shard still unknown. A file that is there but wrong is an error naming it and the key.

use std::collections::HashMap;

use serde_json::Value;

use crate::{Opener, Result, ShardError, ShardUrl};

/// Largest sidecar file read (64 MiB: a `sizes.json` of a million shards).
pub const MAX_SIDECAR_BYTES: u64 = 64 << 20;

/// Stats files read at once (each is one small request).
const STATS_IN_FLIGHT: usize = 8;

/// Where an epoch's sample count came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeFrom {
    /// The number given.
    Explicit,
    /// Sidecar files (`sizes.json`, `_info.json`, or how many `*_stats.json`).
    Files(Vec<String>),
}

/// Samples per epoch and where the number came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochSize {
    /// Samples in one epoch.
    pub samples: u64,
    /// Where that came from.
    pub from: SizeFrom,
}

/// Each shard's sample count, in the order given, and the files that said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSizes {
    /// Samples per shard.
    pub per_shard: Vec<u64>,
    /// The sidecar files used (stats files summarised as one entry).
    pub files: Vec<String>,
}

fn bad(file: &str, key: Option<&str>, reason: impl Into<String>) -> ShardError {
    ShardError::Sidecar {
        file: file.to_string(),
        key: key.map(str::to_string),
        reason: reason.into(),
    }
}

fn json(file: &str, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| bad(file, None, format!("is not JSON: {e}")))
}

/// A sample count: a non-negative integer, or one written as a string (`"10000"`).
fn count(file: &str, key: &str, v: &Value) -> Result<u64> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.ok_or_else(|| {
        bad(
            file,
            Some(key),
            format!("is not a sample count (found {v})"),
        )
    })
}

/// The last path segment of a URL or path: how sidecar files name shards.
fn base_name(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// webdataset's `sizes.json`: shard file name → samples.
pub fn parse_sizes_json(file: &str, bytes: &[u8]) -> Result<HashMap<String, u64>> {
    let Value::Object(map) = json(file, bytes)? else {
        return Err(bad(file, None, "is not an object of shard name → count"));
    };
    map.iter()
        .map(|(k, v)| Ok((base_name(k).to_string(), count(file, k, v)?)))
        .collect()
}

/// `_info.json`, timm's (`splits`) or a wids shard index (`shardlist`): shard file name →
/// samples.
pub fn parse_info_json(file: &str, bytes: &[u8]) -> Result<HashMap<String, u64>> {
    let v = json(file, bytes)?;
    let mut out = HashMap::new();
    if let Some(list) = v.get("shardlist") {
        let list = list
            .as_array()
            .ok_or_else(|| bad(file, Some("shardlist"), "is not a list"))?;
        for (i, s) in list.iter().enumerate() {
            let key = |k: &str| format!("shardlist[{i}].{k}");
            let url = s.get("url").and_then(Value::as_str);
            let url = url.ok_or_else(|| bad(file, Some(&key("url")), "is missing"))?;
            let n = s
                .get("nsamples")
                .ok_or_else(|| bad(file, Some(&key("nsamples")), "is missing"))?;
            out.insert(
                base_name(url).to_string(),
                count(file, &key("nsamples"), n)?,
            );
        }
        return Ok(out);
    }
    let splits = v.get("splits").and_then(Value::as_object).ok_or_else(|| {
        bad(
            file,
            Some("splits"),
            "is missing (expected timm's `splits` or wids' `shardlist`)",
        )
    })?;
    for (name, split) in splits {
        let key = |k: &str| format!("splits.{name}.{k}");
        let list = |k: &str| {
            split
                .get(k)
                .and_then(Value::as_array)
                .ok_or_else(|| bad(file, Some(&key(k)), "is missing or not a list"))
        };
        let (names, lengths) = (list("filenames")?, list("shard_lengths")?);
        if names.len() != lengths.len() {
            let why = format!(
                "has {} entries for {} filenames",
                lengths.len(),
                names.len()
            );
            return Err(bad(file, Some(&key("shard_lengths")), why));
        }
        for (i, (f, n)) in names.iter().zip(lengths).enumerate() {
            let f = f.as_str().ok_or_else(|| {
                bad(
                    file,
                    Some(&key(&format!("filenames[{i}]"))),
                    "is not a string",
                )
            })?;
            let n = count(file, &key(&format!("shard_lengths[{i}]")), n)?;
            out.entry(base_name(f).to_string()).or_insert(n);
        }
    }
    Ok(out)
}

/// img2dataset's `<shard>_stats.json`: the samples written (`successes`).
pub fn parse_stats_json(file: &str, bytes: &[u8]) -> Result<u64> {
    let v = json(file, bytes)?;
    let n = v
        .get("successes")
        .ok_or_else(|| bad(file, Some("successes"), "is missing"))?;
    count(file, "successes", n)
}

/// The stats file beside a shard: `d/00012.tar` → `d/00012_stats.json`.
fn stats_file(shard: &ShardUrl) -> Option<ShardUrl> {
    let stem = shard.name()?.split('.').next()?;
    shard.sibling(&format!("{stem}_stats.json"))
}

/// Each shard's sample count from the sidecar files beside it; an error names the shards
/// left unknown and the files looked for.
pub fn shard_sizes(shards: &[ShardUrl], opener: &Opener) -> Result<ShardSizes> {
    let mut sizes: Vec<Option<u64>> = vec![None; shards.len()];
    let mut files = Vec::new();
    let mut looked_for: Vec<String> = Vec::new();
    // Folders (as their `sizes.json`) in order of first appearance, each with its shards.
    let mut folders: Vec<(ShardUrl, Vec<usize>)> = Vec::new();
    for (i, s) in shards.iter().enumerate() {
        let Some(dir) = s.sibling("sizes.json") else {
            continue;
        };
        match folders.iter_mut().find(|(d, _)| *d == dir) {
            Some((_, members)) => members.push(i),
            None => folders.push((dir, vec![i])),
        }
    }
    for (dir, members) in &folders {
        for (name, parse) in [
            (
                "sizes.json",
                parse_sizes_json as fn(&str, &[u8]) -> Result<_>,
            ),
            ("_info.json", parse_info_json),
        ] {
            if members.iter().all(|&i| sizes[i].is_some()) {
                break;
            }
            let Some(url) = dir.sibling(name) else {
                continue;
            };
            looked_for.push(url.to_string());
            let Some(bytes) = opener.read_small(&url, MAX_SIDECAR_BYTES)? else {
                continue;
            };
            let map = parse(&url.to_string(), &bytes)?;
            files.push(url.to_string());
            for &i in members {
                if sizes[i].is_none() {
                    sizes[i] = shards[i].name().and_then(|n| map.get(n).copied());
                }
            }
        }
    }
    let unknown: Vec<usize> = (0..shards.len()).filter(|&i| sizes[i].is_none()).collect();
    let stats = read_stats(shards, &unknown, opener)?;
    if stats.iter().any(Option::is_some) {
        let found = stats.iter().flatten().count();
        files.push(format!("{found} img2dataset *_stats.json files"));
    }
    for (&i, n) in unknown.iter().zip(stats) {
        sizes[i] = n;
    }
    let missing: Vec<&ShardUrl> = (0..shards.len())
        .filter(|&i| sizes[i].is_none())
        .map(|i| &shards[i])
        .collect();
    if !missing.is_empty() {
        looked_for.push("<shard>_stats.json beside each shard".into());
        return Err(unknown_size(&missing, &looked_for));
    }
    Ok(ShardSizes {
        per_shard: sizes.into_iter().flatten().collect(),
        files,
    })
}

fn unknown_size(missing: &[&ShardUrl], looked_for: &[String]) -> ShardError {
    let mut names: Vec<String> = missing.iter().take(3).map(ToString::to_string).collect();
    if missing.len() > 3 {
        names.push(format!("and {} more", missing.len() - 3));
    }
    let mut looked: Vec<String> = looked_for.iter().take(6).cloned().collect();
    if looked_for.len() > 6 {
        looked.push(format!("and {} more", looked_for.len() - 6));
    }
    ShardError::UnknownSize {
        missing: format!("{} shard(s): {}", missing.len(), names.join(", ")),
        looked_for: looked.join(", "),
    }
}

/// The stats file of each shard in `which`, a few requests at a time; `None` where absent.
fn read_stats(shards: &[ShardUrl], which: &[usize], opener: &Opener) -> Result<Vec<Option<u64>>> {
    let one = |i: usize| -> Result<Option<u64>> {
        let Some(url) = stats_file(&shards[i]) else {
            return Ok(None);
        };
        match opener.read_small(&url, MAX_SIDECAR_BYTES)? {
            Some(bytes) => parse_stats_json(&url.to_string(), &bytes).map(Some),
            None => Ok(None),
        }
    };
    let chunk = which.len().div_ceil(STATS_IN_FLIGHT).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = which
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|&i| one(i)).collect::<Result<Vec<_>>>()))
            .collect();
        let mut out = Vec::with_capacity(which.len());
        for h in handles {
            out.extend(h.join().expect("a stats reader panicked")?);
        }
        Ok(out)
    })
}

/// Samples per epoch: `explicit` if given (nothing is read), else the sum of
/// [`shard_sizes`].
pub fn epoch_size(
    explicit: Option<u64>,
    shards: &[ShardUrl],
    opener: &Opener,
) -> Result<EpochSize> {
    if let Some(samples) = explicit {
        return Ok(EpochSize {
            samples,
            from: SizeFrom::Explicit,
        });
    }
    let sizes = shard_sizes(shards, opener)?;
    Ok(EpochSize {
        samples: sizes.per_shard.iter().sum(),
        from: SizeFrom::Files(sizes.files),
    })
}
