//! A background thread that loads, decodes and augments batches ahead of the model.
//!
//! Samples are read from their files or shards only when a batch needs them (or from the
//! decoded-sample cache). The order of samples and every random choice are pure functions of
//! the seed and a sample's global position, and a bad sample is replaced by the next
//! positions, so a batch depends only on where the run is: a resumed run sees exactly the
//! batches an uninterrupted one would, whatever the thread timing.

use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use clip_data::{
    stream, summarize_skips, Augmenter, DecodedCache, Order, OrderConfig, Replay, Sample,
    SampleSet, ShardStream, Skip, SkipReason, StreamSpec, StreamState,
};
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
    /// Sample index of each row (its global position for streamed data).
    pub items: Vec<usize>,
    /// The (local) position the next batch starts at (saved with checkpoints, for resume).
    pub next_position: usize,
    /// Samples skipped while filling this batch, first time seen.
    pub skipped: Vec<Skip>,
    /// What rebuilding the stream at the resume position cost (the first batch after a
    /// resume only).
    pub replayed: Option<Replay>,
    /// Where this rank's streams stand after this batch (streamed data; in stream order),
    /// saved with checkpoints.
    pub streams: Vec<StreamState>,
}

/// Where a loader starts: a sample position, and for streamed data the saved states of the
/// rank's streams there (without them each stream replays its epoch up to its share of the
/// position).
#[derive(Debug, Clone, Default)]
pub struct Start {
    /// This rank's sample position (for streamed data, the sum over its streams).
    pub position: usize,
    /// The states of this rank's streams at `position`, in stream order, from the checkpoint.
    pub streams: Vec<StreamState>,
}

impl From<usize> for Start {
    fn from(position: usize) -> Self {
        Self {
            position,
            streams: Vec::new(),
        }
    }
}

/// Where the samples come from.
#[derive(Clone)]
pub enum Feed {
    /// Listed samples in a seeded order, read at random, through the decoded-sample cache.
    Listed {
        /// The samples.
        data: Arc<SampleSet>,
        /// Decoded samples kept between epochs.
        cache: Arc<DecodedCache>,
        /// Epoch length and shuffle buffer.
        order: OrderConfig,
    },
    /// Shards streamed start to end, split into `streams` [`ShardStream`]s (all ranks
    /// together; each rank reads its block of them).
    Streamed {
        /// The shards and how to read them.
        spec: Arc<StreamSpec>,
        /// How many streams the data is split into.
        streams: usize,
    },
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

/// Everything that fixes the batches of a run.
pub struct LoaderSpec {
    /// The samples.
    pub feed: Feed,
    /// Augmentation and normalisation.
    pub aug: Augmenter,
    /// Captions or two views.
    pub mode: LoaderMode,
    /// Samples per batch.
    pub batch: usize,
    /// Seed of the order and the augmentations.
    pub seed: u64,
    /// Images are downscaled to this shortest side when decoded.
    pub max_short_side: u32,
    /// Which share of the positions this process reads (data-parallel ranks).
    pub share: Share,
}

/// A rank's share of the sample positions: local position `p` is global position
/// `p·world + rank`, so the ranks read disjoint samples, and the global batch of N ranks at a
/// step holds the samples one process would read with N times the batch (bad samples apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
}

impl Share {
    /// All positions: one process.
    pub const WHOLE: Self = Self { rank: 0, world: 1 };

    /// The global position of this share's `local`-th position.
    pub fn global(&self, local: usize) -> usize {
        local * self.world + self.rank
    }

    /// The block of `streams` streams this share reads (`streams` a multiple of the ranks).
    pub fn streams(&self, streams: usize) -> std::ops::Range<usize> {
        let k = streams / self.world;
        self.rank * k..(self.rank + 1) * k
    }
}

