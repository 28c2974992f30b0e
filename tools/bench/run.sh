#!/bin/bash
# Build the release binaries and run the benchmark harness in one command.
#
#   sudo tools/bench/run.sh [--setup] [vdpa-bench options...]
#
#   --setup   first run tests/lab/setup.sh (installs dpdk-testpmd and its vhost/virtio
#             drivers, reserves hugepages); needed once on a fresh Debian 12 machine.
#
# Everything else goes to vdpa-bench, e.g.
#   sudo tools/bench/run.sh --seed-questions --wait-for-load 1.0   # the full report run
#   sudo tools/bench/run.sh --smoke                                # a quick check
# Binaries are built in $CARGO_TARGET_DIR (default: target/) with --release.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

SETUP=0
ARGS=()
for a in "$@"; do
  case "$a" in
    --setup) SETUP=1 ;;
    *) ARGS+=("$a") ;;
  esac
done

export PATH="$HOME/.cargo/bin:$PATH"
if [ $SETUP = 1 ]; then
  bash tests/lab/setup.sh
fi
command -v cargo >/dev/null || { echo "run.sh: cargo not found (install Rust with rustup first)" >&2; exit 2; }
cargo build --release -p vdpad -p vdpa-rig -p vdpa-bench
TARGET=${CARGO_TARGET_DIR:-target}
exec "$TARGET/release/vdpa-bench" "${ARGS[@]}"
