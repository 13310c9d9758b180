#!/usr/bin/env bash
# The prepared GPU check and benchmark, run on the GPU machine from the repository root (bench/gpu/README.md):
# bench_gpu (kernels and models against the CPU, training steps, timings), then the PyTorch twin's timings on the
# same GPU, then the table. The full log and both JSON files go to $OUT (the device tool's folder), else
# bench/gpu/out. Exit status: bench_gpu's (0 only when every check passed).
#
#   bash bench/gpu/run.sh [--quick] [--seed N]
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out="${OUT:-bench/gpu/out}"
mkdir -p "$out"
log="$out/log.txt"
bin=bench/gpu/.carry/bench_gpu
# The binary travels xz-compressed (its embedded PTX shrinks ~5x), which keeps a call under the 64 MiB limit.
if [[ ! -x $bin && -f $bin.xz ]]; then
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$bin.xz" /tmp/bench_gpu
  chmod +x /tmp/bench_gpu
  bin=/tmp/bench_gpu
fi
[[ -x $bin ]] || { echo "run.sh: $bin(.xz) missing; npm run build:cuda, then xz -k -T0 -c build/cuda/bench_gpu > $bin.xz" >&2; exit 2; }
# The CUDA 13 libraries the binary links (cuBLAS, cuRAND, NVRTC, the runtime, NCCL) come from the pip wheels of
# the machine's PyTorch; libcuda.so.1 from its driver.
nv="$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])')"
export LD_LIBRARY_PATH="$nv/cu13/lib:$nv/nccl/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
quick=()
for a in "$@"; do [[ $a == --quick ]] && quick=(--quick); done
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
} 2>&1 | tee "$log"
"$bin" --json "$out/marvel.json" "$@" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
PYTHONUNBUFFERED=1 python3 bench/gpu/torch_gpu.py "${quick[@]}" --json "$out/torch.json" 2>&1 | tee -a "$log"
python3 bench/gpu/table.py "$out/marvel.json" "$out/torch.json" 2>&1 | tee -a "$log"
exit "$rc"
