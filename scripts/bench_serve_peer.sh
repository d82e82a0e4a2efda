#!/usr/bin/env bash
# scripts/bench_serve.sh's load test against a peer server instead of `clip serve` (issue 12):
# the same N random unit vectors, the same model weights, 64 warm-up queries, then QUERIES text
# queries (ten results each) at CONCURRENCY from examples/serve_load.rs. Prints the client's JSON
# line and the server's peak RSS from /usr/bin/time -v.
#
# usage: scripts/bench_serve_peer.sh PEER [N_VECTORS] [QUERIES] [CONCURRENCY]   (… 100000 10000 32)
#   PEER clip-back: clip-retrieval's `clip back` (Flask) on a faiss IndexFlatIP of the vectors,
#                   queried on POST /knn-service (modality image, num_images 10);
#   PEER fastapi:   scripts/peer_serve.py serve (FastAPI + uvicorn, one worker process, open_clip,
#                   faiss IndexFlatIP), queried on POST /search as `clip serve` is.
# env: PY=python with torch, open_clip, faiss, safetensors, pyarrow, fastapi, uvicorn and (for
#      clip-back) clip-retrieval (default /tmp/peer-venv/bin/python). MODEL=HF checkpoint dir whose
#      text tower both peers load (default /tmp/clip-bench-embed/vitb32). LOAD_BIN: prebuilt
#      serve_load. WORK_DIR: where bench_serve.sh keeps the vectors (/tmp/clip-bench-serve).
#      PEER_DIR: converted checkpoint and clip-back index (/tmp/clip-bench-peer).
set -euo pipefail
cd "$(dirname "$0")/.."
PEER=${1:?usage: scripts/bench_serve_peer.sh clip-back|fastapi [N] [QUERIES] [CONCURRENCY]}
N=${2:-100000}; Q=${3:-10000}; C=${4:-32}
case "$PEER" in clip-back | fastapi) ;; *) echo "PEER must be clip-back or fastapi, not $PEER" >&2; exit 2 ;; esac
WORK=${WORK_DIR:-/tmp/clip-bench-serve}
PDIR=${PEER_DIR:-/tmp/clip-bench-peer}
PY=${PY:-/tmp/peer-venv/bin/python}
MODEL=${MODEL:-/tmp/clip-bench-embed/vitb32}
export OMP_NUM_THREADS=2 RAYON_NUM_THREADS=2
TARGET=${CARGO_TARGET_DIR:-target}
LOAD=${LOAD_BIN:-$TARGET/release/examples/serve_load}
[ -n "${LOAD_BIN:-}" ] || cargo build --release -q --example serve_load
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null

DIM=$(grep -m1 '"projection_dim"' "$MODEL/config.json" | tr -dc 0-9)
mkdir -p "$WORK" "$PDIR"
VEC="$WORK/vectors_${N}x${DIM}.safetensors"
[ -f "$VEC" ] || "$LOAD" make-vectors "$VEC" "$N" "$DIM" 7
CKPT="$PDIR/openclip_vitb32.safetensors"
[ -f "$CKPT" ] || "$PY" scripts/peer_serve.py convert "$MODEL" "$CKPT"

OUT="$PDIR/server.out"; ERR="$PDIR/server.err"; TIME="$PDIR/server.time"
rm -f "$OUT" "$ERR"
if [ "$PEER" = clip-back ]; then
  IDX="$PDIR/clip_back_${N}x${DIM}"
  rm -rf "$IDX"
  "$PY" scripts/peer_serve.py clip-back-index "$VEC" "$IDX" >/dev/null
  # clip back takes a fixed port: ask the kernel for a free one.
  PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # No JIT (a local checkpoint), no multilingual or aesthetic extras (they download models).
  (cd "$IDX" && exec /usr/bin/time -v -o "$TIME" "$PY" -m clip_retrieval.cli back \
    --indices_paths "$IDX/indices_paths.json" --port "$PORT" \
    --clip_model "open_clip:ViT-B-32-quickgelu/$CKPT" --use_jit False \
    --enable_mclip_option False --provide_aesthetic_embeddings False >"$OUT" 2>"$ERR") &
  PID=$!
  URL="http://127.0.0.1:$PORT"
  ready() { grep -q 'Running on http://127.0.0.1' "$ERR" 2>/dev/null; }
else
  /usr/bin/time -v -o "$TIME" "$PY" scripts/peer_serve.py serve "$VEC" "$CKPT" --threads 2 \
    >"$OUT" 2>"$ERR" &
  PID=$!
  ready() { grep -q '^listening on ' "$OUT" 2>/dev/null; }
fi
stop() {
  # time(1) is $PID (the subshell execs it); the server is its child. SIGTERM, as in
  # bench_serve.sh; time still reports the server's peak RSS when it ends.
  pkill -TERM -P "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
}
trap stop EXIT
for _ in $(seq 1 1200); do
  ready && break
  kill -0 "$PID" 2>/dev/null || { tail -n 20 "$ERR" >&2; exit 1; }
  sleep 0.1
done
ready || { echo "server did not start" >&2; exit 1; }
# clip back: `serve_load knn-service URL N C INDICE_NAME`; FastAPI: `serve_load URL N C`.
if [ "$PEER" = clip-back ]; then
  ROUTE=(knn-service "$URL"); NAME=(bench)
else
  URL=$(sed -n 's/^listening on //p' "$OUT" | head -1); ROUTE=("$URL"); NAME=()
fi

echo "peer $PEER, model $MODEL (dim $DIM), $N vectors, $Q queries at concurrency $C, OMP_NUM_THREADS=2" >&2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores" >&2
"$LOAD" "${ROUTE[@]}" 64 4 "${NAME[@]}" >/dev/null
"$LOAD" "${ROUTE[@]}" "$Q" "$C" "${NAME[@]}"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
stop; trap - EXIT
echo "server peak RSS: $(sed -n 's/.*Maximum resident set size (kbytes): //p' "$TIME") KiB"
