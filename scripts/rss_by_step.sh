#!/usr/bin/env bash
# Peak RSS of a training run at each logged step: is memory flat in the data read?
#
#   scripts/rss_by_step.sh STEPS DATA [clip train flags...]
#
# Runs `clip train --preset micro --batch-size 128` on DATA for STEPS steps (two threads,
# logging every 80 steps, no validation) and prints "step  VmHWM  VmRSS" each time a step is
# logged. E.g. streamed against listed, the same six shards:
#   scripts/rss_by_step.sh 2560 'pipe:cat shards/{00000..00005}.tar' --dataset-resampled \
#     --train-num-samples 100000000
#   scripts/rss_by_step.sh 2560 'shards/{00000..00005}.tar' --cache off
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
steps=$1 data=$2
shift 2
CLIP=${CLIP:-target/release/clip}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
RAYON_NUM_THREADS=2 "$CLIP" train --data "$data" "$@" --preset micro --batch-size 128 \
  --steps "$steps" --val-every 0 --log-every 80 --out "$work/run" >"$work/log" 2>&1 &
pid=$!
seen=0
echo "step  peak RSS  RSS"
while kill -0 "$pid" 2>/dev/null; do
  sleep 1
  n=$(grep -c '^step ' "$work/log" || true)
  if [ "$n" -gt "$seen" ]; then
    seen=$n
    step=$(grep '^step ' "$work/log" | tail -1 | cut -d' ' -f2)
    mem=$(awk '/VmHWM|VmRSS/ { printf "%d MB  ", $2 / 1024 }' "/proc/$pid/status" 2>/dev/null || true)
    [ -z "$mem" ] || echo "$step  $mem"
  fi
done
wait "$pid" || { cat "$work/log" >&2; exit 1; }
