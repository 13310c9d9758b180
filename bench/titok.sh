#!/usr/bin/env bash
# TiTok / MARVEL CPU benchmark: marvel (Rust example and Node API) vs onnxruntime vs PyTorch eager, 2 threads, batch
# 1 and 8, on three layouts with seeded random weights: s128 (TiTok-S-128 as released), l32 (TiTok-L-32 as released,
# the default public model) and single (the built-in model's layout: single-stage, 4-depth LFQ). See bench/README.md.
#
#   bench/titok.sh                        # every layout (about 40 min on 2 cores, most of it L-32)
#   LAYOUTS=s128 RUNS=2 bench/titok.sh    # one layout, quicker, noisier
#
# Before anything is timed: torch is checked against the reference fixtures (parity_check.py), onnxruntime against
# torch (prepare.py), and marvel through Rust and through Node against torch on the layout's check batch; any
# mismatch stops the run.
#
# Environment: LAYOUTS (default s128,l32,single), RUNS (timed runs per stage, default 5), ROUNDS (each engine's runs
# repeated this many times in alternating order, the fastest round per stage reported; default 1), WARMUP (default 1), BATCHES
# (default 1,8), THREADS (default 2), SKIP_BUILD=1 (use the built example and dist/ as they are), PYTHON (default
# bench/.venv/bin/python; created from bench/python/requirements.txt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

LAYOUTS=${LAYOUTS:-s128,l32,single}
RUNS=${RUNS:-5}
ROUNDS=${ROUNDS:-1}
WARMUP=${WARMUP:-1}
BATCHES=${BATCHES:-1,8}
THREADS=${THREADS:-2}
WORK=bench/.work
PY=${PYTHON:-bench/.venv/bin/python}
mkdir -p "$WORK"

if [ ! -x "$PY" ]; then
  echo "== creating bench/.venv (PyPI torch + onnxruntime; several GB)" >&2
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q -r bench/python/requirements.txt
  PY=bench/.venv/bin/python
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== building the marvel example and the package (release)" >&2
  # The addon's target folder (scripts/cargo.mjs passes the host triple, as napi does): candle is built once.
  node scripts/cargo.mjs build --release -p marvel-core --example bench_titok >&2
  npm run build >&2
fi
MARVEL=target/$(rustc -vV | sed -n 's/^host: //p')/release/examples/bench_titok

echo "== checking the torch baseline against shared/parity (titok_vq_legacy, titok_vq_nonlegacy, marvel_lfq)" >&2
parity=$("$PY" bench/python/parity_check.py --threads 1) || { echo "torch baseline failed parity: $parity" >&2; exit 1; }

stamp=$(date -u +%Y%m%dT%H%M%SZ)
common=(--batches "$BATCHES" --warmup "$WARMUP" --runs "$RUNS")
: >"$WORK/latest.md"
IFS=, read -r -a layouts <<<"$LAYOUTS"
for layout in "${layouts[@]}"; do
  model="$WORK/$layout"
  out="$WORK/results-$stamp-$layout.jsonl"
  echo "== $layout: weights, ONNX export, onnxruntime vs torch check" >&2
  prepare=$("$PY" bench/python/prepare.py --work "$WORK" --layout "$layout") || { echo "prepare failed: $prepare" >&2; exit 1; }
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)

  echo "== $layout: sgemm ceiling" >&2
  # OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (set on some machines for old OpenBLAS builds) slow a current numpy: unset
  # both for this measurement only.
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS="$THREADS" \
    "$PY" bench/python/bench_py.py sgemm --threads "$THREADS" >>"$out"
  # marvel through Node against torch before any engine of the layout is timed (the Rust runner checks itself
  # below before it times anything); a mismatch exits non-zero and set -e stops the run.
  echo "== $layout: marvel (Node API) check" >&2
  node bench/titok.mjs "$model" --threads "$THREADS" --check "$model/check.safetensors" --check-only
  # marvel and onnxruntime back to back: on a shared machine the closest in time are the most comparable. With
  # ROUNDS > 1 every engine runs once a round, the order reversed every other round, and the report keeps each
  # engine's fastest round per stage: a stretch of a slow host then falls on every engine instead of one.
  for ((round = 1; round <= ROUNDS; round++)); do
    order=(marvel ort torch marvel-node)
    if ((round % 2 == 0)); then order=(marvel-node torch ort marvel); fi
    for engine in "${order[@]}"; do
      echo "== $layout: $engine (round $round/$ROUNDS)" >&2
      case $engine in
        marvel) "$MARVEL" "$model" --threads "$THREADS" --check "$model/check.safetensors" "${common[@]}" >>"$out" ;;
        marvel-node) node bench/titok.mjs "$model" --threads "$THREADS" --check "$model/check.safetensors" "${common[@]}" >>"$out" ;;
        *) OMP_NUM_THREADS="$THREADS" "$PY" bench/python/bench_py.py "$engine" --model "$model" --threads "$THREADS" "${common[@]}" >>"$out" ;;
      esac
    done
  done
  echo "== $layout: sgemm ceiling again (the report takes the higher of the two: less disturbed by other processes)" >&2
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS="$THREADS" \
    "$PY" bench/python/bench_py.py sgemm --threads "$THREADS" >>"$out"

  cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
  printf '{"engine":"meta","layout":"%s","date":"%s","cpu":"%s","cores":%s,"threads":%s,"runs":%s,"rounds":%s,"load_before":"%s","load_after":"%s","parity":%s,"prepare":%s}\n' \
    "$layout" "$(date -u +%Y-%m-%dT%H:%MZ)" "$cpu" "$(nproc)" "$THREADS" "$RUNS" "$ROUNDS" "$load_before" \
    "$(cut -d' ' -f1-3 /proc/loadavg)" "$parity" "$prepare" >>"$out"

  echo >&2
  "$PY" bench/python/report.py "$out" --model "$model" --markdown "$WORK/latest-$layout.md"
  { echo "### $layout"; echo; cat "$WORK/latest-$layout.md"; echo; } >>"$WORK/latest.md"
  echo >&2
  echo "raw results: $out" >&2
done
echo "tables: $WORK/latest.md" >&2
