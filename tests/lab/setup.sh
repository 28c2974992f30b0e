#!/bin/bash
# Prepare a Debian 12 (bookworm) machine for vdpad's real-peer tests.
#
#   sudo tests/lab/setup.sh [--smoke]
#
# Runs as root, needs no terminal, and is idempotent: work already done is detected and
# skipped, so a second run takes a few seconds. What it does:
#   1. apt packages: DPDK testpmd with the vhost, virtio, tap, af_packet and ring-mempool
#      drivers, busybox-static/cpio/kmod/xz/zstd for the guest image, iperf3, iproute2,
#      ethtool, tcpdump, gcc, python3;
#   2. libvirt from Debian 12 (libvirt-daemon, libvirt-daemon-driver-qemu and the
#      libvirt-qemu user; tests/libvirt_guest.rs starts libvirtd itself);
#      QEMU >= 10 from bookworm-backports (bookworm's QEMU 7.2 crashes with vhost-user
#      and MSI-X under TCG). /etc/apt is left alone: the backports source, its package
#      lists and its download cache live in a private apt configuration under the lab dir;
#      and bookworm's own QEMU 7.2 unpacked into the lab dir (not installed) for
#      tests/qemu_versions.rs;
#   3. Debian's 6.1 kernel (linux-image-amd64's current ABI package) extracted into the lab
#      dir; nothing is installed into /boot and no bootloader is touched;
#   4. Debian's bookworm-backports 6.12 kernel (VDUSE net devices need Linux >= 6.8),
#      downloaded with the private backports apt config and extracted next to the 6.1
#      one (VDPAD_LAB_NO_612=1 skips it);
#   5. hugepages for testpmd, best effort (the tests also run with --no-huge);
#   6. the guest initramfs images (tests/lab/initramfs.sh), one per kernel, rebuilt when
#      that script, the kernel or the module list changes; the 6.12 one also ships the
#      vDPA modules (vdpa, vduse, virtio_vdpa, vhost_vdpa), vhost_net and the tc reflector's (sch_ingress, cls_u32, act_mirred) for guest scripts to modprobe;
#   7. cargo-fuzz and the nightly toolchain's miri and rust-src components, for
#      tests/fuzz/run.sh and the Miri tests (needs rustup with a nightly toolchain);
#   8. with --smoke (or VDPAD_LAB_SMOKE=1): boots each guest once as a check.
#
# Lab dir: $VDPAD_LAB, default /var/tmp/vdpad-lab. The tests find the kernels at
# $VDPAD_LAB/vmlinuz and $VDPAD_LAB/vmlinuz-6.12, the initramfs images at
# $VDPAD_LAB/initramfs.cpio.gz and $VDPAD_LAB/initramfs-6.12.cpio.gz.
set -euo pipefail

LAB=${VDPAD_LAB:-/var/tmp/vdpad-lab}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SMOKE=${VDPAD_LAB_SMOKE:-0}
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    -h | --help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300 -o APT::Install-Recommends=false)
START=$(date +%s.%N)
STEP_START=$START
STEP=""

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step() { STEP=$1; STEP_START=$(date +%s.%N); echo "[setup] $STEP ..."; }
done_step() { echo "[setup] $STEP: ${1:-done} ($(elapsed "$STEP_START") s)"; }
# logged LOGNAME CMD...: run CMD with its output in $LAB/logs/LOGNAME.log; on failure
# show the end of that log.
logged() {
  local log=$LAB/logs/$1.log
  shift
  mkdir -p "$LAB/logs"
  if "$@" </dev/null >"$log" 2>&1; then
    return 0
  fi
  echo "[setup] command failed: $*" >&2
  tail -n 30 "$log" | sed 's/^/    /' >&2
  echo "[setup] full log: $log" >&2
  return 1
}
DIED=0
die() { DIED=1; echo "[setup] FAILED in step '$STEP' after $(elapsed "$START") s: $*" >&2; exit 1; }
trap 'rc=$?; [ $rc -eq 0 ] || [ $DIED = 1 ] || echo "[setup] FAILED in step '"'"'$STEP'"'"' (exit $rc) after $(elapsed "$START") s; see the output above" >&2' EXIT

