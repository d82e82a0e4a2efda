#!/usr/bin/env bash
# Image-only contrastive training: every loss under the same preset, steps, batch, learning
# rate, augmentations and MLP projection head, three training seeds each; every model probed
# with few labels on its pooled features (before the head) and on its projected embeddings,
# three draws of the labelled images each. The raw-pixel probe is the baseline. `sweep`
# trains the spectral loss over output dimension and μ.
#
#   scripts/ssl_experiments.sh [digits|emoji|sweep|sweep-emoji|all|summary]
#
# digits: train on the bundled 1797 digits, probe on the same images (few labels, rest test).
# emoji:  train on the Noto style, probe the 9 categories on the Twemoji style (never seen).
# Results: $OUT/<set>-<name>.s<seed>.<pooled|embeds>.d<draw>.json, the PCA plots
# docs/img/ssl-<set>-<name>.png (seed 0, pooled features); `summary` prints the tables in
# docs/SSL.md. SKIP_TRAIN=1 re-runs only the probes. Each run takes ~2 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CLIP_BIN:-target/release/clip}
OUT=${OUT:-runs/ssl}
STEPS=${STEPS:-300}
BATCH=${BATCH:-128}
LR=${LR:-1e-3}
SEEDS=${SEEDS:-0 1 2}
DRAWS=${DRAWS:-0 1 2}
PER_CLASS=${PER_CLASS:-5,10,50}
# The head every loss trains through (and the probe reads before).
HEAD=(--projection mlp --projection-layers 2)
# The spectral loss' setting in the main tables; `sweep` varies it one knob at a time.
SPECTRAL_DIM=1024
SPECTRAL_MU=4
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
mkdir -p "$OUT" docs/img
[ -x "$BIN" ] || cargo build --release

probe() { # name model-or-pixels labels seed: ridge probes on both features, every draw
    local name=$1 what=$2 labels=$3 seed=$4
    local feats=(pooled embeds)
    [ "$what" = pixels ] && feats=(pixels)
    for f in "${feats[@]}"; do
        local src=(--model "$what" --features "$f")
        [ "$f" = pixels ] && src=(--pixels)
        for draw in $DRAWS; do
            local plot=()
            if [ "$seed" = 0 ] && [ "$draw" = 0 ] && [ "$f" != embeds ]; then
                plot=(--plot "docs/img/ssl-$name.png")
            fi
            "$BIN" probe "${src[@]}" --labels "$labels" --train-per-class "$PER_CLASS" \
                --seed "$draw" --json "${plot[@]}" >"$OUT/$name.s$seed.$f.d$draw.json" 2>/dev/null
        done
    done
}

run() { # set name train-data probe-labels [train options...]: every training seed
    local set=$1 name=$2 data=$3 labels=$4
    shift 4
    for seed in $SEEDS; do
        local dir="$OUT/$set-$name.s$seed"
        echo "== $set $name seed $seed: $*"
        local start=$SECONDS
        [ -n "${SKIP_TRAIN:-}" ] || "$BIN" train --objective images --preset micro \
            --data "$data" --steps "$STEPS" --batch-size "$BATCH" --lr "$LR" --seed "$seed" \
            --out "$dir" --log-every 50 "${HEAD[@]}" "${EXTRA[@]}" "$@" >"$dir.log" 2>&1
        probe "$set-$name" "$dir/final" "$PROBE_LABELS" "$seed"
        echo "   $((SECONDS - start)) s"
    done
}

digits() {
    # 8×8 digits: a crop below half the area often loses the digit's identity.
    EXTRA=(--aug-scale 0.5,1 --labels data/digits/labels.tsv)
    PROBE_LABELS=data/digits/labels.tsv
}

emoji() {
    EXTRA=(--labels data/emoji-noto/labels.tsv)
    PROBE_LABELS=data/emoji-twemoji/labels.tsv
}

