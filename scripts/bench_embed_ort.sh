#!/usr/bin/env bash
# Image embedding on the CPU, `clip embed --precision f32|bf16|int8` against ONNX Runtime fp32
# and int8 (onnxruntime.quantization.quantize_dynamic on the exported vision tower, the runtime
# immich, rclip and fastembed use), ViT-B/32 (random weights, HF layout), batch 16, 2 threads,
# whole process each, alternating in one sitting; "int8 ckpt" is the model saved by `clip
# convert --precision int8` (loaded without requantizing). Then the quality side: per-image
# cosine of each reduced-precision embedding against its own f32 (ours against ours, ONNX
# Runtime int8 against ONNX Runtime fp32); then our peak RSS at load (one image) and while
# embedding all N, per precision.
#
# usage: scripts/bench_embed_ort.sh [N_IMAGES] [ROUNDS]
#   CLIP_BIN=path/to/clip measures another build the same way.
# needs: /tmp/peers (see ../shared/bench/README.md) and ../shared/datasets/emoji/google
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-192}; ROUNDS=${2:-3}; PY=${PEERS_PY:-/tmp/peers/bin/python}
BENCH=${BENCH_DIR:-../shared/bench}; DATA=${DATA_DIR:-../shared/datasets/emoji/google}
WORK=${WORK_DIR:-/tmp/clip-bench-embed}
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
mkdir -p "$WORK/images" "$WORK/tok" "$WORK/out"
CLIP=${CLIP_BIN:-./target/release/clip}
[ -n "${CLIP_BIN:-}" ] || cargo build --release -q
if [ ! -f "$WORK/vitb32/model.safetensors" ]; then
  cp models/tokenizer.json "$WORK/tok/"
  printf '{"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}\n' > "$WORK/tok/tokenizer_config.json"
  "$PY" "$BENCH/make_vitb32.py" "$WORK/vitb32" "$WORK/tok" >/dev/null
