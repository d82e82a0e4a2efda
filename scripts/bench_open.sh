#!/usr/bin/env bash
# Opening a large index, before and after the rows file (issue 12): N random f16 unit vectors of
# dimension 64 named by ids `id-00000000`…, written once by crates/retrieval/examples/
# make_ids_index.rs as a format-2 index (ids in rows-1.bin) and as a format-1 index (the same
# vectors, hard-linked, with every id inline in manifest.json). Then, RUNS times, each binary
# and format in turn (interleaved, so that load on a shared machine hits all alike), one process
# of each of:
#   open:          clip index info DIR             (header, lengths and full checksums)
#   first result:  clip search --index DIR --query-embeddings query.safetensors -k 10
#   same, --no-verify (length and header checks only)
# timed from start to exit by /usr/bin/time (wall seconds, peak RSS). After one untimed run of
# each, so files are in the page cache. Prints a Markdown table: median and min wall time and
# median peak RSS.
#
# usage: scripts/bench_open.sh [N]   (10000000; ~1.3 GB of vectors and ~0.35 GB of ids on disk)
# env:   CLIP_BIN: this build's clip (default: built in release). OLD_CLIP_BIN: a clip from
#        before format 2 (optional; it opens the format-1 index only). MAKE_BIN: the
#        make_ids_index example (default: built in release). WORK_DIR (/tmp/clip-bench-open).
#        RUNS (5). WITH_NEW_V1=1: also time this build on the format-1 index.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000000}; DIM=64; RUNS=${RUNS:-5}
WORK=${WORK_DIR:-/tmp/clip-bench-open}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
TARGET=${CARGO_TARGET_DIR:-target}
CLIP=${CLIP_BIN:-$TARGET/release/clip}; MAKE=${MAKE_BIN:-$TARGET/release/examples/make_ids_index}
[ -n "${CLIP_BIN:-}" ] || cargo build --release -q --bin clip
[ -n "${MAKE_BIN:-}" ] || cargo build --release -q -p retrieval --example make_ids_index
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null

DATA="$WORK/ids_${N}x${DIM}"
if [ ! -f "$DATA/done" ]; then
  rm -rf "$DATA"
  "$MAKE" "$DATA" "$N" "$DIM"
  touch "$DATA/done"
fi
du -sh "$DATA"/v2/* "$DATA"/v1/manifest.json >&2
Q="$DATA/query.safetensors"

# label|binary|index dir
VARIANTS=("new, format 2|$CLIP|$DATA/v2")
[ -n "${WITH_NEW_V1:-}" ] && VARIANTS+=("new, format 1|$CLIP|$DATA/v1")
[ -n "${OLD_CLIP_BIN:-}" ] && VARIANTS+=("old, format 1|$OLD_CLIP_BIN|$DATA/v1")
# label|arguments after the binary (DIR and Q substituted)
COMMANDS=("open (index info)|index info DIR"
          "first result (search)|search --index DIR --query-embeddings Q -k 10"
          "first result (search --no-verify)|search --index DIR --query-embeddings Q -k 10 --no-verify")

TIMES="$WORK/times.tsv"; : >"$TIMES"
for run in $(seq 0 "$RUNS"); do
  for v in "${VARIANTS[@]}"; do
    IFS='|' read -r vname bin dir <<<"$v"
    for c in "${COMMANDS[@]}"; do
      IFS='|' read -r cname args <<<"$c"
      args=${args//DIR/$dir}; args=${args//Q/$Q}
      # shellcheck disable=SC2086
      /usr/bin/time -f "%e %M" -o "$WORK/t" "$bin" $args >"$WORK/out" 2>"$WORK/err" || {
        echo "failed: $bin $args" >&2; cat "$WORK/err" >&2; exit 1; }
      # Run 0 warms the page cache and is not counted.
      [ "$run" -gt 0 ] && printf '%s\t%s\t%s\n' "$vname" "$cname" "$(cat "$WORK/t")" >>"$TIMES"
    done
  done
done
grep -q id- "$WORK/out" || { echo "no labelled hit in the last search output" >&2; exit 1; }

python3 - "$TIMES" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    v, c, t = line.rstrip("\n").split("\t")
    secs, kib = t.split()
    rows.setdefault((v, c), []).append((float(secs), int(kib)))
print("| binary, index format | command | median s | min s | peak RSS MiB (median) |")
print("|---|---|---:|---:|---:|")
for (v, c), xs in rows.items():
    t = [x[0] for x in xs]
    r = [x[1] for x in xs]
    print(f"| {v} | {c} | {statistics.median(t):.2f} | {min(t):.2f} | {statistics.median(r) / 1024:.0f} |")
PY
