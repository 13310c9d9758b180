#!/usr/bin/env bash
# Peak resident memory of the model commands on an L-32-size model (TiTok-L-32's sizes, seeded random weights,
# about 2.6 GB of f32), each step in a process of its own, as a ratio to the size of the weights file.
# See bench/README.md ("Memory").
#
#   npm run build && bench/memory.sh
#
# Environment: WORK (default bench/.work/memory; the model is written there once and reused), NODE (default node).
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${WORK:-bench/.work/memory}
NODE=${NODE:-node}
MODEL=$WORK/l32
OUT=$WORK/l32-marvel
mkdir -p "$WORK"
[ -f dist/index.js ] || { echo "dist/ is missing: run npm run build first" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (Debian: apt-get install time)" >&2; exit 2; }

WEIGHTS_MB=0
# run LABEL CMD...: the command's peak RSS (/usr/bin/time %M), wall time and the 1-minute load average before it.
run() {
  local label=$1 t load kb secs
  shift
  t=$(mktemp)
  load=$(cut -d' ' -f1 /proc/loadavg)
  if ! /usr/bin/time -f '%M %e' -o "$t" "$@" >"$t.out" 2>"$t.err"; then
    echo "$label failed:" >&2
    cat "$t.err" >&2
    rm -f "$t" "$t.out" "$t.err"
    return 1
  fi
  read -r kb secs <"$t"
  awk -v l="$label" -v kb="$kb" -v w="$WEIGHTS_MB" -v s="$secs" -v load="$load" -v out="$(head -n 1 "$t.out" | head -c 200)" \
    'BEGIN { mb = kb / 1024; r = (w > 0) ? sprintf("%.2f", mb / w) : "-";
             printf "%-28s %8.0f MB %7s x %7.1f s  load %5s  %s\n", l, mb, r, s, load, out }'
  rm -f "$t" "$t.out" "$t.err"
}

echo "marvel memory benchmark: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo), $("$NODE" --version)"
if [ ! -f "$MODEL/model.safetensors" ]; then
  run "createRandomModel (L-32)" "$NODE" bench/memory.mjs create "$MODEL"
fi
WEIGHTS_MB=$(($(stat -c %s "$MODEL/model.safetensors") / 1048576))
echo "weights: $MODEL/model.safetensors, $WEIGHTS_MB MB"
printf '%-28s %11s %9s %9s\n' step "peak RSS" "/ weights" time
run "node + addon (baseline)" "$NODE" bench/memory.mjs baseline
run "Tokenizer.fromPretrained" "$NODE" bench/memory.mjs load "$MODEL"
run "marvel info" "$NODE" dist/cli.js info "$MODEL"
run "Tokenizer.inspect" "$NODE" bench/memory.mjs inspect "$MODEL"
rm -rf "$OUT"
run "marvelFromTitok" "$NODE" bench/memory.mjs convert "$MODEL" "$OUT"
rm -rf "$OUT"
run "load+dispose x3 (RSS MB)" "$NODE" bench/memory.mjs reload "$MODEL"
