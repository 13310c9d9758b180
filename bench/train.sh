#!/usr/bin/env bash
# Training-step benchmark on the CPU, marvel (the core's Trainer) next to the same step in PyTorch eager, same config,
# weights' layout, batch and threads, each in its own process. See bench/README.md ("Training step").
# - `single` recipe: TiTok-S ViTs, 256x256, 2-depth LFQ (bench/python/train_torch.py);
# - `stage2` recipe, tiny (the titok_stage2_losses fixture's layout): frozen encoder + VQ, decoder ViT + legacy head
#   + MaskGIT pixel decoder on L2 + perceptual (tiny ConvNeXt) + GAN, and the discriminator's own step
#   (bench/python/train_stage2_torch.py; both engines start from the weights files it writes).
#
#   bench/train.sh                         # single S-128 and stage2 tiny, batch 2, 2 threads
#   TOKENS=32,128 BATCHES=2,4 ROUNDS=2 bench/train.sh
#
# Environment: RECIPES (default "single,stage2"), TOKENS (latent tokens of the single rows, default 128), BATCHES
# (default 2), THREADS (default 2), WARMUP (steps before timing, default 1), RUNS (timed steps, default 3), ROUNDS
# (default 1; each round runs both engines, in alternating order, and the table keeps each engine's fastest round:
# the least disturbed on a shared machine), SPLIT=1 (also time, after the steps, forward + backward without the
# update and, for marvel, the update alone: where a step's time goes), SKIP_BUILD=1, PYTHON (default
# bench/.venv/bin/python; created from PyPI when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

RECIPES=${RECIPES:-single,stage2}
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

# marvel's threads: MARVEL_NUM_THREADS and --threads. candle's own CPU ops (its elementwise ops, the gradient store's
# adds, its matmul) run on the caller's pool since vendor/candle-core's patch, so CANDLE_NUM_THREADS is not needed.
marvel() { MARVEL_NUM_THREADS="$THREADS" "$MARVEL" "$@" "${common[@]}"; }
torch() { OMP_NUM_THREADS="$THREADS" "$PY" "$@" "${common[@]}"; }

# rows RECIPE_LABEL "MARVEL ARGS" "TORCH ARGS": every batch and round of one recipe, both engines.
rows() {
  local label=$1 marvel_args=$2 torch_args=$3
  for b in ${BATCHES//,/ }; do
    for ((r = 0; r < ROUNDS; r++)); do
      order=(marvel torch)
      ((r % 2)) && order=(torch marvel)
      for engine in "${order[@]}"; do
        echo "== $label, batch $b, $THREADS threads: $engine (round $((r + 1))/$ROUNDS)" >&2
        local args=$marvel_args
        [ "$engine" = torch ] && args=$torch_args
        # A failed side is recorded, not fatal: the other side's figure still comes out.
        # shellcheck disable=SC2086 # the argument strings hold paths without spaces
        line=$("$engine" $args --batch "$b") || line="{\"engine\":\"$engine\",\"batch\":$b,\"failed\":true}"
        echo "{\"recipe\":\"$label\",${line#\{}" >>"$out"
      done
    done
  done
}

for recipe in ${RECIPES//,/ }; do
  case $recipe in
    single)
      for n in ${TOKENS//,/ }; do
        config="$WORK/train-single-s$n.json"
        "$PY" bench/python/train_torch.py --print-config --tokens "$n" >"$config"
        rows "single S-$n" "$config" "bench/python/train_torch.py $config"
      done
      ;;
    stage2)
      # The weights both engines start from (model, perceptual ConvNeXt, discriminator) go next to the config.
      weights="$WORK/train-stage2-tiny"
      config="$weights.json"
      "$PY" bench/python/train_stage2_torch.py --print-config "$weights" >"$config"
      rows "stage2 tiny" "$config --init $weights" "bench/python/train_stage2_torch.py $config"
      ;;
    *)
      echo "RECIPES: unknown recipe $recipe (single, stage2)" >&2
      exit 2
      ;;
  esac
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
"$PY" bench/python/train_report.py "$out" --load-before "$load_before" --load-after "$load_after" --cores "$(nproc)"
