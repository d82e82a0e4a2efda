#!/usr/bin/env bash
# `clip index build --data` over remote shards beside the same shards on local disk, in one
# sitting (issue 25): the 640×480 photo shards indexed from local files, from a loopback
# HTTP server and from a loopback S3 server (moto), ROUNDS alternating rounds, 2 threads.
#
# usage: scripts/bench_index_remote.sh [DATA_DIR] [MODEL] [ROUNDS]
#   DATA_DIR (default /tmp/clip-photos-remote) gets 6 shards of 1000 samples on first use;
#   MODEL defaults to the test fixture tests/fixtures/hf_tiny (a tiny model, so that reading
#   and decoding weigh the most and any cost of the remote source shows).
#   S3 needs moto, which scripts/s3_test_server.sh installs into a venv outside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/clip-photos-remote}
MODEL=${2:-tests/fixtures/hf_tiny}
ROUNDS=${3:-2}
PORT=${PORT:-8732}
export RAYON_NUM_THREADS=2

cargo build --release --quiet --bin clip --example make_photos
SHARDS="$DATA/shards"
if [ ! -e "$SHARDS/.done" ]; then
  rm -rf "$SHARDS"
  target/release/examples/make_photos --out "$SHARDS" --count 6000 --format shards --per-shard 1000
  touch "$SHARDS/.done"
fi
NAMES="{00000..00005}.tar"
WORK=$(mktemp -d)

python3 scripts/shard_server.py "$SHARDS" "$PORT" &
HTTP_PID=$!
S3=0
if eval "$(scripts/s3_test_server.sh start 2>/dev/null)"; then S3=1; fi
cleanup() {
  kill "$HTTP_PID" 2>/dev/null || true
  [ "$S3" = 1 ] && scripts/s3_test_server.sh stop
  rm -rf "$WORK"
}
trap cleanup EXIT
if [ "$S3" = 1 ]; then
  export AWS_ENDPOINT_URL=$CLIP_TEST_S3_ENDPOINT AWS_ALLOW_HTTP=true
  scripts/s3_test_server.sh upload bench "$SHARDS"
fi
sleep 0.5

# build SPEC -> "seconds images"
build() {
  rm -rf "$WORK/index"
  local t0 t1
  t0=$(date +%s.%N)
  target/release/clip index build --data "$1" --model "$MODEL" --out "$WORK/index" \
    >"$WORK/log" 2>&1 || { cat "$WORK/log" >&2; exit 1; }
  t1=$(date +%s.%N)
  local n
  n=$(target/release/clip index info "$WORK/index" | awk '/^entries:/ { print $2 }')
  awk -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN { printf "%.1f %d\n", b - a, n }'
}

echo "| round | source | seconds | images | images/s |"
echo "|---|---|---|---|---|"
for r in $(seq 1 "$ROUNDS"); do
  sources=("local $SHARDS/$NAMES" "http http://127.0.0.1:$PORT/$NAMES")
  [ "$S3" = 1 ] && sources+=("s3 s3://bench/$NAMES")
  for src in "${sources[@]}"; do
    set -- $src
    read -r secs n < <(build "$2")
    echo "| $r | $1 | $secs | $n | $(awk -v s="$secs" -v n="$n" 'BEGIN { printf "%.0f", n / s }') |"
  done
done
