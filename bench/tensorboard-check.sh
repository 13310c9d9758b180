#!/usr/bin/env bash
# Dev-only: writes a sample event file with marvel's TensorBoardWriter (bench/tensorboard-sample.ts) and reads it
# back with TensorBoard's own EventAccumulator (bench/python/tensorboard_check.py). Needs `tensorboard` in the
# Python at $PYTHON (default bench/.venv/bin/python; `bench/.venv/bin/python -m pip install tensorboard`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-bench/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
npx esbuild bench/tensorboard-sample.ts --bundle --platform=node --format=esm --external:sharp --log-level=error \
  --outfile=bench/.tensorboard-sample.mjs
node bench/.tensorboard-sample.mjs "$WORK/logs"
rm -f bench/.tensorboard-sample.mjs
"$PY" bench/python/tensorboard_check.py "$WORK/logs"