losses() { # set train-data: the main table
    local set=$1 data=$2
    probe "$set-pixels" pixels "$PROBE_LABELS" 0
    run "$set" nt-xent "$data" "$PROBE_LABELS" --loss nt-xent
    run "$set" debiased "$data" "$PROBE_LABELS" --loss debiased --tau-plus 0.1
    run "$set" hard-negative "$data" "$PROBE_LABELS" --loss hard-negative --tau-plus 0.1 --beta 1
    run "$set" spectral "$data" "$PROBE_LABELS" --loss spectral \
        --projection-dim "$SPECTRAL_DIM" --spectral-mu "$SPECTRAL_MU"
    run "$set" oracle "$data" "$PROBE_LABELS" --loss oracle
}

sweep() { # set train-data: the spectral loss over μ at the main dimension, and over the
    # output dimension at the main μ (the main setting itself is the `spectral` row)
    local set=$1 data=$2
    for mu in 1 16; do
        run "$set" "spectral-d$SPECTRAL_DIM-mu$mu" "$data" "$PROBE_LABELS" --loss spectral \
            --projection-dim "$SPECTRAL_DIM" --spectral-mu "$mu"
    done
    for dim in 64 256; do
        run "$set" "spectral-d$dim-mu$SPECTRAL_MU" "$data" "$PROBE_LABELS" --loss spectral \
            --projection-dim "$dim" --spectral-mu "$SPECTRAL_MU"
    done
}

summary() { # markdown tables: mean ± sd of probe accuracy over training seeds × label draws
    python3 - "$OUT" <<'EOF'
import glob, json, os, re, statistics, sys
out = sys.argv[1]
runs = {}  # (set, name) -> features -> n -> [accuracy]
for f in sorted(glob.glob(os.path.join(out, "*.s[0-9]*.*.d[0-9]*.json"))):
    m = re.match(r"(\w+)-(.+)\.s(\d+)\.(pooled|embeds|pixels)\.d(\d+)\.json$", os.path.basename(f))
    if not m:
        continue
    set_, name, _, feat, _ = m.groups()
    for r in json.load(open(f))["reports"]:
        runs.setdefault((set_, name), {}).setdefault(feat, {}).setdefault(
            r["n_per_class"], []).append(r["accuracy"])

def cell(v):
    if not v:
        return "–"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.3f} ± {sd:.3f}"

main = ["pixels", "nt-xent", "debiased", "hard-negative", "spectral", "oracle"]
for set_ in ["digits", "emoji"]:
    names = [n for n in main if (set_, n) in runs]
    names += sorted(n for (s, n) in runs if s == set_ and n not in main)
    if not names:
        continue
    ns = sorted(next(iter(runs[(set_, names[0])].values())))
    print(f"\n{set_}: ridge probe accuracy, mean ± sd over training seeds × label draws\n")
    head = " | ".join(f"{n}/class" for n in ns)
    print(f"| features | runs | pooled: {head} | embeddings: {head} |")
    print("|---|---|" + "---|" * (2 * len(ns)))
    for name in names:
        feats = runs[(set_, name)]
        pooled = feats.get("pooled", feats.get("pixels", {}))
        embeds = feats.get("embeds", {})
        count = len(next(iter(pooled.values()), []))
        cells = [cell(pooled.get(n, [])) for n in ns] + [cell(embeds.get(n, [])) for n in ns]
        print(f"| {name} | {count} | " + " | ".join(cells) + " |")
EOF
}

which=${1:-all}
case "$which" in
summary) summary ;;
digits) digits && losses digits data/digits/labels.tsv ;;
emoji) emoji && losses emoji data/emoji-noto ;;
sweep) digits && sweep digits data/digits/labels.tsv ;;
sweep-emoji) emoji && sweep emoji data/emoji-noto ;;
all)
    digits && losses digits data/digits/labels.tsv && sweep digits data/digits/labels.tsv
    emoji && losses emoji data/emoji-noto && sweep emoji data/emoji-noto
    ;;
*)
    echo "usage: $0 [digits|emoji|sweep|sweep-emoji|all|summary]" >&2
    exit 2
    ;;
esac
