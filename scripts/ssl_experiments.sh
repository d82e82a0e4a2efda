#!/usr/bin/env bash
# Image-only contrastive training with biased (NT-Xent), debiased (several τ⁺), spectral and
# label-oracle losses, each followed by linear probes with few labels per class and a 2-D
# PCA plot of the embeddings; the raw-pixel probe is the baseline.
#
#   scripts/ssl_experiments.sh [digits|emoji|all|summary]
#
# digits: train on the bundled 1797 digits, probe on the same images (few labels, rest test).
# emoji:  train on the Noto style, probe the 9 categories on the Twemoji style (never seen).
# Results: runs/ssl/<set>-<loss>.seed<k>.json (k = 0, 1, 2: three draws of the labelled
# images) and docs/img/ssl-<set>-<loss>.png; `summary` prints the table in docs/SSL.md.
# SKIP_TRAIN=1 re-runs only the probes; SKIP_PROBE=1 only trains.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CLIP_BIN:-target/release/clip}
OUT=${OUT:-runs/ssl}
STEPS=${STEPS:-300}
BATCH=${BATCH:-128}
LR=${LR:-1e-3}
PER_CLASS=${PER_CLASS:-5,10,50}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
mkdir -p "$OUT" docs/img
[ -x "$BIN" ] || cargo build --release

probe() { # name model-or-pixels labels: ridge probes under 3 seeds, plot once
    local name=$1 what=$2 labels=$3
    [ -n "${SKIP_PROBE:-}" ] && return 0
    local src=(--model "$what")
    [ "$what" = pixels ] && src=(--pixels)
    for seed in 0 1 2; do
        local plot=()
        [ "$seed" = 0 ] && plot=(--plot "docs/img/ssl-$name.png")
        "$BIN" probe "${src[@]}" --labels "$labels" --train-per-class "$PER_CLASS" \
            --seed "$seed" --json "${plot[@]}" >"$OUT/$name.seed$seed.json" 2>/dev/null
    done
}

run() { # set name train-data probe-labels [train options...]
    local set=$1 name=$2 data=$3 labels=$4
    shift 4
    echo "== $set $name $*"
    local start=$SECONDS
    [ -n "${SKIP_TRAIN:-}" ] || "$BIN" train --objective images --preset micro --data "$data" --labels "$labels" \
        --steps "$STEPS" --batch-size "$BATCH" --lr "$LR" --out "$OUT/$set-$name" \
        --log-every 25 "$@" >"$OUT/$set-$name.log" 2>&1
    echo "   trained in $((SECONDS - start)) s"
    probe "$set-$name" "$OUT/$set-$name/final" "$PROBE_LABELS"
}

experiments() { # set train-data train-labels probe-labels [train options for every run...]
    local set=$1 data=$2 labels=$3
    PROBE_LABELS=$4
    shift 4
    EXTRA=("$@")
    probe "$set-pixels" pixels "$PROBE_LABELS"
    run "$set" nt-xent "$data" "$labels" --loss nt-xent "${EXTRA[@]}"
    run "$set" debiased-0.05 "$data" "$labels" --loss debiased --tau-plus 0.05 "${EXTRA[@]}"
    run "$set" debiased-0.1 "$data" "$labels" --loss debiased --tau-plus 0.1 "${EXTRA[@]}"
    run "$set" debiased-0.2 "$data" "$labels" --loss debiased --tau-plus 0.2 "${EXTRA[@]}"
    run "$set" hard-negative "$data" "$labels" --loss hard-negative --tau-plus 0.1 --beta 1 "${EXTRA[@]}"
    run "$set" spectral "$data" "$labels" --loss spectral "${EXTRA[@]}"
    run "$set" oracle "$data" "$labels" --loss oracle "${EXTRA[@]}"
}

summary() { # markdown table: mean ± std of probe accuracy over the seeds
    python3 - "$OUT" <<'EOF'
import glob, json, os, re, statistics, sys
out = sys.argv[1]
runs = {}
for f in sorted(glob.glob(os.path.join(out, "*.seed*.json"))):
    name = re.sub(r"\.seed\d+\.json$", "", os.path.basename(f))
    for r in json.load(open(f))["reports"]:
        runs.setdefault(name, {}).setdefault(r["n_per_class"], []).append(r["accuracy"])
order = ["pixels", "nt-xent", "nt-xent-nocolor", "debiased-0.05", "debiased-0.1", "debiased-0.2",
         "hard-negative", "spectral", "oracle"]
for dataset in ["digits", "emoji"]:
    names = [f"{dataset}-{o}" for o in order if f"{dataset}-{o}" in runs]
    if not names:
        continue
    ns = sorted(runs[names[0]])
    print(f"\n{dataset}: ridge probe accuracy, mean ± std over 3 label draws\n")
    print("| features | " + " | ".join(f"{n} per class" for n in ns) + " |")
    print("|---|" + "---|" * len(ns))
    for name in names:
        cells = []
        for n in ns:
            v = runs[name].get(n, [])
            sd = statistics.pstdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.3f} ± {sd:.3f}" if v else "–")
        print(f"| {name.split('-', 1)[1]} | " + " | ".join(cells) + " |")
EOF
}

which=${1:-all}
if [ "$which" = summary ]; then
    summary
    exit 0
fi
if [ "$which" = digits ] || [ "$which" = all ]; then
    # 8×8 digits: a crop below half the area often loses the digit's identity.
    experiments digits data/digits/labels.tsv data/digits/labels.tsv data/digits/labels.tsv \
        --aug-scale 0.5,1
fi
if [ "$which" = emoji ] || [ "$which" = all ]; then
    experiments emoji data/emoji-noto data/emoji-noto/labels.tsv data/emoji-twemoji/labels.tsv
    # Ablation: does the colour augmentation cost the emoji categories their colour cue?
    run emoji nt-xent-nocolor data/emoji-noto data/emoji-noto/labels.tsv --loss nt-xent \
        --color-jitter 0 --grayscale 0
fi
