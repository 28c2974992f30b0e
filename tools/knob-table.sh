#!/bin/bash
# knob-table.sh — the software datapath's "what is N?" table in one command.
#
# For each tuning knob of docs/software-datapath.md, on and off, a vdpad loopback device
# is started with that setting (worker pinned to CPU 0, the daemon too) and measured
# with `vdpa-rig bench` (pinned to CPU 1) at 64 B and 1518 B frames. Every cell is run
# REPS times, interleaved (rep 1 of every cell, then rep 2, ...) so that a change of
# machine load spreads over all cells; the table shows the run with the median Mpps.
#
# Usage: tools/knob-table.sh [--seconds S] [--reps N] [--raw FILE] [--no-build]
#                            [--wait-load L]
#   --seconds S   bench interval per run (default 3)
#   --reps N      runs per cell (default 3)
#   --raw FILE    also keep every run's JSON (one object per line) in FILE
#   --no-build    use the binaries already in $CARGO_TARGET_DIR/release
#   --wait-load L first wait (30 min at most) until the 1-min load average is <= L
# Environment: CARGO_TARGET_DIR (default <repo>/target).
#
# Output (stdout): a Markdown table with date, commit and load average, ready for
# docs/software-datapath.md. Progress goes to stderr. Needs python3 and taskset; root
# is not required (the socket lives in a private scratch directory).
set -euo pipefail

