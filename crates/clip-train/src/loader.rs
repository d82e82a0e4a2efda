//! A background thread that assembles batches ahead of the model.
//!
//! The order of samples and every random choice are pure functions of the seed and a
//! sample's global position, so a resumed run sees exactly the batches an uninterrupted one
//! would, whatever the thread timing.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use clip_data::{Augmenter, Dataset};
use clip_nn::SplitMix64;
use rayon::prelude::*;
use text_encoder::ClipTokenizer;

/// One training batch.
#[derive(Debug)]
pub struct Batch {
    /// The step it belongs to.
    pub step: usize,
    /// Normalised pixels flattened: `[B, 3, s, s]` with captions, `[2B, 3, s, s]` with two
    /// views (every first view, then every second view in the same order).
    pub pixels: Vec<f32>,
    /// Token rows (empty with two views).
    pub ids: Vec<Vec<u32>>,
    /// Dataset index of each sample.
    pub items: Vec<usize>,
}

/// What the loader makes of each sample.
#[derive(Clone)]
pub enum LoaderMode {
    /// One augmented view and one of its captions, tokenised.
    Captions(Box<ClipTokenizer>),
    /// Two independently augmented views of the image (the positive pair of image-only
    /// contrastive learning); captions are not read.
    TwoViews,
}

/// Mixes a seed with a counter into an independent stream.
pub fn stream(seed: u64, salt: u64, counter: u64) -> SplitMix64 {
    let mut s = SplitMix64::new(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mix = s.next_u64() ^ counter.wrapping_mul(0xD1B5_4A32_D192_ED03);
    SplitMix64::new(mix)
}

/// Dataset index of the sample at global position `pos` (epoch-wise shuffles).
pub struct Order {
    n: usize,
    seed: u64,
    epoch: usize,
    perm: Vec<usize>,
}

impl Order {
    /// The order for `n` samples under `seed`.
    pub fn new(n: usize, seed: u64) -> Self {
        let mut o = Self {
            n,
            seed,
            epoch: usize::MAX,
            perm: Vec::new(),
        };
        o.load_epoch(0);
        o
    }

    fn load_epoch(&mut self, e: usize) {
        if self.epoch != e {
            self.perm = (0..self.n).collect();
            stream(self.seed, 1, e as u64).shuffle(&mut self.perm);
            self.epoch = e;
        }
    }

    /// Dataset index at global position `pos`.
    pub fn index(&mut self, pos: usize) -> usize {
        self.load_epoch(pos / self.n);
        self.perm[pos % self.n]
    }
}

/// Handle to the loader thread; batches arrive in step order.
pub struct Loader {
    rx: Receiver<Result<Batch, String>>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts producing batches for steps `start..end`, `prefetch` ahead.
    pub fn spawn(
        data: Arc<Dataset>,
        aug: Augmenter,
        mode: LoaderMode,
        batch: usize,
        seed: u64,
        steps: std::ops::Range<usize>,
        prefetch: usize,
    ) -> Self {
        let (tx, rx) = sync_channel(prefetch.max(1));
        let handle = std::thread::spawn(move || {
            let mut order = Order::new(data.len(), seed);
            for step in steps {
                let positions: Vec<(usize, usize)> = (0..batch)
                    .map(|j| {
                        let pos = step * batch + j;
                        (pos, order.index(pos))
                    })
                    .collect();
                let items: Vec<usize> = positions.iter().map(|&(_, idx)| idx).collect();
                let msg = match &mode {
                    LoaderMode::Captions(tokenizer) => {
                        let views: Vec<(Vec<f32>, String)> = positions
                            .par_iter()
                            .map(|&(pos, idx)| {
                                let item = &data.items[idx];
                                let mut rng = stream(seed, 2, pos as u64);
                                let cap = item.captions[rng.below(item.captions.len())].clone();
                                (aug.train(&item.image, &mut rng), cap)
                            })
                            .collect();
                        let caps: Vec<&str> = views.iter().map(|(_, c)| c.as_str()).collect();
                        tokenizer
                            .encode_batch(&caps)
                            .map_err(|e| e.to_string())
                            .map(|ids| Batch {
                                step,
                                pixels: views.iter().flat_map(|(p, _)| p.iter().copied()).collect(),
                                ids,
                                items,
                            })
                    }
                    LoaderMode::TwoViews => {
                        let pairs: Vec<(Vec<f32>, Vec<f32>)> = positions
                            .par_iter()
                            .map(|&(pos, idx)| {
                                let img = &data.items[idx].image;
                                let mut rng = stream(seed, 3, pos as u64);
                                let a = aug.train(img, &mut rng);
                                (a, aug.train(img, &mut rng))
                            })
                            .collect();
                        let mut pixels: Vec<f32> =
                            pairs.iter().flat_map(|(a, _)| a.iter().copied()).collect();
                        pixels.extend(pairs.iter().flat_map(|(_, b)| b.iter().copied()));
                        Ok(Batch {
                            step,
                            pixels,
                            ids: Vec::new(),
                            items,
                        })
                    }
                };
                if tx.send(msg).is_err() {
                    return; // the trainer stopped early
                }
            }
        });
        Self {
            rx,
            handle: Some(handle),
        }
    }

    /// Blocks until the next batch is ready.
    pub fn next(&self) -> Result<Batch, String> {
        self.rx
            .recv()
            .map_err(|_| "loader thread ended".to_string())?
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock the producer (its send fails once the receiver is gone), then join it.
        let (_tx, rx) = sync_channel(1);
        let old = std::mem::replace(&mut self.rx, rx);
        drop(old);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_permutation_per_epoch_and_repeatable() {
        let mut a = Order::new(10, 3);
        let mut b = Order::new(10, 3);
        let first: Vec<usize> = (0..10).map(|p| a.index(p)).collect();
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let second: Vec<usize> = (10..20).map(|p| a.index(p)).collect();
        assert_ne!(first, second, "epochs reshuffle");
        // Random access (as on resume) gives the same answer.
        assert_eq!(b.index(13), second[3]);
        assert_eq!(b.index(2), first[2]);
    }
}
