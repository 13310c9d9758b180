#!/usr/bin/env bash
# TiTok S-128 CPU benchmark: marvel vs onnxruntime vs PyTorch eager, 2 threads, batch 1 and 8. See bench/README.md.
#
#   bench/titok.sh            # full run (about 10-15 min on 2 cores)
#   RUNS=2 bench/titok.sh     # quicker, noisier
#
# Environment: RUNS (timed runs per stage, default 5), WARMUP (default 1), BATCHES (default 1,8), THREADS (default 2),
# SKIP_BUILD=1 (use the built example as is), PYTHON (default bench/.venv/bin/python; created from
# bench/python/requirements.txt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
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
  echo "== building the marvel example (release)" >&2
  cargo build --release -p marvel-core --examples >&2
fi

echo "== checking the torch baseline against shared/parity/titok_vq_legacy" >&2
parity=$("$PY" bench/python/parity_check.py --threads 1) || { echo "torch baseline failed parity: $parity" >&2; exit 1; }
echo "== S-128 weights, ONNX export, onnxruntime vs torch check" >&2
prepare=$("$PY" bench/python/prepare.py --work "$WORK") || { echo "prepare failed: $prepare" >&2; exit 1; }

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="$WORK/results-$stamp.jsonl"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
common=(--batches "$BATCHES" --warmup "$WARMUP" --runs "$RUNS")

echo "== sgemm ceiling" >&2
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (set on some machines for old OpenBLAS builds) slow a current numpy: unset
# both for this measurement only.
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS="$THREADS" \
  "$PY" bench/python/bench_py.py sgemm --work "$WORK" --threads "$THREADS" >>"$out"
# marvel and onnxruntime back to back: on a shared machine the closest in time are the most comparable.
echo "== marvel (Rust example)" >&2
target/release/examples/bench_titok "$WORK/s128" --threads "$THREADS" --check "$WORK/check.safetensors" "${common[@]}" >>"$out" \
  || echo '{"engine":"marvel","skipped":"bench_titok failed (see its message above)"}' >>"$out"
for engine in ort torch; do
  echo "== $engine" >&2
  OMP_NUM_THREADS="$THREADS" "$PY" bench/python/bench_py.py "$engine" --work "$WORK" --threads "$THREADS" "${common[@]}" >>"$out"
done
echo "== marvel (Node API)" >&2
node bench/titok.mjs "$WORK/s128" --threads "$THREADS" "${common[@]}" >>"$out" || echo '{"engine":"marvel-node","skipped":"node failed"}' >>"$out"
echo "== sgemm ceiling again (the report takes the higher of the two: less disturbed by other processes)" >&2
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS="$THREADS" \
  "$PY" bench/python/bench_py.py sgemm --work "$WORK" --threads "$THREADS" >>"$out"

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
printf '{"engine":"meta","date":"%s","cpu":"%s","cores":%s,"threads":%s,"runs":%s,"load_before":"%s","load_after":"%s","parity":%s,"prepare":%s}\n' \
  "$(date -u +%Y-%m-%dT%H:%MZ)" "$cpu" "$(nproc)" "$THREADS" "$RUNS" "$load_before" "$(cut -d' ' -f1-3 /proc/loadavg)" \
  "$parity" "$prepare" >>"$out"

echo >&2
"$PY" bench/python/report.py "$out" --model "$WORK/s128" --markdown "$WORK/latest.md"
echo >&2
echo "raw results: $out; table: $WORK/latest.md" >&2
