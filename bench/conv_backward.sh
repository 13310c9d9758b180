#!/usr/bin/env bash
# Forward + backward (input and weight gradients) of a 3x3 convolution of the MaskGIT pixel decoder's size, on the
# CPU: marvel's im2col convolution, whose backward is gemms, against candle's conv2d, whose backward is a naive
# transposed convolution. Prints the times, the ratio, and the load average (the machine may be shared).
#   bench/conv_backward.sh              # 2 threads, median of 3
#   THREADS=1 RUNS=5 bench/conv_backward.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(node scripts/cargo.mjs run -q --release -p marvel-core --example bench_conv_backward -- \
  --threads "${THREADS:-2}" --runs "${RUNS:-3}")
node -e '
const r = JSON.parse(process.argv[1])
console.log(`conv2d 3x3 stride 1, batch 1, ${r.threads} threads, median of ${r.runs}; load average ${r.load_average}`)
console.log("channels  side up2x  marvel fwd+bwd   candle fwd+bwd   marvel bwd   candle bwd   candle/marvel bwd")
for (const x of r.results) {
  const s = (v) => `${(v * 1e3).toFixed(0)} ms`.padStart(13)
  console.log(String(x.channels).padStart(8), String(x.side).padStart(5), (x.upsample ? "yes" : "no").padStart(5), s(x.marvel_step_s), "  ", s(x.candle_step_s), s(x.marvel_backward_s), s(x.candle_backward_s),
    `${(x.candle_backward_s / x.marvel_backward_s).toFixed(1)}x`.padStart(19))
}
console.log(`load average after: ${require("fs").readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}`)
' "$out"
