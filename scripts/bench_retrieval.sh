#!/usr/bin/env bash
# Exact top-10 over N × D unit vectors (default 1,000,000 × 256 f32): `clip search` beside faiss
# IndexFlatIP on the same data and threads, for 1 query and for Q queries, whole process each
# (start, load, search, output), alternating in one sitting; then the search call alone, the
# machine's limits, and approximate search (IVF; with ANN=1 also HNSW): recall@10, query rate.
#
# usage: scripts/bench_retrieval.sh [N] [D] [Q] [ROUNDS]
# needs: /tmp/peers with faiss-cpu (see ../shared/bench/README.md); ~2.5 GB in $WORK_DIR.
# env:   CLIP_BIN=path/to/clip measures another build's `clip search` (e.g. the previous commit's);
#        BENCH_SEARCH_BIN likewise for the in-process bench_search example.
#        ANN=1 also builds the HNSW graph (≈ 17 minutes for 1M vectors on two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}; D=${2:-256}; Q=${3:-1000}; ROUNDS=${4:-3}
PY=${PEERS_PY:-/tmp/peers/bin/python}; BENCH=${BENCH_DIR:-../shared/bench}
WORK=${WORK_DIR:-/tmp/clip-bench-retrieval}
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2
# ../shared/bench/README.md: this machine sets OPENBLAS_CORETYPE=Haswell, which faiss' bundled
# OpenBLAS obeys (and runs ~2x faster with here than with its own detection); keep it.
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}
CLIP=${CLIP_BIN:-./target/release/clip}; BS=${BENCH_SEARCH_BIN:-./target/release/examples/bench_search}
[ -n "${CLIP_BIN:-}" ] || cargo build --release -q --bin clip
[ -n "${BENCH_SEARCH_BIN:-}" ] || cargo build --release -q -p retrieval --example bench_search

mkdir -p "$WORK/one"
if [ ! -f "$WORK/exact_ids.npy" ]; then
  echo "making $N × $D base and $Q queries in $WORK" >&2
  "$PY" "$BENCH/faiss_search.py" make "$WORK" "$N" "$D" "$Q"
fi
if [ ! -f "$WORK/one/queries.safetensors" ]; then
  # faiss_search.py reads DIR/base.safetensors and DIR/queries.safetensors: a 1-query twin.
  ln -sf "$WORK/base.safetensors" "$WORK/one/base.safetensors"
  "$PY" -c "import sys; from safetensors.numpy import load_file, save_file; \
q = load_file(sys.argv[1])['embeddings'][:1]; save_file({'embeddings': q}, sys.argv[2])" \
    "$WORK/queries.safetensors" "$WORK/one/queries.safetensors"
fi
if [ ! -f "$WORK/index/manifest.json" ]; then
  /usr/bin/time -f "index build: %e s, max RSS %M KiB" \
    "$CLIP" index build --embeddings "$WORK/base.safetensors" --out "$WORK/index"
fi

now() { date +%s.%N; }
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
printf '| round | queries | clip search (s) | faiss whole (s) | faiss search call (s) | faiss / clip |\n|---|---|---|---|---|---|\n'
for r in $(seq 1 "$ROUNDS"); do
  for case in one all; do
    if [ "$case" = one ]; then qdir="$WORK/one"; nq=1; else qdir="$WORK"; nq=$Q; fi
    t0=$(now)
    "$CLIP" search --index "$WORK/index" --query-embeddings "$qdir/queries.safetensors" \
      -k 10 --exact --json > "$WORK/ours_$case.json"
    t1=$(now)
    ours=$(echo "$t1 - $t0" | bc -l)
    read -r fwhole fcall < <("$PY" "$BENCH/faiss_search.py" faiss "$qdir" 10)
    printf '| %d | %d | %.3f | %.3f | %.3f | %.2f× |\n' "$r" "$nq" "$ours" "$fwhole" "$fcall" \
      "$(echo "$fwhole / $ours" | bc -l)"
  done
done
"$PY" "$BENCH/faiss_search.py" check "$WORK" "$WORK/ours_all.json"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "# in-process: open (with checksum), search call alone (best of 3)"
"$BS" "$WORK/index" "$WORK/queries.safetensors" --repeat 3
echo "# machine limits"
"$BS" limits "$(ls "$WORK"/index/vectors-*.safetensors | head -1)"
echo "# IVF lists (√N, spherical k-means): build time, then recall@10 and query rate per probes"
"$BS" "$WORK/index" "$WORK/queries.safetensors" --repeat 3 --ann 1,2,4,8,16,32 | grep -v '"exact"'
if [ "${ANN:-0}" = 1 ]; then
  echo "# HNSW (M=16, ef_construction=100): build time, then recall@10 and query rate per ef_search"
  "$BS" "$WORK/index" "$WORK/queries.safetensors" --repeat 1 --ann-method hnsw --ann 16,32,64,128,256 \
    | grep -v '"exact"'
fi
