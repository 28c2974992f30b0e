//! vdpad's `tap` backend beside the kernel's own vhost-net, on the same tap, in the
//! lab's 6.12 guest (the host kernels of our machines have no vhost-net; the guest's
//! Debian kernel has).
//!
//! The guest makes one multi-queue tap with the virtio-net header, `vbk0`, and a tc
//! reflector on it (`u32 match u32 0 0`, `mirred egress redirect` to itself: what a
//! backend writes comes back to its reads, the same kernel path for both). Then, three
//! times in turn, at 64 and at 1518 bytes, `vdpa-rig bench --poll` drives
//!
//! * **vhost-net**: `vdpa-rig --vhost-net-tap vbk0`, the rig's memory and rings handed
//!   to `/dev/vhost-net` with the tap as backend, as QEMU does for
//!   `-netdev tap,vhost=on`;
//! * **vdpad**: `vdpa-rig --socket` to a vdpad device with `backend = "tap"`,
//!   `tap_name = "vbk0"` (its queue is attached only while the rig is connected), with
//!   its defaults, and again notification-driven (`busy_poll_us = 0`) as vhost-net is.
//!
//! The guest has one vCPU: frontend and backend share it.
//!
//! The test asserts only that both moved frames both ways in every run; the rates are
//! printed (`RESULT` lines) and recorded in docs/performance.md. Everything runs under
//! TCG: the numbers compare the two backends on one emulated CPU, not hardware.
//!
//! Run: `cargo test -p vdpad-tests --test vhost_net_lab -- --include-ignored --nocapture`.

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
/// One run of either backend, setup included.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// Alternations of the two backends.
const ROUNDS: usize = 3;
/// Measured seconds per run.
const SECONDS: u32 = 3;
/// What is run in turn: the kernel's vhost-net, vdpad with its defaults (adaptive
/// polling), vdpad notification-driven (`busy_poll_us = 0`, as vhost-net by default).
const VARIANTS: [&str; 3] = ["vhost-net", "vdpad", "vdpad-notify"];

fn guest_script(vdpad: &Path, rig: &Path) -> String {
    format!(
        r#"{GUEST_FUNCTIONS}
VDPAD={vdpad}
RIG={rig}
H="chroot /host"
fail() {{ echo "VHOSTNET-FAIL $*"; exit 1; }}
for m in tun vhost_net sch_ingress cls_u32 act_mirred; do modprobe $m || fail "modprobe $m"; done
[ -c /dev/vhost-net ] || fail "no /dev/vhost-net"
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
$H /usr/sbin/ip tuntap add dev vbk0 mode tap multi_queue vnet_hdr || fail "ip tuntap add"
$H /usr/sbin/ip link set vbk0 up || fail "link up"
$H /usr/sbin/tc qdisc add dev vbk0 ingress || fail "tc qdisc"
$H /usr/sbin/tc filter add dev vbk0 parent ffff: u32 match u32 0 0 \
  action mirred egress redirect dev vbk0 || fail "tc filter"
mkdir -p /host/run/vdpad-vn
# vdpad as it comes, and notification-driven like vhost-net (which does not poll).
for v in vdpad vdpad-notify; do
  cat > /host/run/$v.toml <<EOF
[daemon]
run_dir = "/run/vdpad-vn"

[[device]]
name = "vn0"
socket = "/run/vdpad-vn/vn0.sock"
backend = "tap"
tap_name = "vbk0"
EOF
done
printf 'polling = "fixed"\nbusy_poll_us = 0\n' >> /host/run/vdpad-notify.toml
echo "VHOSTNET-READY"
# (not $i: wait_grep uses it)
for size in 64 1518; do
for round in $(seq 1 {ROUNDS}); do
  for v in vhost-net vdpad vdpad-notify; do
    if [ $v = vhost-net ]; then
      T="--vhost-net-tap vbk0"
    else
      $H env NO_COLOR=1 $VDPAD --config /run/$v.toml > /lab/$v-$round.log 2>&1 &
      VP=$!
      wait_grep "vdpad ready" /lab/$v-$round.log 60 || fail "$v not ready"
      T="--socket /run/vdpad-vn/vn0.sock"
    fi
    $H /usr/bin/timeout 60 $RIG $T bench --poll --seconds {SECONDS} --size $size > /lab/$v-$round.out 2>&1
    rc=$?
    echo "VHOSTNET-RUN $v $size $round rc=$rc $(grep -E 'round trip|RX dir' /lab/$v-$round.out | tr -s ' ' | tr '\n' ' ')"
    if [ $v != vhost-net ]; then kill $VP; wait $VP; fi
  done
done
done
echo "VHOSTNET-DONE"
"#,
        vdpad = vdpad.display(),
        rig = rig.display(),
    )
}