/// Sample `i` through the cache, or why it is skipped and whether this is the first time;
/// `bad` remembers the samples that failed, so each is reported once and not read again.
fn fetch(
    data: &SampleSet,
    cache: &DecodedCache,
    max_short_side: u32,
    bad: &BadSamples,
    i: usize,
) -> Result<Arc<Sample>, (SkipReason, bool)> {
    if let Some(s) = cache.get(i) {
        return Ok(s);
    }
    if let Some(r) = bad.lock().expect("bad-sample lock").get(&i) {
        return Err((r.clone(), false));
    }
    match data.load(i, max_short_side) {
        Ok(s) => Ok(cache.insert(i, s)),
        Err(r) => {
            let first = bad.lock().expect("bad-sample lock").insert(i, r.clone());
            Err((r, first.is_none()))
        }
    }
}

type BadSamples = Mutex<HashMap<usize, SkipReason>>;

/// The loader thread's reading state.
enum Reader {
    Listed {
        order: Order,
        bad: BadSamples,
    },
    Streamed {
        /// This rank's streams and their indices among all streams.
        streams: Vec<(usize, ShardStream)>,
        /// How many streams there are, all ranks together.
        of: usize,
        /// Samples that failed to decode, by name: each is listed once.
        bad: HashSet<String>,
    },
}

impl Reader {
    /// Starts reading `feed` at `start`; for a stream, what rebuilding it there cost.
    fn start(spec: &LoaderSpec, start: Start) -> Result<(Self, Option<Replay>), String> {
        let position = start.position;
        match &spec.feed {
            Feed::Listed { data, order, .. } => {
                let order = Order::new(data.len(), data.shard_ranges(), spec.seed, order.clone());
                let bad = BadSamples::default();
                Ok((Reader::Listed { order, bad }, None))
            }
            Feed::Streamed {
                spec: stream_spec,
                streams: of,
            } => {
                let owned = spec.share.streams(*of);
                let k = owned.len() as u64;
                if k == 0
                    || !of.is_multiple_of(spec.share.world)
                    || !spec.batch.is_multiple_of(owned.len())
                {
                    return Err(format!(
                        "{of} streams do not split evenly over {} ranks and their batches of {}",
                        spec.share.world, spec.batch
                    ));
                }
                let (mut streams, mut replay) = (Vec::new(), None::<Replay>);
                for (j, index) in owned.enumerate() {
                    let (stream_spec, seed) = (Arc::clone(stream_spec), spec.seed);
                    let saved = start.streams.get(j);
                    // A saved state knows its own position; without one, the rank's streams
                    // advanced alike (bad samples apart).
                    let at = saved.map_or(position as u64 / k, |st| {
                        st.position(stream_spec.epoch_len(*of))
                    });
                    let stream = match (at, saved) {
                        (0, None) => ShardStream::new(stream_spec, seed, index, *of),
                        (at, saved) => {
                            let resumed =
                                ShardStream::resume(stream_spec, seed, index, *of, at, saved);
                            let (s, r) = resumed.map_err(|e| clip_data::error_chain(&e))?;
                            *replay.get_or_insert_with(Replay::default) += r;
                            s
                        }
                    };
                    streams.push((index, stream));
                }
                let bad = HashSet::new();
                Ok((
                    Reader::Streamed {
                        streams,
                        of: *of,
                        bad,
                    },
                    replay,
                ))
            }
        }
    }
}

/// A loaded row of a batch: its global position, its item (sample index or stream
/// position) and the sample.
type Row = (usize, usize, Arc<Sample>);

