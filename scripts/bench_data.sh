#!/usr/bin/env bash
# The streaming data path at scale, beside open_clip's webdataset pipeline, in one sitting:
#   1. peak RSS of `clip train` with 6,000 and 60,000 photo-like 640×480 JPEGs, as a folder
#      and as webdataset shards, for the vit-b-32 and tiny presets (batch 32, a few steps);
#   2. time from launch to the first finished step on 60,000 samples;
#   3. loader throughput alone (decode + augment + tokenize, no model) against open_clip's
#      own pipeline (`../shared/bench/openclip_loader.py`) on the same shards and threads.
#
# usage: scripts/bench_data.sh [DATA_DIR] [STEPS]
#   DATA_DIR (default /tmp/clip-photos) gets the generated data on first use (~6 GB).
#   The open_clip side needs the peers' venv (see ../shared/bench/README.md) at $PEERS
#   (default /tmp/peers); without it that column is left out.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/clip-photos}
STEPS=${2:-8}
PEERS=${PEERS:-/tmp/peers}
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2

cargo build --release --quiet --bin clip --example make_photos
cargo build --release --quiet --bench loader
LOADER=$(ls -t target/release/deps/loader-* | grep -v '\.d$' | head -1)
CLIP=target/release/clip

generate() { # generate DIR COUNT FORMAT
  [ -e "$1/.done" ] && return
  rm -rf "$1"
  target/release/examples/make_photos --out "$1" --count "$2" --format "$3" --per-shard 1000
  touch "$1/.done"
}
generate "$DATA/folder-6k" 6000 folder
generate "$DATA/folder-60k" 60000 folder
generate "$DATA/shards-60k" 60000 shards
SH6K="$DATA/shards-60k/{00000..00005}.tar"
SH60K="$DATA/shards-60k/{00000..00059}.tar"

# train DATA PRESET -> "peak_rss_mb first_step_s"
train() {
  local out log start
  out=$(mktemp -d)
  log=$(mktemp)
  start=$(date +%s.%N)
  /usr/bin/time -f "RSS %M" "$CLIP" train --data "$1" --preset "$2" --batch-size 32 \
    --steps "$STEPS" --log-every 1 --warmup 1 --out "$out/run" >"$log" 2>&1 &
  local pid=$! first=""
  while kill -0 "$pid" 2>/dev/null; do
    if [ -z "$first" ] && grep -q "^step 1/" "$log"; then
      first=$(awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }')
    fi
    sleep 0.2
  done
  wait "$pid" || { cat "$log" >&2; exit 1; }
  local rss
  rss=$(awk '/^RSS/ { printf "%.0f", $2 / 1024 }' "$log")
  echo "$rss ${first:-?}"
  rm -rf "$out" "$log"
}

echo "| preset | data | samples | peak RSS (MB) | launch → first step (s) |"
echo "|---|---|---|---|---|"
for preset in vit-b-32 tiny; do
  for spec in "folder $DATA/folder-6k 6000" "folder $DATA/folder-60k 60000" \
              "shards $SH6K 6000" "shards $SH60K 60000"; do
    set -- $spec
    read -r rss first < <(train "$2" "$preset")
    echo "| $preset | $1 | $3 | $rss | $first |"
  done
done

echo
echo "Loader alone on the 6,000-sample shards (image 224, batch 32, 2 threads / 2 workers):"
echo "  clip:      $("$LOADER" "$SH6K" 224 32 187 off)"
if [ -x "$PEERS/bin/python" ]; then
  echo "  open_clip: $("$PEERS/bin/python" ../shared/bench/openclip_loader.py "$SH6K" 224 32 2 2>/dev/null | tail -1)"
fi
