#!/bin/bash
# Two vdpad binaries timed in turn (old, new, old, new, ...) against the same frontend,
# DPDK virtio-user's io loop: how each datapath change in docs/performance.md
# ("Optimizations") was timed before the full vdpa-bench run.
#
#   tools/bench/ab.sh OLD_VDPAD NEW_VDPAD [SIZE] [REPS] [SECONDS]
#
# vdpad serves one loopback device, busy-polling, its worker pinned to CPU 0; testpmd
# runs on CPU 1. Each run prints the binary and the median of testpmd's per-second
# Rx-pps (the first two samples dropped). Needs dpdk-testpmd (tests/lab/setup.sh).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -ge 2 ] || { echo "usage: $0 OLD_VDPAD NEW_VDPAD [SIZE] [REPS] [SECONDS]" >&2; exit 2; }
OLD=$1 NEW=$2 SIZE=${3:-64} REPS=${4:-3} SECS=${5:-6}
bench_workdir vdpa-ab

loopback_config "$WORK" 1000000

one_run() {
  local bin=$1
  rm -f "$WORK/lo.sock"
  "$bin" --config "$WORK/vdpad.toml" 2> "$WORK/vdpad.log" &
  BG_PID=$!
  for _ in $(seq 100); do [ -S "$WORK/lo.sock" ] && break; sleep 0.1; done
  timeout $((SECS + 20)) taskset -c 1 dpdk-testpmd --lcores 0@1,1@1 --no-pci --no-huge -m 1024 \
    --file-prefix vdpa-ab$$ --vdev "net_virtio_user0,path=$WORK/lo.sock,queues=1" -- \
    --forward-mode=io --txpkts="$SIZE" --stats-period 1 --nb-cores=1 --tx-first \
    > "$WORK/testpmd.log" 2>&1 &
  local tp=$!
  sleep "$SECS"
  kill -INT "$tp"; wait "$tp" || true
  kill -TERM "$BG_PID"; wait "$BG_PID" || true; BG_PID=""
  grep -a 'Rx-pps' "$WORK/testpmd.log" | awk '{print $2}' | tail -n +3 | sort -n |
    awk -v b="$bin" '{a[NR]=$1} END {printf "%s  median Rx-pps %d  (%d samples)\n", b, a[int((NR+1)/2)], NR}'
}

for _ in $(seq "$REPS"); do
  one_run "$OLD"
  one_run "$NEW"
done
