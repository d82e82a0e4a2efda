//! Training data as a stream of tar shards, each read start to end (local files, `pipe:`
//! commands, http(s) URLs, object stores): nothing is listed up front, several shards are in
//! flight, and samples reach the run through a seeded shuffle buffer.
//!
//! The data is split into a fixed number of streams (each rank reads a block of them), so the
//! samples of a step do not depend on how many ranks share the work. Which sample comes at
//! each position of a stream is a pure function of the seed, the stream's index and the
//! shards' bytes: shards come in a seeded order (or are drawn with replacement), the shards
//! in flight are interleaved round-robin whatever their speed, and the buffer draws from a
//! seeded stream. A resumed run rebuilds the stream from its saved [`StreamState`] by reading
//! the shards in flight and those whose samples were in the buffer (`resume.rs`), or, with no
//! saved state, replays the epoch up to the position; either way, without decoding, it goes
//! on with exactly the samples an uninterrupted run reads.

mod readers;
mod resume;
mod tar;

use std::collections::{HashSet, VecDeque};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, RngCore};
use rand_xoshiro::SplitMix64;
use shard_source::{resampled_shard, Opener, RankShards, ShardUrl};

use readers::Readers;
pub use resume::StreamState;
pub use tar::{read_shards, tar_samples, RawSample};

use crate::{error_chain, stream, summarize_skips, DataError, Result, Skip, SkipReason};

/// Keeps the shuffle buffer's draws apart from other uses of the seed.
const SALT_BUFFER: u64 = 0x5354_5245_414d_0001;
/// Keeps each epoch's shard order apart.
const SALT_EPOCH: u64 = 0x5354_5245_414d_0002;
/// Samples a shard's reader may hold ready ahead of the interleaver.
const READ_AHEAD: usize = 32;

/// What a streamed run reads, and how.
#[derive(Clone)]
pub struct StreamSpec {
    /// The shards, in the order given.
    pub shards: Vec<ShardUrl>,
    /// Opens them (the HTTP agent, store clients, retries).
    pub opener: Arc<Opener>,
    /// Samples per epoch, all streams together.
    pub epoch_samples: u64,
    /// Draw shards with replacement (open_clip's `--dataset-resampled`) instead of shuffled
    /// passes over them.
    pub resampled: bool,
    /// Shards read at once (more are opened ahead, as many again).
    pub workers: usize,
    /// Shuffle-buffer size.
    pub shuffle_buffer: usize,
    /// Images need a caption (image–text runs); without, captions are not read.
    pub need_captions: bool,
}

impl StreamSpec {
    /// Samples per epoch of each of `streams` streams: the epoch's share, rounded up.
    pub fn epoch_len(&self, streams: usize) -> u64 {
        self.epoch_samples.div_ceil(streams as u64).max(1)
    }
}

/// What a shard's reader thread sends.
enum Msg {
    Sample(RawSample),
    Skip(Skip),
    /// The shard is done; how many samples it gave.
    End(u64),
}

/// Reads shard `url` into `tx` until it ends or the receiver is gone; its first `skip`
/// samples (taken before a resume) are read past, not sent.
fn read_shard(opener: &Opener, url: &ShardUrl, skip: u64, tx: &SyncSender<Msg>) {
    let name = url.to_string();
    let mut count = 0u64;
    let result = match opener.open(url) {
        Ok(reader) => tar_samples(
            std::io::BufReader::with_capacity(1 << 16, reader),
            &name,
            |s| {
                count += 1;
                count <= skip || tx.send(Msg::Sample(s)).is_ok()
            },
        ),
        Err(e) => Err(error_chain(&e)),
    };
    if let Err(why) = result {
        let _ = tx.send(Msg::Skip(Skip::new(&name, SkipReason::Shard(why))));
    }
    let _ = tx.send(Msg::End(count));
}

/// A shard being read by its own thread.
struct Open {
    /// Its place in the epoch's sequence of shards.
    seq: u64,
    /// Which of the spec's shards.
    shard: usize,
    /// Samples taken from it so far.
    taken: u64,
    rx: Receiver<Msg>,
}

/// Where a buffered sample came from: (sequence number of its shard in the epoch, its
/// ordinal in that shard).
type Tag = (u64, u64);

/// What a resume cost: samples and bytes read again (not decoded), and the time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Replay {
    /// Samples read again.
    pub samples: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// Shards read again (with a saved state: those in flight and those the buffer drew on).
    pub shards: u64,
    /// Buffered samples a shard no longer gave (it went missing or changed since): the order
    /// departs from the uninterrupted run's there.
    pub lost: u64,
}

