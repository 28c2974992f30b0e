//! vdpad as a VDUSE vDPA device, proven against the real kernel: the lab guest boots
//! bookworm-backports' 6.12 kernel (VDUSE net devices need Linux >= 6.8) and runs the
//! host-built vdpad inside it (`chroot /host`), no nesting needed.
//!
//! 1. `virtio_vdpa`: vdpad (tap backend) creates `/dev/vduse/vdu0` and attaches it to
//!    the vDPA bus; the guest kernel's own virtio_net drives it. Its interface goes
//!    into a namespace at 192.0.2.2, the tap stays at 192.0.2.1: ping with 0 % loss,
//!    then 20 MB over TCP each way with the md5 compared, and vdpactl stats show the
//!    packets, kicks and interrupts of both rings.
//! 2. `vhost_vdpa`: a second device (loopback backend) bound to vhost_vdpa becomes
//!    `/dev/vhost-vdpa-N`, and DPDK's virtio-user io-forwards through it (the IOTLB then
//!    holds testpmd's own shared memory, announced with UPDATE_IOTLB).
//! 3. Bad input in the same boot: the kernel driver resets the device under traffic
//!    (virtio_vdpa unbound and bound again) and the new interface pings; the device is
//!    deleted from the bus under traffic (`vdpa dev del`) and comes back when vdpad
//!    restarts.
//! 4. vdpad killed with SIGKILL while its devices are on the bus: the next vdpad takes
//!    them over (rebinding the driver, which resets the device) and the kernel's
//!    interface pings through it again.
//!
//! Needs the lab with the 6.12 guest (`tests/lab/setup.sh`); run with
//! `cargo test -p vdpad-tests --test vduse_guest -- --include-ignored --nocapture`.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::guest::{Guest, GuestConfig, READY};
use support::lab::Lab;
use support::nested::GUEST_FUNCTIONS;
use support::note;
use support::tmp::TempDir;

/// Boot of the 6.12 guest under TCG.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Each step of the script.
const STEP_TIMEOUT: Duration = Duration::from_secs(240);
/// Frames `vdpa-rig --vhost-vdpa verify` sends.
const RIG_PACKETS: u64 = 100_000;
/// Bytes sent each way over TCP.
const TCP_BYTES: u64 = 20 << 20;

/// A Python helper run from the host root: `send HOST PORT BYTES` writes
/// pseudo-random bytes and prints their md5; `recv PORT` accepts one connection and
/// prints the md5 and count of what arrived.
const TCP_MD5: &str = r#"import hashlib, random, socket, sys
mode = sys.argv[1]
if mode == "send":
    host, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(7)
    s = socket.create_connection((host, port), timeout=60)
    h, left = hashlib.md5(), n
    while left:
        chunk = rng.randbytes(min(left, 65536))
        s.sendall(chunk); h.update(chunk); left -= len(chunk)
    s.close()
    print("sent", n, h.hexdigest())
else:
    port = int(sys.argv[2])
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port)); ls.listen(1); ls.settimeout(120)
    c, _ = ls.accept(); c.settimeout(60)
    h, n = hashlib.md5(), 0
    while True:
        b = c.recv(65536)
        if not b: break
        h.update(b); n += len(b)
    print("received", n, h.hexdigest())
"#;