seconds=3
reps=3
raw=""
build=1
wait_load=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --raw) raw=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --wait-load) wait_load=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "knob-table.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$seconds$reps" in *[!0-9]*) echo "knob-table.sh: --seconds and --reps take whole numbers" >&2; exit 2 ;; esac
[ "$reps" -ge 1 ] && [ "$seconds" -ge 1 ] || { echo "knob-table.sh: --seconds and --reps must be >= 1" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
if [ "$build" = 1 ]; then
  echo "building release binaries in $target ..." >&2
  (cd "$repo" && CARGO_TARGET_DIR=$target cargo build --release -q -p vdpad -p vdpa-rig) >&2
fi
vdpad=$target/release/vdpad
rig=$target/release/vdpa-rig
for b in "$vdpad" "$rig"; do
  [ -x "$b" ] || { echo "knob-table.sh: $b missing (build it, or drop --no-build)" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "knob-table.sh: python3 missing" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/knob-table.XXXXXX")
daemon_pid=""
stop_daemon() {
  [ -n "$daemon_pid" ] || return 0
  kill -TERM "$daemon_pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$daemon_pid" 2>/dev/null || true
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=""
}
cleanup() { stop_daemon; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# Cells: "id|knob|setting|config lines" (config lines separated by ';').
cells=(
  "base|(defaults)|event_idx on, burst 16, busy_poll 0, no coalescing, mrg_rxbuf on|"
  "evidx-off|event_idx|off|event_idx = false"
  "burst-64|burst|64|burst = 64"
  "burst-256|burst|256|burst = 256"
  "busy-100|busy_poll_us|100|busy_poll_us = 100"
  "coal-on|rx_coalesce|32 frames / 50 µs|rx_coalesce_frames = 32;rx_coalesce_usecs = 50"
  "mrg-off|mrg_rxbuf|off|mrg_rxbuf = false"
)
sizes=(64 1518)

start_daemon() { # $1 = cell id, $2 = extra config lines
  local dir=$work/$1
  mkdir -p "$dir"
  {
    echo "[daemon]"
    echo "run_dir = \"$dir/run\""
    echo "log_level = \"warn\""
    echo "[[device]]"
    echo "name = \"knob\""
    echo "socket = \"$dir/knob.sock\""
    echo "mode = \"software\""
    echo "backend = \"loopback\""
    echo "cpus = [0]"
    tr ';' '\n' <<<"$2"
  } >"$dir/vdpad.toml"
  rm -f "$dir/knob.sock"
  timeout -k 5 900 taskset -c 0 "$vdpad" --config "$dir/vdpad.toml" >>"$dir/vdpad.log" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 100); do
    [ -S "$dir/knob.sock" ] && return 0
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "knob-table.sh: vdpad did not start for cell $1:" >&2
  cat "$dir/vdpad.log" >&2
  exit 1
}

if [ -n "$wait_load" ]; then
  for i in $(seq 360); do
    awk -v l="$wait_load" '{ exit !($1 <= l) }' /proc/loadavg && break
    [ "$i" = 1 ] && echo "waiting for the load average to drop to $wait_load (now $(cut -d' ' -f1 /proc/loadavg)) ..." >&2
    sleep 5
  done
fi

results=$work/runs.jsonl
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%MZ)
total=$(( ${#cells[@]} * ${#sizes[@]} * reps ))
n=0
for rep in $(seq "$reps"); do
  for cell in "${cells[@]}"; do
    IFS='|' read -r id knob setting lines <<<"$cell"
    start_daemon "$id" "$lines"
    for size in "${sizes[@]}"; do
      n=$((n + 1))
      load=$(cut -d' ' -f1 /proc/loadavg)
      if out=$(timeout -k 5 $((seconds + 60)) taskset -c 1 "$rig" --socket "$work/$id/knob.sock" \
                 --json bench --seconds "$seconds" --size "$size" 2>"$work/rig.err"); then
        :
      else
        echo "knob-table.sh: vdpa-rig bench failed for $id at $size B:" >&2
        cat "$work/rig.err" >&2
        out='{"failed": true}'
      fi
      python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(cell=sys.argv[2], knob=sys.argv[3], setting=sys.argv[4], rep=int(sys.argv[5]), load1=float(sys.argv[6]), bench_size=int(sys.argv[7])); print(json.dumps(d))' \
        "$out" "$id" "$knob" "$setting" "$rep" "$load" "$size" >>"$results"
      mpps=$(python3 -c 'import json,sys; print("%.3f" % json.loads(sys.argv[1]).get("mpps", 0))' "$out")
      echo "[$n/$total] rep $rep $id ${size} B: $mpps Mpps (load $load)" >&2
    done
    stop_daemon
  done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
[ -z "$raw" ] || cp "$results" "$raw"

commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=""
git -C "$repo" diff --quiet HEAD -- swpath vdpa tools/src tools/rig 2>/dev/null || dirty=" (with uncommitted changes in the datapath or rig)"
python3 - "$results" "$started" "$commit$dirty" "$load_start" "$load_end" "$seconds" "$reps" "$(nproc)" <<'EOF'
import json, sys, statistics
path, started, commit, load_start, load_end, seconds, reps, ncpu = sys.argv[1:]
runs = [json.loads(l) for l in open(path)]
order, cells = [], {}
for r in runs:
    key = (r["cell"], r["bench_size"])
    if r["cell"] not in order:
        order.append(r["cell"])
    cells.setdefault(key, []).append(r)
sizes = sorted({r["bench_size"] for r in runs})
loads = [r["load1"] for r in runs]
print(f"Measured {started} on commit {commit}: {ncpu} CPUs, vdpad loopback (daemon and worker "
      f"on CPU 0, `cpus = [0]`), `vdpa-rig bench --seconds {seconds}` on CPU 1 "
      f"(interrupt mode, queue size 256, one pair); {reps} runs per cell, the run with the "
      f"median Mpps shown, with the range of all runs. Load average (1/5/15 min) "
      f"{load_start} at the start, {load_end} at the end; 1-min load during the runs "
      f"{min(loads):.2f}-{max(loads):.2f}.")
print()
print("| Knob | Setting | Size | Mpps (median, range) | packets/kick | packets/interrupt | packets/wakeup |")
print("|---|---|---|---|---|---|---|")
def fmt(v, nd=1):
    return "n/a" if v is None else f"{v:.{nd}f}"
for cell in order:
    for size in sizes:
        rs = [r for r in cells.get((cell, size), []) if not r.get("failed")]
        first = cells[(cell, size)][0]
        if not rs:
            print(f"| {first['knob']} | {first['setting']} | {size} B | failed | | | |")
            continue
        rs.sort(key=lambda r: r["mpps"])
        med = rs[len(rs) // 2]
        rng = f"{rs[0]['mpps']:.3f}-{rs[-1]['mpps']:.3f}" if len(rs) > 1 else ""
        # packets/interrupt: RX frames per RX call-eventfd signal the device sent;
        # packets/wakeup: RX frames per time the rig woke up on the RX eventfd.
        print(f"| {first['knob']} | {first['setting']} | {size} B | {med['mpps']:.3f} ({rng}) | "
              f"{fmt(med.get('pkts_per_kick'))} | {fmt(med.get('pkts_per_signal'))} | "
              f"{fmt(med.get('pkts_per_interrupt'))} |")
EOF
