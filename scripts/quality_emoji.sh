#!/usr/bin/env bash
# Cross-style retrieval quality at equal steps, over several seeds: `clip train` and open_clip
# (PyTorch, CPU) train on one emoji style and are evaluated on the other (a style neither saw),
# each seed separately; the table gives mean ± sample standard deviation over the seeds and
# the range, so that one lucky seed cannot flatter a recipe.
#
# Default recipe (both sides): the `tiny` architecture, batch, steps, lr 1e-3 with a tenth of
# the steps as warmup then cosine, weight decay 0.1, AdamW (0.9, 0.98, 1e-6), random resized
# crop (0.7, 1) and horizontal flip 0.5, as ../shared/bench/openclip_emoji.py does.
#
# usage: scripts/quality_emoji.sh [STEPS] [BATCH] [TRAIN_STYLE] [EVAL_STYLE]
#   SEEDS="0 1 2"  seeds of both sides (default 0 1 2)
#   CLIP_ARGS="…"  `clip train` recipe options instead of the default ones (e.g.
#                  "--preset micro --lr 2e-3 --hflip 0"): a recipe judged against open_clip's
#   CLIP_STEPS=N   train `clip train` for N steps instead (e.g. the steps that fit open_clip's
#                  training time: the equal wall-clock comparison); warmup stays a tenth
#   PEER=0         skip open_clip (no /tmp/peers); REUSE_PEER=1 keeps open_clip results
#                  already in WORK_DIR instead of training them again
# needs: ../shared/datasets/emoji, and for open_clip /tmp/peers (see ../shared/bench/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-400}; BATCH=${2:-256}; TRAIN=${3:-google}; EVAL=${4:-twitter}
PY=${PEERS_PY:-/tmp/peers/bin/python}; BENCH=${BENCH_DIR:-../shared/bench}
DATA=${DATA_DIR:-../shared/datasets/emoji}; WORK=${WORK_DIR:-runs/quality}
SEEDS=${SEEDS:-0 1 2}; PEER=${PEER:-1}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=2
cargo build --release -q
mkdir -p "$WORK"
CLIP_STEPS=${CLIP_STEPS:-$STEPS}
# shellcheck disable=SC2206
RECIPE=(${CLIP_ARGS:---preset tiny --lr 1e-3 --hflip 0.5})
tag=$(printf '%s' "${RECIPE[*]}" | tr -c 'A-Za-z0-9.-' '_')
ours=() theirs=()
for seed in $SEEDS; do
  run="$WORK/clip-$TRAIN-$CLIP_STEPS-$BATCH-$tag-seed$seed"
  start=$SECONDS
  ./target/release/clip train --data "$DATA/$TRAIN" --steps "$CLIP_STEPS" --batch-size "$BATCH" \
      --warmup $((CLIP_STEPS / 10)) --log-every 20 "${RECIPE[@]}" --seed "$seed" --out "$run" \
      >"$run.log" 2>&1
  echo "clip train seed $seed: $((SECONDS - start)) s" >&2
  ./target/release/clip eval --model "$run/final" --data "$DATA/$EVAL" --json >"$run.eval.json"
  ours+=("$run.eval.json")
  if [[ "$PEER" == 1 ]]; then
    peer="$WORK/open_clip-$TRAIN-$STEPS-$BATCH-seed$seed"
    if [[ "${REUSE_PEER:-0}" != 1 || ! -s "$peer.json" ]]; then
      "$PY" "$BENCH/openclip_emoji.py" "$DATA" "$TRAIN" "$EVAL" "$STEPS" "$OMP_NUM_THREADS" \
          "$BATCH" "$seed" >"$peer.json" 2>"$peer.log"
    fi
    theirs+=("$peer.json")
  fi
done
python3 - "$CLIP_STEPS" "$STEPS" "${RECIPE[*]}" "${#ours[@]}" "${ours[@]}" "${theirs[@]}" <<'PY'
import json, statistics, sys
clip_steps, steps, recipe, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ours_files, theirs_files = sys.argv[5:5 + n], sys.argv[5 + n:]
def flat(d, out):
    for k, v in d.items():
        flat(v, out) if isinstance(v, dict) else out.__setitem__(k, v)
    return out
ours = [flat(json.load(open(f)), {}) for f in ours_files]
theirs = [[json.loads(l) for l in open(f) if l.strip()][-1] for f in theirs_files]
def cell(vals):
    if not vals: return "–"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.4f} ± {sd:.4f} ({min(vals):.4f}–{max(vals):.4f})"
names = [("image_to_text_R@1", "i2t_R@1"), ("image_to_text_R@5", "i2t_R@5"), ("image_to_text_R@10", "i2t_R@10"),
         ("text_to_image_R@1", "t2i_R@1"), ("text_to_image_R@5", "t2i_R@5"), ("text_to_image_R@10", "t2i_R@10")]
print(f"`clip train {recipe}`, {n} seeds: mean ± sd (range)\n")
print(f"| metric (style never seen) | clip train ({clip_steps} steps) | open_clip ({steps} steps) |\n|---|---|---|")
for a, b in names:
    print(f"| {a} | {cell([o[a] for o in ours])} | {cell([t[b] for t in theirs])} |")
PY