# ---------------------------------------------------------------------------------------
step "preflight"
[ "$(id -u)" -eq 0 ] || die "must run as root (sudo tests/lab/setup.sh)"
command -v apt-get >/dev/null || die "apt-get not found: this installer targets Debian 12"
CODENAME=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
[ "$CODENAME" = bookworm ] || echo "[setup] warning: this is '$CODENAME', not Debian 12 (bookworm); continuing"
[ "$(uname -m)" = x86_64 ] || die "x86_64 only (found $(uname -m))"
mkdir -p "$LAB"
exec 9>"$LAB/.setup.lock"
flock -w 600 9 || die "another setup.sh holds $LAB/.setup.lock"
done_step "root, $CODENAME, lab dir $LAB"

# ---------------------------------------------------------------------------------------
# Private apt configuration: the machine's own sources plus bookworm-backports, with their
# lists and archives under $LAB/apt-backports. /etc/apt and /var/lib/apt/lists are not
# modified; only dpkg's database learns about installed packages. backports_apt sets
# PRIV (the apt-get/apt-cache options that select it) and writes its sources file.
B=$LAB/apt-backports
PRIV=()
backports_apt() {
  mkdir -p "$B/lists/partial" "$B/archives/partial"
  local mirror=""
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    mirror=$(awk '$1 == "URIs:" && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file|ftp):/) { print $i; exit } }' /etc/apt/sources.list)
  fi
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "deb $mirror bookworm-backports main" >"$B/backports.list"
  PRIV=(-o "Dir::Etc::sourcelist=$B/backports.list" -o "Dir::State::lists=$B/lists"
        -o "Dir::Cache::archives=$B/archives")
  echo "[setup] private apt config: $B (mirror $mirror)"
}