fn guest_script(vdpad: &Path, vdpactl: &Path, rig: &Path) -> String {
    format!(
        r#"{GUEST_FUNCTIONS}
VDPAD={vdpad}
VDPACTL={vdpactl}
RIG={rig}
H="chroot /host"
fail() {{ echo "VDUSE-FAIL $*"; cat /lab/vdpad.log 2>/dev/null | tail -n 40; exit 1; }}
echo "VDUSE-KERNEL $(uname -r)"
modprobe vduse || fail "modprobe vduse"
modprobe virtio_vdpa || fail "modprobe virtio_vdpa"
modprobe vhost_vdpa || fail "modprobe vhost_vdpa"
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
mkdir -p /host/run/vdpad-vduse
cat > /host/run/tcp_md5.py <<'EOF'
{TCP_MD5}
EOF
cat > /host/run/vduse.toml <<EOF
[daemon]
run_dir = "/run/vdpad-vduse"
log_level = "info"

[[device]]
name = "vdu0"
frontend = "vduse"
vdpa_driver = "virtio_vdpa"
backend = "tap"
tap_name = "vdpadt0"
mac = "02:00:00:00:0d:01"

[[device]]
name = "vdu1"
frontend = "vduse"
vdpa_driver = "vhost_vdpa"
backend = "loopback"

[[device]]
name = "vu2"
socket = "/run/vdpad-vduse/vu2.sock"
backend = "loopback"
EOF
start_vdpad() {{
  chroot /host env NO_COLOR=1 $VDPAD --config /run/vduse.toml > /lab/vdpad.log 2>&1 &
  VP=$!
  wait_grep "attach with: network interface" /lab/vdpad.log 60 || fail "vdu0 not attached"
  wait_grep "attach with: /dev/vhost-vdpa-" /lab/vdpad.log 60 || fail "vdu1 not attached"
  IF=$(sed -n 's/.*attach with: network interface \([A-Za-z0-9_]*\).*/\1/p' /lab/vdpad.log | tail -n 1)
  VDEV=$(sed -n 's/.*attach with: \(\/dev\/vhost-vdpa-[0-9]*\).*/\1/p' /lab/vdpad.log | tail -n 1)
  echo "VDUSE-ATTACHED if=$IF vhost=$VDEV pid=$VP"
}}
start_vdpad
$H /usr/sbin/vdpa dev show
ls -l /sys/bus/vdpa/devices/vdu0/driver /sys/bus/vdpa/devices/vdu1/driver

# ---- 1. virtio_vdpa: the kernel's virtio_net on vdpad
$H /usr/sbin/ip netns add vdu
$H /usr/sbin/ip link set $IF netns vdu
$H /usr/sbin/ip -n vdu addr add 192.0.2.2/24 dev $IF
$H /usr/sbin/ip -n vdu link set $IF up
$H /usr/sbin/ip -n vdu link set lo up
ip addr add 192.0.2.1/24 dev vdpadt0
ip link set vdpadt0 up
$H /usr/sbin/ip netns exec vdu /usr/bin/ping -c 50 -i 0.05 -W 2 192.0.2.1 > /lab/ping.log 2>&1
echo "VDUSE-PING rc=$? $(grep 'packets transmitted' /lab/ping.log)"
$H /usr/bin/python3 /run/tcp_md5.py recv 5001 > /lab/tcp-in.log 2>&1 &
RP=$!; sleep 1
$H /usr/sbin/ip netns exec vdu /usr/bin/timeout 120 /usr/bin/python3 /run/tcp_md5.py send 192.0.2.1 5001 {TCP_BYTES} > /lab/tcp-out.log 2>&1
wait $RP
echo "VDUSE-TCP-GUEST-TO-HOST $(cat /lab/tcp-out.log) / $(cat /lab/tcp-in.log)"
$H /usr/sbin/ip netns exec vdu /usr/bin/python3 /run/tcp_md5.py recv 5002 > /lab/tcp-in2.log 2>&1 &
RP=$!; sleep 1
$H /usr/bin/timeout 120 /usr/bin/python3 /run/tcp_md5.py send 192.0.2.2 5002 {TCP_BYTES} > /lab/tcp-out2.log 2>&1
wait $RP
echo "VDUSE-TCP-HOST-TO-GUEST $(cat /lab/tcp-out2.log) / $(cat /lab/tcp-in2.log)"
# The driver resets the device under traffic: virtio_vdpa unbound and bound again.
$H /usr/sbin/ip netns exec vdu /usr/bin/ping -c 300 -i 0.01 -W 1 192.0.2.1 > /lab/ping-reset.log 2>&1 &
PP=$!; sleep 0.5
echo vdu0 > /sys/bus/vdpa/drivers/virtio_vdpa/unbind
echo vdu0 > /sys/bus/vdpa/drivers/virtio_vdpa/bind
wait $PP
IF2=$(ls /sys/bus/vdpa/devices/vdu0/virtio*/net/ 2>/dev/null | head -n 1)
[ -n "$IF2" ] || fail "no interface after the driver came back"
$H /usr/sbin/ip link set $IF2 netns vdu
$H /usr/sbin/ip -n vdu addr add 192.0.2.2/24 dev $IF2
$H /usr/sbin/ip -n vdu link set $IF2 up
$H /usr/sbin/ip netns exec vdu /usr/bin/ping -c 20 -i 0.05 -W 2 192.0.2.1 > /lab/ping-after-reset.log 2>&1
echo "VDUSE-DRIVER-RESET rc=$? if=$IF2 $(grep 'packets transmitted' /lab/ping-after-reset.log)"
chroot /host $VDPACTL --socket /run/vdpad-vduse/control.sock stats vdu0 > /lab/stats.log 2>&1
echo "VDUSE-STATS rc=$?"
cat /lab/stats.log
chroot /host $VDPACTL --socket /run/vdpad-vduse/control.sock list > /lab/list.log 2>&1
echo "VDUSE-LIST rc=$? $(grep 'vdpa bus' /lab/list.log | tr -s ' ' | tr '\n' ';')"

# ---- 2. vhost_vdpa: DPDK virtio-user through /dev/vhost-vdpa-N
$H /usr/bin/timeout 60 /usr/bin/dpdk-testpmd --lcores 0@0,1@0 --no-pci --no-huge -m 512 \
  --file-prefix vduse --vdev net_virtio_user0,path=$VDEV,queues=1 -- \
  --forward-mode=io --tx-first --stats-period 1 --nb-cores=1 --total-num-mbufs=16384 > /lab/testpmd.log 2>&1 &
TP=$!
sleep 12
kill -INT $TP; wait $TP
RC=$?
tail -n 25 /lab/testpmd.log
echo "VDUSE-TESTPMD rc=$RC $(grep -a 'RX-packets' /lab/testpmd.log | tail -n 1)"

# ---- vdpa-rig through /dev/vhost-vdpa-N: every byte checked
$H /usr/bin/timeout 300 $RIG --vhost-vdpa $VDEV verify --packets {RIG_PACKETS} --size 60 --size-max 1514 --timeout 280 > /lab/rig.log 2>&1
echo "VDUSE-RIG-VERIFY rc=$? $(head -n 1 /lab/rig.log)"
# IOVAs outside every IOTLB entry: counted as bad descriptors, good frames still flow.
$H /usr/bin/timeout 120 $RIG --vhost-vdpa $VDEV hostile --rounds 20 > /lab/hostile.log 2>&1
RC=$?
BAD=$(chroot /host $VDPACTL --socket /run/vdpad-vduse/control.sock --json stats vdu1 | grep -o '"address":[0-9]*' | tr '\n' ' ')
echo "VDUSE-HOSTILE rc=$RC $(cat /lab/hostile.log) bad=[ $BAD]"
# ---- the same rig, same vdpad, same run: vhost-vdpa and vhost-user side by side
for size in 64 1518; do
  $H /usr/bin/timeout 60 $RIG --vhost-vdpa $VDEV bench --seconds 5 --size $size > /lab/bench-vdpa.log 2>&1
  echo "VDUSE-BENCH vhost-vdpa size=$size rc=$? $(grep -E 'round trip|pkts/kick|pkts/irq' /lab/bench-vdpa.log | tr -s ' ' | tr '\n' ';')"
  $H /usr/bin/timeout 60 $RIG --socket /run/vdpad-vduse/vu2.sock bench --seconds 5 --size $size > /lab/bench-vu.log 2>&1
  echo "VDUSE-BENCH vhost-user size=$size rc=$? $(grep -E 'round trip|pkts/kick|pkts/irq' /lab/bench-vu.log | tr -s ' ' | tr '\n' ';')"
done

# ---- 3. the device deleted from the bus under traffic, then a vdpad restart
$H /usr/sbin/ip netns exec vdu /usr/bin/ping -c 400 -i 0.01 -W 1 192.0.2.1 > /lab/ping-del.log 2>&1 &
PP=$!; sleep 1
$H /usr/sbin/vdpa dev del vdu0
echo "VDUSE-DEL rc=$?"
wait $PP
kill -0 $VP && echo "VDUSE-ALIVE-AFTER-DEL"
kill -TERM $VP; wait $VP
echo "VDUSE-EXIT rc=$?"
$H /usr/sbin/ip netns del vdu
start_vdpad
# ---- 4. vdpad killed outright (no cleanup) with its devices on the bus, then started
# again: it takes the devices over, and the kernel's driver works through it again.
kill -KILL $VP; wait $VP
echo "VDUSE-KILLED devices-left=$(ls /dev/vduse | grep -vc control)"
: > /lab/vdpad.log
start_vdpad
$H /usr/sbin/ip netns add vdu2
$H /usr/sbin/ip link set $IF netns vdu2
$H /usr/sbin/ip -n vdu2 addr add 192.0.2.2/24 dev $IF
$H /usr/sbin/ip -n vdu2 link set $IF up
ip addr add 192.0.2.1/24 dev vdpadt0
ip link set vdpadt0 up
$H /usr/sbin/ip netns exec vdu2 /usr/bin/ping -c 20 -i 0.05 -W 2 192.0.2.1 > /lab/ping-takeover.log 2>&1
echo "VDUSE-TAKEOVER rc=$? $(grep 'packets transmitted' /lab/ping-takeover.log)"
grep -E 'taking over' /lab/vdpad.log | head -n 2
$H /usr/sbin/ip netns del vdu2
kill -TERM $VP; wait $VP
echo "VDUSE-EXIT2 rc=$? devices-left=$(ls /dev/vduse | grep -vc control)"
echo "VDUSE-DONE"
"#,
        vdpad = vdpad.display(),
        vdpactl = vdpactl.display(),
        rig = rig.display(),
    )
}

