//! Where a rank's data stands: gathered from the ranks into each checkpoint, and handed
//! back to the loader on resume (a position, and for streamed data the streams' states).

use clip_data::StreamState;

use super::TrainData;
use crate::dist::Collective;
use crate::loader::{Share, Start};
use crate::{Observer, Result, TrainConfig, TrainError};

/// Where this rank's loader starts after `start` steps: from the checkpoint's streams when it
/// saved every stream's state, else from its data positions.
pub(super) fn data_start(
    data: &TrainData,
    resumed: Option<&crate::run_dir::Resumed>,
    comm: &dyn Collective,
    (start, local_batch): (usize, usize),
    t: &TrainConfig,
    obs: &mut dyn Observer,
) -> Start {
    let share = Share {
        rank: comm.rank(),
        world: comm.world(),
    };
    let saved_streams = resumed.and_then(|r| r.streams.as_deref());
    match rank_streams(data, saved_streams, t, share) {
        Some((streams, position)) => Start { position, streams },
        None => {
            let saved = resumed.and_then(|r| r.data_positions.clone());
            resume_position(saved, comm, start, t, local_batch, obs).into()
        }
    }
}

/// Where this rank's data continues: the position saved in a checkpoint written by as many
/// ranks, or else the start of step `start` in this run's layout (with a warning on rank 0:
/// the order then differs from an uninterrupted run).
fn resume_position(
    saved: Option<Vec<usize>>,
    comm: &dyn Collective,
    start: usize,
    t: &TrainConfig,
    local_batch: usize,
    obs: &mut dyn Observer,
) -> usize {
    let (rank, world) = (comm.rank(), comm.world());
    match saved {
        Some(p) if p.len() == world => p[rank],
        Some(p) => {
            if rank == 0 {
                obs.on_warning(&format!(
                    "the checkpoint was written by {} rank(s) and this run has {world}: weights, \
                     optimiser and step resume exactly, but the data continues from sample \
                     position {} in this run's layout, so the order differs from an \
                     uninterrupted run",
                    p.len(),
                    start * t.batch_size
                ));
            }
            start * local_batch
        }
        None => start * local_batch,
    }
}

/// Every rank's data position, in rank order.
pub(super) fn gather_positions(comm: &dyn Collective, position: usize) -> Result<Vec<usize>> {
    if comm.world() == 1 {
        return Ok(vec![position]);
    }
    let all = comm.all_gather_bytes(&(position as u64).to_le_bytes())?;
    all.iter()
        .map(|b| {
            let bytes: [u8; 8] = b.as_slice().try_into().map_err(|_| {
                TrainError::Collective(format!("a rank sent a {}-byte position", b.len()))
            })?;
            Ok(u64::from_le_bytes(bytes) as usize)
        })
        .collect()
}

/// Every stream's state, in stream order (the ranks' blocks in rank order); `None` unless
/// every rank streams.
pub(super) fn gather_streams(
    comm: &dyn Collective,
    streams: &[StreamState],
) -> Result<Option<Vec<StreamState>>> {
    let mine = match streams {
        [] => Vec::new(),
        s => serde_json::to_vec(s).expect("states serialise"),
    };
    let all = match comm.world() {
        1 => vec![mine],
        _ => comm.all_gather_bytes(&mine)?,
    };
    let bad = |e: serde_json::Error| {
        TrainError::Collective(format!("a rank sent a bad stream state: {e}"))
    };
    let blocks = all
        .iter()
        .map(|b| {
            (!b.is_empty())
                .then(|| serde_json::from_slice::<Vec<StreamState>>(b).map_err(bad))
                .transpose()
        })
        .collect::<Result<Option<Vec<_>>>>()?;
    Ok(blocks.map(|b| b.concat()))
}

/// For streamed data resumed from a checkpoint that saved every stream's state: this rank's
/// block of them and the sum of their positions. The streams are the same on any number of
/// ranks that divides them, so such a run resumes exactly even on another number of ranks.
fn rank_streams(
    data: &TrainData,
    saved: Option<&[StreamState]>,
    t: &TrainConfig,
    share: Share,
) -> Option<(Vec<StreamState>, usize)> {
    let TrainData::Streamed(spec) = data else {
        return None;
    };
    let n = t.order.streams_for(share.world);
    let saved = saved.filter(|s| s.len() == n)?;
    let mine = saved[share.streams(n)].to_vec();
    let epoch_len = spec.epoch_len(n);
    let position = mine.iter().map(|s| s.position(epoch_len) as usize).sum();
    Some((mine, position))
}

/// What rebuilding the shard stream at the resume position cost, for the user.
pub(super) fn replay_note(r: &clip_data::Replay) -> String {
    let lost = match r.lost {
        0 => String::new(),
        n => format!(
            "; {n} buffered samples were no longer in their shards, so the order departs from \
             the uninterrupted run's"
        ),
    };
    format!(
        "resuming re-read {} samples ({:.1} MB) from {} shards of the stream in {:.1} s{lost}",
        r.samples,
        r.bytes as f64 / 1e6,
        r.shards,
        r.seconds
    )
}
