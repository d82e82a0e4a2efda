//! Which shard each rank reads, as pure functions of the seed, the epoch (or position) and
//! the rank, so every rank computes its own share without talking to the others and a
//! resumed run reads what an uninterrupted one would.
//!
//! Per epoch the shard indices are shuffled (from seed and epoch) and dealt out like cards:
//! rank `r` takes every `world`-th shard starting at slot `(r + epoch) % world`. The ranks'
//! shares are disjoint and together cover every shard. When `world` does not divide the
//! shard count, the first `n % world` slots hold one shard more; as the slots rotate with the
//! epoch, each rank reads exactly `n` shards over any `world` consecutive epochs.

use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_xoshiro::SplitMix64;

/// Keeps the shard permutation's stream apart from other uses of the seed.
const SALT_EPOCH: u64 = 0x5348_4152_4400_0001;
/// Keeps resampling's stream apart.
const SALT_RESAMPLE: u64 = 0x5348_4152_4400_0002;

/// Mixes a seed with a counter into an independent stream (`salt` keeps uses apart).
///
/// The workspace's one stream mixer: `clip-data`'s orders re-export it.
pub fn stream(seed: u64, salt: u64, counter: u64) -> SplitMix64 {
    let mut s = SplitMix64::seed_from_u64(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mix = s.next_u64() ^ counter.wrapping_mul(0xD1B5_4A32_D192_ED03);
    SplitMix64::seed_from_u64(mix)
}

/// Epoch `epoch`'s order of shard indices `0..n`.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    p.shuffle(&mut stream(seed, SALT_EPOCH, epoch));
    p
}

/// The slot rank `rank` deals from in `epoch`.
fn slot(epoch: u64, rank: usize, world: usize) -> usize {
    ((rank as u64 + epoch % world as u64) % world as u64) as usize
}

/// How many of `n` shards rank `rank` of `world` reads in `epoch` (`n / world`, or one more).
pub fn rank_count(n: usize, epoch: u64, rank: usize, world: usize) -> usize {
    assert!(rank < world, "rank {rank} of a world of {world}");
    n / world + usize::from(slot(epoch, rank, world) < n % world)
}

/// Rank `rank`'s shards in `epoch`, in reading order.
pub fn rank_shards(n: usize, seed: u64, epoch: u64, rank: usize, world: usize) -> Vec<usize> {
    assert!(rank < world, "rank {rank} of a world of {world}");
    let perm = epoch_permutation(n, seed, epoch);
    perm.into_iter()
        .skip(slot(epoch, rank, world))
        .step_by(world)
        .collect()
}

/// `--dataset-resampled`: the shard rank `rank` reads at its `position`-th draw, drawn with
/// replacement from `0..n`.
pub fn resampled_shard(n: usize, seed: u64, rank: usize, position: u64) -> usize {
    assert!(n > 0, "resampling needs at least one shard");
    let rank_seed = stream(seed, SALT_RESAMPLE, rank as u64).next_u64();
    stream(rank_seed, SALT_RESAMPLE, position).random_range(0..n)
}

/// One rank's endless sequence of shards, epoch after epoch, addressable by position (the
/// `k`-th shard this rank opens), for resuming in the middle of a run.
#[derive(Debug, Clone)]
pub struct RankShards {
    n: usize,
    seed: u64,
    rank: usize,
    world: usize,
    cached: Option<(u64, Vec<usize>)>,
}

impl RankShards {
    /// Rank `rank` of `world` over `n` shards under `seed`.
    pub fn new(n: usize, seed: u64, rank: usize, world: usize) -> Self {
        assert!(n > 0, "no shards to assign");
        assert!(rank < world, "rank {rank} of a world of {world}");
        Self {
            n,
            seed,
            rank,
            world,
            cached: None,
        }
    }

