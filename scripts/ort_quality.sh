#!/usr/bin/env bash
# Usage: scripts/ort_quality.sh MODEL_DIR DATA_DIR [extra ort_quality.py flags, e.g. --batch 1]
#
# Retrieval quality lost to int8: ours (`clip eval --precision f32|bf16|int8`) next to ONNX
# Runtime's dynamic int8 (quantize_dynamic, QInt8: what immich/fastembed ship), on the same
# held-out image–caption folder, scored the same way (scripts/ort_quality.py checks that its
# PyTorch fp32 matches our f32).
#
# Needs: target/release/clip (cargo build --release); a HF CLIPModel directory (config.json,
# model.safetensors, preprocessor_config.json, tokenizer.json); a caption folder with labels.tsv
# (e.g. /work/shared/datasets/emoji/twitter); Python with torch, transformers, onnx, onnxruntime,
# tokenizers, numpy, pillow ($PYTHON, default /tmp/peers/bin/python). Runs on 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
MODEL=$1 DATA=$2; shift 2
PYTHON=${PYTHON:-/tmp/peers/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT

for p in f32 bf16 int8; do
  target/release/clip eval --model "$MODEL" --data "$DATA" --labels "$DATA/labels.tsv" \
    --precision "$p" --json > "$TMP/$p.json"
done
"$PYTHON" - "$TMP" <<'EOF'
import json, sys
r = {p: json.load(open(f"{sys.argv[1]}/{p}.json")) for p in ["f32", "bf16", "int8"]}
print(f"\nclip eval (ours), {r['f32']['images']} images; values in %\n")
print("| metric | f32 | bf16 | int8 | int8 − f32 (points) |\n|---|---:|---:|---:|---:|")
for k, n in [("image_to_text_R@1", "image→text R@1"), ("image_to_text_R@10", "image→text R@10"),
             ("text_to_image_R@1", "text→image R@1"), ("text_to_image_R@10", "text→image R@10"),
             ("zero_shot_top1", "zero-shot top-1"), ("zero_shot_top5", "zero-shot top-5")]:
    a, b, c = (100 * r[p][k] for p in ["f32", "bf16", "int8"])
    print(f"| {n} | {a:.2f} | {b:.2f} | {c:.2f} | {c - a:+.2f} |")
EOF
"$PYTHON" scripts/ort_quality.py "$MODEL" "$DATA" --ours "$TMP/f32.json" --work "$TMP/onnx" "$@"
