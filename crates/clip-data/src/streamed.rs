//! Training data as a stream of tar shards, each read start to end (local files, `pipe:`
//! commands, http(s) URLs, object stores): nothing is listed up front, several shards are in
//! flight, and samples reach the run through a seeded shuffle buffer.
//!
//! Which sample comes at each position is a pure function of the seed, the rank and the
//! shards' bytes: shards come in a seeded order (or are drawn with replacement), the shards
//! in flight are interleaved round-robin whatever their speed, and the buffer draws from a
//! seeded stream. So a resumed run replays its epoch up to the saved position, without
//! decoding, and goes on with exactly the samples an uninterrupted run reads.

use std::collections::{HashSet, VecDeque};
use std::io::Read;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, RngCore};
use rand_xoshiro::SplitMix64;
use shard_source::{resampled_shard, Opener, RankShards, ShardError, ShardUrl};

use crate::limits::{self, MAX_CAPTION_BYTES, MAX_IMAGE_BYTES};
use crate::samples::{caption_text, decode_downscaled};
use crate::source::{split_key, IMAGE_EXTS};
use crate::{
    error_chain, stream, summarize_skips, DataError, Item, Result, Sample, SampleSet, Skip,
    SkipReason,
};

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
    /// Samples per epoch, all ranks together.
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

/// One sample as its shard holds it, not yet decoded.
#[derive(Debug, Clone)]
pub struct RawSample {
    /// `shard:key`.
    pub name: String,
    /// The image's extension and bytes.
    image: Option<(String, Vec<u8>)>,
    caption: Option<Vec<u8>>,
    /// Why it cannot be used, found while reading (a member over its size cap).
    bad: Option<SkipReason>,
}

impl RawSample {
    fn new(name: String) -> Self {
        Self {
            name,
            image: None,
            caption: None,
            bad: None,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.image.as_ref().map_or(0, |(_, b)| b.len()) + self.caption.as_ref().map_or(0, Vec::len)
    }

    /// Decodes the image (downscaled to `max_short_side`, as [`crate::SampleSet::load`]) and
    /// reads the caption when `need_captions`; an error is the reason to skip it.
    pub fn decode(
        &self,
        max_short_side: u32,
        need_captions: bool,
    ) -> std::result::Result<Sample, SkipReason> {
        if let Some(why) = &self.bad {
            return Err(why.clone());
        }
        let Some((ext, bytes)) = &self.image else {
            return Err(SkipReason::NoImage);
        };
        let captions = match (&self.caption, need_captions) {
            (_, false) => Vec::new(),
            (None, true) => return Err(SkipReason::NoCaption),
            (Some(c), true) => caption_text(c.clone()).map_err(SkipReason::Caption)?,
        };
        let name = format!("{}.{ext}", self.name);
        let image = decode_downscaled(bytes, Path::new(&name), max_short_side)?;
        Ok(Sample { image, captions })
    }
}

/// Reads a tar stream's samples in order: members sharing a key (webdataset's convention:
/// the file name up to its first dot) make one sample, which ends where the next key begins.
/// `emit` returns false to stop early. An error is why the rest of the shard is lost (the
/// sample being read when it struck is dropped).
pub fn tar_samples(
    reader: impl Read,
    shard: &str,
    mut emit: impl FnMut(RawSample) -> bool,
) -> std::result::Result<(), String> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| lost(&e))?;
    let mut current: Option<(String, RawSample)> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| lost(&e))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let Ok(path) = entry.path().map(|p| p.to_string_lossy().into_owned()) else {
            continue;
        };
        let Some((key, ext)) = split_key(&path) else {
            continue;
        };
        let ext = ext.to_ascii_lowercase();
        // `b.x.png`'s extension is `x.png` (webdataset's key rule); its last suffix says
        // what it is.
        let kind = ext.rsplit('.').next().unwrap_or_default();
        let max = match kind {
            "txt" => MAX_CAPTION_BYTES,
            k if IMAGE_EXTS.contains(&k) => MAX_IMAGE_BYTES,
            _ => continue,
        };
        if current.as_ref().is_some_and(|(k, _)| k != key) {
            let (_, done) = current.take().expect("checked");
            if !emit(done) {
                return Ok(());
            }
        }
        let (_, sample) = current
            .get_or_insert_with(|| (key.to_string(), RawSample::new(format!("{shard}:{key}"))));
        if entry.size() > max {
            // Not read: the archive skips over it.
            let why = format!("member {path} is {}", limits::too_big(entry.size(), max));
            sample.bad = Some(SkipReason::Image(why));
            continue;
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(|e| lost(&e))?;
        if bytes.len() as u64 != entry.size() {
            return Err(format!("shard is cut off in the middle of member {path}"));
        }
        match kind {
            "txt" => sample.caption = Some(bytes),
            _ => sample.image = Some((ext, bytes)),
        }
    }
    if let Some((_, last)) = current {
        emit(last);
    }
    Ok(())
}

