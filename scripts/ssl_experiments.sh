#!/usr/bin/env bash
# Image-only contrastive training: every loss under the same preset, steps, batch, learning
# rate, augmentations and MLP projection head, three training seeds each; every model probed
# with few labels on its pooled features (before the head) and on its projected embeddings,
# three draws of the labelled images each. The raw-pixel probe is the baseline. `sweep`
# trains the spectral loss over output dimension and μ, `heads` NT-Xent and the spectral loss
# through the linear head.
#
#   scripts/ssl_experiments.sh [digits|emoji [LOSS…]|sweep|sweep-emoji|heads|all|summary|norms]
#
# digits: train on the bundled 1797 digits, probe on the same images (few labels, rest test).
# emoji:  train on the Noto style, probe the 9 categories on the Twemoji style (never seen).
# Results: $OUT/<set>-<name>.s<seed>.<pooled|embeds>.d<draw>.json, the PCA plots
# docs/img/ssl-<set>-<name>.png (seed 0, pooled features); `summary` prints the tables in
# docs/SSL.md; `norms` measures the spectral models' embeddings against the μ-ball (seed 0).
# SKIP_TRAIN=1 re-runs only the probes. Each run takes ~2 minutes on 2 cores.
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
            if [ "$seed" = 0 ] && [ "$draw" = 0 ] && [ "$f" != embeds ] && [ -z "${NO_PLOT:-}" ]; then
                plot=(--plot "docs/img/ssl-$name.png")
            fi
            "$BIN" probe "${src[@]}" --labels "$labels" --train-per-class "$PER_CLASS" \
                --seed "$draw" --json "${plot[@]}" >"$OUT/$name.s$seed.$f.d$draw.json" 2>/dev/null
        done
    done
}

run() { # set name train-data [train options...]: every training seed, then the probes
    local set=$1 name=$2 data=$3
    shift 3
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

losses() { # set train-data [loss…]: the main table (default: every loss)
    local set=$1 data=$2
    shift 2
    local names=("$@")
    [ ${#names[@]} -gt 0 ] || names=(nt-xent debiased hard-negative spectral oracle)
    [ -e "$OUT/$set-pixels.s0.pixels.d0.json" ] || probe "$set-pixels" pixels "$PROBE_LABELS" 0
    for name in "${names[@]}"; do
        case "$name" in
        nt-xent) run "$set" nt-xent "$data" --loss nt-xent ;;
        debiased) run "$set" debiased "$data" --loss debiased --tau-plus 0.1 ;;
        hard-negative) run "$set" hard-negative "$data" --loss hard-negative --tau-plus 0.1 --beta 1 ;;
        spectral)
            run "$set" spectral "$data" --loss spectral \
                --projection-dim "$SPECTRAL_DIM" --spectral-mu "$SPECTRAL_MU"
            ;;
        oracle) run "$set" oracle "$data" --loss oracle ;;
        *)
            echo "unknown loss $name" >&2
            exit 2
            ;;
        esac
    done
}

sweep() { # set train-data: the spectral loss over μ at the main dimension, and over the
    # output dimension at the main μ (the main setting itself is the `spectral` row)
    local set=$1 data=$2
    local NO_PLOT=1
    for mu in 1 16; do
        run "$set" "spectral-d$SPECTRAL_DIM-mu$mu" "$data" --loss spectral \
            --projection-dim "$SPECTRAL_DIM" --spectral-mu "$mu"
    done
    for dim in 64 256; do
        run "$set" "spectral-d$dim-mu$SPECTRAL_MU" "$data" --loss spectral \
            --projection-dim "$dim" --spectral-mu "$SPECTRAL_MU"
    done
}

heads() { # set train-data: NT-Xent and the spectral loss through the linear head instead
    local set=$1 data=$2
    local HEAD=(--projection linear) NO_PLOT=1
    run "$set" nt-xent-linear "$data" --loss nt-xent
    run "$set" spectral-linear "$data" --loss spectral \
        --projection-dim "$SPECTRAL_DIM" --spectral-mu "$SPECTRAL_MU"
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
    try:
        reports = json.load(open(f))["reports"]
    except (ValueError, KeyError):  # a probe still running, or one that failed
        continue
    for r in reports:
        runs.setdefault((set_, name), {}).setdefault(feat, {}).setdefault(
            r["n_per_class"], []).append(r["accuracy"])

def cell(v):
    if not v:
        return "–"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.3f} ± {sd:.3f}"

def table(title, rows):
    ns = sorted({n for _, feats in rows for f in feats.values() for n in f})
    print(f"\n{title}\n")
    head = " | ".join(f"{n}/class" for n in ns)
    print(f"| features | n | pooled: {head} | embeddings: {head} |")
    print("|---|---|" + "---|" * (2 * len(ns)))
    for label, feats in rows:
        pooled = feats.get("pooled", feats.get("pixels", {}))
        embeds = feats.get("embeds", {})
        count = len(next(iter(pooled.values()), []))
        cells = [cell(pooled.get(n, [])) for n in ns] + [cell(embeds.get(n, [])) for n in ns]
        print(f"| {label} | {count} | " + " | ".join(cells) + " |")

