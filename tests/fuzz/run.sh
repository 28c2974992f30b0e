#!/bin/bash
# Builds every fuzz target and runs each for SECONDS (default 30) from the committed
# seed corpus, then prints one line per target with libFuzzer's final numbers.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs the nightly toolchain and cargo-fuzz (tests/lab/setup.sh installs both).
# Inputs the fuzzer finds go to a scratch directory, not into corpus/. A crash stops
# nothing else: every target runs, and the script exits non-zero if any crashed,
# printing where the crashing input was saved. Lines it prints for tests/run.sh:
#   [fuzz] TARGET ok: N execs, cov C, E exec/s
#   [fuzz] TARGET FAILED: ...
# Environment: VDPAD_FUZZ_TARGET_DIR (default /tmp/vdpad-fuzz-target) for the build,
# VDPAD_FUZZ_WORK (default a fresh temporary directory) for found inputs and logs.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SECONDS_EACH=${1:-30}
shift || true
case "$SECONDS_EACH" in
  '' | *[!0-9]*) echo "run.sh: SECONDS must be a number, got '$SECONDS_EACH'" >&2; exit 2 ;;
esac
TARGETS=("$@")
ALL=(vhost_user_framing request_decode memory_table descriptor_chain config_toml control_json metrics_http)
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")

export PATH="$HOME/.cargo/bin:$PATH"
TARGET_DIR=${VDPAD_FUZZ_TARGET_DIR:-/tmp/vdpad-fuzz-target}
WORK=${VDPAD_FUZZ_WORK:-$(mktemp -d /tmp/vdpad-fuzz.XXXXXX)}
mkdir -p "$WORK"

echo "[fuzz] building ${#TARGETS[@]} targets (target dir $TARGET_DIR)"
start=$(date +%s)
if ! (cd "$ROOT" && cargo +nightly fuzz build -O -a --fuzz-dir tests/fuzz --target-dir "$TARGET_DIR") \
  >"$WORK/build.log" 2>&1; then
  tail -n 40 "$WORK/build.log"
  for t in "${TARGETS[@]}"; do echo "[fuzz] $t FAILED: the fuzz targets do not build (log: $WORK/build.log)"; done
  exit 1
fi
echo "[fuzz] built in $(($(date +%s) - start)) s"
BIN=$TARGET_DIR/x86_64-unknown-linux-gnu/release

failed=0
for t in "${TARGETS[@]}"; do
  found=$WORK/corpus/$t
  mkdir -p "$found" "$WORK/crashes"
  log=$WORK/$t.log
  # Found inputs go to the first (scratch) directory; the seeds are only read.
  "$BIN/$t" -max_total_time="$SECONDS_EACH" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$WORK/crashes/$t-" "$found" "$HERE/corpus/$t" \
    </dev/null >"$log" 2>&1
  rc=$?
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)
  if [ $rc -eq 0 ] && [ -n "$done_line" ]; then
    execs=$(sed -E 's/^#([0-9]+).*/\1/' <<<"$done_line")
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$done_line")
    rate=$(sed -nE 's/.* exec\/s: ([0-9]+).*/\1/p' <<<"$done_line")
    echo "[fuzz] $t ok: $execs execs, cov $cov, $rate exec/s ($SECONDS_EACH s)"
    echo "       $done_line"
  else
    failed=$((failed + 1))
    crash=$(grep -oE "Test unit written to [^ ]+" "$log" | tail -n 1 | sed 's/Test unit written to //')
    echo "[fuzz] $t FAILED (exit $rc): crashing input ${crash:-<none written>}, log $log"
    grep -E -A 12 "panicked at|ERROR: (AddressSanitizer|libFuzzer)" "$log" | head -n 30 | sed 's/^/    /'
    grep -qE "panicked at|ERROR: " "$log" || tail -n 5 "$log" | sed 's/^/    /'
  fi
done
echo "[fuzz] ${#TARGETS[@]} targets, $failed failed; found inputs and logs in $WORK"
[ $failed -eq 0 ]
