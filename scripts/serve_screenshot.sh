#!/usr/bin/env bash
# The `clip serve` search page in a real browser: indexes ~200 bundled emoji, starts the
# server on a free port, and has headless Chromium (scripts/serve_screenshot.mjs, through
# playwright-core) open `/`, type a query, submit and wait for the thumbnail grid. Fails on a
# console error, a failed request or too few thumbnails with scores; writes the screenshot.
#
# usage: scripts/serve_screenshot.sh [OUT.png]   (default docs/img/serve.png)
#   CLIP_BIN=PATH   the binary (default ./target/release/clip; build it first)
#   MODEL=DIR       model to index with (default tests/fixtures/hf_tiny: random weights, so
#                   the scores are arbitrary; the point is the page)
#   QUERY=TEXT      what is typed into the search box (default "a smiling face")
#   MIN=N           thumbnails that must be shown and loaded (default 12)
# needs: node and npm; installs Debian's chromium (apt-get) and playwright-core (npm, into
# $PLAYWRIGHT_DIR, default /tmp/shot-node) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/img/serve.png}
CLIP_BIN=${CLIP_BIN:-./target/release/clip}
MODEL=${MODEL:-tests/fixtures/hf_tiny}
QUERY=${QUERY:-a smiling face}
export PLAYWRIGHT_DIR=${PLAYWRIGHT_DIR:-/tmp/shot-node}

if ! command -v chromium >/dev/null; then
  sudo=$([[ $(id -u) == 0 ]] || echo sudo)
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y chromium chromium-driver
fi
if [[ ! -d $PLAYWRIGHT_DIR/node_modules/playwright-core ]]; then
  mkdir -p "$PLAYWRIGHT_DIR"
  npm install --prefix "$PLAYWRIGHT_DIR" --no-audit --no-fund playwright-core
fi

work=$(mktemp -d)
server=
cleanup() {
  if [[ -n $server ]]; then kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Every ninth Noto emoji: ~200 images across all categories (the first 200 are mostly flags).
# Copied, not linked: the server only serves files whose real path is under the indexed folder.
mkdir "$work/emoji"
find data/emoji-noto -name '*.png' | sort | awk 'NR % 9 == 1' | head -200 |
  xargs cp -t "$work/emoji"
"$CLIP_BIN" index build --model "$MODEL" --images "$work/emoji" --out "$work/emoji.index"

"$CLIP_BIN" serve --index "emoji=$work/emoji.index" --port 0 >"$work/serve.out" &
server=$!
for _ in $(seq 100); do
  grep -q '^listening on ' "$work/serve.out" && break
  kill -0 "$server" 2>/dev/null || { echo "clip serve exited" >&2; exit 1; }
  sleep 0.1
done
addr=$(sed -n 's/^listening on //p' "$work/serve.out")
[[ -n $addr ]] || { echo "clip serve printed no address" >&2; exit 1; }

mkdir -p "$(dirname "$OUT")"
node scripts/serve_screenshot.mjs "$addr/" "$QUERY" "$OUT" "${MIN:-12}"