main = ["pixels", "nt-xent", "nt-xent-linear", "debiased", "hard-negative", "spectral",
        "spectral-linear", "oracle"]
for set_ in ["digits", "emoji"]:
    rows = [(n, runs[(set_, n)]) for n in main if (set_, n) in runs]
    if rows:
        table(f"{set_}: ridge probe accuracy, mean ± sd over training seeds × label draws", rows)
    sweep = []
    for (s, n), feats in runs.items():
        m = re.match(r"spectral-d(\d+)-mu([\d.]+)$", n)
        if s == set_ and m:
            sweep.append(((int(m[1]), float(m[2])), f"d = {m[1]}, μ = {m[2]}", feats))
    if sweep and (set_, "spectral") in runs:
        sweep.append(((1024, 4.0), "d = 1024, μ = 4 (main)", runs[(set_, "spectral")]))
    if sweep:
        sweep.sort(key=lambda r: r[0])
        table(f"{set_}: the spectral loss by output dimension d and μ",
              [(label, feats) for _, label, feats in sweep])
EOF
}

norms() { # the digits spectral models of seed 0: where their embeddings sit against the μ-ball
    local files=()
    while IFS=$'\t' read -r path _; do files+=("data/digits/$path"); done \
        < <(tail -n +2 data/digits/labels.tsv)
    echo "| run | μ | mean ‖z‖/√μ | rows at the bound | cos, same class | cos, other class | cos², other class |"
    echo "|---|---|---|---|---|---|---|"
    for dir in "$OUT"/digits-spectral*.s0; do
        [ -e "$dir/final/config.json" ] || continue
        local mu
        mu=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["spectral_mu"])' "$dir/run.json")
        "$BIN" embed --model "$dir/final" --images "${files[@]}" --features embeds \
            --out "$OUT/norms.safetensors" 2>/dev/null
        python3 - "$OUT/norms.safetensors" "$mu" "$(basename "$dir" .s0)" data/digits/labels.tsv <<'NORMS'
import array, json, math, random, struct, sys
path, mu, name, labels = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
with open(path, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    info = header["image_embeds"]
    rows, dim = info["shape"]
    start, end = info["data_offsets"]
    f.seek(8 + n + start)
    x = array.array("f")
    x.frombytes(f.read(end - start))
classes = [l.rstrip("\n").split("\t")[1] for l in open(labels)][1:]
vecs = [x[i * dim:(i + 1) * dim] for i in range(rows)]
norms = [math.sqrt(sum(v * v for v in r)) for r in vecs]
bound = math.sqrt(mu)
at = sum(nr >= 0.99 * bound for nr in norms) / rows
rng = random.Random(0)
same, diff = [], []
while len(same) < 1000 or len(diff) < 1000:
    i, j = rng.randrange(rows), rng.randrange(rows)
    if i == j:
        continue
    c = sum(a * b for a, b in zip(vecs[i], vecs[j])) / (norms[i] * norms[j] + 1e-12)
    (same if classes[i] == classes[j] else diff).append(c)
same, diff = same[:1000], diff[:1000]
print(f"| {name} | {mu:g} | {sum(norms) / rows / bound:.3f} | {at:.3f} | "
      f"{sum(same) / len(same):.3f} | {sum(diff) / len(diff):.3f} | "
      f"{sum(c * c for c in diff) / len(diff):.4f} |")
NORMS
    done
    rm -f "$OUT/norms.safetensors"
}

which=${1:-all}
[ $# -gt 0 ] && shift
case "$which" in
summary) summary ;;
norms) norms ;;
digits) digits && losses digits data/digits/labels.tsv "$@" ;;
emoji) emoji && losses emoji data/emoji-noto "$@" ;;
sweep) digits && sweep digits data/digits/labels.tsv ;;
sweep-emoji) emoji && sweep emoji data/emoji-noto ;;
heads) digits && heads digits data/digits/labels.tsv ;;
all)
    digits && losses digits data/digits/labels.tsv && sweep digits data/digits/labels.tsv
    # The emoji runs the sweep is compared with come first.
    emoji && losses emoji data/emoji-noto nt-xent spectral && sweep emoji data/emoji-noto
    digits && heads digits data/digits/labels.tsv
    emoji && losses emoji data/emoji-noto debiased hard-negative oracle
    ;;
*)
    echo "usage: $0 [digits|emoji [LOSS…]|sweep|sweep-emoji|heads|all|summary|norms]" >&2
    exit 2
    ;;
esac