/// Why the rest of a shard is lost, from a read error: the byte layer's own error (URL,
/// offset, retries, cause) when it has one.
fn lost(e: &std::io::Error) -> String {
    match ShardError::from_io(e) {
        Some(shard) => error_chain(shard),
        None => format!("shard is cut off or damaged: {e}"),
    }
}

/// Every sample of `shards`, each shard read once in the order given and decoded whole (an
/// evaluation set: it is held in memory); what cannot be used is listed, not fatal, unless
/// nothing is left.
pub fn read_shards(shards: &[ShardUrl], opener: &Opener, need_captions: bool) -> Result<SampleSet> {
    let (mut items, mut skips) = (Vec::new(), Vec::new());
    for url in shards {
        let name = url.to_string();
        let read = match opener.open(url) {
            Ok(reader) => tar_samples(std::io::BufReader::new(reader), &name, |raw| {
                match raw.decode(u32::MAX, need_captions) {
                    Ok(s) => items.push(Item {
                        name: raw.name,
                        image: Arc::unwrap_or_clone(s.image),
                        captions: s.captions,
                    }),
                    Err(why) => skips.push(Skip::new(&raw.name, why)),
                }
                true
            }),
            Err(e) => Err(error_chain(&e)),
        };
        if let Err(why) = read {
            skips.push(Skip::new(&name, SkipReason::Shard(why)));
        }
    }
    if items.is_empty() {
        let names: Vec<String> = shards.iter().map(ToString::to_string).collect();
        return Err(DataError::Empty {
            sources: names.join(", "),
            detail: format!(
                " (skipped: {})",
                summarize_skips(&skips).replace('\n', "; ")
            ),
        });
    }
    Ok(SampleSet::from_items(items).with_skips(skips))
}

/// What a shard's reader thread sends.
enum Msg {
    Sample(RawSample),
    Skip(Skip),
    /// The shard is done; how many samples it gave.
    End(u64),
}

