#!/bin/bash
# Instructions per packet of vdpad's loopback datapath under callgrind: a figure that,
# unlike Mpps, hardly moves when the shared machine is noisy. Used to check each
# datapath optimization before timing it (docs/performance.md, "Optimizations").
#
#   tools/bench/instructions.sh rig [PACKETS] [SIZE]   # vdpa-rig verify --poll drives it
#   tools/bench/instructions.sh testpmd [SECONDS]      # DPDK virtio-user io fwd drives it
#
# Prints the packet count, callgrind's total instruction count (the whole vdpad process,
# start-up included) and the quotient. Needs valgrind and, for `testpmd`, dpdk-testpmd
# (tests/lab/setup.sh installs both). Uses the release binaries in $CARGO_TARGET_DIR
# (default target/); build them first (tools/bench/run.sh does).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. tools/bench/lib.sh
BIN=${CARGO_TARGET_DIR:-target}/release
MODE=${1:-rig}
bench_workdir vdpa-instructions

# Busy polling for the testpmd frontend (it never waits for interrupts); notification
# driven for the rig, which polls its own side.
BUSY=0
[ "$MODE" = testpmd ] && BUSY=1000000
loopback_config "$WORK" "$BUSY"

valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" \
  "$BIN/vdpad" --config "$WORK/vdpad.toml" 2> "$WORK/valgrind.log" &
BG_PID=$!
for _ in $(seq 300); do [ -S "$WORK/lo.sock" ] && break; sleep 0.2; done
[ -S "$WORK/lo.sock" ] || { echo "vdpad did not come up under valgrind" >&2; exit 1; }

case "$MODE" in
  rig)
    N=${2:-200000}; SIZE=${3:-64}
    # RIG_ARGS: extra vdpa-rig options, e.g. --dirty-log (a migrating frontend).
    # shellcheck disable=SC2086
    taskset -c 1 "$BIN/vdpa-rig" ${RIG_ARGS:-} --socket "$WORK/lo.sock" verify --packets "$N" --size "$SIZE" --poll
    ;;
  testpmd)
    SECS=${2:-8}
    timeout $((SECS + 30)) taskset -c 1 dpdk-testpmd --lcores 0@1,1@1 --no-pci --no-huge -m 1024 \
      --file-prefix vdpa-instr$$ --vdev "net_virtio_user0,path=$WORK/lo.sock,queues=1" -- \
      --forward-mode=io --txpkts=64 --stats-period 1 --nb-cores=1 --tx-first \
      > "$WORK/testpmd.log" 2>&1 &
    TP=$!
    sleep "$SECS"
    kill -INT "$TP"; wait "$TP" || true
    N=$(grep -a "RX-packets" "$WORK/testpmd.log" | tail -1 | awk '{print $2}')
    ;;
  *) echo "usage: $0 rig [PACKETS] [SIZE] | testpmd [SECONDS]" >&2; exit 2 ;;
esac

kill -TERM "$BG_PID"; wait "$BG_PID" || true; BG_PID=""
TOTAL=$(callgrind_annotate "$WORK/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
[ -n "$N" ] && [ "$N" -gt 0 ] || { echo "no packets moved" >&2; exit 1; }
echo "packets $N  instructions $TOTAL  per packet $((TOTAL / N))"