impl std::ops::AddAssign for Replay {
    /// Adds another stream's cost (streams are rebuilt one after another).
    fn add_assign(&mut self, o: Self) {
        self.samples += o.samples;
        self.bytes += o.bytes;
        self.seconds += o.seconds;
        self.shards += o.shards;
        self.lost += o.lost;
    }
}

/// One of the data's streams, endless, epoch after epoch: each epoch is `epoch_samples /
/// streams` samples (rounded up) of its own shuffled passes over its share of the shards (or of
/// shards drawn with replacement), through the shuffle buffer.
pub struct ShardStream {
    spec: Arc<StreamSpec>,
    seed: u64,
    /// Which of the data's streams this is: it picks the shard share and the buffer's draws.
    index: usize,
    /// How many streams the data is split into (all ranks together).
    streams: usize,
    epoch_len: u64,
    epoch: u64,
    /// Samples handed out in this epoch.
    emitted: u64,
    order: RankShards,
    /// Shards opened in this epoch.
    opened: u64,
    /// The shards being interleaved, one per worker; `None`: take the next from `ahead`.
    slots: Vec<Option<Open>>,
    turn: usize,
    /// Shards opened ahead, in stream order.
    ahead: VecDeque<Open>,
    buffer: Vec<RawSample>,
    /// Where each buffered sample came from, in step with `buffer`.
    tags: Vec<Tag>,
    /// The threads reading the shards.
    readers: Readers,
    rng: SplitMix64,
    skips: Vec<Skip>,
    reported: HashSet<String>,
    /// Shards that ended without a sample since the last sample, and why the last did.
    dry: HashSet<usize>,
    dry_reasons: Vec<Skip>,
}

impl ShardStream {
    /// Stream `index` of `streams` under `seed`, at its start.
    pub fn new(spec: Arc<StreamSpec>, seed: u64, index: usize, streams: usize) -> Self {
        let mut s = Self::idle(spec, seed, index, streams);
        s.start_epoch(0);
        s
    }

    /// The stream with nothing open and nothing buffered.
    fn idle(spec: Arc<StreamSpec>, seed: u64, index: usize, streams: usize) -> Self {
        assert!(!spec.shards.is_empty(), "a stream needs shards");
        let epoch_len = spec.epoch_len(streams);
        let workers = spec.workers.max(1);
        let order = RankShards::new(spec.shards.len(), seed, index, streams);
        Self {
            spec,
            seed,
            index,
            streams,
            epoch_len,
            epoch: 0,
            emitted: 0,
            order,
            opened: 0,
            slots: (0..workers).map(|_| None).collect(),
            turn: 0,
            ahead: VecDeque::new(),
            buffer: Vec::new(),
            tags: Vec::new(),
            readers: Readers::default(),
            rng: stream(seed, SALT_BUFFER, 0),
            skips: Vec::new(),
            reported: HashSet::new(),
            dry: HashSet::new(),
            dry_reasons: Vec::new(),
        }
    }

    /// Samples this stream gives per epoch.
    pub fn epoch_len(&self) -> u64 {
        self.epoch_len
    }

    /// Moves to `position` (samples handed out since the start) with no saved state: replays
    /// its epoch from the epoch's start without decoding. Skips met while replaying count as
    /// reported (the earlier run listed them).
    pub fn seek(&mut self, position: u64) -> Result<Replay> {
        let t0 = Instant::now();
        self.start_epoch(position / self.epoch_len);
        let mut replay = Replay::default();
        for _ in 0..position % self.epoch_len {
            let (_, s) = self.next_sample()?;
            replay.samples += 1;
            replay.bytes += s.bytes() as u64;
        }
        replay.shards = self.opened;
        self.skips.clear();
        replay.seconds = t0.elapsed().as_secs_f64();
        Ok(replay)
    }

    /// The next sample and its position in the stream.
    pub fn next_sample(&mut self) -> Result<(u64, RawSample)> {
        if self.emitted == self.epoch_len {
            self.start_epoch(self.epoch + 1);
        }
        let size = self.spec.shuffle_buffer.max(1);
        while self.buffer.len() < size {
            let (tag, s) = self.pull()?;
            self.buffer.push(s);
            self.tags.push(tag);
        }
        let j = self.rng.random_range(0..self.buffer.len());
        let position = self.epoch * self.epoch_len + self.emitted;
        self.emitted += 1;
        self.tags.swap_remove(j);
        Ok((position, self.buffer.swap_remove(j)))
    }

