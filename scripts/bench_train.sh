#!/usr/bin/env bash
# Training throughput of the `tiny` preset on emoji images, `clip train` side by side with
# open_clip (PyTorch, CPU) on the same data, batch and threads, alternating in one sitting.
# Peak resident memory of each process comes from /usr/bin/time -v.
#
# usage: scripts/bench_train.sh [STEPS] [BATCH] [ROUNDS]
#   CLIP_BIN=path/to/clip measures another build (e.g. the previous commit's) in the same way.
# needs: /tmp/peers (see ../shared/bench/README.md), ../shared/datasets/emoji
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-20}; BATCH=${2:-128}; ROUNDS=${3:-3}; PY=${PEERS_PY:-/tmp/peers/bin/python}
BENCH=${BENCH_DIR:-../shared/bench}; DATA=${DATA_DIR:-../shared/datasets/emoji}
WORK=${WORK_DIR:-/tmp/clip-bench-train}
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
CLIP=${CLIP_BIN:-./target/release/clip}
[ -n "${CLIP_BIN:-}" ] || cargo build --release -q
mkdir -p "$WORK"
printf '| round | clip train (samples/s) | open_clip (samples/s) | ratio | clip peak RSS (MiB) | open_clip peak RSS (MiB) |\n|---|---|---|---|---|---|\n'
for r in $(seq 1 "$ROUNDS"); do
  /usr/bin/time -v "$CLIP" train --data "$DATA/google" --preset tiny --steps "$STEPS" \
      --batch-size "$BATCH" --warmup 2 --log-every "$STEPS" --out "$WORK/run" >/dev/null 2>"$WORK/ours.time"
  # Measured as the peer measures itself: all steps, the first included, over the time of the
  # training loop (`elapsed_s` of the last step counts from just before the first batch).
  ours=$(grep samples_per_s "$WORK/run/metrics.jsonl" | tail -n 1 | grep -o '"elapsed_s":[0-9.]*' | cut -d: -f2 | awk -v n="$STEPS" -v b="$BATCH" '{print n*b/$1}')
  ours_mem=$(grep "Maximum resident" "$WORK/ours.time" | awk '{print $6/1024}')
  /usr/bin/time -v "$PY" "$BENCH/openclip_emoji.py" "$DATA" google - "$STEPS" 2 "$BATCH" >"$WORK/theirs.json" 2>"$WORK/theirs.time"
  theirs=$(grep -o '"train_samples_per_s": [0-9.]*' "$WORK/theirs.json" | head -1 | cut -d' ' -f2)
  theirs_mem=$(grep "Maximum resident" "$WORK/theirs.time" | awk '{print $6/1024}')
  printf '| %d | %.1f | %.1f | %.2f× | %.0f | %.0f |\n' "$r" "$ours" "$theirs" "$(echo "$ours / $theirs" | bc -l)" "$ours_mem" "$theirs_mem"
done