# ---------------------------------------------------------------------------------------
step "apt packages"
PACKAGES=(
  dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-net-tap23 librte-net-af-packet23
  librte-mempool-ring23
  busybox-static cpio kmod xz-utils zstd gzip
  iperf3 iproute2 iputils-ping ethtool tcpdump procps util-linux coreutils
  gcc libc6-dev python3 ca-certificates libvirt-clients libxml2-utils
  debootstrap libvirt-daemon libvirt-daemon-driver-qemu
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  done_step "all ${#PACKAGES[@]} already installed"
else
  echo "[setup] installing: ${missing[*]}"
  logged apt-update apt-get -q -o DPkg::Lock::Timeout=300 update || die "apt-get update failed"
  logged apt-install apt-get "${APT_OPTS[@]}" install "${missing[@]}" || die "apt-get install failed"
  done_step "installed ${#missing[@]}"
fi

# ---------------------------------------------------------------------------------------
step "libvirt's QEMU user"
# libvirt-daemon-driver-qemu runs QEMU as libvirt-qemu:libvirt-qemu and will not start
# without that user. libvirt-daemon-system would create it, but it also brings
# iptables, a default NAT network (virbr0, 192.168.122.0/24) and service units; the
# lab wants none of them, so create just the user and group, as that package does.
if getent passwd libvirt-qemu >/dev/null; then
  done_step "present: $(id libvirt-qemu)"
else
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt --no-create-home \
    --shell /usr/sbin/nologin --comment "Libvirt Qemu" libvirt-qemu
  done_step "created $(id libvirt-qemu)"
fi

# ---------------------------------------------------------------------------------------
step "QEMU >= 10"
qemu_major() { qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p'; }
if [ "$(qemu_major || true)" -ge 10 ] 2>/dev/null && [ "${VDPAD_LAB_FORCE_QEMU:-0}" != 1 ]; then
  done_step "present: $(qemu-system-x86_64 --version | head -n 1)"
else
  backports_apt
  logged apt-backports-update apt-get "${PRIV[@]}" -q -o DPkg::Lock::Timeout=300 update ||
    die "apt-get update (backports) failed"
  logged apt-backports-install apt-get "${PRIV[@]}" "${APT_OPTS[@]}" -t bookworm-backports install qemu-system-x86 ||
    die "installing qemu-system-x86 from bookworm-backports failed"
  apt-get "${PRIV[@]}" -q clean </dev/null >/dev/null 2>&1 || true
  [ "$(qemu_major || true)" -ge 10 ] 2>/dev/null || die "QEMU is still $(qemu-system-x86_64 --version | head -n 1)"
  done_step "installed $(qemu-system-x86_64 --version | head -n 1)"
fi

# ---------------------------------------------------------------------------------------
step "QEMU 7.2 (Debian 12's own, beside QEMU 10)"
# bookworm's qemu-system-x86 7.2 for the compatibility test (tests/qemu_versions.rs):
# the newest 7.2 build the machine's apt lists know, downloaded and unpacked with
# dpkg-deb into $LAB/qemu-7.2 (nothing installed, QEMU 10 untouched). The wrapper
# $LAB/qemu-7.2/qemu-system-x86_64 points QEMU at its own modules (TCG is a module in
# 7.2) and firmware directory.
Q72=$LAB/qemu-7.2
q72_version() { grep -q seabios "$Q72/qemu-system-x86_64" 2>/dev/null && "$Q72/qemu-system-x86_64" --version 2>/dev/null | sed -n 's/^QEMU emulator version \(7\.2\.[0-9]*\).*/\1/p'; }
# newest_72 PACKAGE: the newest 1:7.2 version of PACKAGE in the apt lists.
newest_72() { apt-cache madison "$1" 2>/dev/null | awk -F' *[|] *' '$2 ~ /^1:7\.2[+]/ { print $2 }' | sort -V | tail -n 1; }
if [ -n "$(q72_version)" ]; then
  done_step "present: QEMU $(q72_version) in $Q72"
else
  V72=$(newest_72 qemu-system-x86)
  if [ -z "$V72" ]; then
    logged apt-update apt-get -q -o DPkg::Lock::Timeout=300 update || die "apt-get update failed"
    V72=$(newest_72 qemu-system-x86)
  fi
  [ -n "$V72" ] || die "no qemu-system-x86 1:7.2 in the apt lists (is bookworm main a source?)"
  VDATA72=$(newest_72 qemu-system-data)
  DL=$LAB/downloads-qemu-7.2
  rm -rf "$DL" "$Q72.tmp"
  mkdir -p "$DL" "$Q72.tmp"
  id _apt >/dev/null 2>&1 && chown _apt "$DL"
  (cd "$DL" && logged qemu-7.2-download apt-get -q download "qemu-system-x86=$V72" \
    "qemu-system-common=$V72" "qemu-system-data=$VDATA72") || die "apt-get download of QEMU $V72 failed"
  for deb in "$DL"/*.deb; do
    dpkg-deb -x "$deb" "$Q72.tmp" || die "cannot unpack $deb"
  done
  cat >"$Q72.tmp/qemu-system-x86_64" <<'EOF'
#!/bin/sh
# Debian 12's QEMU 7.2, unpacked by tests/lab/setup.sh: its own modules and data
# files first, then the firmware directories built into it (-L replaces those).
here=$(dirname "$(readlink -f "$0")")
export QEMU_MODULE_DIR="$here/usr/lib/x86_64-linux-gnu/qemu"
exec "$here/usr/bin/qemu-system-x86_64" -L "$here/usr/share/qemu" -L /usr/share/seabios \
  -L /usr/lib/ipxe/qemu "$@"
EOF
  chmod 0755 "$Q72.tmp/qemu-system-x86_64"
  rm -rf "$Q72" "$DL"
  mv "$Q72.tmp" "$Q72"
  [ -n "$(q72_version)" ] || die "$Q72/qemu-system-x86_64 does not run: $("$Q72/qemu-system-x86_64" --version 2>&1 | head -n 3)"
  done_step "unpacked qemu-system-x86 $V72 into $Q72"
fi

# ---------------------------------------------------------------------------------------
step "guest kernel"
KROOT=$LAB/kernel
KVER=$(ls "$KROOT/lib/modules" 2>/dev/null | grep -E -- '-amd64$' | sort -V | tail -n 1 || true)
if [ -n "$KVER" ] && [ -s "$KROOT/boot/vmlinuz-$KVER" ] && [ -s "$KROOT/lib/modules/$KVER/modules.dep" ]; then
  ln -sfn "kernel/boot/vmlinuz-$KVER" "$LAB/vmlinuz"
  done_step "present: $KVER"
else
  KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }')
  [ -n "$KPKG" ] || die "cannot resolve linux-image-amd64 to a kernel package (apt lists missing?)"
  KVER=${KPKG#linux-image-}
  DL=$LAB/downloads
  rm -rf "$DL" "$KROOT.tmp"
  mkdir -p "$DL"
  # Let apt's unprivileged download user write there (else apt warns and runs as root).
  id _apt >/dev/null 2>&1 && chown _apt "$DL"
  (cd "$DL" && logged kernel-download apt-get -q download "$KPKG") || die "apt-get download $KPKG failed"
  dpkg-deb -x "$DL"/"${KPKG}"_*.deb "$KROOT.tmp" || die "cannot unpack $KPKG"
  depmod -b "$KROOT.tmp" "$KVER" || die "depmod failed"
  rm -rf "$KROOT" "$DL"
  mv "$KROOT.tmp" "$KROOT"
  ln -sfn "kernel/boot/vmlinuz-$KVER" "$LAB/vmlinuz"
  done_step "extracted $KPKG"
fi

# ---------------------------------------------------------------------------------------
step "guest kernel 6.12"
# bookworm-backports' 6.12 for the VDUSE tests (virtio-net over VDUSE needs Linux >= 6.8).
KROOT612=$LAB/kernel-6.12
kver612() { ls "$KROOT612/lib/modules" 2>/dev/null | grep -E -- '^6\.12\..*-amd64$' | sort -V | tail -n 1 || true; }
KVER612=$(kver612)
if [ "${VDPAD_LAB_NO_612:-0}" = 1 ]; then
  KVER612=""
  done_step "skipped (VDPAD_LAB_NO_612=1)"
elif [ -n "$KVER612" ] && [ -s "$KROOT612/boot/vmlinuz-$KVER612" ] && [ -s "$KROOT612/lib/modules/$KVER612/modules.dep" ]; then
  ln -sfn "kernel-6.12/boot/vmlinuz-$KVER612" "$LAB/vmlinuz-6.12"
  done_step "present: $KVER612"
else
  backports_apt
  # kpkg612: the 6.12 image package that backports' linux-image-amd64 depends on (or,
  # should the metapackage move past 6.12, the newest 6.12 image package there).
  kpkg612() {
    local p
    p=$(apt-cache "${PRIV[@]}" -t bookworm-backports depends linux-image-amd64 2>/dev/null |
      awk '$1 == "Depends:" && $2 ~ /^linux-image-6\.12\..*-amd64$/ { print $2; exit }')
    [ -n "$p" ] || p=$(apt-cache "${PRIV[@]}" pkgnames linux-image-6.12. 2>/dev/null |
      grep -E -- '^linux-image-6\.12\.[0-9.+a-z]*-amd64$' | sort -V | tail -n 1)
    echo "$p"
  }
  KPKG612=""
  [ -s "$(ls "$B"/lists/*bookworm-backports_main_binary-amd64_Packages* 2>/dev/null | head -n 1)" ] && KPKG612=$(kpkg612)
  DL=$LAB/downloads-6.12
  rm -rf "$DL" "$KROOT612.tmp"
  mkdir -p "$DL"
  id _apt >/dev/null 2>&1 && chown _apt "$DL"
  # Fresh lists when there are none, or when the package they name is gone from the
  # mirror (backports moves on; stale lists then point at a deleted .deb).
  if [ -z "$KPKG612" ] || ! (cd "$DL" && logged kernel-6.12-download apt-get "${PRIV[@]}" -q download "$KPKG612"); then
    echo "[setup] updating the backports package lists${KPKG612:+ (download of $KPKG612 failed; retrying)}"
    logged apt-backports-update apt-get "${PRIV[@]}" -q -o DPkg::Lock::Timeout=300 update ||
      die "apt-get update (backports) failed"
    KPKG612=$(kpkg612)
    [ -n "$KPKG612" ] || die "no linux-image-6.12.*-amd64 package in bookworm-backports"
    (cd "$DL" && logged kernel-6.12-download apt-get "${PRIV[@]}" -q download "$KPKG612") ||
      die "apt-get download $KPKG612 failed"
  fi
  KVER612=${KPKG612#linux-image-}
  dpkg-deb -x "$DL"/"${KPKG612}"_*.deb "$KROOT612.tmp" || die "cannot unpack $KPKG612"
  depmod -b "$KROOT612.tmp" "$KVER612" || die "depmod (6.12) failed"
  rm -rf "$KROOT612" "$DL"
  mv "$KROOT612.tmp" "$KROOT612"
  ln -sfn "kernel-6.12/boot/vmlinuz-$KVER612" "$LAB/vmlinuz-6.12"
  done_step "extracted $KPKG612"
fi

# ---------------------------------------------------------------------------------------
step "hugepages (best effort)"
total=$(awk '/^HugePages_Total:/ { print $2 }' /proc/meminfo)
if [ "${total:-0}" -lt 512 ]; then
  echo 1024 >/proc/sys/vm/nr_hugepages 2>/dev/null || true
  total=$(awk '/^HugePages_Total:/ { print $2 }' /proc/meminfo)
fi
if ! mountpoint -q /dev/hugepages; then
  mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null || true
fi
hp_mount=no
mountpoint -q /dev/hugepages && hp_mount=yes
done_step "${total:-0} x 2 MiB pages, /dev/hugepages mounted: $hp_mount (tests fall back to --no-huge)"

# ---------------------------------------------------------------------------------------
# initramfs KROOT KVER OUTPUT STAMPFILE [EXTRA_MODULES]: (re)build one guest image when
# initramfs.sh, the kernel version or the module list changed since its stamp.
initramfs() {
  local stamp
  stamp="$(sha256sum "$HERE/initramfs.sh" | cut -d' ' -f1) $2${5:+ +$5}"
  if [ -s "$3" ] && [ "$(cat "$4" 2>/dev/null)" = "$stamp" ]; then
    echo "[setup]   $(basename "$3"): up to date"
    return 0
  fi
  VDPAD_LAB=$LAB VDPAD_INITRAMFS_EXTRA="${5:-}" "$HERE/initramfs.sh" "$1" "$2" "$3" ||
    die "initramfs.sh failed for $2"
  echo "$stamp" >"$4"
}
step "guest initramfs"
INITRD=$LAB/initramfs.cpio.gz
INITRD612=$LAB/initramfs-6.12.cpio.gz
VDPA_MODULES="vdpa vduse virtio_vdpa vhost_vdpa vhost vhost_iotlb vhost_net sch_ingress cls_u32 act_mirred"
initramfs "$KROOT" "$KVER" "$INITRD" "$LAB/initramfs.stamp"
[ -z "$KVER612" ] || initramfs "$KROOT612" "$KVER612" "$INITRD612" "$LAB/initramfs-6.12.stamp" "$VDPA_MODULES"
done_step "${KVER}${KVER612:+ and $KVER612}"

# ---------------------------------------------------------------------------------------
step "cargo-fuzz and Miri"
export PATH="$HOME/.cargo/bin:$PATH"
command -v rustup >/dev/null || die "rustup not found (install Rust with rustup, stable and nightly)"
rustup run nightly rustc --version >/dev/null 2>&1 ||
  logged rustup-nightly rustup toolchain install nightly --profile minimal || die "no nightly toolchain"
fuzz_note="cargo-fuzz present"
if ! cargo fuzz --version >/dev/null 2>&1; then
  logged cargo-fuzz cargo install cargo-fuzz --locked || die "cargo install cargo-fuzz failed"
  fuzz_note="cargo-fuzz installed"
fi
have=$(rustup component list --toolchain nightly --installed 2>/dev/null)
if grep -q '^miri' <<<"$have" && grep -q '^rust-src' <<<"$have"; then
  miri_note="miri present"
else
  logged rustup-miri rustup component add --toolchain nightly miri rust-src || die "adding miri failed"
  miri_note="miri installed"
fi
# Miri builds its own standard library once; do it here rather than inside a test run.
logged miri-setup cargo +nightly miri setup || die "cargo miri setup failed"
done_step "$fuzz_note, $miri_note ($(cargo fuzz --version 2>/dev/null))"

# ---------------------------------------------------------------------------------------
step "checks"
for tool in qemu-system-x86_64 dpdk-testpmd timeout taskset ip iperf3 ethtool tcpdump; do
  command -v "$tool" >/dev/null || die "$tool not found after installation"
done
[ -c /dev/net/tun ] || echo "[setup] warning: /dev/net/tun missing (tap-based tests will fail)"
PMDS=$(ls -d /usr/lib/x86_64-linux-gnu/dpdk/pmds-*/ 2>/dev/null | head -n 1)
for pmd in net_vhost net_virtio net_tap mempool_ring; do
  ls "$PMDS"librte_"$pmd".so* >/dev/null 2>&1 || die "DPDK driver librte_$pmd missing in ${PMDS:-<no pmds dir>}"
done
done_step "tools and DPDK drivers present"

# smoke_boot NAME KERNEL INITRD SCRIPT_BODY GREP...: boots a guest running the script;
# it passes when the console matches every GREP pattern and the script exited 0.
smoke_boot() {
  local name=$1 kernel=$2 initrd=$3 body=$4 W pat ok=1
  shift 4
  W=$(mktemp -d "$LAB/smoke.XXXXXX")
  printf '%s\n' "$body" >"$W/guest.sh"
  touch "$W/share-visible"
  # The tests' machine-wide guest lock (tests/support/guest.rs): one guest at a time.
  flock -w 900 /tmp/vdpad-qemu-guest.lock \
  timeout 180 qemu-system-x86_64 -machine q35 -accel tcg -m 512M -smp 1 -nodefaults -display none \
    -serial stdio -no-reboot -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 quiet panic=-1 lab.script=/host$W/guest.sh" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$W,mount_tag=lab,security_model=none" </dev/null >"$W/console.log" 2>&1 || true
  for pat in "$@" 'VDPAD-GUEST-EXIT rc=0'; do
    grep -q -- "$pat" "$W/console.log" || ok=0
  done
  if [ $ok = 1 ]; then
    rm -rf "$W"
  else
    cat "$W/console.log" >&2
    die "the $name guest did not boot or its check failed (console above, kept in $W)"
  fi
}
if [ "$SMOKE" = 1 ]; then
  step "smoke boot"
  smoke_boot 6.1 "$LAB/vmlinuz" "$INITRD" \
    'echo "smoke: $(chroot /host /bin/uname -s) $(ls /lab | tr "\n" " ")"' 'smoke: Linux .*share-visible'
  done_step "guest booted and ran a host binary"
  if [ -n "$KVER612" ]; then
    step "smoke boot 6.12"
    smoke_boot 6.12 "$LAB/vmlinuz-6.12" "$INITRD612" \
      'modprobe vduse && modprobe virtio_vdpa && modprobe vhost_vdpa && test -c /dev/vduse/control && echo "smoke612: $(uname -r) vduse ok"' \
      'smoke612: 6\.12\..* vduse ok'
    done_step "6.12 guest booted and loaded vduse"
  fi
fi

STEP="summary"
echo "[setup] lab ready in $(elapsed "$START") s: $LAB"
echo "[setup]   qemu:   $(command -v qemu-system-x86_64) ($(qemu-system-x86_64 --version | head -n 1 | awk '{ print $4 }'))"
echo "[setup]   kernel: $LAB/vmlinuz -> $(readlink "$LAB/vmlinuz")"
echo "[setup]   initrd: $INITRD"
[ -z "$KVER612" ] || echo "[setup]   6.12:   $LAB/vmlinuz-6.12 -> $(readlink "$LAB/vmlinuz-6.12"), $INITRD612"
echo "[setup]   qemu 7.2: $Q72/qemu-system-x86_64 ($(q72_version))"
echo "[setup]   libvirt: $(libvirtd --version 2>/dev/null | head -n 1) (started by the libvirt test when not running)"
echo "[setup]   testpmd: $(command -v dpdk-testpmd)"
