//! Decoded samples kept in memory within a byte budget, so small datasets decode once and
//! large ones stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::Sample;

/// When decoded samples are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Keep samples while they fit the budget, stream the rest.
    #[default]
    Auto,
    /// Keep every sample, whatever the budget.
    On,
    /// Keep nothing: every epoch decodes again.
    Off,
}

/// Cache settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheConfig {
    /// When to keep samples.
    pub mode: CacheMode,
    /// Budget in bytes for `auto`; `None`: a quarter of physical memory.
    pub mem_bytes: Option<u64>,
}

impl CacheConfig {
    /// The byte budget: unlimited for `on`, zero for `off`.
    pub fn budget(&self) -> u64 {
        match self.mode {
            CacheMode::On => u64::MAX,
            CacheMode::Off => 0,
            CacheMode::Auto => self.mem_bytes.unwrap_or_else(|| physical_memory() / 4),
        }
    }
}

/// Physical memory in bytes (from `/proc/meminfo`; 8 GiB where it cannot be read).
pub fn physical_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(8 << 30)
}

/// Parses a byte size such as `6G`, `512M`, `2.5GiB` or `1000000`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 4G, 512M)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use K, M, G or T)"
            ))
        }
    };
    Ok((value * scale as f64) as u64)
}

/// Samples by index, filled as they are first loaded; once the budget is reached nothing
/// more is added (random access makes eviction pointless: every sample is as likely next).
#[derive(Debug)]
pub struct DecodedCache {
    budget: u64,
    used: AtomicU64,
    map: Mutex<HashMap<u32, Arc<Sample>>>,
}

impl DecodedCache {
    /// An empty cache under `cfg`.
    pub fn new(cfg: &CacheConfig) -> Self {
        Self {
            budget: cfg.budget(),
            used: AtomicU64::new(0),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The sample, if kept.
    pub fn get(&self, i: usize) -> Option<Arc<Sample>> {
        if self.budget == 0 {
            return None;
        }
        self.map
            .lock()
            .expect("cache lock")
            .get(&(i as u32))
            .cloned()
    }

    /// Keeps `s` if it fits the budget; returns it shared either way.
    pub fn insert(&self, i: usize, s: Sample) -> Arc<Sample> {
        let s = Arc::new(s);
        let cost = s.bytes() as u64;
        let fits = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(cost).filter(|&n| n <= self.budget)
            })
            .is_ok();
        if fits {
            self.map
                .lock()
                .expect("cache lock")
                .insert(i as u32, Arc::clone(&s));
        }
        s
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.map.lock().expect("cache lock").len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    fn sample(side: u32) -> Sample {
        Sample {
            image: Arc::new(RgbImage::new(side, side)),
            captions: vec!["x".into()],
        }
    }

    #[test]
    fn cache_stays_within_its_budget_and_modes_mean_what_they_say() {
        let one = sample(10).bytes() as u64;
        let c = DecodedCache::new(&CacheConfig {
            mode: CacheMode::Auto,
            mem_bytes: Some(3 * one + 1),
        });
        for i in 0..10 {
            c.insert(i, sample(10));
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.bytes(), 3 * one);
        assert!(c.get(2).is_some() && c.get(3).is_none());
        let off = DecodedCache::new(&CacheConfig {
            mode: CacheMode::Off,
            mem_bytes: Some(u64::MAX),
        });
        off.insert(0, sample(1));
        assert!(off.get(0).is_none() && off.bytes() == 0);
        let on = DecodedCache::new(&CacheConfig {
            mode: CacheMode::On,
            mem_bytes: Some(0),
        });
        on.insert(0, sample(1));
        assert!(on.get(0).is_some());
    }

    #[test]
    fn byte_sizes_parse_and_bad_ones_are_named() {
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2.5GiB").unwrap(), 5 << 29);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("lots").unwrap_err().contains("lots"));
        assert!(parse_bytes("3X").unwrap_err().contains("unknown unit"));
        assert!(physical_memory() > 0);
    }
}
