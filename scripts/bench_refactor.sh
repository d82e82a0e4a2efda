#!/usr/bin/env bash
# Before/after check for a refactor: two builds of `clip` alternating in one sitting on the
# three paths users time: training (the bundled first run, shortened), image embedding
# (ViT-B/32, f32 and int8) and exact search (1000 queries over 200k × 512 unit vectors).
# Prints one table; whole-process wall time, so load and startup count too.
#
# usage: scripts/bench_refactor.sh BEFORE_BIN AFTER_BIN [ROUNDS]
# needs: /tmp/peers (numpy, safetensors; see ../shared/bench/README.md) for the search vectors,
#        and a ViT-B/32 folder + images from scripts/bench_embed_ort.sh (WORK_DIR below).
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$1; AFTER=$2; ROUNDS=${3:-3}; PY=${PEERS_PY:-/tmp/peers/bin/python}
EMB=${EMBED_DIR:-/tmp/clip-bench-embed}; WORK=${WORK_DIR:-/tmp/clip-bench-refactor}
export RAYON_NUM_THREADS=2
mkdir -p "$WORK"
[ -f "$WORK/vecs.safetensors" ] || "$PY" - "$WORK" <<'PY'
import sys, numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(0)
def unit(n):
    x = rng.standard_normal((n, 512)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
save_file({"embeds": unit(200_000)}, f"{sys.argv[1]}/vecs.safetensors")
save_file({"embeds": unit(1000)}, f"{sys.argv[1]}/q.safetensors")
PY
[ -d "$WORK/idx" ] || "$AFTER" index build --embeddings "$WORK/vecs.safetensors" --key embeds --out "$WORK/idx" >/dev/null 2>&1

secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
train() { secs "$1" train --steps 60 --val-every 0 --examples 0 --out "$WORK/run"; }
embed() { secs "$1" embed --model "$EMB/vitb32" --images "$EMB/images" --out "$WORK/e.npy" --batch-size 16 --precision "$2"; }
search() { secs "$1" search --index "$WORK/idx" --query-embeddings "$WORK/q.safetensors" --key embeds --json; }

echo "| round | build | train 60 steps (s) | embed f32 (s) | embed int8 (s) | search 1000 q (s) |"
echo "|---|---|---|---|---|---|"
for r in $(seq 1 "$ROUNDS"); do
  for b in before after; do
    bin=$BEFORE; [ "$b" = after ] && bin=$AFTER
    printf '| %d | %s | %.1f | %.2f | %.2f | %.2f |\n' "$r" "$b" "$(train "$bin")" \
      "$(embed "$bin" f32)" "$(embed "$bin" int8)" "$(search "$bin")"
  done
done
