#!/bin/bash
# Install everything the tests need on a fresh Debian 12 machine, then run them all:
# the fast in-process tests and the real-peer tests (DPDK testpmd, QEMU guests).
# The tests are one `cargo test --workspace`: the real-peer tests are the package vdpad-tests
# (this directory), ignored unless --include-ignored; they build the programs they run
# (vdpad, vdpactl, vdpa-rig, vdpa-bench) themselves, with the same cargo and profile.
#
#   sudo tests/run.sh            # everything (about 10 minutes on 2 cores, + fuzz/Miri)
#   sudo tests/run.sh --fast     # skip the installer and the lab tests: plain cargo test
#
# Ends with one line "N passed, N failed" covering every test it ran; exits non-zero
# if anything failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FAST=0
for arg in "$@"; do
  case "$arg" in
    --fast) FAST=1 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

export PATH="$HOME/.cargo/bin:$PATH"
# Under sudo, HOME is root's: use the invoking user's rustup toolchain if root has none.
if ! command -v cargo >/dev/null && [ -n "${SUDO_USER:-}" ]; then
  user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
  if [ -x "$user_home/.cargo/bin/cargo" ]; then
    export PATH="$user_home/.cargo/bin:$PATH"
    export CARGO_HOME="${CARGO_HOME:-$user_home/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$user_home/.rustup}"
  fi
fi
command -v cargo >/dev/null || { echo "run.sh: cargo not found (install Rust with rustup first)" >&2; exit 2; }

if [ $FAST = 0 ]; then
  bash tests/lab/setup.sh || { echo "run.sh: lab setup failed"; echo "0 passed, 1 failed"; exit 1; }
  IGNORED=(--include-ignored)
else
  IGNORED=()
fi

LOG=$(mktemp /tmp/vdpad-tests.XXXXXX.log)
echo "[run] cargo test --workspace -- ${IGNORED[*]}   (full log: $LOG)"
cargo test --workspace --no-fail-fast -- "${IGNORED[@]}" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}

# Sum every "test result:" line cargo printed (unit, integration and doc tests).
read -r passed failed < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i }
  } END { print p + 0, f + 0 }' "$LOG")
# A test binary that failed to build or crashed reports no result line: count it.
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
# --- Fuzzing and Miri (full mode only; docs/testing.md) -------------------------------
# Every fuzz target (tests/fuzz/run.sh, VDPAD_FUZZ_SECONDS each, default 20) and every
# Miri run counts as one test. Their build directories live in this clone's target/
# (target/fuzz, target/miri): a directory shared between checkouts at different paths
# was seen to reuse another checkout's crates. About 7.5 minutes on 2 cores when they
# are cold, 3 when warm.
if [ $FAST = 0 ]; then
  FUZZ_LOG=$(mktemp /tmp/vdpad-fuzz.XXXXXX.log)
  echo "[run] tests/fuzz/run.sh ${VDPAD_FUZZ_SECONDS:-20}   (full log: $FUZZ_LOG)"
  VDPAD_FUZZ_TARGET_DIR=${VDPAD_FUZZ_TARGET_DIR:-$PWD/target/fuzz} \
    bash tests/fuzz/run.sh "${VDPAD_FUZZ_SECONDS:-20}" 2>&1 | tee "$FUZZ_LOG"
  fuzz_rc=${PIPESTATUS[0]}
  fuzz_ok=$(grep -cE '^\[fuzz\] [a-z_]+ ok:' "$FUZZ_LOG")
  fuzz_bad=$(grep -cE '^\[fuzz\] [a-z_]+ FAILED' "$FUZZ_LOG")
  if [ "$fuzz_rc" -ne 0 ] && [ "$fuzz_bad" -eq 0 ]; then fuzz_bad=1; fi
  passed=$((passed + fuzz_ok))
  failed=$((failed + fuzz_bad))
  for miri in "-p vdpa --lib -- memory:: request::" "-p swpath --lib -- ring:: loopback:: portsec::"; do
    echo "[run] cargo +nightly miri test $miri"
    # shellcheck disable=SC2086 # the arguments are meant to split
    if CARGO_TARGET_DIR=$PWD/target/miri cargo +nightly miri test $miri 2>&1 |
      grep -E '^test |^test result:|^error'; [ "${PIPESTATUS[0]}" -eq 0 ]; then
      passed=$((passed + 1))
    else
      echo "[run] FAILED: cargo +nightly miri test $miri"
      failed=$((failed + 1))
    fi
  done
fi
echo "$passed passed, $failed failed"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]
