//! A stream's place, saved with each checkpoint ([`StreamState`]), and the stream rebuilt
//! from it ([`ShardStream::restore`]) by reading only the shards in flight and those whose
//! samples sat in the shuffle buffer: what a resume costs is bounded by the buffer and the
//! workers, not by how far into its epoch the run was.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use serde::{Deserialize, Serialize};
use shard_source::{Opener, ShardUrl};

use super::{tar_samples, RawSample, Replay, ShardStream, StreamSpec};

/// Where a stream stands, compactly (one entry per buffered sample, a few numbers more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    /// The epoch.
    pub epoch: u64,
    /// Samples handed out in it.
    pub emitted: u64,
    /// Shards of its sequence opened so far (done, in flight or ahead).
    pub opened: u64,
    /// The worker whose turn it is.
    pub turn: usize,
    /// Each worker's shard, if it has one: its place in the epoch's sequence of shards, and
    /// the samples taken from it.
    pub slots: Vec<Option<(u64, u64)>>,
    /// The shards opened ahead, by place in the sequence.
    pub ahead: Vec<u64>,
    /// The shuffle buffer in order: each sample's shard (place in the sequence) and its
    /// ordinal in that shard.
    pub buffer: Vec<(u64, u64)>,
}

impl StreamState {
    /// The stream position it stands at, for a stream of `epoch_len` samples per epoch.
    pub fn position(&self, epoch_len: u64) -> u64 {
        self.epoch * epoch_len + self.emitted
    }

    /// Samples [`ShardStream::restore`] reads again: each buffered shard up to the last
    /// sample needed, and what was taken from the shards in flight.
    pub fn reread(&self) -> u64 {
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for &(seq, ordinal) in &self.buffer {
            let e = last.entry(seq).or_default();
            *e = (*e).max(ordinal + 1);
        }
        let taken: u64 = self.slots.iter().flatten().map(|&(_, t)| t).sum();
        last.values().sum::<u64>() + taken
    }
}

/// The samples at `ordinals` of shard `url`, read from its start as far as the last of them;
/// also how many samples and bytes that read.
fn read_prefix(
    opener: &Opener,
    url: &ShardUrl,
    ordinals: &[u64],
) -> (HashMap<u64, RawSample>, u64, u64) {
    let want: HashSet<u64> = ordinals.iter().copied().collect();
    let last = ordinals.iter().copied().max().unwrap_or(0);
    let (mut got, mut read, mut bytes) = (HashMap::new(), 0u64, 0u64);
    if let Ok(reader) = opener.open(url) {
        let name = url.to_string();
        // A shard that fails now only loses its samples here (counted by the caller).
        let _ = tar_samples(std::io::BufReader::new(reader), &name, |s| {
            let i = read;
            read += 1;
            bytes += s.bytes() as u64;
            if want.contains(&i) {
                got.insert(i, s);
            }
            i < last
        });
    }
    (got, read, bytes)
}

impl ShardStream {
    /// Stream `index` of `streams` at `position`, the cheaper way: rebuilt from `state`
    /// (saved there) when that reads fewer samples again than replaying the epoch from its
    /// start, else replayed.
    pub fn resume(
        spec: Arc<StreamSpec>,
        seed: u64,
        index: usize,
        streams: usize,
        position: u64,
        state: Option<&StreamState>,
    ) -> crate::Result<(Self, Replay)> {
        let epoch_len = spec.epoch_len(streams);
        let replay_cost = position % epoch_len + spec.shuffle_buffer as u64;
        let state = state.filter(|st| st.position(epoch_len) == position);
        if let Some(st) = state.filter(|st| st.reread() < replay_cost) {
            if let Some(rebuilt) = Self::restore(Arc::clone(&spec), seed, index, streams, st) {
                return Ok(rebuilt);
            }
        }
        let mut s = Self::new(spec, seed, index, streams);
        let replay = s.seek(position)?;
        Ok((s, replay))
    }

    /// Where the stream stands now (after the last sample handed out).
    pub fn state(&self) -> StreamState {
        StreamState {
            epoch: self.epoch,
            emitted: self.emitted,
            opened: self.opened,
            turn: self.turn,
            slots: (self.slots.iter())
                .map(|o| o.as_ref().map(|o| (o.seq, o.taken)))
                .collect(),
            ahead: self.ahead.iter().map(|o| o.seq).collect(),
            buffer: self.tags.clone(),
        }
    }

    /// Stream `index` of `streams` as `state` left it: the buffered samples read again
    /// from their shards (in parallel), the shards in flight reopened past what was taken,
    /// the buffer's random draws replayed. `None` when the state cannot be this stream's (a
    /// different number of workers, an epoch position past the epoch).
    pub fn restore(
        spec: Arc<StreamSpec>,
        seed: u64,
        index: usize,
        streams: usize,
        state: &StreamState,
    ) -> Option<(Self, Replay)> {
        let t0 = Instant::now();
        let mut s = Self::idle(spec, seed, index, streams);
        let fits = state.slots.len() == s.slots.len()
            && state.turn < s.slots.len()
            && state.emitted <= s.epoch_len;
        if !fits {
            return None;
        }
        s.reset_to(state.epoch);
        (s.emitted, s.opened, s.turn) = (state.emitted, state.opened, state.turn);
        // Every draw so far was over a full buffer.
        let size = s.spec.shuffle_buffer.max(1);
        for _ in 0..state.emitted {
            s.rng.random_range(0..size);
        }
        let mut wanted: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for &(seq, ordinal) in &state.buffer {
            wanted.entry(seq).or_default().push(ordinal);
        }
        let shards: Vec<(u64, usize)> = wanted.keys().map(|&q| (q, s.shard_at(q))).collect();
        let spec = Arc::clone(&s.spec);
        let mut found: HashMap<u64, HashMap<u64, RawSample>> = HashMap::new();
        let mut replay = Replay::default();
        std::thread::scope(|scope| {
            let reads: Vec<_> = (shards.iter())
                .map(|&(seq, shard)| {
                    let (spec, ordinals) = (&spec, &wanted[&seq]);
                    let read = move || read_prefix(&spec.opener, &spec.shards[shard], ordinals);
                    (seq, scope.spawn(read))
                })
                .collect();
            for (seq, h) in reads {
                let (got, read, bytes) = h.join().expect("a resume reader panicked");
                (replay.samples, replay.bytes) = (replay.samples + read, replay.bytes + bytes);
                found.insert(seq, got);
            }
        });
        for &(seq, ordinal) in &state.buffer {
            match found.get_mut(&seq).and_then(|m| m.remove(&ordinal)) {
                Some(sample) => {
                    s.buffer.push(sample);
                    s.tags.push((seq, ordinal));
                }
                None => replay.lost += 1,
            }
        }
        for (i, slot) in state.slots.iter().enumerate() {
            if let Some((seq, taken)) = *slot {
                s.slots[i] = Some(s.open(seq, taken));
                replay.samples += taken;
            }
        }
        for &seq in &state.ahead {
            let open = s.open(seq, 0);
            s.ahead.push_back(open);
        }
        let in_flight = state.slots.iter().flatten().map(|&(q, _)| q);
        let reread: HashSet<u64> = wanted.keys().copied().chain(in_flight).collect();
        replay.shards = reread.len() as u64;
        replay.seconds = t0.elapsed().as_secs_f64();
        Some((s, replay))
    }
}
