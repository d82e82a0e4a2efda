#!/usr/bin/env bash
# Bounded load test of `clip serve` on 127.0.0.1: N random unit vectors indexed with a model,
# the server started on a free port, 64 warm-up queries, then QUERIES text queries (k = 10) at
# CONCURRENCY from examples/serve_load.rs. Prints the client's JSON line (q/s, p50/p90/p99/max
# latency, errors, 503 rejections) and the server's peak RSS from /usr/bin/time -v.
#
# usage: scripts/bench_serve.sh [N_VECTORS] [QUERIES] [CONCURRENCY]   (100000 10000 32)
# env:   MODEL=model dir (default /tmp/clip-bench-embed/vitb32, a random-weight ViT-B/32;
#        tests/fixtures/hf_tiny when that is missing). CLIP_BIN / LOAD_BIN: prebuilt binaries
#        (otherwise both are built in release). WORK_DIR: where vectors and index go.
#        SERVE_ARGS: more `clip serve` flags (e.g. "--precision int8").
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}; Q=${2:-10000}; C=${3:-32}
WORK=${WORK_DIR:-/tmp/clip-bench-serve}
export RAYON_NUM_THREADS=2
MODEL=${MODEL:-/tmp/clip-bench-embed/vitb32}
[ -f "$MODEL/config.json" ] || MODEL=tests/fixtures/hf_tiny
TARGET=${CARGO_TARGET_DIR:-target}
CLIP=${CLIP_BIN:-$TARGET/release/clip}; LOAD=${LOAD_BIN:-$TARGET/release/examples/serve_load}
[ -n "${CLIP_BIN:-}" ] || cargo build --release -q --bin clip
[ -n "${LOAD_BIN:-}" ] || cargo build --release -q --example serve_load
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null

# The model's embedding width: the first (top-level) projection_dim of its config.
DIM=$(grep -m1 '"projection_dim"' "$MODEL/config.json" | tr -dc 0-9)
mkdir -p "$WORK"
VEC="$WORK/vectors_${N}x${DIM}.safetensors"; IDX="$WORK/index_${N}x${DIM}"
[ -f "$VEC" ] || "$LOAD" make-vectors "$VEC" "$N" "$DIM" 7
rm -rf "$IDX"
"$CLIP" index build --embeddings "$VEC" --model "$MODEL" --out "$IDX" >/dev/null

OUT="$WORK/server.out"; TIME="$WORK/server.time"
/usr/bin/time -v -o "$TIME" "$CLIP" serve --index "$IDX" --port 0 ${SERVE_ARGS:-} >"$OUT" 2>"$WORK/server.err" &
PID=$!
stop() {
  # time(1) is $PID; the server is its child. SIGTERM, as background jobs of a script ignore
  # SIGINT; time still reports the server's peak RSS when it ends.
  pkill -TERM -P "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
}
trap stop EXIT
URL=""
for _ in $(seq 1 600); do
  URL=$(sed -n 's/^listening on //p' "$OUT" | head -1)
  [ -n "$URL" ] && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/server.err" >&2; exit 1; }
  sleep 0.1
done
[ -n "$URL" ] || { echo "server did not start" >&2; exit 1; }

echo "model $MODEL (dim $DIM), $N vectors, $Q queries at concurrency $C, RAYON_NUM_THREADS=2" >&2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores" >&2
"$LOAD" "$URL" 64 4 >/dev/null
"$LOAD" "$URL" "$Q" "$C"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
stop; trap - EXIT
echo "server peak RSS: $(sed -n 's/.*Maximum resident set size (kbytes): //p' "$TIME") KiB"
