#!/bin/bash
# Real-VFIO run of the offload datapath (hwdrv/tests/vfio_lab.rs) in a nested TCG guest:
# intel-iommu + virtio-net-pci (modern only, iommu_platform, ATS) behind a pcie-root-port,
# bound to vfio-pci in the guest. The guest runs the host-built test binary through the
# read-only 9p host root. QEMU runs in network namespace $NS, so its tap (qtap0) exists only
# there: the host captures the guest's 0x88b5 frames on it and injects 0x88b6 frames.
#
# Needs the lab kernel + initramfs (../shared/lab/00-setup.sh: $LAB/kroot, $LAB/initrd.cpio.gz)
# and the test binary: CARGO_TARGET_DIR=... cargo test -p hwdrv --test vfio_lab --no-run
# Usage: hwdrv/tests/lab/vfio-offload-nested.sh [test-binary]      (root; ~1-2 min under TCG)
set -u
LAB=${LAB:-${TMPDIR:-/tmp}/vdpa-lab}
NS=${NS:-hwdrvlab}
BIN=${1:-$(ls -t ${CARGO_TARGET_DIR:-target}/debug/deps/vfio_lab-* 2>/dev/null | grep -v '\.d$' | head -1)}
[ -x "$BIN" ] || { echo "no vfio_lab test binary (build it with cargo test -p hwdrv --test vfio_lab --no-run)"; exit 2; }
BIN=$(readlink -f "$BIN")
KERNEL=${KERNEL:-$(ls $LAB/kroot/boot/vmlinuz-*-amd64 2>/dev/null | head -1)}
[ -n "$KERNEL" ] && [ -e $LAB/initrd.cpio.gz ] || { echo "lab kernel/initramfs missing in $LAB (run 00-setup.sh)"; exit 2; }
mkdir -p $LAB/share
OUT=${OUT:-$LAB/hwdrv-vfio}; mkdir -p $OUT
cleanup() { kill $TD $INJ 2>/dev/null; wait $TD $INJ 2>/dev/null; ip netns del $NS 2>/dev/null; }
ip netns del $NS 2>/dev/null
ip netns add $NS && ip -n $NS link set lo up
ip netns exec $NS sysctl -qw net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.all.disable_ipv6=1

cat > $LAB/share/hwdrv-guest.sh <<G
VN=\$(for d in /sys/bus/pci/devices/*; do [ "\$(cat \$d/vendor):\$(cat \$d/device)" = 0x1af4:0x1041 ] && echo \${d##*/}; done | head -1)
echo "virtio-net at \$VN"
[ -e /sys/bus/pci/devices/\$VN/driver ] && echo \$VN > /sys/bus/pci/devices/\$VN/driver/unbind
echo vfio-pci > /sys/bus/pci/devices/\$VN/driver_override
echo \$VN > /sys/bus/pci/drivers_probe
echo "\$VN -> \$(basename \$(readlink /sys/bus/pci/devices/\$VN/driver)) group \$(basename \$(readlink /sys/bus/pci/devices/\$VN/iommu_group))"
for d in /sys/bus/pci/devices/*; do [ "\$(cat \$d/vendor)" = 0x8086 ] && echo "other NIC \${d##*/} \$(cat \$d/vendor):\$(cat \$d/device)"; done
chroot /host env HWDRV_VFIO_BDF=\$VN RUST_LOG=\${RUST_LOG:-info} RUST_BACKTRACE=1 $BIN --nocapture --test-threads=1
echo "hwdrv-vfio-test rc=\$?"
dmesg | grep -iE 'vfio|dmar.*fault|DMAR: \[' | tail -5
G

( for i in $(seq 600); do ip -n $NS link show qtap0 >/dev/null 2>&1 && break; sleep 0.1; done
  ip -n $NS link set qtap0 up
  exec ip netns exec $NS timeout 150 tcpdump --immediate-mode -l -U -i qtap0 -n -e -XX -c 4 'ether proto 0x88b5' ) > $OUT/tcpdump.log 2>&1 &
TD=$!
( for i in $(seq 600); do ip -n $NS link show qtap0 2>/dev/null | grep -q UP && break; sleep 0.1; done
  exec ip netns exec $NS timeout 150 python3 -c '
import socket, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(("qtap0", 0))
f = b"\xff"*6 + bytes.fromhex("020000000505") + b"\x88\xb6" + b"LAB-HOST-TO-GUEST-RX".ljust(46, b"\0")
for i in range(280):
    try: s.send(f)
    except OSError: pass
    time.sleep(0.5)' ) > $OUT/inject.log 2>&1 &
INJ=$!
trap cleanup EXIT

s=$(date +%s.%N)
ip netns exec $NS timeout 300 taskset -c ${QEMU_CPU:-1} qemu-system-x86_64 -machine q35,kernel-irqchip=split -accel tcg \
  -m 1G -smp 1 -nographic -no-reboot -kernel $KERNEL -initrd $LAB/initrd.cpio.gz \
  -append "console=ttyS0 quiet intel_iommu=on iommu=pt lab.script=/lab/hwdrv-guest.sh" \
  -device intel-iommu,intremap=on,caching-mode=on,device-iotlb=on \
  -netdev tap,id=hwnet,ifname=qtap0,script=no,downscript=no \
  -device pcie-root-port,id=rp1,chassis=1,addr=0x4 \
  -device virtio-net-pci,netdev=hwnet,bus=rp1,disable-legacy=on,iommu_platform=on,ats=on,mac=52:54:00:00:04:01 \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path=$LAB/share,mount_tag=lab,security_model=none > $OUT/guest.log 2>&1
echo "qemu rc=$? wall=$(echo "$(date +%s.%N)-$s" | bc)s"
sed -n '/LAB-RUN/,$p' $OUT/guest.log
sleep 1
echo "--- host tcpdump on $NS/qtap0 (frames the NIC sent from guest memory):"
cat $OUT/tcpdump.log
grep -q "hwdrv-vfio-test rc=0" $OUT/guest.log
