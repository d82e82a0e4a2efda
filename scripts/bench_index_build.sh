#!/usr/bin/env bash
# `clip index build` over N photo-like images (examples/make_photos.rs): images/s and peak RSS
# of a full build (/usr/bin/time -v), then the same build killed (SIGKILL) about halfway and
# resumed: how long the rerun takes and how many images it resumed instead of embedding.
# Run it for several N to see whether peak RSS grows with the collection.
#
# usage: scripts/bench_index_build.sh [N]   (10000)
# env:   MODEL=model dir (default tests/fixtures/hf_tiny: random weights, 40×40 input, so the
#        time is mostly decoding and preprocessing). BATCH=--batch-size (32). WIDTH, HEIGHT:
#        image size (160×120). CLIP_BIN / PHOTOS_BIN: prebuilt binaries (otherwise both are
#        built with PROFILE, default release). KILL_AFTER: seconds before the kill (default:
#        half the full build). WORK_DIR: where images and indexes go.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
WORK=${WORK_DIR:-/tmp/clip-bench-index}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
MODEL=${MODEL:-tests/fixtures/hf_tiny}
BATCH=${BATCH:-32}; W=${WIDTH:-160}; H=${HEIGHT:-120}
PROFILE=${PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-target}
flag=(); [ "$PROFILE" = release ] && flag=(--release)
CLIP=${CLIP_BIN:-$TARGET/$PROFILE/clip}
PHOTOS=${PHOTOS_BIN:-$TARGET/$PROFILE/examples/make_photos}
[ -n "${CLIP_BIN:-}" ] || cargo build "${flag[@]}" -q --bin clip
[ -n "${PHOTOS_BIN:-}" ] || cargo build "${flag[@]}" -q --example make_photos
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null

mkdir -p "$WORK"
IMG="$WORK/photos_${N}_${W}x${H}"
[ -d "$IMG" ] || "$PHOTOS" --out "$IMG" --count "$N" --width "$W" --height "$H" >&2

# Seconds from time -v's "Elapsed (wall clock) time (h:mm:ss or m:ss): 1:02.34".
wall() { sed -n 's/.*Elapsed (wall clock) time .*: //p' "$1" | awk -F: '{s=0; for(i=1;i<=NF;i++) s=s*60+$i; print s}'; }
rss() { sed -n 's/.*Maximum resident set size (kbytes): //p' "$1"; }
build() { "$@" "$CLIP" index build --images "$IMG" --model "$MODEL" --out "$OUT" --batch-size "$BATCH"; }

echo "$N images ${W}×${H}, model $MODEL, batch $BATCH, RAYON_NUM_THREADS=$RAYON_NUM_THREADS, $CLIP" >&2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores" >&2

IDX="$WORK/index_$N"; rm -rf "$IDX"
OUT=$IDX build /usr/bin/time -v -o "$WORK/full.time" 2>"$WORK/full.err"
T=$(wall "$WORK/full.time")
echo "full build:  $T s, $(awk -v n="$N" -v t="$T" 'BEGIN{printf "%.0f", n/t}') images/s, peak RSS $(rss "$WORK/full.time") KiB"
grep -v '^\s*$' "$WORK/full.err" | tail -2 >&2

# Killed about halfway, then resumed.
IDX2="$WORK/index_${N}_killed"; rm -rf "$IDX2"
K=${KILL_AFTER:-$(awk -v t="$T" 'BEGIN{printf "%.1f", t/2}')}
# `exec`, so that the background job is clip itself and the SIGKILL reaches it (killing the
# subshell around a function would leave the build running beside its rerun).
OUT=$IDX2 build exec 2>/dev/null &
PID=$!
sleep "$K"
kill -9 "$PID" 2>/dev/null || echo "the build ended before the kill" >&2
wait "$PID" 2>/dev/null || true
OUT=$IDX2 build /usr/bin/time -v -o "$WORK/resume.time" 2>"$WORK/resume.err"
R=$(sed -n 's/^resumed \([0-9]*\) .*/\1/p' "$WORK/resume.err"); R=${R:-0}
echo "killed after $K s; rerun: $(wall "$WORK/resume.time") s, resumed $R images, peak RSS $(rss "$WORK/resume.time") KiB"
grep -v '^\s*$' "$WORK/resume.err" | tail -3 >&2