/// The `key` field of a line like `sent 20971520 <md5>`.
fn md5_of(line: &str, key: &str) -> Option<(u64, String)> {
    let mut w = line.split_whitespace().skip_while(|w| *w != key);
    w.next()?;
    Some((w.next()?.parse().ok()?, w.next()?.to_owned()))
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn vduse_device_serves_the_kernel_driver_and_dpdk_through_the_vdpa_bus() {
    let t0 = Instant::now();
    let lab = Lab::require_6_12();
    let vdpad = std::path::PathBuf::from(support::bins::vdpad());
    let vdpactl = std::path::PathBuf::from(support::bins::vdpactl());
    let rig = std::path::PathBuf::from(support::bins::vdpa_rig());
    let dir = TempDir::new("vduse");
    let script = guest_script(&vdpad, &vdpactl, &rig);
    // DPDK's testpmd needs more than QEMU's default TCG CPU model (SSE4.2 and up).
    let mut config = GuestConfig::new(&script)
        .kernel_6_12()
        .qemu_args(["-cpu", "max"]);
    config.limit = Duration::from_secs(900);
    let mut guest = Guest::boot(&lab, dir.path(), config);
    guest.wait_for(READY, BOOT_TIMEOUT);
    note(t0, "6.12 guest booted");
    let kernel = guest.wait_for("VDUSE-KERNEL", STEP_TIMEOUT);
    assert!(kernel.contains(" 6.12"), "{kernel}");
    let attached = guest.wait_for("VDUSE-ATTACHED", STEP_TIMEOUT);
    note(t0, &attached);
    let ping = guest.wait_for("VDUSE-PING", STEP_TIMEOUT);
    note(t0, &ping);
    assert!(
        ping.contains("rc=0") && ping.contains(" 0% packet loss"),
        "{ping}\n{}",
        guest.tail()
    );
    for marker in ["VDUSE-TCP-GUEST-TO-HOST", "VDUSE-TCP-HOST-TO-GUEST"] {
        let line = guest.wait_for(marker, STEP_TIMEOUT);
        note(t0, &line);
        let sent = md5_of(&line, "sent").unwrap_or_else(|| panic!("{line}"));
        let got = md5_of(&line, "received").unwrap_or_else(|| panic!("{line}"));
        assert_eq!(sent.0, TCP_BYTES, "{line}");
        assert_eq!(sent, got, "{marker}: bytes or md5 differ: {line}");
    }
    let reset = guest.wait_for("VDUSE-DRIVER-RESET", STEP_TIMEOUT);
    note(t0, &reset);
    assert!(
        reset.contains("rc=0") && reset.contains(" 0% packet loss"),
        "after the driver reset the device under traffic: {reset}\n{}",
        guest.tail()
    );
    let stats = guest.wait_for("VDUSE-STATS", STEP_TIMEOUT);
    assert!(stats.contains("rc=0"), "{stats}\n{}", guest.tail());
    // vdpactl list says what each device's vDPA bus driver made of it.
    let list = guest.wait_for("VDUSE-LIST", STEP_TIMEOUT);
    note(t0, &list);
    assert!(
        list.contains("rc=0")
            && list.contains("virtio_vdpa: network interface")
            && list.contains("vhost_vdpa: /dev/vhost-vdpa-"),
        "{list}\n{}",
        guest.tail()
    );
    let testpmd = guest.wait_for("VDUSE-TESTPMD", STEP_TIMEOUT);
    note(t0, &testpmd);
    let rx: u64 = testpmd
        .split("RX-packets:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        rx > 1000,
        "testpmd moved too little through vhost-vdpa: {testpmd}\n{}",
        guest.tail()
    );
    let verify = guest.wait_for("VDUSE-RIG-VERIFY", STEP_TIMEOUT);
    note(t0, &verify);
    assert!(
        verify.contains("rc=0")
            && verify.contains(&format!("received {RIG_PACKETS} lost 0 corrupt 0")),
        "vdpa-rig through vhost-vdpa: {verify}\n{}",
        guest.tail()
    );
    let hostile = guest.wait_for("VDUSE-HOSTILE", STEP_TIMEOUT);
    note(t0, &hostile);
    let bad: u64 = hostile
        .split("\"address\":")
        .skip(1)
        .filter_map(|w| w.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        hostile.contains("rc=0") && bad >= 20,
        "chains outside the IOTLB must be counted and good frames still flow: {hostile}\n{}",
        guest.tail()
    );
    for _ in 0..4 {
        let bench = guest.wait_for("VDUSE-BENCH", STEP_TIMEOUT);
        note(t0, &bench);
        assert!(
            bench.contains("rc=0") && bench.contains("round trip"),
            "{bench}\n{}",
            guest.tail()
        );
    }
    let del = guest.wait_for("VDUSE-DEL", STEP_TIMEOUT);
    assert!(del.contains("rc=0"), "{del}");
    guest.wait_for("VDUSE-ALIVE-AFTER-DEL", STEP_TIMEOUT);
    let exit = guest.wait_for("VDUSE-EXIT rc=", STEP_TIMEOUT);
    assert!(
        exit.contains("rc=0"),
        "vdpad exit: {exit}\n{}",
        guest.tail()
    );
    let again = guest.wait_for("VDUSE-ATTACHED", STEP_TIMEOUT);
    note(t0, &format!("after restart: {again}"));
    let killed = guest.wait_for("VDUSE-KILLED", STEP_TIMEOUT);
    assert!(killed.contains("devices-left=2"), "{killed}");
    let takeover = guest.wait_for("VDUSE-TAKEOVER", STEP_TIMEOUT);
    note(t0, &takeover);
    assert!(
        takeover.contains("rc=0") && takeover.contains(" 0% packet loss"),
        "after a restart that took over the devices a killed vdpad left: {takeover}\n{}",
        guest.tail()
    );
    let exit2 = guest.wait_for("VDUSE-EXIT2", STEP_TIMEOUT);
    assert!(
        exit2.contains("rc=0") && exit2.contains("devices-left=0"),
        "{exit2}\n{}",
        guest.tail()
    );
    guest.wait_for("VDUSE-DONE", STEP_TIMEOUT);
    let log = support::read_log(&guest.share().join("vdpad.log"));
    let interesting: Vec<&str> = log
        .lines()
        .filter(|l| {
            [
                "VDUSE",
                "IOTLB",
                "virtqueue ready",
                "attach with",
                "vDPA bus",
                "queue pair",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .collect();
    println!("vdpad log (VDUSE lines):\n{}", interesting.join("\n"));
    println!(
        "stats:\n{}",
        support::read_log(&guest.share().join("stats.log"))
    );
    note(t0, "done");
}
