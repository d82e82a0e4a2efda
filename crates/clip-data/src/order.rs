//! Which sample comes at each position of a run: a pure function of the seed and the
//! position, so a resumed run reads exactly what an uninterrupted one would.

use std::ops::Range;

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The seeded streams every order draws from: `shard-source`'s (shard assignment uses the
/// same function, so local and remote orders mix seeds one way).
pub use shard_source::stream;

/// How samples are ordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderConfig {
    /// Samples per epoch (open_clip's `--train-num-samples`); `None`: every listed sample
    /// once. Fewer than listed draws a fresh subset each epoch; more repeats samples.
    pub epoch_samples: Option<usize>,
    /// Shuffle-buffer size for tar shards (webdataset's `shuffle(n)`): samples are read in
    /// shard order (shards shuffled per epoch) and drawn at random from a window this big.
    pub shuffle_buffer: usize,
    /// Streamed shards: draw them with replacement (open_clip's `--dataset-resampled`)
    /// instead of shuffled passes; also streams local shards.
    pub resampled: bool,
    /// Streamed shards read at once. Part of the order (samples are taken from the shards
    /// in flight in turn), so it is saved with the run; the default follows the cores.
    pub workers: usize,
    /// Streamed shards: how many streams the data is split into, all ranks together (each
    /// rank reads an equal block of them). Fixing it makes a step's samples the same on any
    /// number of ranks that divides it; `None`: one per rank of the run that started it.
    pub streams: Option<usize>,
}

impl Default for OrderConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            epoch_samples: None,
            shuffle_buffer: 1000,
            resampled: false,
            workers: cores.clamp(2, 8),
            streams: None,
        }
    }
}

impl OrderConfig {
    /// The number of streams for a run on `world` ranks.
    pub fn streams_for(&self, world: usize) -> usize {
        self.streams.unwrap_or(world)
    }
}

/// Sample index at each global position, one epoch computed at a time.
///
/// Files can be read in any order, so with no shards an epoch is a uniform permutation of
/// all samples. With shards, an epoch shuffles the shard order and passes the samples
/// through a shuffle buffer, so reads stay close to sequential within a shard.
#[derive(Debug, Clone)]
pub struct Order {
    n: usize,
    seed: u64,
    cfg: OrderConfig,
    /// Sample ranges of the units shuffled as wholes (shards; single files in between).
    groups: Option<Vec<Range<usize>>>,
    epoch: usize,
    perm: Vec<u32>,
}

impl Order {
    /// The order of `n` samples under `seed`; `shards` are the sample ranges of tar shards
    /// (empty: all samples are files).
    pub fn new(n: usize, shards: &[Range<usize>], seed: u64, cfg: OrderConfig) -> Self {
        assert!(n > 0, "an order needs at least one sample");
        let groups = (!shards.is_empty()).then(|| {
            let mut g = Vec::new();
            let mut next = 0;
            for r in shards {
                g.extend((next..r.start).map(|i| i..i + 1));
                g.push(r.clone());
                next = r.end;
            }
            g.extend((next..n).map(|i| i..i + 1));
            g.retain(|r| !r.is_empty());
            g
        });
        Self {
            n,
            seed,
            cfg,
            groups,
            epoch: usize::MAX,
            perm: Vec::new(),
        }
    }

    /// Samples per epoch.
    pub fn epoch_len(&self) -> usize {
        self.cfg.epoch_samples.unwrap_or(self.n).max(1)
    }

    /// One full pass over every sample: pass `k` of epoch `e`.
    fn pass(&self, e: usize, k: usize) -> Vec<u32> {
        let key = (e as u64) ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        match &self.groups {
            None => {
                let mut p: Vec<u32> = (0..self.n as u32).collect();
                p.shuffle(&mut stream(self.seed, 1, key));
                p
            }
            Some(groups) => {
                let mut g: Vec<&Range<usize>> = groups.iter().collect();
                g.shuffle(&mut stream(self.seed, 4, key));
                let mut rng = stream(self.seed, 5, key);
                let size = self.cfg.shuffle_buffer.max(1);
                let mut buf: Vec<u32> = Vec::with_capacity(size);
                let mut out = Vec::with_capacity(self.n);
                for i in g.into_iter().flat_map(|r| r.clone()) {
                    if buf.len() < size {
                        buf.push(i as u32);
                        continue;
                    }
                    let j = rng.random_range(0..size);
                    out.push(buf[j]);
                    buf[j] = i as u32;
                }
                while !buf.is_empty() {
                    let j = rng.random_range(0..buf.len());
                    out.push(buf.swap_remove(j));
                }
                out
            }
        }
    }

