#!/usr/bin/env bash
# Data-parallel scaling on this machine: the `tiny` preset on emoji images at one global
# batch, one process with 2 threads against `mpirun -np 2` ranks with 1 thread each,
# alternating in one sitting. Prints samples/s, the share of step time spent in collectives
# and the bytes each rank sends per step (from `clip train`'s own report).
#
# usage: scripts/bench_dist.sh [STEPS] [BATCH] [ROUNDS]          (10 256 2)
# env:   CLIP_BIN: a release build with `--features mpi` (otherwise built here);
#        DATA_DIR: ../shared/datasets/emoji by default.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-10}; BATCH=${2:-256}; ROUNDS=${3:-2}
DATA=${DATA_DIR:-../shared/datasets/emoji}
WORK=${WORK_DIR:-/tmp/clip-bench-dist}
CLIP=${CLIP_BIN:-./target/release/clip}
[ -n "${CLIP_BIN:-}" ] || cargo build --release -q --features mpi --bin clip
command -v mpirun >/dev/null || bash scripts/install_mpi.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$WORK"
ARGS=(train --data "$DATA/google" --preset tiny --steps "$STEPS" --batch-size "$BATCH"
      --warmup 2 --log-every 1 --val-every 0 --examples 0)

# Samples/s over the training loop (all steps: the last `elapsed_s` counts from the first
# batch), and the mean share of step time in collectives over steps 2.. (the first step
# includes the ranks' start-up skew).
rate() { grep '"samples_per_s"' "$1/metrics.jsonl" | tail -n 1 | grep -o '"elapsed_s":[0-9.e-]*' \
  | cut -d: -f2 | awk -v n="$STEPS" -v b="$BATCH" '{printf "%.1f", n*b/$1}'; }
comm() { grep -o '"comm":[0-9.e-]*' "$1/metrics.jsonl" | tail -n +2 | cut -d: -f2 \
  | awk '{s+=$1; n++} END {if (n) printf "%.1f%%", 100*s/n; else print "–"}'; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores" >&2
printf '| round | layout | samples/s | in collectives | sent per step and rank |\n|---|---|---|---|---|\n'
for r in $(seq 1 "$ROUNDS"); do
  rm -rf "$WORK/one" "$WORK/two"
  RAYON_NUM_THREADS=2 "$CLIP" "${ARGS[@]}" --out "$WORK/one" >"$WORK/one.out" 2>/dev/null
  printf '| %d | 1 rank × 2 threads | %s | – | – |\n' "$r" "$(rate "$WORK/one")"
  mpirun -np 2 --bind-to core -x RAYON_NUM_THREADS=1 "$CLIP" "${ARGS[@]}" --out "$WORK/two" \
    >"$WORK/two.out" 2>/dev/null
  sent=$(sed -n 's/.* \([0-9.]*\) MB sent per step.*/\1 MB/p' "$WORK/two.out")
  printf '| %d | 2 ranks × 1 thread | %s | %s | %s |\n' "$r" "$(rate "$WORK/two")" \
    "$(comm "$WORK/two")" "$sent"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
