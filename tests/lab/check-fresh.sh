#!/bin/bash
# Check tests/lab/setup.sh the way a CI machine meets it: on a fresh Debian 12.
#
#   sudo tests/lab/check-fresh.sh [WORKDIR]      (default /var/tmp/vdpad-fresh)
#
# Builds a minimal bookworm tree with debootstrap (apt-get install debootstrap), gives
# it this machine's apt sources, runs setup.sh --smoke in it twice (fresh, then
# again to prove the second run skips everything) and prints both wall times. The
# tree is deleted afterwards unless KEEP=1. Needs network access to the Debian mirror.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=${1:-/var/tmp/vdpad-fresh}
ROOT=$WORK/root
MIRROR=${MIRROR:-http://deb.debian.org/debian}

[ "$(id -u)" -eq 0 ] || { echo "check-fresh.sh: must run as root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "check-fresh.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }

unmount_tree() {
  grep -o " $ROOT[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
}
cleanup() {
  unmount_tree
  # Never delete through a mount that is still there (it could be the host's /dev).
  if grep -q " $ROOT" /proc/mounts; then
    echo "check-fresh.sh: mounts remain under $ROOT; not deleting $WORK" >&2
    return
  fi
  [ "${KEEP:-0}" = 1 ] || rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

unmount_tree
rm -rf "$ROOT"
mkdir -p "$WORK"
echo "[fresh] debootstrap bookworm into $ROOT ..."
if ! debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
  tail -n 20 "$WORK/debootstrap.log" >&2
  exit 1
fi
# Same package sources as this machine (security and updates included).
if [ -r /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$ROOT/etc/apt/sources.list.d/"
  : >"$ROOT/etc/apt/sources.list"
fi
cp /etc/resolv.conf "$ROOT/etc/"
mkdir -p "$ROOT/src/tests"
cp -a "$HERE" "$ROOT/src/tests/lab"
mount -t proc proc "$ROOT/proc"
mount --rbind /sys "$ROOT/sys" && mount --make-rslave "$ROOT/sys"
mount --rbind /dev "$ROOT/dev" && mount --make-rslave "$ROOT/dev"
mount -t tmpfs tmpfs "$ROOT/tmp"
mount -t tmpfs tmpfs "$ROOT/run"
# The smoke boots take the test harness's guest lock; share this machine's lock file so
# they wait for guests booted outside the tree too.
touch /tmp/vdpad-qemu-guest.lock
touch "$ROOT/tmp/vdpad-qemu-guest.lock"
mount --bind /tmp/vdpad-qemu-guest.lock "$ROOT/tmp/vdpad-qemu-guest.lock"

rc=0
for run in fresh second; do
  start=$(date +%s.%N)
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    chroot "$ROOT" /src/tests/lab/setup.sh --smoke </dev/null >"$WORK/setup-$run.log" 2>&1
  status=$?
  wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  echo "[fresh] setup.sh --smoke, $run run: exit $status, $wall s (log: $WORK/setup-$run.log)"
  # Every step's result line (not the "step ..." start lines; step names may hold dots).
  grep '^\[setup\] ' "$WORK/setup-$run.log" | grep -v ' \.\.\.$' | sed 's/^/    /'
  [ $status -eq 0 ] || { rc=1; tail -n 30 "$WORK/setup-$run.log" >&2; break; }
done
[ $rc -eq 0 ] || KEEP=1
exit $rc
