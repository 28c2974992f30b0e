#!/bin/bash
# Install the vdpad Debian package into a clean Debian 12 tree and check it:
#
#   sudo tests/lab/check-package.sh PACKAGE.deb [WORKDIR]   (default /var/tmp/vdpad-pkg)
#
# Builds a minimal bookworm tree with debootstrap once (kept in WORKDIR/base for the
# next run; delete it to start over), copies it to WORKDIR/root, installs the package
# there with apt, and checks: every file is where docs/operations.md says, the
# configuration is a conffile, `vdpad --check-config` accepts the installed sample,
# the installed daemon serves a loopback device that the installed vdpactl lists,
# the man pages and completions are there, and `dpkg -r` keeps the configuration
# while `dpkg -P` removes it. Prints "N passed, N failed" at the end. Needs root,
# debootstrap and (for the first run) the Debian mirror.
set -uo pipefail
DEB=${1:?usage: check-package.sh PACKAGE.deb [WORKDIR]}
WORK=${2:-/var/tmp/vdpad-pkg}
BASE=$WORK/base
ROOT=$WORK/root
MIRROR=${MIRROR:-http://deb.debian.org/debian}

[ "$(id -u)" -eq 0 ] || { echo "check-package.sh: must run as root" >&2; exit 2; }
[ -r "$DEB" ] || { echo "check-package.sh: cannot read $DEB" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "check-package.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }

unmount_tree() {
  grep -o " $ROOT[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
}
cleanup() {
  unmount_tree
  if grep -q " $ROOT" /proc/mounts; then
    echo "check-package.sh: mounts remain under $ROOT; not deleting it" >&2
    return
  fi
  rm -rf --one-file-system "$ROOT"
}
trap cleanup EXIT

mkdir -p "$WORK"
if [ ! -x "$BASE/usr/bin/apt-get" ]; then
  rm -rf "$BASE"
  echo "[pkg] debootstrap bookworm into $BASE ..."
  if ! debootstrap --variant=minbase bookworm "$BASE" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 20 "$WORK/debootstrap.log" >&2
    exit 1
  fi
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$BASE/etc/apt/sources.list.d/"
    : >"$BASE/etc/apt/sources.list"
  fi
fi
unmount_tree
rm -rf --one-file-system "$ROOT"
cp -a "$BASE" "$ROOT"
cp /etc/resolv.conf "$ROOT/etc/"
cp "$DEB" "$ROOT/tmp/vdpad.deb"
mount -t proc proc "$ROOT/proc"
mount --rbind /sys "$ROOT/sys" && mount --make-rslave "$ROOT/sys"
mount --rbind /dev "$ROOT/dev" && mount --make-rslave "$ROOT/dev"
mount -t tmpfs tmpfs "$ROOT/run"

in_root() {
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$ROOT" "$@"
}
passed=0 failed=0
check() {
  local what=$1; shift
  if out=$("$@" 2>&1); then
    passed=$((passed + 1)); echo "[pkg] ok: $what"
  else
    failed=$((failed + 1)); echo "[pkg] FAILED: $what"; echo "$out" | tail -n 15 | sed 's/^/    /'
  fi
}

check "apt-get install the package" in_root apt-get install -y -q /tmp/vdpad.deb
for f in /usr/sbin/vdpad /usr/sbin/vdpactl; do
  check "$f is executable" test -x "$ROOT$f"
done
for f in /lib/systemd/system/vdpad.service /etc/vdpad/vdpad.toml /etc/vdpad/vdpad.d/README \
         /usr/share/man/man8/vdpad.8.gz /usr/share/man/man8/vdpactl.8.gz \
         /usr/share/man/man8/vdpactl-add.8.gz \
         /usr/share/bash-completion/completions/vdpactl /usr/share/zsh/vendor-completions/_vdpactl \
         /usr/share/fish/vendor_completions.d/vdpactl.fish \
         /usr/share/doc/vdpad/operations.md /usr/share/doc/vdpad/config.md \
         /usr/share/doc/vdpad/copyright /usr/share/doc/vdpad/examples/libvirt-vm1.xml; do
  check "$f installed" test -s "$ROOT$f"
done
check "vdpad.service points at the installed binary" grep -qx 'ExecStart=/usr/sbin/vdpad --config /etc/vdpad/vdpad.toml' "$ROOT/lib/systemd/system/vdpad.service"
check "/etc/vdpad/vdpad.toml is a conffile" sh -c "chroot '$ROOT' dpkg-query -W -f='\${Conffiles}' vdpad | grep -q /etc/vdpad/vdpad.toml"
check "the man page is a man page" sh -c "zcat '$ROOT/usr/share/man/man8/vdpactl.8.gz' | grep -q '^.TH vdpactl 8'"
check "vdpad --version" in_root /usr/sbin/vdpad --version
check "vdpad --check-config accepts the installed sample" in_root /usr/sbin/vdpad --check-config /etc/vdpad/vdpad.toml
check "vdpactl nics runs" in_root /usr/sbin/vdpactl nics

# The installed daemon serves a loopback device; the installed vdpactl lists it.
cat >"$ROOT/tmp/t.toml" <<'TOML'
[daemon]
run_dir = "/run/vdpad-pkgtest"
[[device]]
name = "pkg0"
TOML
# Not through in_root (a function: $! would be its subshell): env and chroot exec,
# so $! is vdpad itself.
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  chroot "$ROOT" /usr/sbin/vdpad --config /tmp/t.toml >"$WORK/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -S "$ROOT/run/vdpad-pkgtest/control.sock" ] && break; sleep 0.1; done
check "the installed vdpactl lists the installed daemon's device" sh -c \
  "chroot '$ROOT' /usr/sbin/vdpactl --socket /run/vdpad-pkgtest/control.sock list | grep -q '^pkg0 '"
kill -TERM "$daemon" 2>/dev/null
wait "$daemon"
status=$?
check "the daemon stopped cleanly on SIGTERM (status $status)" test "$status" -eq 0

check "dpkg -r vdpad" in_root dpkg -r vdpad
check "dpkg -r removed the binaries" test ! -e "$ROOT/usr/sbin/vdpad"
check "dpkg -r kept the configuration" test -s "$ROOT/etc/vdpad/vdpad.toml"
check "dpkg -P vdpad" in_root dpkg -P vdpad
check "dpkg -P removed the configuration" test ! -e "$ROOT/etc/vdpad/vdpad.toml"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
