#!/usr/bin/env bash
# Builds marvel for aarch64 Linux and runs marvel-core's tests there under qemu-user: the package ships linux-arm64
# and darwin-arm64 binaries, and everything but the x86 sgemm must compile and compute the same on them.
#
#   scripts/check-aarch64.sh                 # cargo check (core + node binding), then the kernel tests under qemu
#   scripts/check-aarch64.sh --check-only    # the cargo check alone (needs only the rustup target)
#   scripts/check-aarch64.sh -- FILTER...    # test filters instead of the default (`nn::` `maskgit` `runtime` `at_every_level` `parity_titok`)
#   ALL=1 scripts/check-aarch64.sh           # every marvel-core test (slow under emulation: tens of minutes)
#
# Needs: `rustup target add aarch64-unknown-linux-gnu`; for the tests also a cross linker and qemu-user, on Debian
# or Ubuntu `apt-get install qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross`. It installs nothing itself.
# MARVEL_PARITY_DIR as for the native tests (parity tests are compiled as ignored without it). The first run
# compiles candle for aarch64 (several minutes on 2 cores), into target/aarch64-unknown-linux-gnu.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
check_only=0
filters=(nn:: maskgit runtime at_every_level parity_titok)
while [ $# -gt 0 ]; do
  case "$1" in
    --check-only) check_only=1 ;;
    --) shift; filters=("$@"); break ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
if [ "${ALL:-0}" = 1 ]; then filters=(); fi

if ! rustup target list --installed | grep -qx "$TARGET"; then
  echo "missing rust target: rustup target add $TARGET" >&2
  exit 2
fi

echo "== cargo check --target $TARGET (marvel-core with tests, marvel-node)" >&2
cargo check --release --target "$TARGET" -p marvel-core --tests
cargo check --release --target "$TARGET" -p marvel-node
[ "$check_only" = 1 ] && exit 0

for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
  if ! command -v "$tool" >/dev/null; then
    echo "missing $tool: apt-get install qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross" >&2
    exit 2
  fi
done
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
echo "== marvel-core tests under qemu-aarch64: ${filters[*]:-all}" >&2
cargo test --release --target "$TARGET" -p marvel-core --lib -- "${filters[@]}"
