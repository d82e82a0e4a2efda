#!/usr/bin/env bash
# Remote training data beside local disk and open_clip, in one sitting (issue 25):
#   1. loader throughput alone (read + decode + augment + tokenize, no model, 2 threads) on
#      the same 640×480 photo shards: from local disk (listed, and streamed), from a loopback
#      HTTP server, from a loopback S3 server (moto), and open_clip's webdataset pipeline on
#      the local files and on the same HTTP URLs through `pipe:curl`; ROUNDS alternating rounds;
#   2. `clip train --preset tiny --dataset-resampled --train-num-samples 100000000` with 10^2
#      and 10^4 shard URLs declared: launch → first finished step, and peak RSS;
#   3. `clip index build --data` over the same shards from local disk, HTTP and S3, with the
#      tiny test model (tests/fixtures/hf_tiny), so that reading and decoding weigh the most
#      and any cost of the remote source shows; then from HTTP paced to $MBPS MB/s per
#      connection (a distant server's or an object store's per-connection throughput) with
#      1, 2 and 4 shards read at once (--data-workers); ROUNDS alternating rounds.
#
# usage: [PARTS="loader urls index"] scripts/bench_remote.sh [DATA_DIR] [BATCHES] [ROUNDS]
#   DATA_DIR (default /tmp/clip-photos-remote) gets 6 shards of 1000 samples on first use.
#   open_clip needs the peers' venv at $PEERS (default /tmp/peers); S3 needs moto, which
#   scripts/s3_test_server.sh installs into a venv outside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/clip-photos-remote}
BATCHES=${2:-180}
ROUNDS=${3:-2}
PEERS=${PEERS:-/tmp/peers}
PORT=${PORT:-8731}
PARTS=${PARTS:-loader urls index}
MBPS=${MBPS:-20}
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2

cargo build --release --quiet --bin clip --example make_photos
cargo build --release --quiet --bench loader
LOADER=$(ls -t target/release/deps/loader-* | grep -v '\.d$' | head -1)
SHARDS="$DATA/shards"
if [ ! -e "$SHARDS/.done" ]; then
  rm -rf "$SHARDS"
  target/release/examples/make_photos --out "$SHARDS" --count 6000 --format shards --per-shard 1000
  touch "$SHARDS/.done"
fi
NAMES="{00000..00005}.tar"

python3 scripts/shard_server.py "$SHARDS" "$PORT" &
HTTP_PID=$!
eval "$(scripts/s3_test_server.sh start)"
cleanup() { kill "$HTTP_PID" 2>/dev/null || true; scripts/s3_test_server.sh stop; }
trap cleanup EXIT
export AWS_ENDPOINT_URL=$CLIP_TEST_S3_ENDPOINT AWS_ALLOW_HTTP=true
scripts/s3_test_server.sh upload bench "$SHARDS"
sleep 0.5
HTTP="http://127.0.0.1:$PORT"

rate() { grep -o '^[0-9.]* samples/s' | cut -d' ' -f1; }
ours() { "$LOADER" "$1" 224 32 "$BATCHES" | tee -a /tmp/bench_remote.log | rate; }
theirs() {
  [ -x "$PEERS/bin/python" ] || { echo "–"; return; }
  "$PEERS/bin/python" ../shared/bench/openclip_loader.py "$1" 224 32 2 2>/dev/null \
    | tee -a /tmp/bench_remote.log | rate
}

part() { [[ " $PARTS " == *" $1 "* ]]; }

if part loader; then
echo "## loader throughput, samples/s (224 px, batch 32, 2 threads)"
echo
echo "| round | ours: local, listed | ours: local, streamed | ours: HTTP | ours: S3 | open_clip: local | open_clip: pipe:curl HTTP |"
echo "|---|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  a=$(ours "$SHARDS/$NAMES")
  b=$(LOADER_STREAM=1 ours "$SHARDS/$NAMES")
  c=$(ours "$HTTP/$NAMES")
  d=$(ours "s3://bench/$NAMES")
  e=$(theirs "$SHARDS/$NAMES")
  f=$(theirs "pipe:curl -s $HTTP/$NAMES")
  echo "| $r | $a | $b | $c | $d | $e | $f |"
done
fi

# first_step N -> "first_step_s peak_rss_mb"
first_step() {
  local out log start last
  out=$(mktemp -d)
  log=$(mktemp)
  last=$(printf '%05d' $(($1 - 1)))
  start=$(date +%s.%N)
  /usr/bin/time -f "RSS %M" target/release/clip train --data "$HTTP/s-{00000..$last}.tar" \
    --dataset-resampled --train-num-samples 100000000 --preset tiny --steps 3 \
    --batch-size 128 --log-every 1 --val-every 0 --examples 0 --out "$out/run" >"$log" 2>&1 &
  local pid=$! first=""
  while kill -0 "$pid" 2>/dev/null; do
    if [ -z "$first" ] && grep -q "^step 1/" "$log"; then
      first=$(awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }')
    fi
    sleep 0.1
  done
  wait "$pid" || { cat "$log" >&2; exit 1; }
  echo "${first:-?} $(awk '/^RSS/ { printf "%.0f", $2 / 1024 }' "$log")"
  rm -rf "$out" "$log"
}

if part urls; then
echo
echo "## shard URLs declared (--dataset-resampled --train-num-samples 100000000, tiny, batch 128)"
echo
echo "| round | URLs | launch → first step (s) | peak RSS (MB) |"
echo "|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  for n in 100 10000; do
    read -r t m < <(first_step "$n")
    echo "| $r | $n | $t | $m |"
  done
done
fi

# index_build SPEC [ARGS...] -> "seconds images"
index_build() {
  local out t0 t1 n spec=$1
  shift
  out=$(mktemp -d)
  t0=$(date +%s.%N)
  target/release/clip index build --data "$spec" --model tests/fixtures/hf_tiny \
    --out "$out/index" "$@" >"$out/log" 2>&1 || { cat "$out/log" >&2; exit 1; }
  t1=$(date +%s.%N)
  n=$(target/release/clip index info "$out/index" | awk '/^entries:/ { print $2 }')
  rm -rf "$out"
  awk -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN { printf "%.1f %d\n", b - a, n }'
}

if part index; then
PACED_PORT=$((PORT + 1))
MBPS=$MBPS python3 scripts/shard_server.py "$SHARDS" "$PACED_PORT" &
PACED_PID=$!
trap 'kill "$PACED_PID" 2>/dev/null || true; cleanup' EXIT
sleep 0.5
PACED="http://127.0.0.1:$PACED_PORT/$NAMES"
echo
echo "## clip index build --data (hf_tiny, 2 threads): seconds (images/s)"
echo
echo "| round | local | HTTP | S3 | HTTP at $MBPS MB/s, 1 reader | 2 readers | 4 readers | images |"
echo "|---|---|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  row="| $r |"
  for run in "$SHARDS/$NAMES" "$HTTP/$NAMES" "s3://bench/$NAMES" \
    "$PACED --data-workers 1" "$PACED --data-workers 2" "$PACED --data-workers 4"; do
    # shellcheck disable=SC2086 # a run is a spec and its flags
    read -r secs n < <(index_build $run)
    row="$row $secs ($(awk -v s="$secs" -v n="$n" 'BEGIN { printf "%.0f", n / s }')) |"
  done
  echo "$row $n |"
done
fi
