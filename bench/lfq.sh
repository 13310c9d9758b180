#!/usr/bin/env bash
# Multi-depth LFQ throughput (B=64, N=32, D=4, 12 bits, 1 thread): marvel's quantizer and token packing, against
# the same algorithm as whole-tensor ops in candle (same process) and in PyTorch eager (same command, when
# bench/.venv exists; see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-bench/.venv/bin/python}
marvel=$(cargo run -q --release -p marvel-core --example bench_lfq)
torch='null'
if [ -x "$PY" ]; then torch=$("$PY" bench/python/lfq_torch.py); fi
node -e '
const m = JSON.parse(process.argv[1]); const t = JSON.parse(process.argv[2]); const r = m.tokens_per_s
const row = (name, v, base) => console.log(name.padEnd(34), (v / 1e6).toFixed(1).padStart(9), "M tokens/s", base ? `   marvel quantize is ${(base / v).toFixed(1)}x faster` : "")
console.log(`LFQ B=${m.shape[0]} N=${m.shape[1]} D=${m.shape[2]} bits=${m.bits}, ${m.threads} thread; ${m.bytes} bytes packed`)
row("marvel quantize", r.quantize)
row("candle tensor-ops baseline", r.baseline_tensor_ops, r.quantize)
if (t) row(`torch ${t.torch} tensor-ops baseline`, t.tokens_per_s, r.quantize)
row("marvel pack (tokens -> bytes)", r.pack)
row("marvel unpack (bytes -> tokens)", r.unpack)
row("marvel codes_from_tokens", r.codes_from_tokens)
' "$marvel" "$torch"