/// Handle to the loader thread; batches arrive in step order.
pub struct Loader {
    rx: Receiver<Result<Batch, String>>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts producing batches for steps `steps`, the first one starting at `start` (a
    /// sample position, or a [`Start`] with a stream's saved state), `prefetch` batches
    /// ahead.
    pub fn spawn(
        spec: LoaderSpec,
        steps: std::ops::Range<usize>,
        start: impl Into<Start>,
        prefetch: usize,
    ) -> Self {
        let start = start.into();
        let (tx, rx) = sync_channel(prefetch.max(1));
        let handle = std::thread::spawn(move || {
            let mut position = start.position;
            let (mut reader, mut replayed) = match Reader::start(&spec, start) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            for step in steps {
                let msg = next_batch(&spec, &mut reader, step, &mut position).map(|mut b| {
                    b.replayed = replayed.take();
                    b
                });
                let failed = msg.is_err();
                if tx.send(msg).is_err() || failed {
                    return; // the trainer stopped early, or the data is unusable
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

/// Fills one batch from `position` on, then augments and tokenises it.
fn next_batch(
    spec: &LoaderSpec,
    reader: &mut Reader,
    step: usize,
    position: &mut usize,
) -> Result<Batch, String> {
    let (good, skipped, streams) = match (reader, &spec.feed) {
        (Reader::Listed { order, bad }, Feed::Listed { data, cache, .. }) => {
            let (good, skipped) = fill_listed(spec, data, cache, bad, order, position)?;
            (good, skipped, Vec::new())
        }
        (Reader::Streamed { streams, of, bad }, _) => {
            let quota = spec.batch / streams.len();
            let (mut good, mut skipped) = (Vec::with_capacity(spec.batch), Vec::new());
            for (index, stream) in streams.iter_mut() {
                let p = (stream, *index, *of);
                let (g, s) = fill_streamed(spec, p, quota, bad, position)?;
                good.extend(g);
                skipped.extend(s);
            }
            let states = streams.iter().map(|(_, s)| s.state()).collect();
            (good, skipped, states)
        }
        (Reader::Listed { .. }, Feed::Streamed { .. }) => {
            unreachable!("the reader follows the feed")
        }
    };
    let (pixels, ids) = augment(spec, &good)?;
    Ok(Batch {
        step,
        pixels,
        ids,
        items: good.iter().map(|&(_, item, _)| item).collect(),
        next_position: *position,
        skipped,
        replayed: None,
        streams,
    })
}

/// The error for a run of bad samples as long as `limit`, with the first reasons.
fn unusable(limit: usize, first: &[Skip]) -> String {
    format!(
        "no usable sample in {limit} consecutive samples of the data ({})",
        summarize_skips(first).replace('\n', "; ")
    )
}

/// Listed samples from `position` on: loads the next positions in parallel, keeps the good
/// samples in position order and draws further positions for the bad ones.
fn fill_listed(
    spec: &LoaderSpec,
    data: &SampleSet,
    cache: &DecodedCache,
    bad: &BadSamples,
    order: &mut Order,
    position: &mut usize,
) -> Result<(Vec<Row>, Vec<Skip>), String> {
    let b = spec.batch;
    let mut good: Vec<Row> = Vec::with_capacity(b);
    let mut skipped = Vec::new();
    let mut bad_run = 0usize;
    let mut run_reasons: Vec<Skip> = Vec::new();
    let limit = order.epoch_len().max(data.len());
    while good.len() < b {
        let want: Vec<(usize, usize)> = (0..b - good.len())
            .map(|j| {
                let pos = spec.share.global(*position + j);
                (pos, order.index(pos))
            })
            .collect();
        *position += want.len();
        let loaded: Vec<_> = want
            .par_iter()
            .map(|&(pos, idx)| (pos, idx, fetch(data, cache, spec.max_short_side, bad, idx)))
            .collect();
        for (pos, idx, r) in loaded {
            match r {
                Ok(s) => {
                    good.push((pos, idx, s));
                    bad_run = 0;
                }
                Err((reason, first)) => {
                    let skip = Skip::new(data.name(idx), reason);
                    if run_reasons.len() < 3 {
                        run_reasons.push(skip.clone());
                    }
                    if first {
                        skipped.push(skip);
                    }
                    bad_run += 1;
                }
            }
        }
        if bad_run >= limit {
            return Err(unusable(limit, &run_reasons));
        }
    }
    Ok((good, skipped))
}

/// `b` good samples of stream `index` of `of`: takes them in stream order, decodes them in
/// parallel, and takes more of the same stream for the ones that fail (each listed once by
/// name), so a step's samples do not depend on how the streams are spread over ranks. A
/// stream's `q`-th sample is global position `q·of + index`.
fn fill_streamed(
    spec: &LoaderSpec,
    (stream, index, of): (&mut ShardStream, usize, usize),
    b: usize,
    bad: &mut HashSet<String>,
    position: &mut usize,
) -> Result<(Vec<Row>, Vec<Skip>), String> {
    let need_captions = matches!(spec.mode, LoaderMode::Captions(_));
    let limit = (stream.epoch_len() as usize).max(b);
    let mut good: Vec<Row> = Vec::with_capacity(b);
    let mut skipped = Vec::new();
    let (mut bad_run, mut run_reasons) = (0usize, Vec::new());
    while good.len() < b {
        let raw = (0..b - good.len())
            .map(|_| stream.next_sample())
            .collect::<clip_data::Result<Vec<_>>>()
            .map_err(|e| clip_data::error_chain(&e))?;
        *position += raw.len();
        skipped.extend(stream.take_skips());
        let decoded: Vec<_> = raw
            .par_iter()
            .map(|(_, r)| r.decode(spec.max_short_side, need_captions))
            .collect();
        for ((pos, r), d) in raw.into_iter().zip(decoded) {
            match d {
                Ok(s) => {
                    let global = pos as usize * of + index;
                    good.push((global, global, Arc::new(s)));
                    bad_run = 0;
                }
                Err(reason) => {
                    let skip = Skip::new(&r.name, reason);
                    if run_reasons.len() < 3 {
                        run_reasons.push(skip.clone());
                    }
                    if bad.insert(r.name) {
                        skipped.push(skip);
                    }
                    bad_run += 1;
                }
            }
        }
        if bad_run >= limit {
            return Err(unusable(limit, &run_reasons));
        }
    }
    Ok((good, skipped))
}

/// The batch's pixels (augmented views) and token rows; every random choice is drawn from
/// the row's global position.
fn augment(spec: &LoaderSpec, good: &[Row]) -> Result<(Vec<f32>, Vec<Vec<u32>>), String> {
    let aug = &spec.aug;
    Ok(match &spec.mode {
        LoaderMode::Captions(tokenizer) => {
            let views: Vec<(Vec<f32>, std::borrow::Cow<str>)> = good
                .par_iter()
                .map(|(pos, _, s)| {
                    let mut rng = stream(spec.seed, 2, *pos as u64);
                    let cap = s.captions[rng.random_range(0..s.captions.len())].as_str();
                    let pixels = aug.train(&s.image, &mut rng);
                    (pixels, aug.caption(cap, &mut rng))
                })
                .collect();
            let caps: Vec<&str> = views.iter().map(|(_, c)| c.as_ref()).collect();
            let ids = tokenizer.encode_batch(&caps).map_err(|e| e.to_string())?;
            let pixels = views.iter().flat_map(|(p, _)| p.iter().copied()).collect();
            (pixels, ids)
        }
        LoaderMode::TwoViews => {
            let pairs: Vec<(Vec<f32>, Vec<f32>)> = good
                .par_iter()
                .map(|(pos, _, s)| {
                    let mut rng = stream(spec.seed, 3, *pos as u64);
                    let a = aug.train(&s.image, &mut rng);
                    (a, aug.train(&s.image, &mut rng))
                })
                .collect();
            let mut pixels: Vec<f32> = pairs.iter().flat_map(|(a, _)| a.iter().copied()).collect();
            pixels.extend(pairs.iter().flat_map(|(_, b)| b.iter().copied()));
            (pixels, Vec::new())
        }
    })
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