fi
rm -f "$WORK"/images/*; find "$DATA" -maxdepth 1 -name "*.png" | sort | awk -v n="$N" "NR<=n" | xargs -I{} cp {} "$WORK/images/"
# Export and quantize once, outside the timed runs; our int8 checkpoint likewise.
"$PY" "$BENCH/ort_embed.py" "$WORK/vitb32" "$WORK/images" 16 2 int8 >/dev/null 2>&1
"$CLIP" convert --model "$WORK/vitb32" --out "$WORK/vitb32-int8" --precision int8 2>/dev/null

ours() { # precision|ckpt -> images/s (whole process); ckpt: the int8 checkpoint
  local t0 t1 model=("--model" "$WORK/vitb32" "--precision" "$1")
  [ "$1" != ckpt ] || model=("--model" "$WORK/vitb32-int8")
  t0=$(date +%s.%N)
  "$CLIP" embed "${model[@]}" --images "$WORK/images" --out "$WORK/out/ours-$1.npy" \
    --batch-size 16 2>/dev/null
  t1=$(date +%s.%N)
  echo "$N / ($t1 - $t0)" | bc -l
}
ort() { # fp32|int8 -> images/s
  "$PY" "$BENCH/ort_embed.py" "$WORK/vitb32" "$WORK/images" 16 2 "$1" "$WORK/out/ort-$1.npy" 2>/dev/null | awk '{print $1}'
}

printf '| round | ours f32 | ours bf16 | ours int8 | ours int8 ckpt | ORT fp32 | ORT int8 | int8 / ORT int8 | f32 / ORT fp32 | best / ORT fp32 |\n'
printf '|---|---|---|---|---|---|---|---|---|---|\n'
for r in $(seq 1 "$ROUNDS"); do
  f=$(ours f32); b=$(ours bf16); i=$(ours int8); c=$(ours ckpt); of=$(ort fp32); oi=$(ort int8)
  best=$(printf '%s\n%s\n%s\n%s\n' "$f" "$b" "$i" "$c" | sort -g | tail -1)
  printf '| %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f× | %.2f× | %.2f× |\n' "$r" "$f" "$b" "$i" "$c" "$of" "$oi" \
    "$(echo "$i / $oi" | bc -l)" "$(echo "$f / $of" | bc -l)" "$(echo "$best / $of" | bc -l)"
done

echo
echo "Per-image cosine against the same runtime's f32 over $N images:"
echo "| pair | width | min | mean |"
echo "|---|---|---|---|"
"$PY" - "$WORK/out" <<'EOF'
import sys, numpy as np
d = sys.argv[1]
def load(name):
    x = np.load(f"{d}/{name}.npy")
    # transformers 5's get_image_features returns the model output, whose first field (what
    # the ONNX export keeps) is the last hidden state [b, tokens, width]: compare the class
    # token, the one the embedding is read from.
    return x[:, 0, :] if x.ndim == 3 else x
def unit(x): return x / np.linalg.norm(x, axis=1, keepdims=True)
for name, a, b in [("ours bf16 vs ours f32", "ours-bf16", "ours-f32"),
                   ("ours int8 vs ours f32", "ours-int8", "ours-f32"),
                   ("ours int8 ckpt vs ours f32", "ours-ckpt", "ours-f32"),
                   ("ORT int8 vs ORT fp32", "ort-int8", "ort-fp32")]:
    x, y = load(a), load(b)
    c = (unit(x) * unit(y)).sum(1)
    print(f"| {name} | {x.shape[1]} | {c.min():.5f} | {c.mean():.5f} |")
EOF

echo
echo "Our peak RSS (MB, /usr/bin/time): at load (one image) and embedding all $N:"
echo "| model | at load | embedding $N |"
echo "|---|---|---|"
mkdir -p "$WORK/one"; rm -f "$WORK"/one/*; cp "$(find "$WORK/images" -name '*.png' | sort | head -1)" "$WORK/one/"
peak() { # images-dir args... -> peak RSS in MB
  local dir=$1; shift
  /usr/bin/time -f '%M' "$CLIP" embed "$@" --images "$dir" --out "$WORK/out/rss.npy" \
    --batch-size 16 2>&1 >/dev/null | tail -1 | awk '{printf "%.0f", $1 / 1024}'
}
for p in f32 bf16 int8 ckpt; do
  model=(--model "$WORK/vitb32" --precision "$p")
  [ "$p" != ckpt ] || model=(--model "$WORK/vitb32-int8")
  printf '| %s | %s | %s |\n' "$p" "$(peak "$WORK/one" "${model[@]}")" "$(peak "$WORK/images" "${model[@]}")"
done

echo
echo "Text embedding (ViT-B/32's text tower, every caption of $DATA, batch 64), captions/s:"
echo "| round | f32 | bf16 | int8 | int8 ckpt | int8 / f32 |"
echo "|---|---|---|---|---|---|"
find "$DATA" -maxdepth 1 -name "*.txt" | sort | xargs -d '\n' head -qn1 > "$WORK/captions.txt"
NT=$(wc -l < "$WORK/captions.txt")
texts() { # precision|ckpt -> captions/s (whole process)
  local t0 t1 model=("--model" "$WORK/vitb32" "--precision" "$1")
  [ "$1" != ckpt ] || model=("--model" "$WORK/vitb32-int8")
  t0=$(date +%s.%N)
  "$CLIP" embed "${model[@]}" --texts "$WORK/captions.txt" --out "$WORK/out/texts-$1.npy" \
    --batch-size 64 2>/dev/null
  t1=$(date +%s.%N)
  echo "$NT / ($t1 - $t0)" | bc -l
}
for r in $(seq 1 "$ROUNDS"); do
  f=$(texts f32); b=$(texts bf16); i=$(texts int8); c=$(texts ckpt)
  printf '| %d | %.0f | %.0f | %.0f | %.0f | %.2f× |\n' "$r" "$f" "$b" "$i" "$c" "$(echo "$i / $f" | bc -l)"
done
