#!/usr/bin/env bash
# Two builds side by side in one sitting (a refactor is measured like a feature): the training
# step, the loader, training vs open_clip, embedding vs transformers and exact search vs faiss,
# each run once per build, alternating, twice.
#
# usage: scripts/bench_compare.sh BASE_DIR NEW_DIR [SHARDS]
#   each DIR holds `clip`, `train_step` and `loader` (the release binary and the two bench
#   executables, `cargo bench --bench NAME --no-run` prints where they are) of one build;
#   SHARDS: tar shards for the loader (`cargo run --release --example make_photos -- --out DIR
#   --count 4000 --format shards --per-shard 400`), default '/tmp/clip-photos/{00000..00009}.tar'.
# needs: what scripts/bench_{train,embed,retrieval}.sh need (/tmp/peers, ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=$1; NEW=$2; SHARDS=${3:-'/tmp/clip-photos/{00000..00009}.tar'}
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
echo "## start $(date -u +%H:%M) load $(cut -d' ' -f1-3 /proc/loadavg)"
each() { for _ in 1 2; do for b in "$BASE" "$NEW"; do echo "-- $b"; "$@" "$b"; done; done; }
echo "### train_step (128 4)"; each bash -c '"$0/train_step" 128 4 2>&1 | tail -4'
echo "### loader (224, batch 32, 60 batches)"; each bash -c '"$1/loader" "$0" 224 32 60 2>&1 | tail -1' "$SHARDS"
echo "### bench_train 20 128"; each bash -c 'CLIP_BIN="$0/clip" scripts/bench_train.sh 20 128 1 | tail -1'
echo "### bench_embed 256"; each bash -c 'CLIP_BIN="$0/clip" scripts/bench_embed.sh 256 1 | tail -1'
echo "### bench_retrieval 1M x 256, 1000 queries"
each bash -c 'CLIP_BIN="$0/clip" scripts/bench_retrieval.sh 1000000 256 1000 1'
echo "## end $(date -u +%H:%M) load $(cut -d' ' -f1-3 /proc/loadavg)"