/// The round-trip rate of a `VHOSTNET-RUN` line (`round trip X Mpps`).
fn mpps(line: &str) -> Option<f64> {
    line.split("round trip")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The frames of the `RX dir ... (N frames)` part of a `VHOSTNET-RUN` line.
fn rx_frames(line: &str) -> Option<u64> {
    line.split("RX dir")
        .nth(1)?
        .split('(')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn run_lines_are_parsed() {
    let l = "VHOSTNET-RUN vdpad 64 1 rc=0 round trip 0.120 Mpps 0.061 Gbps (L2) \
             RX dir 0.120 Mpps 0.061 Gbps (360012 frames) ";
    assert_eq!(mpps(l), Some(0.120));
    assert_eq!(rx_frames(l), Some(360_012));
    assert_eq!(mpps("VHOSTNET-RUN vdpad 64 1 rc=2 "), None);
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn vdpad_tap_beside_kernel_vhost_net_on_the_same_tap() {
    let t0 = Instant::now();
    let lab = Lab::require_6_12();
    let vdpad = std::path::PathBuf::from(support::bins::vdpad());
    let rig = std::path::PathBuf::from(support::bins::vdpa_rig());
    let dir = TempDir::new("vhost-net");
    let mut config = GuestConfig::new(&guest_script(&vdpad, &rig)).kernel_6_12();
    config.limit = Duration::from_secs(600);
    let mut guest = Guest::boot(&lab, dir.path(), config);
    guest.wait_for(READY, BOOT_TIMEOUT);
    note(t0, "6.12 guest booted");
    let ready = guest
        .try_wait_for("VHOSTNET-READY", STEP_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", guest.tail()));
    note(t0, &ready);
    for size in [64, 1518] {
        measure(&mut guest, t0, size);
    }
    guest.wait_for("VHOSTNET-DONE", STEP_TIMEOUT);
    note(t0, "done");
}

/// Takes the guest's runs of one frame size and prints the medians.
fn measure(guest: &mut Guest, t0: Instant, size: usize) {
    let mut rates: [Vec<f64>; 3] = Default::default();
    for _ in 0..ROUNDS {
        for (k, name) in VARIANTS.iter().enumerate() {
            let line = guest
                .try_wait_for(&format!("VHOSTNET-RUN {name} {size} "), STEP_TIMEOUT)
                .unwrap_or_else(|e| panic!("{e}\n{}", guest.tail()));
            note(t0, &line);
            assert!(line.contains("rc=0"), "{line}\n{}", guest.tail());
            let rate = mpps(&line).unwrap_or_else(|| panic!("no rate in {line}"));
            let frames = rx_frames(&line).unwrap_or_else(|| panic!("no RX frames in {line}"));
            assert!(
                rate > 0.0 && frames > 0,
                "{name} moved no frames through the tap: {line}"
            );
            rates[k].push(rate);
        }
    }
    let kernel = median(rates[0].clone());
    for (k, name) in VARIANTS.iter().enumerate() {
        let m = median(rates[k].clone());
        println!(
            "RESULT {size} B {name} Mpps {:?} median {m:.4}, {:.2}x vhost-net \
             (vdpa-rig bench --poll, one TCG vCPU)",
            rates[k],
            m / kernel
        );
    }
}
