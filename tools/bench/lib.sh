# Sourced by tools/bench/ab.sh and instructions.sh: their scratch directory and the
# vdpad configuration both use.

# bench_workdir NAME: creates the scratch directory $WORK; on exit, stops the process
# whose PID is in $BG_PID (if any) and removes $WORK.
bench_workdir() {
  WORK=$(mktemp -d "/tmp/$1.XXXXXX")
  BG_PID=""
  trap 'bench_cleanup' EXIT
}

bench_cleanup() {
  [ -n "$BG_PID" ] && kill -TERM "$BG_PID" 2>/dev/null || true
  rm -rf "$WORK"
}

# loopback_config DIR BUSY_POLL_US: writes DIR/vdpad.toml, one loopback device on
# DIR/lo.sock (256-entry rings, the worker pinned to CPU 0, a fixed busy-poll budget:
# polling = "fixed"), run directory DIR/run.
loopback_config() {
  cat > "$1/vdpad.toml" <<CFG
[daemon]
run_dir = "$1/run"
[[device]]
name = "lo"
socket = "$1/lo.sock"
backend = "loopback"
queue_size = 256
polling = "fixed"
busy_poll_us = $2
cpus = [0]
CFG
}