/// Reads shard `url` into `tx` until it ends or the receiver is gone.
fn read_shard(opener: &Opener, url: &ShardUrl, tx: &SyncSender<Msg>) {
    let name = url.to_string();
    let mut count = 0u64;
    let result = match opener.open(url) {
        Ok(reader) => tar_samples(
            std::io::BufReader::with_capacity(1 << 16, reader),
            &name,
            |s| {
                count += 1;
                tx.send(Msg::Sample(s)).is_ok()
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
    /// Which of the spec's shards.
    shard: usize,
    rx: Receiver<Msg>,
}

/// What replaying to a resume position cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Replay {
    /// Samples read again and dropped.
    pub samples: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Seconds it took.
    pub seconds: f64,
}

/// One rank's endless stream of samples, epoch after epoch: each epoch is `epoch_samples /
/// world` samples (rounded up) of its own shuffled passes over the rank's shards (or of
/// shards drawn with replacement), through the shuffle buffer.
pub struct ShardStream {
    spec: Arc<StreamSpec>,
    seed: u64,
    rank: usize,
    world: usize,
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
    rng: SplitMix64,
    skips: Vec<Skip>,
    reported: HashSet<String>,
    /// Shards that ended without a sample since the last sample, and why the last did.
    dry: HashSet<usize>,
    dry_reasons: Vec<Skip>,
}

impl ShardStream {
    /// Rank `rank` of `world`'s stream under `seed`, at its start.
    pub fn new(spec: Arc<StreamSpec>, seed: u64, rank: usize, world: usize) -> Self {
        assert!(!spec.shards.is_empty(), "a stream needs shards");
        let epoch_len = spec.epoch_samples.div_ceil(world as u64).max(1);
        let workers = spec.workers.max(1);
        let order = RankShards::new(spec.shards.len(), seed, rank, world);
        let mut s = Self {
            spec,
            seed,
            rank,
            world,
            epoch_len,
            epoch: 0,
            emitted: 0,
            order,
            opened: 0,
            slots: (0..workers).map(|_| None).collect(),
            turn: 0,
            ahead: VecDeque::new(),
            buffer: Vec::new(),
            rng: stream(seed, SALT_BUFFER, 0),
            skips: Vec::new(),
            reported: HashSet::new(),
            dry: HashSet::new(),
            dry_reasons: Vec::new(),
        };
        s.start_epoch(0);
        s
    }

    /// Samples this rank reads per epoch.
    pub fn epoch_len(&self) -> u64 {
        self.epoch_len
    }

    /// Moves to `position` (samples handed out since the start): replays its epoch from the
    /// epoch's start without decoding, dropping what an earlier run already consumed. Skips
    /// met while replaying count as reported (the earlier run listed them).
    pub fn seek(&mut self, position: u64) -> Result<Replay> {
        let t0 = Instant::now();
        self.start_epoch(position / self.epoch_len);
        let mut replay = Replay::default();
        for _ in 0..position % self.epoch_len {
            let (_, s) = self.next_sample()?;
            replay.samples += 1;
            replay.bytes += s.bytes() as u64;
        }
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
            let s = self.pull()?;
            self.buffer.push(s);
        }
        let j = self.rng.random_range(0..self.buffer.len());
        let position = self.epoch * self.epoch_len + self.emitted;
        self.emitted += 1;
        Ok((position, self.buffer.swap_remove(j)))
    }

    /// Shards and samples skipped since the last call, each name once per run.
    pub fn take_skips(&mut self) -> Vec<Skip> {
        std::mem::take(&mut self.skips)
    }

    fn start_epoch(&mut self, epoch: u64) {
        let epoch_seed = stream(self.seed, SALT_EPOCH, epoch).next_u64();
        self.order = RankShards::new(self.spec.shards.len(), epoch_seed, self.rank, self.world);
        self.epoch = epoch;
        self.emitted = 0;
        self.opened = 0;
        self.slots.iter_mut().for_each(|s| *s = None);
        self.turn = 0;
        self.ahead.clear();
        self.buffer.clear();
        let rank_seed = self.seed ^ (self.rank as u64).wrapping_mul(0xA24B_AED4_963E_E407);
        self.rng = stream(rank_seed, SALT_BUFFER, epoch);
        while self.ahead.len() < self.slots.len() {
            self.open_next();
        }
    }

    /// Starts reading the next shard of the epoch's sequence into `ahead`.
    fn open_next(&mut self) {
        let k = self.opened;
        self.opened += 1;
        let n = self.spec.shards.len();
        let shard = if self.spec.resampled {
            resampled_shard(n, self.seed, self.rank, (self.epoch << 40) + k)
        } else {
            self.order.at(k).1
        };
        let (tx, rx) = sync_channel(READ_AHEAD);
        let spec = Arc::clone(&self.spec);
        let spawned = std::thread::Builder::new()
            .name("shard-reader".into())
            .spawn(move || read_shard(&spec.opener, &spec.shards[shard], &tx));
        if let Err(e) = spawned {
            // No thread: the shard reads as empty, with the reason listed.
            let (tx, rx2) = sync_channel(2);
            let why = SkipReason::Shard(format!("cannot start a reader thread: {e}"));
            let _ = tx.send(Msg::Skip(Skip::new(&self.spec.shards[shard], why)));
            let _ = tx.send(Msg::End(0));
            self.ahead.push_back(Open { shard, rx: rx2 });
            return;
        }
        self.ahead.push_back(Open { shard, rx });
    }

    /// The next sample off the shards in flight, taken from each in turn.
    fn pull(&mut self) -> Result<RawSample> {
        loop {
            let turn = self.turn;
            if self.slots[turn].is_none() {
                let next = self.ahead.pop_front().expect("shards are opened ahead");
                self.slots[turn] = Some(next);
                self.open_next();
            }
            let open = self.slots[turn].as_ref().expect("just filled");
            match open.rx.recv().unwrap_or(Msg::End(0)) {
                Msg::Sample(s) => {
                    self.turn = (turn + 1) % self.slots.len();
                    self.dry.clear();
                    self.dry_reasons.clear();
                    return Ok(s);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn members_group_by_key_in_order() {
        let t = tar_of(&[
            ("a.jpg", b"A"),
            ("a.txt", b"cap a"),
            ("a.json", b"{}"),
            ("dir/b.x.png", b"B"),
            ("dir/b.x.txt", b"cap b"),
            ("c.txt", b"orphan"),
        ]);
        let mut got = Vec::new();
        tar_samples(&t[..], "s.tar", |s| {
            got.push(s);
            true
        })
        .unwrap();
        let names: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["s.tar:a", "s.tar:dir/b", "s.tar:c"]);
        assert_eq!(got[0].image.as_ref().unwrap().1, b"A");
        assert_eq!(got[0].caption.as_deref(), Some(&b"cap a"[..]));
        assert_eq!(got[1].image.as_ref().unwrap().0, "x.png");
        assert_eq!(got[2].decode(8, true).unwrap_err(), SkipReason::NoImage);
    }

    #[test]
    fn a_cut_stream_keeps_whole_samples_and_says_why() {
        let t = tar_of(&[("a.jpg", &[1; 700]), ("a.txt", b"x"), ("b.jpg", &[2; 700])]);
        let cut = &t[..t.len() - 1500];
        let mut got = Vec::new();
        let err = tar_samples(cut, "s.tar", |s| {
            got.push(s.name);
            true
        })
        .unwrap_err();
        assert_eq!(got, ["s.tar:a"]);
        assert!(err.contains("cut off"), "{err}");
    }
}
