# Sourced by tools/bench/ab.sh and instructions.sh: the vdpad configuration both use.
#
# loopback_config DIR BUSY_POLL_US: writes DIR/vdpad.toml, one loopback device on
# DIR/lo.sock (256-entry rings, the worker pinned to CPU 0, the given busy-poll
# budget), run directory DIR/run.
loopback_config() {
  cat > "$1/vdpad.toml" <<CFG
[daemon]
run_dir = "$1/run"
[[device]]
name = "lo"
socket = "$1/lo.sock"
backend = "loopback"
queue_size = 256
busy_poll_us = $2
cpus = [0]
CFG
}
