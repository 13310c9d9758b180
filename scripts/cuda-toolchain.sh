#!/usr/bin/env bash
# Installs a CUDA 13.0 toolkit (nvcc, headers, runtime and library links) from PyPI wheels into one folder, so the
# `cuda` cargo feature builds on a machine with no GPU and no system CUDA. Idempotent: a finished install is kept
# (marker file), a half-finished one is redone.
#
#   scripts/cuda-toolchain.sh [DIR]        # DIR: $MARVEL_CUDA_DIR, else <repo>/.cuda (git-ignored)
#   eval "$(scripts/cuda-toolchain.sh --env [DIR])"
#
# CUDA 13.0 exactly: the GPU machines' driver speaks CUDA 13.0, and PTX written by a newer nvcc does not load under
# an older driver; cudarc 0.19 also refuses nvcc >= 13.5.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_only=0
if [[ "${1:-}" == "--env" ]]; then env_only=1; shift; fi
dir="${1:-${MARVEL_CUDA_DIR:-$repo/.cuda}}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
t="$dir/nvidia/cu13"

# Hopper (H100/H200) by default. 80 is the portable choice: candle builds sm_80 PTX and any newer GPU JIT-compiles
# it at load (slower first launch, no Hopper-only instructions).
cap="${CUDA_COMPUTE_CAP:-90}"

print_env() {
  cat <<ENV
export CUDA_HOME="$t" CUDA_PATH="$t" CUDA_ROOT="$t"
export PATH="$t/bin:\$PATH"
export LIBRARY_PATH="$t/lib:$t/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP=$cap CUDARC_CUDA_VERSION=13000
ENV
}

wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88
  nvidia-nccl-cu13==2.30.7
)
# The marker names the wheel set, so changing a version reinstalls.
stamp="$dir/.installed-$(printf '%s\n' "${wheels[@]}" | sha1sum | cut -c1-12)"

if [[ $env_only == 1 ]]; then
  [[ -f $stamp ]] || { echo "cuda-toolchain: not installed in $dir; run scripts/cuda-toolchain.sh first" >&2; exit 1; }
  print_env
  exit 0
fi

if [[ ! -f $stamp ]]; then
  rm -rf "$dir/nvidia" "$dir/wheels" "$dir"/.installed-*
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_18_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --python-version 3.12 --implementation cp -d "$dir/wheels" "${wheels[@]}"
  for w in "$dir"/wheels/*.whl; do
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$dir"
  done
  # zipfile drops the executable bit.
  chmod +x "$t"/bin/* "$t"/nvvm/bin/* 2>/dev/null || true

  # NCCL's wheel unpacks beside cu13 (nvidia/nccl): linked in, so one lib and one include folder serve the build.
  ln -sf ../../nccl/lib/libnccl.so.2 "$t/lib/libnccl.so.2"
  ln -sf ../../nccl/include/nccl.h "$t/include/nccl.h"
  # The linker wants unversioned names; the wheels ship only the sonames.
  cd "$t/lib"
  for l in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libnvrtc.so.13 libcurand.so.10 libnccl.so.2; do
    [[ -e $l ]] && ln -sf "$l" "${l%%.so*}.so"
  done
  # The driver library is in no wheel (it comes with the GPU machine's driver). A stub exporting every cu* symbol of
  # cuda.h lets binaries link here; the loader picks the real libcuda.so.1 there.
  mkdir -p stubs
  echo '#include <cuda.h>' | gcc -E -I "$t/include" - \
    | grep -oE '\bcu[A-Za-z0-9_]+[[:space:]]*\(' | sed 's/[[:space:]]*($//' | sort -u \
    | awk '{ print "void " $1 "(void) {}" }' >stubs/stub.c
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o stubs/libcuda.so stubs/stub.c
  ln -sf stubs/libcuda.so libcuda.so
  rm -rf "$dir/wheels"
  touch "$stamp"
fi

"$t/bin/nvcc" --version | tail -2 >&2
echo "# CUDA 13.0 toolkit in $t; for cargo, run:" >&2
print_env