    /// The `k`-th shard this rank reads: (epoch, shard index).
    pub fn at(&mut self, k: u64) -> (u64, usize) {
        let (n, world) = (self.n as u64, self.world as u64);
        // Over `world` epochs every rank reads exactly `n` shards.
        let mut epoch = k / n * world;
        let mut left = k % n;
        loop {
            let c = rank_count(self.n, epoch, self.rank, self.world) as u64;
            if left < c {
                break;
            }
            left -= c;
            epoch += 1;
        }
        if self.cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let list = rank_shards(self.n, self.seed, epoch, self.rank, self.world);
            self.cached = Some((epoch, list));
        }
        let list = &self.cached.as_ref().expect("just filled").1;
        (epoch, list[left as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_split_each_epoch_disjointly_and_cover_it() {
        for (n, world) in [(10, 3), (7, 7), (5, 8), (100, 4), (1, 2)] {
            for epoch in 0..5 {
                let mut all: Vec<usize> = (0..world)
                    .flat_map(|r| rank_shards(n, 9, epoch, r, world))
                    .collect();
                assert_eq!(all.len(), n, "n={n} world={world}");
                all.sort();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n={n} world={world}");
                for r in 0..world {
                    assert_eq!(
                        rank_shards(n, 9, epoch, r, world).len(),
                        rank_count(n, epoch, r, world)
                    );
                }
            }
        }
    }

    #[test]
    fn remainders_rotate_so_ranks_even_out_over_world_epochs() {
        let (n, world) = (10, 4);
        for r in 0..world {
            let total: usize = (0..world as u64).map(|e| rank_count(n, e, r, world)).sum();
            assert_eq!(total, n, "rank {r}");
        }
        // Within one epoch the counts differ by at most one.
        let counts: Vec<usize> = (0..world).map(|r| rank_count(n, 0, r, world)).collect();
        assert_eq!(counts, [3, 3, 2, 2]);
    }

    #[test]
    fn epochs_reshuffle_and_repeat_for_a_seed() {
        let a = epoch_permutation(50, 1, 0);
        assert_eq!(a, epoch_permutation(50, 1, 0));
        assert_ne!(a, epoch_permutation(50, 1, 1));
        assert_ne!(a, epoch_permutation(50, 2, 0));
    }

    #[test]
    fn a_rank_sequence_walks_its_epochs_in_order() {
        let (n, world, rank) = (10, 4, 2);
        let mut seq = RankShards::new(n, 5, rank, world);
        let mut want = Vec::new();
        for e in 0..9 {
            want.extend(
                rank_shards(n, 5, e, rank, world)
                    .into_iter()
                    .map(|s| (e, s)),
            );
        }
        let got: Vec<(u64, usize)> = (0..want.len() as u64).map(|k| seq.at(k)).collect();
        assert_eq!(got, want);
        // Random access (as on resume) gives the same answer.
        let mut fresh = RankShards::new(n, 5, rank, world);
        assert_eq!(fresh.at(17), want[17]);
    }

    #[test]
    fn resampling_is_a_pure_function_of_seed_rank_and_position() {
        let draws = |seed, rank| -> Vec<usize> {
            (0..200)
                .map(|p| resampled_shard(13, seed, rank, p))
                .collect()
        };
        let a = draws(3, 0);
        assert_eq!(a, draws(3, 0));
        assert_ne!(a, draws(3, 1), "ranks draw differently");
        assert_ne!(a, draws(4, 0), "seeds draw differently");
        assert!(a.iter().all(|&s| s < 13));
        let mut seen = a.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 13, "200 draws reach all 13 shards");
        assert!(seen.len() < a.len(), "drawn with replacement");
    }

    /// Pinned draws: these numbers must not change across platforms or releases, or
    /// resumed runs would read other shards.
    #[test]
    fn draws_are_pinned() {
        assert_eq!(epoch_permutation(8, 42, 0), PINNED_PERM);
        let r: Vec<usize> = (0..8).map(|p| resampled_shard(1000, 42, 1, p)).collect();
        assert_eq!(r, PINNED_RESAMPLED);
    }

    const PINNED_PERM: [usize; 8] = [1, 3, 7, 6, 0, 5, 2, 4];
    const PINNED_RESAMPLED: [usize; 8] = [100, 368, 426, 215, 628, 88, 431, 769];
}
