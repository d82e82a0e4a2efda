#!/usr/bin/env bash
# Cross-style retrieval quality at equal steps: `clip train` and open_clip (PyTorch, CPU) train
# the `tiny` architecture with the same recipe on one emoji style and are evaluated on the
# other (a style neither saw): batch, steps, lr 1e-3 with a tenth of the steps as warmup then
# cosine, weight decay 0.1, AdamW (0.9, 0.98, 1e-6), random resized crop (0.7, 1) and
# horizontal flip 0.5, as ../shared/bench/openclip_emoji.py does.
#
# usage: scripts/quality_emoji.sh [STEPS] [BATCH] [TRAIN_STYLE] [EVAL_STYLE]
# needs: /tmp/peers (see ../shared/bench/README.md) and ../shared/datasets/emoji
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-400}; BATCH=${2:-256}; TRAIN=${3:-google}; EVAL=${4:-twitter}
PY=${PEERS_PY:-/tmp/peers/bin/python}; BENCH=${BENCH_DIR:-../shared/bench}
DATA=${DATA_DIR:-../shared/datasets/emoji}; WORK=${WORK_DIR:-runs/quality}
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
cargo build --release -q
mkdir -p "$WORK"
run="$WORK/clip-$TRAIN-$STEPS-$BATCH"
start=$SECONDS
./target/release/clip train --data "$DATA/$TRAIN" --preset tiny --steps "$STEPS" \
    --batch-size "$BATCH" --lr 1e-3 --warmup $((STEPS / 10)) --hflip 0.5 --log-every 20 \
    --out "$run" >"$run.log" 2>&1
ours_s=$((SECONDS - start))
./target/release/clip eval --model "$run/final" --data "$DATA/$EVAL" --json >"$run.eval.json"
"$PY" "$BENCH/openclip_emoji.py" "$DATA" "$TRAIN" "$EVAL" "$STEPS" 2 "$BATCH" \
    >"$WORK/open_clip-$TRAIN-$STEPS-$BATCH.json" 2>"$WORK/open_clip-$TRAIN-$STEPS-$BATCH.log"
"$PY" - "$run.eval.json" "$WORK/open_clip-$TRAIN-$STEPS-$BATCH.json" "$ours_s" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))
flat = {}
def walk(d):
    for k, v in d.items():
        if isinstance(v, dict): walk(v)
        else: flat[k] = v
walk(ours)
theirs = [json.loads(l) for l in open(sys.argv[2]) if l.strip()][-1]
names = [("image_to_text_R@1", "i2t_R@1"), ("image_to_text_R@5", "i2t_R@5"), ("image_to_text_R@10", "i2t_R@10"),
         ("text_to_image_R@1", "t2i_R@1"), ("text_to_image_R@5", "t2i_R@5"), ("text_to_image_R@10", "t2i_R@10")]
print(f"| metric ({theirs['style']}, never seen) | clip train | open_clip |\n|---|---|---|")
for a, b in names:
    print(f"| {a} | {flat[a]:.4f} | {theirs[b]:.4f} |")
print(f"| training time (s) | {float(sys.argv[3]):.0f} | {theirs['train_s']:.0f} |")
PY
