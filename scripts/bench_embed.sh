#!/usr/bin/env bash
# Image-embedding throughput of a ViT-B/32 CLIP (random weights, HF layout, 224×224 input,
# batch 16, both cores): `clip embed` side by side with transformers' CLIPModel on PyTorch,
# whole process each (start, load, preprocessing, model), alternating in one sitting.
#
# usage: scripts/bench_embed.sh [N_IMAGES] [ROUNDS]
#   CLIP_BIN=path/to/clip measures another build (e.g. the previous commit's) in the same way.
# needs: /tmp/peers (see ../shared/bench/README.md) and ../shared/datasets/emoji/google
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-256}; ROUNDS=${2:-2}; PY=${PEERS_PY:-/tmp/peers/bin/python}
BENCH=${BENCH_DIR:-../shared/bench}; DATA=${DATA_DIR:-../shared/datasets/emoji/google}
WORK=${WORK_DIR:-/tmp/clip-bench-embed}
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
mkdir -p "$WORK/images" "$WORK/tok"
CLIP=${CLIP_BIN:-./target/release/clip}
[ -n "${CLIP_BIN:-}" ] || cargo build --release -q
if [ ! -f "$WORK/vitb32/model.safetensors" ]; then
  cp models/tokenizer.json "$WORK/tok/"
  printf '{"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}\n' > "$WORK/tok/tokenizer_config.json"
  "$PY" "$BENCH/make_vitb32.py" "$WORK/vitb32" "$WORK/tok" >/dev/null
fi
rm -f "$WORK"/images/*; find "$DATA" -maxdepth 1 -name "*.png" | sort | awk -v n="$N" "NR<=n" | xargs -I{} cp {} "$WORK/images/"
printf '| round | clip embed (img/s) | transformers (img/s) | ratio |\n|---|---|---|---|\n'
for r in $(seq 1 "$ROUNDS"); do
  t0=$(date +%s.%N)
  "$CLIP" embed --model "$WORK/vitb32" --images "$WORK/images" --out "$WORK/ours.safetensors" --batch-size 16 2>/dev/null
  t1=$(date +%s.%N)
  ours=$(echo "$N / ($t1 - $t0)" | bc -l)
  theirs=$("$PY" "$BENCH/torch_embed.py" "$WORK/vitb32" "$WORK/images" 16 2 2>/dev/null | awk '{print $1}')
  printf '| %d | %.1f | %.1f | %.2f× |\n' "$r" "$ours" "$theirs" "$(echo "$ours / $theirs" | bc -l)"
done
