#!/usr/bin/env bash
# Training-step benchmark on the CPU: marvel's `single` recipe (TiTok-S ViTs, 256x256, 2-depth LFQ, through the
# core's Trainer) next to the same step in PyTorch eager (bench/python/train_torch.py), same config, batch and threads,
# each in its own process. See bench/README.md ("Training step").
#
#   bench/train.sh                         # S-128, batch 2, 2 threads
#   TOKENS=32,128 BATCHES=2,4 ROUNDS=2 bench/train.sh
#
# Environment: TOKENS (latent tokens, default 128), BATCHES (default 2), THREADS (default 2), WARMUP (steps before
# timing, default 1), RUNS (timed steps, default 3), ROUNDS (default 1; each round runs both engines, in alternating
# order, and the table keeps each engine's fastest round: the least disturbed on a shared machine), SPLIT=1 (also
# time forward + backward without the update, after the steps: where a step's time goes), SKIP_BUILD=1,
# PYTHON (default bench/.venv/bin/python; created from PyPI when missing).
# Stage 2 has no row yet: the Trainer does not run that recipe, and its loss pieces alone are timed by
# crates/marvel-core/examples/bench_stage2_losses.rs (no PyTorch twin).
set -euo pipefail
cd "$(dirname "$0")/.."

TOKENS=${TOKENS:-128}
BATCHES=${BATCHES:-2}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-1}
RUNS=${RUNS:-3}
ROUNDS=${ROUNDS:-1}
WORK=bench/.work
PY=${PYTHON:-bench/.venv/bin/python}
mkdir -p "$WORK"

if [ ! -x "$PY" ]; then
  echo "== creating bench/.venv (PyPI torch; several GB)" >&2
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q -r bench/python/requirements.txt
  PY=bench/.venv/bin/python
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== building the marvel example (release)" >&2
  node scripts/cargo.mjs build --release -p marvel-core --example bench_train >&2
fi
MARVEL=target/$(rustc -vV | sed -n 's/^host: //p')/release/examples/bench_train

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="$WORK/train-$stamp.jsonl"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
common=(--threads "$THREADS" --warmup "$WARMUP" --runs "$RUNS")
[ "${SPLIT:-0}" = 1 ] && common+=(--split)

marvel() { MARVEL_NUM_THREADS="$THREADS" "$MARVEL" "$1" --batch "$2" "${common[@]}"; }
torch() { OMP_NUM_THREADS="$THREADS" "$PY" bench/python/train_torch.py "$1" --batch "$2" "${common[@]}"; }

for n in ${TOKENS//,/ }; do
  config="$WORK/train-single-s$n.json"
  "$PY" bench/python/train_torch.py --print-config --tokens "$n" >"$config"
  for b in ${BATCHES//,/ }; do
    for ((r = 0; r < ROUNDS; r++)); do
      order=(marvel torch)
      ((r % 2)) && order=(torch marvel)
      for engine in "${order[@]}"; do
        echo "== single S-$n, batch $b, $THREADS threads: $engine (round $((r + 1))/$ROUNDS)" >&2
        # A failed side is recorded, not fatal: the other side's figure still comes out.
        line=$("$engine" "$config" "$b") || line="{\"engine\":\"$engine\",\"batch\":$b,\"failed\":true}"
        echo "{\"recipe\":\"single S-$n\",${line#\{}" >>"$out"
      done
    done
  done
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
"$PY" bench/python/train_report.py "$out" --load-before "$load_before" --load-after "$load_after" --cores "$(nproc)"