    fn load_epoch(&mut self, e: usize) {
        if self.epoch == e {
            return;
        }
        let len = self.epoch_len();
        let mut perm = Vec::with_capacity(len);
        let mut k = 0;
        while perm.len() < len {
            let pass = self.pass(e, k);
            let take = (len - perm.len()).min(pass.len());
            perm.extend_from_slice(&pass[..take]);
            k += 1;
        }
        self.perm = perm;
        self.epoch = e;
    }

    /// Sample index at global position `pos`.
    pub fn index(&mut self, pos: usize) -> usize {
        let len = self.epoch_len();
        self.load_epoch(pos / len);
        self.perm[pos % len] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(o: &mut Order, range: Range<usize>) -> Vec<usize> {
        range.map(|p| o.index(p)).collect()
    }

    #[test]
    fn order_is_a_permutation_per_epoch_and_repeatable() {
        let mut a = Order::new(10, &[], 3, OrderConfig::default());
        let mut b = Order::new(10, &[], 3, OrderConfig::default());
        let e0 = first(&mut a, 0..10);
        let mut sorted = e0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let e1 = first(&mut a, 10..20);
        assert_ne!(e0, e1, "epochs reshuffle");
        // Random access (as on resume) gives the same answer.
        assert_eq!(b.index(13), e1[3]);
        assert_eq!(b.index(2), e0[2]);
        // The file order is the per-epoch Fisher–Yates of earlier versions, unchanged.
        let mut p: Vec<usize> = (0..10).collect();
        p.shuffle(&mut stream(3, 1, 0));
        assert_eq!(e0, p);
    }

    #[test]
    fn shard_order_shuffles_shards_and_buffers_samples() {
        let shards: Vec<Range<usize>> = (0..10).map(|s| s * 100..(s + 1) * 100).collect();
        let cfg = OrderConfig {
            shuffle_buffer: 50,
            ..Default::default()
        };
        let mut o = Order::new(1000, &shards, 7, cfg.clone());
        let e0 = first(&mut o, 0..1000);
        let mut sorted = e0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>(), "each sample once");
        // Reads stay local: within the first 100 positions at most two shards are touched
        // (the buffer delays each sample by at most its size plus the drain at the end).
        let mut touched: Vec<usize> = e0[..100].iter().map(|i| i / 100).collect();
        touched.sort();
        touched.dedup();
        assert!(touched.len() <= 2, "{touched:?}");
        assert_ne!(
            e0[..100],
            (0..100).collect::<Vec<_>>()[..],
            "samples are mixed"
        );
        let e1 = first(&mut o, 1000..2000);
        assert_ne!(e0, e1);
        let mut again = Order::new(1000, &shards, 7, cfg);
        assert_eq!(again.index(1500), e1[500]);
    }

    #[test]
    fn epoch_samples_sets_the_epoch_length() {
        let cfg = OrderConfig {
            epoch_samples: Some(4),
            ..Default::default()
        };
        let mut o = Order::new(10, &[], 1, cfg.clone());
        assert_eq!(o.epoch_len(), 4);
        let e0 = first(&mut o, 0..4);
        let e1 = first(&mut o, 4..8);
        assert_ne!(e0, e1, "each epoch draws a fresh subset");
        let mut long = Order::new(
            3,
            &[],
            1,
            OrderConfig {
                epoch_samples: Some(7),
                ..cfg
            },
        );
        let e = first(&mut long, 0..7);
        for i in 0..3 {
            assert!(e.iter().filter(|&&x| x == i).count() >= 2, "{e:?}");
        }
    }
}
