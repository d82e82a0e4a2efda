#!/usr/bin/env bash
# A change to index building, measured before and after in one sitting: `clip index build`
# over a photo folder (--images, the image journal) and over the six photo shards (--data, the
# sample journal), alternating an older binary with this tree's, with the tiny test model so
# that the build's own work weighs the most. Prints seconds per build and whether the two
# binaries wrote byte-identical indexes.
#
# usage: scripts/bench_index_before_after.sh BEFORE_BIN [ROUNDS] [DATA_DIR]
#   BEFORE_BIN: a release `clip` built from the commit before the change (copy it aside first);
#   DATA_DIR (default /tmp/clip-photos-remote) gets a 3000-image folder and 6 shards of 1000.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=${1:?usage: $0 BEFORE_BIN [ROUNDS] [DATA_DIR]}
ROUNDS=${2:-3}
DATA=${3:-/tmp/clip-photos-remote}
MODEL=tests/fixtures/hf_tiny
export RAYON_NUM_THREADS=2

cargo build --release --quiet --bin clip --example make_photos
AFTER=target/release/clip
photos() { # DIR COUNT FORMAT
  if [ ! -e "$1/.done" ]; then
    rm -rf "$1"
    target/release/examples/make_photos --out "$1" --count "$2" --format "$3" --per-shard 1000
    touch "$1/.done"
  fi
}
photos "$DATA/folder" 3000 folder
photos "$DATA/shards" 6000 shards
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# build BIN OUT ARGS... -> seconds
build() {
  local bin=$1 out=$2 t0 t1
  shift 2
  rm -rf "$out"
  t0=$(date +%s.%N)
  "$bin" index build "$@" --model "$MODEL" --out "$out" >"$WORK/log" 2>&1 \
    || { cat "$WORK/log" >&2; exit 1; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}

echo "| round | binary | --images, 3000 files (s) | --data, 6 shards of 1000 (s) |"
echo "|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  for which in before after; do
    bin=$BEFORE
    [ "$which" = after ] && bin=$AFTER
    a=$(build "$bin" "$WORK/$which-images" --images "$DATA/folder")
    b=$(build "$bin" "$WORK/$which-data" --data "$DATA/shards/{00000..00005}.tar")
    echo "| $r | $which | $a | $b |"
  done
done
for kind in images data; do
  if diff -r "$WORK/before-$kind" "$WORK/after-$kind" >/dev/null; then
    echo "--$kind: the two indexes are byte-identical"
  else
    echo "--$kind: the two indexes DIFFER"
  fi
done
