#!/bin/sh
# Start VM "vm1" with QEMU directly (no libvirt), its NIC served by vdpad device
# "vm1-net0" (tools/examples/vdpad.toml). Anything after the script's name is passed
# on to QEMU: the boot disk, a display, a console.
#
#   tools/examples/qemu-vm1.sh -drive file=vm1.qcow2,if=virtio -nographic
#
# Settings (environment variables, with defaults):
#   QEMU           qemu-system-x86_64 (7.2 or later; the reconnect option follows
#                                             its version. QEMU 7.2 without KVM also
#                                             needs VM_NIC_EXTRA=",vectors=0")
#   VDPAD_SOCKET   /run/vdpad/vm1-net0.sock   the device's `socket`
#   VM_QUEUES      2                          the device's `queue_pairs`
#   VM_MAC         52:54:00:12:34:56          the device's `mac`, if it sets one
#   VM_MEM         4G                         guest RAM
#   VM_CPUS        2
#   VM_ACCEL       kvm:tcg                    accelerators to try, in order
#   VM_NIC_EXTRA   (empty)                    more virtio-net-pci options, e.g.
#                                             ",romfile=" without ipxe-qemu's boot ROM
#
# tests/operations.rs (qemu_example_attaches_a_guest) boots a guest with this script
# against a running vdpad.
set -eu

QEMU=${QEMU:-qemu-system-x86_64}
SOCKET=${VDPAD_SOCKET:-/run/vdpad/vm1-net0.sock}
QUEUES=${VM_QUEUES:-2}
MAC=${VM_MAC:-52:54:00:12:34:56}
MEM=${VM_MEM:-4G}
CPUS=${VM_CPUS:-2}
ACCEL=${VM_ACCEL:-kvm:tcg}
NIC_EXTRA=${VM_NIC_EXTRA:-}

# The chardev's reconnect interval: reconnect-ms= (milliseconds) from QEMU 9.2 on,
# reconnect= (seconds) before (Debian 12's QEMU 7.2 rejects reconnect-ms).
RECONNECT=reconnect-ms=1000
QEMU_VERSION=$("$QEMU" --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
if [ -n "$QEMU_VERSION" ]; then
  set -- $QEMU_VERSION "$@"
  if [ "$1" -lt 9 ] || { [ "$1" -eq 9 ] && [ "$2" -lt 2 ]; }; then
    RECONNECT=reconnect=1
  fi
  shift 2
fi

# Multiqueue: mq=on and one MSI-X vector per queue, plus config and control queue.
MQ=""
if [ "$QUEUES" -gt 1 ]; then
  MQ=",mq=on,vectors=$((2 * QUEUES + 2))"
fi

# * Guest RAM in a shared memfd: vdpad maps it from the file descriptors QEMU sends
#   over the socket (vhost-user cannot work with private RAM).
# * The chardev is a client of vdpad's socket; reconnect: when vdpad restarts,
#   QEMU reconnects and replays the device setup, and the guest keeps its NIC.
# * queues= must match the device's queue_pairs.
exec "$QEMU" \
  -machine "q35,accel=$ACCEL,memory-backend=mem" \
  -smp "$CPUS" \
  -m "$MEM" \
  -object "memory-backend-memfd,id=mem,size=$MEM,share=on" \
  -chardev "socket,id=vdpad0,path=$SOCKET,$RECONNECT" \
  -netdev "vhost-user,id=net0,chardev=vdpad0,queues=$QUEUES" \
  -device "virtio-net-pci,netdev=net0,mac=$MAC$MQ$NIC_EXTRA" \
  "$@"
