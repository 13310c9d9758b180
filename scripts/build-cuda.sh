#!/usr/bin/env bash
# `npm run build:cuda`: the CUDA (+ NCCL) variant of the addon and the GPU check/benchmark binary, built with the
# CUDA 13.0 toolkit of scripts/cuda-toolchain.sh (installed on first use). Everything goes to target-cuda/, so the
# CPU build's cache in target/ is untouched, and the outputs to build/cuda/ (both git-ignored):
#   build/cuda/marvel.linux-x64-gnu.node   load it with MARVEL_NATIVE_PATH=$PWD/build/cuda/marvel.linux-x64-gnu.node
#   build/cuda/bench_gpu                   stripped; bench/gpu/README.md says how it reaches the GPU machine
# CUDA_COMPUTE_CAP picks the GPU architecture (default 90, Hopper; 80 builds PTX that any newer GPU JIT-compiles).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/cuda-toolchain.sh >/dev/null
eval "$(scripts/cuda-toolchain.sh --env)"
triple="$(rustc -vV | sed -n 's/^host: //p')"
mkdir -p build/cuda
# --dts into build/cuda: the committed src/native.d.ts is the CPU build's and must not change with the variant.
npx napi build --platform --release --manifest-path crates/marvel-node/Cargo.toml --features nccl \
  --target "$triple" --target-dir target-cuda --output-dir build/cuda --no-js --dts native.d.ts
# Built together with marvel-node, so cargo resolves the same features as the addon build above and reuses its
# candle-kernels; marvel-core alone resolves host crates differently and would recompile every CUDA kernel (~40 min).
cargo build --release -p marvel-node -p marvel-core --features marvel-node/nccl,marvel-core/nccl --example bench_gpu \
  --target "$triple" --target-dir target-cuda
strip -o build/cuda/bench_gpu "target-cuda/$triple/release/examples/bench_gpu"
ls -l build/cuda
