#!/usr/bin/env bash
# Cross-style retrieval quality at equal steps: `clip train` and open_clip (PyTorch, CPU) train
# the `tiny` architecture with the same recipe on one emoji style and are evaluated on the
# other (a style neither saw): batch, steps, lr 1e-3 with a tenth of the steps as warmup then
# cosine, weight decay 0.1, AdamW (0.9, 0.98, 1e-6), random resized crop (0.7, 1) and
# horizontal flip 0.5, as ../shared/bench/openclip_emoji.py does.
#
# usage: scripts/quality_emoji.sh [STEPS] [BATCH] [TRAIN_STYLE] [EVAL_STYLE]
#   CLIP_STEPS=N  train `clip train` for N steps instead (e.g. the steps that fit open_clip's
#                 training time: the equal wall-clock comparison); warmup stays a tenth
#   SEED=S        seed of `clip train` (default 0)
#   REUSE_PEER=1  keep an open_clip result already in WORK_DIR instead of training it again
# needs: /tmp/peers (see ../shared/bench/README.md) and ../shared/datasets/emoji
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-400}; BATCH=${2:-256}; TRAIN=${3:-google}; EVAL=${4:-twitter}
PY=${PEERS_PY:-/tmp/peers/bin/python}; BENCH=${BENCH_DIR:-../shared/bench}
DATA=${DATA_DIR:-../shared/datasets/emoji}; WORK=${WORK_DIR:-runs/quality}
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
cargo build --release -q
mkdir -p "$WORK"
CLIP_STEPS=${CLIP_STEPS:-$STEPS}; SEED=${SEED:-0}
run="$WORK/clip-$TRAIN-$CLIP_STEPS-$BATCH-seed$SEED"
start=$SECONDS
./target/release/clip train --data "$DATA/$TRAIN" --preset tiny --steps "$CLIP_STEPS" \
    --batch-size "$BATCH" --lr 1e-3 --warmup $((CLIP_STEPS / 10)) --hflip 0.5 --log-every 20 \
    --seed "$SEED" --out "$run" >"$run.log" 2>&1
ours_s=$((SECONDS - start))
./target/release/clip eval --model "$run/final" --data "$DATA/$EVAL" --json >"$run.eval.json"
peer="$WORK/open_clip-$TRAIN-$STEPS-$BATCH"
if [[ "${REUSE_PEER:-0}" != 1 || ! -s "$peer.json" ]]; then
  "$PY" "$BENCH/openclip_emoji.py" "$DATA" "$TRAIN" "$EVAL" "$STEPS" 2 "$BATCH" >"$peer.json" 2>"$peer.log"
fi
"$PY" - "$run.eval.json" "$peer.json" "$ours_s" "$CLIP_STEPS" "$STEPS" "$run/metrics.jsonl" <<'PY'
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
print(f"| metric ({theirs['style']}, never seen) | clip train ({sys.argv[4]} steps) | open_clip ({sys.argv[5]} steps) |\n|---|---|---|")
for a, b in names:
    print(f"| {a} | {flat[a]:.4f} | {theirs[b]:.4f} |")
loop_s = max(json.loads(l).get("elapsed_s", 0) for l in open(sys.argv[6]) if "samples_per_s" in l)
print(f"| training loop (s) | {loop_s:.0f} | {theirs['train_s']:.0f} |")
print(f"| whole process, incl. loading and saving (s) | {float(sys.argv[3]):.0f} | |")
PY