    /// Shards and samples skipped since the last call, each name once per run.
    pub fn take_skips(&mut self) -> Vec<Skip> {
        std::mem::take(&mut self.skips)
    }

    /// The buffer's draws of `epoch`, from their start.
    fn epoch_rng(&self, epoch: u64) -> SplitMix64 {
        let stream_seed = self.seed ^ (self.index as u64).wrapping_mul(0xA24B_AED4_963E_E407);
        stream(stream_seed, SALT_BUFFER, epoch)
    }

    /// Nothing open, nothing buffered, at the start of `epoch`'s sequence of shards.
    fn reset_to(&mut self, epoch: u64) {
        let epoch_seed = stream(self.seed, SALT_EPOCH, epoch).next_u64();
        self.order = RankShards::new(self.spec.shards.len(), epoch_seed, self.index, self.streams);
        self.epoch = epoch;
        self.emitted = 0;
        self.opened = 0;
        self.slots.iter_mut().for_each(|s| *s = None);
        self.turn = 0;
        self.ahead.clear();
        self.buffer.clear();
        self.tags.clear();
        self.rng = self.epoch_rng(epoch);
    }

    fn start_epoch(&mut self, epoch: u64) {
        self.reset_to(epoch);
        while self.ahead.len() < self.slots.len() {
            self.open_next();
        }
    }

    /// The spec's shard at place `seq` of this epoch's sequence.
    fn shard_at(&mut self, seq: u64) -> usize {
        let n = self.spec.shards.len();
        if self.spec.resampled {
            resampled_shard(n, self.seed, self.index, (self.epoch << 40) + seq)
        } else {
            self.order.at(seq).1
        }
    }

    /// Starts reading the next shard of the epoch's sequence into `ahead`.
    fn open_next(&mut self) {
        let seq = self.opened;
        self.opened += 1;
        let open = self.open(seq, 0);
        self.ahead.push_back(open);
    }

    /// Starts a thread reading the shard at `seq`, past its first `skip` samples.
    fn open(&mut self, seq: u64, skip: u64) -> Open {
        let shard = self.shard_at(seq);
        let (tx, rx) = sync_channel(READ_AHEAD);
        let spec = Arc::clone(&self.spec);
        let job = move || read_shard(&spec.opener, &spec.shards[shard], skip, &tx);
        let rx = match self.readers.run(Box::new(job)) {
            Ok(_) => rx,
            Err(e) => {
                // No thread: the shard reads as empty, with the reason listed.
                let (tx, rx) = sync_channel(2);
                let why = SkipReason::Shard(format!("cannot start a reader thread: {e}"));
                let _ = tx.send(Msg::Skip(Skip::new(&self.spec.shards[shard], why)));
                let _ = tx.send(Msg::End(0));
                rx
            }
        };
        Open {
            seq,
            shard,
            taken: skip,
            rx,
        }
    }

    /// The next sample off the shards in flight, taken from each in turn, with its tag.
    fn pull(&mut self) -> Result<(Tag, RawSample)> {
        loop {
            let turn = self.turn;
            if self.slots[turn].is_none() {
                if self.ahead.is_empty() {
                    // Only a restored state can leave none opened ahead.
                    self.open_next();
                }
                let next = self.ahead.pop_front().expect("one was just opened");
                self.slots[turn] = Some(next);
                self.open_next();
            }
            let open = self.slots[turn].as_mut().expect("just filled");
            match open.rx.recv().unwrap_or(Msg::End(0)) {
                Msg::Sample(s) => {
                    let tag = (open.seq, open.taken);
                    open.taken += 1;
                    self.turn = (turn + 1) % self.slots.len();
                    self.dry.clear();
                    self.dry_reasons.clear();
                    return Ok((tag, s));
                }
                Msg::Skip(skip) => {
                    if self.dry_reasons.len() < 3 {
                        self.dry_reasons.push(skip.clone());
                    }
                    if self.reported.insert(skip.name.clone()) {
                        self.skips.push(skip);
                    }
                }
                Msg::End(samples) => {
                    let shard = open.shard;
                    self.slots[turn] = None;
                    if samples == 0 {
                        self.dry.insert(shard);
                        if self.dry.len() == self.spec.shards.len() {
                            return Err(DataError::NoShardReadable {
                                shards: self.spec.shards.len(),
                                detail: summarize_skips(&self.dry_reasons).replace('\n', "; "),
                            });
                        }
                    }
                }
            }
        }
    }
}
