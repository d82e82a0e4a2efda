#!/usr/bin/env bash
# The README's first command, measured: `clip train` on the bundled Noto emoji, validated on
# the Twemoji drawings it never sees, for each seed and each variant, one row per run: steps,
# wall-clock minutes, text→image R@1 and R@10 on the held-out style, and how many of the six
# example queries find their emoji in the top 3. Mean ± sample standard deviation per variant.
#
# usage: scripts/first_run.sh ["OPTIONS"…]   each argument one variant of `clip train` options
#   (default: "" — the first run as shipped — "--steps 300" and "--preset small --steps 100")
#   SEEDS="0 1 2"  seeds (default 0 1 2); OUT=runs/first-run; CLIP_BIN=target/release/clip
# Time each variant on an otherwise idle machine: the minutes are the whole process.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CLIP_BIN:-target/release/clip}
OUT=${OUT:-runs/first-run}
SEEDS=${SEEDS:-0 1 2}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
[ $# -gt 0 ] || set -- "" "--steps 300" "--preset small --steps 100"
echo "| options | seed | minutes | t→i R@1 | t→i R@10 | of 6 queries in top 3 |"
echo "|---|---|---|---|---|---|"
for variant in "$@"; do
  tag=$(printf '%s' "${variant:-default}" | tr -c 'A-Za-z0-9.-' '_')
  for seed in $SEEDS; do
    log="$OUT/$tag.seed$seed.log"
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    "$BIN" train $variant --seed "$seed" --out "$OUT/$tag.seed$seed" >"$log" 2>"$log.err"
    end=$(date +%s.%N)
    r1=$(awk '$1 == "text_to_image_R@1" {print $2}' "$log")
    r10=$(awk '$1 == "text_to_image_R@10" {print $2}' "$log")
    top3=$(grep -cE '": the right image at rank [123] of' "$log" || true)
    mins=$(echo "($end - $start) / 60" | bc -l)
    printf '| %s | %s | %.2f | %s | %s | %s |\n' "${variant:-(default)}" "$seed" "$mins" "$r1" "$r10" "$top3"
  done
done | tee "$OUT/table.md"
python3 - "$OUT/table.md" <<'PY'
import statistics, sys
rows = [l.split("|")[1:-1] for l in open(sys.argv[1]) if l.startswith("| ") and not l.startswith("| options")]
by = {}
for r in rows:
    by.setdefault(r[0].strip(), []).append([float(x) for x in r[2:]])
print("\n| options | seeds | minutes | t→i R@1 | t→i R@10 | of 6 in top 3 |\n|---|---|---|---|---|---|")
for k, v in by.items():
    cols = list(zip(*v))
    cell = lambda c, f: f"{statistics.mean(c):{f}} ± {statistics.stdev(c) if len(c) > 1 else 0:{f}}"
    print(f"| {k} | {len(v)} | {cell(cols[0], '.1f')} | {cell(cols[1], '.3f')} | {cell(cols[2], '.3f')} | {cell(cols[3], '.1f')} |")
PY
