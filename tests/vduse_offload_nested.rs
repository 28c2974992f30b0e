//! Offload through VDUSE: a vhost-vdpa frontend's rings run on a real virtio-net
//! function behind VFIO, with the addresses the driver uses (IOVAs of the VDUSE
//! IOTLB) as the NIC's DMA addresses.
//!
//! The machine is the nested VFIO lab's (`support::nested::NestedGuest`: emulated VT-d,
//! a modern virtio-net-pci with `iommu_platform=on` behind a root port, an e1000e and
//! an igb, each on a tap in the test's namespace), booted on the 6.12 kernel, which
//! has VDUSE net devices. Inside the guest, host-built binaries run from the 9p host
//! root (`chroot /host`):
//!
//! 1. the virtio function is bound to vfio-pci; vdpad serves device `vo0` with
//!    `frontend = "vduse"`, `vdpa_driver = "vhost_vdpa"`, `mode = "offload"`,
//!    `fallback = false`: it creates the VDUSE device, attaches it to the vDPA bus
//!    (`/dev/vhost-vdpa-N`) and opens the function through VFIO;
//! 2. `vdpa-rig --vhost-vdpa /dev/vhost-vdpa-N verify` sends 10 000 numbered,
//!    checksummed frames: vhost-vdpa hands the rig's memory to VDUSE as IOTLB entries,
//!    vdpad maps each entry and DMA-maps it into the function's VFIO container at the
//!    same IOVA, and programs the rig's ring IOVAs into the NIC. The NIC reads every
//!    frame by DMA through the IOMMU, QEMU puts it on the host tap, a reflector in this
//!    test sends it back, the NIC writes it into the rig's RX buffers and raises MSI-X
//!    into an eventfd that vdpad turns into `VDUSE_VQ_INJECT_IRQ`. The rig checks every
//!    frame; the host checks the first frames it saw on the tap;
//! 3. vdpad restarts with device `vo1` (`mode = "auto"` on the same function,
//!    `fallback = true`, loopback behind it) and `vo2` (`mode = "auto"` on the e1000e):
//!    a verify through `vo1` runs offloaded; a second one asks for a ring that starts
//!    at index 1000, which this NIC cannot resume at (no ring-state registers), so the
//!    device falls back to software and the verify still passes; `vo2` is classified
//!    software (af_packet on the e1000e's interface) and a verify passes through it,
//!    reflected on the e1000e's tap.
//!
//! vdpad's log must show every IOTLB region it mapped DMA-mapped into the VFIO
//! container at the same IOVA and size, the NIC's queues programmed with the rig's
//! ring IOVAs, and the guest's kernel log no DMAR (IOMMU) fault.
//!
//! Needs the lab with the 6.12 guest (`sudo tests/lab/setup.sh`); run with
//! `cargo test -p vdpad-tests --test vduse_offload_nested -- --include-ignored --nocapture`.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use support::guest::{Guest, READY};
use support::lab::Lab;
use support::nested::{NestedGuest, GUEST_FUNCTIONS};
use support::netns::Netns;
use support::note;
use support::packet::Reflector;
use support::qmp::Qmp;
use support::rig_lines::{
    assert_tap_carried_verify, assert_verify, datapath_chosen, lines_with, log_field,
};
use support::tmp::TempDir;

/// Frames the offload verify sends (sizes over the whole Ethernet range).
const OFFLOAD_PACKETS: u64 = 10_000;
/// Frames each verify of the auto/fallback part sends.
const SHORT_PACKETS: u64 = 300;
/// The ring index the fallback verify starts at (the NIC can only start at 0).
const FALLBACK_INDEX: u16 = 1000;
/// Boot of the nested machine on 6.12 (TCG, IOMMU on).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Each step of the guest script.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

/// The guest side, each step bounded, results on the console and in /lab.
fn guest_script(vdpad: &Path, rig: &Path) -> String {
    format!(
        r#"{GUEST_FUNCTIONS}
VDPAD={vdpad}
RIG={rig}
H="chroot /host"
fail() {{ echo "VDUSE-HW-FAIL $*"; tail -n 40 /lab/vdpad-*.log 2>/dev/null; exit 1; }}
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
echo "VDUSE-HW-KERNEL $(uname -r)"
modprobe vduse || fail "modprobe vduse"
modprobe vhost_vdpa || fail "modprobe vhost_vdpa"
VN=$(bdf_of 0x1af4:0x1041) || fail "no virtio-net function"
E1=$(bdf_of 0x8086:0x10d3) || fail "no e1000e"
E1N=$(netdev_of $E1)
echo "VDPAD-HW-PCI virtio=$VN e1000e=$E1 netdev=$E1N"
bind_vfio $VN || fail "vfio-pci did not take $VN"
ip link set $E1N up
mkdir -p /host/run/vdpad-vo
# start_vdpad CONFIG LOG DEVICES...: vdpad in the background (VP), each device's
# /dev/vhost-vdpa-N in DEV_<name>.
start_vdpad() {{
  cfg=$1; log=$2; shift 2
  $H env NO_COLOR=1 $VDPAD --config $cfg > $log 2>&1 &
  VP=$!
  for d in "$@"; do
    wait_grep "attach with: /dev/vhost-vdpa-.* device=$d " $log 60 || fail "$d not attached"
    eval DEV_$d=$(grep "attach with: /dev/vhost-vdpa-.* device=$d " $log | tail -n 1 | sed 's/.*attach with: \(\/dev\/vhost-vdpa-[0-9]*\).*/\1/')
  done
}}
stop_vdpad() {{
  kill -USR1 $VP; sleep 1
  kill -TERM $VP; wait $VP
}}

# ---- 1. offload through VDUSE, no fallback
cat > /host/run/vo-offload.toml <<EOF
[daemon]
run_dir = "/run/vdpad-vo"
log_level = "info"

[[device]]
name = "vo0"
frontend = "vduse"
vdpa_driver = "vhost_vdpa"
mode = "offload"
pci = "$VN"
vm = "vduse-nested"
fallback = false
queue_size = 256
EOF
start_vdpad /run/vo-offload.toml /lab/vdpad-offload.log vo0
echo "VDUSE-HW-OFFLOAD-UP dev=$DEV_vo0 pid=$VP"
T0=$(date +%s)
$H /usr/bin/timeout 200 $RIG --vhost-vdpa $DEV_vo0 verify --packets {OFFLOAD_PACKETS} --size 60 --size-max 1514 --timeout 180 > /lab/rig-offload.log 2>&1
echo "VDUSE-HW-VERIFY rc=$? seconds=$(($(date +%s) - T0)) $(head -n 1 /lab/rig-offload.log)"
stop_vdpad
echo "VDUSE-HW-OFFLOAD-EXIT rc=$? left=$(ls /dev/vduse | grep -vc control)"

# ---- 1b. link state: the host takes the NIC's link down and up (QMP set_link on its
# netdev); vdpad reads the NIC's config interrupt and tells the driver through VDUSE's
# config interrupt; the rig, a vhost-vdpa driver, watches its config space
sed -e 's/^name = "vo0"/name = "vl0"/' /host/run/vo-offload.toml > /host/run/vo-link.toml
start_vdpad /run/vo-link.toml /lab/vdpad-link.log vl0
$H /usr/bin/timeout 200 $RIG --vhost-vdpa $DEV_vl0 link --changes 2 --timeout 180 > /lab/rig-link.log 2>&1 &
RP=$!
wait_grep "link: watching" /lab/rig-link.log 60
echo "VDUSE-LINK-READY rc=$? $(head -n 1 /lab/rig-link.log)"
wait_file /lab/link-down 120 || fail "the host never took the link down"
wait_grep "link: down" /lab/rig-link.log 60
echo "VDUSE-LINK-DOWN rc=$? $(tail -n 1 /lab/rig-link.log)"
wait_file /lab/link-up 120 || fail "the host never took the link up"
wait $RP
echo "VDUSE-LINK-UP rc=$? $(tail -n 1 /lab/rig-link.log)"
stop_vdpad
echo "VDUSE-LINK-EXIT rc=$?"

# ---- 2. auto mode: offload with a software fallback on the virtio function,
# software (af_packet) on the e1000e
cat > /host/run/vo-auto.toml <<EOF
[daemon]
run_dir = "/run/vdpad-vo"
log_level = "info"

[[device]]
name = "vo1"
frontend = "vduse"
vdpa_driver = "vhost_vdpa"
mode = "auto"
pci = "$VN"
vm = "vduse-nested"
fallback = true
backend = "loopback"
queue_size = 256

[[device]]
name = "vo2"
frontend = "vduse"
vdpa_driver = "vhost_vdpa"
mode = "auto"
pci = "$E1"
EOF
start_vdpad /run/vo-auto.toml /lab/vdpad-auto.log vo1 vo2
echo "VDUSE-HW-AUTO-UP vo1=$DEV_vo1 vo2=$DEV_vo2 pid=$VP"
$H /usr/bin/timeout 120 $RIG --vhost-vdpa $DEV_vo1 verify --packets {SHORT_PACKETS} --size 60 --size-max 1514 --timeout 100 > /lab/rig-vo1.log 2>&1
echo "VDUSE-HW-AUTO-VERIFY dev=vo1 rc=$? $(head -n 1 /lab/rig-vo1.log)"
$H /usr/bin/timeout 120 $RIG --vhost-vdpa $DEV_vo1 --initial-index {FALLBACK_INDEX} verify --packets {SHORT_PACKETS} --size 60 --size-max 1514 --timeout 100 > /lab/rig-vo1-fb.log 2>&1
echo "VDUSE-HW-FALLBACK-VERIFY dev=vo1 rc=$? $(head -n 1 /lab/rig-vo1-fb.log)"
$H /usr/bin/timeout 120 $RIG --vhost-vdpa $DEV_vo2 verify --packets {SHORT_PACKETS} --size 60 --size-max 1514 --timeout 100 > /lab/rig-vo2.log 2>&1
echo "VDUSE-HW-AUTO-VERIFY dev=vo2 rc=$? $(head -n 1 /lab/rig-vo2.log)"
stop_vdpad
echo "VDUSE-HW-AUTO-EXIT rc=$? left=$(ls /dev/vduse | grep -vc control)"
echo "VDUSE-HW-DMAR-FAULTS $(dmesg | grep -c -E 'DMAR: \[DMA|DRHD: handling fault')"
dmesg | grep -iE 'vduse|vfio|DMAR: \[|handling fault' | tail -n 12
echo "VDUSE-HW-DONE"
"#,
        vdpad = vdpad.display(),
        rig = rig.display(),
    )
}

/// `(iova, size)` of every log line containing `what`, as logged (`0x...`).
fn regions<'a>(log: &'a str, what: &str) -> Vec<(&'a str, &'a str)> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| Some((log_field(l, "iova")?, log_field(l, "size")?)))
        .collect()
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn vhost_vdpa_frontend_offloaded_through_vduse_to_a_real_vfio_nic() {
    let t0 = Instant::now();
    let lab = Lab::require_6_12();
    let rig = Path::new(support::bins::vdpa_rig());
    let vdpad = Path::new(support::bins::vdpad());
    note(
        t0,
        &format!("vdpad {}, vdpa-rig {}", vdpad.display(), rig.display()),
    );
    let dir = TempDir::new("vduse-hw");
    let ns = Netns::new();
    ns.exec("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    ns.exec("sysctl", &["-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    let machine = NestedGuest::new(&lab, "vdo");
    machine.create_taps(&ns);
    let virtio_refl = Reflector::start(&ns, &machine.virtio.tap, 64);
    let e1000e_refl = Reflector::start(&ns, &machine.e1000e.tap, 0);

    let mut config = machine
        .guest_config(&guest_script(vdpad, rig), &ns)
        .kernel_6_12();
    config.limit = Duration::from_secs(900);
    let qmp_path = dir.join("qmp.sock");
    let config = config.qemu_args([
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", qmp_path.display()),
    ]);
    let mut guest = Guest::boot(&lab, dir.path(), config);
    guest.wait_noted(t0, READY, BOOT_TIMEOUT);
    let ctx = |g: &Guest, log: &str| {
        format!(
            "{}{}",
            g.tail(),
            support::log_tail(&g.share().join(log), 60)
        )
    };
    let kernel = guest.wait_for("VDUSE-HW-KERNEL", STEP_TIMEOUT);
    assert!(kernel.contains(" 6.12"), "{kernel}");
    let vfio = guest.wait_noted(t0, "VDPAD-HW-VFIO ", STEP_TIMEOUT);
    assert!(vfio.contains("driver=vfio-pci"), "{vfio}{}", guest.tail());
    guest.wait_noted(t0, "VDUSE-HW-OFFLOAD-UP", STEP_TIMEOUT);

    // 1. rig -> vhost-vdpa -> VDUSE -> vdpad (offload) -> NIC DMA -> tap -> reflector.
    let verify = guest.wait_noted(t0, "VDUSE-HW-VERIFY ", STEP_TIMEOUT);
    assert_verify(
        &verify,
        OFFLOAD_PACKETS,
        "offload through VDUSE",
        &ctx(&guest, "vdpad-offload.log"),
    );
    assert_tap_carried_verify(t0, &virtio_refl, OFFLOAD_PACKETS);
    let exit = guest.wait_noted(t0, "VDUSE-HW-OFFLOAD-EXIT", STEP_TIMEOUT);

    // 1b. The NIC's link down and up, seen by the kernel's virtio_net on the VDUSE device.
    let ready = guest.wait_noted(t0, "VDUSE-LINK-READY", STEP_TIMEOUT);
    assert!(
        ready.contains("rc=0 link: watching (up)"),
        "{ready}{}",
        ctx(&guest, "vdpad-link.log")
    );
    let mut qmp = Qmp::connect(&qmp_path, Duration::from_secs(10));
    let set_link = |qmp: &mut Qmp, up: bool| {
        qmp.execute("set_link", json!({"name": "hwv", "up": up}));
    };
    set_link(&mut qmp, false);
    std::fs::write(guest.share().join("link-down"), b"1\n").expect("write /lab/link-down");
    let down = guest.wait_noted(t0, "VDUSE-LINK-DOWN", STEP_TIMEOUT);
    set_link(&mut qmp, true);
    std::fs::write(guest.share().join("link-up"), b"1\n").expect("write /lab/link-up");
    let up = guest.wait_noted(t0, "VDUSE-LINK-UP", STEP_TIMEOUT);
    let link_exit = guest.wait_noted(t0, "VDUSE-LINK-EXIT", STEP_TIMEOUT);

    // 2. auto mode and the software fallback.
    guest.wait_noted(t0, "VDUSE-HW-AUTO-UP", STEP_TIMEOUT);
    let vo1 = guest.wait_noted(t0, "VDUSE-HW-AUTO-VERIFY dev=vo1", STEP_TIMEOUT);
    let reflected_offload = virtio_refl.reflected();
    let fb = guest.wait_noted(t0, "VDUSE-HW-FALLBACK-VERIFY", STEP_TIMEOUT);
    let vo2 = guest.wait_noted(t0, "VDUSE-HW-AUTO-VERIFY dev=vo2", STEP_TIMEOUT);
    let auto_exit = guest.wait_noted(t0, "VDUSE-HW-AUTO-EXIT", STEP_TIMEOUT);
    let faults = guest.wait_for("VDUSE-HW-DMAR-FAULTS", STEP_TIMEOUT);
    guest.wait_for("VDUSE-HW-DONE", STEP_TIMEOUT);
    let rc = guest.wait_exit(Duration::from_secs(60));
    let wall = t0.elapsed();

    let share = |name: &str| support::read_log(&guest.share().join(name));
    let offload_log = share("vdpad-offload.log");
    let auto_log = share("vdpad-auto.log");
    let link_log = share("vdpad-link.log");
    let key = [
        "datapath chosen",
        "attach with",
        "VDUSE IOTLB region mapped",
        "virtqueue ready",
        "vfio: function opened",
        "offload: DMA mapped",
        "offload: MSI-X routed",
        "offload: queue enabled",
        "offload: DRIVER_OK",
        "offload: reset",
        "falling back",
        "fallback",
        "queue stats",
    ];
    eprintln!("\n===== vdpad (VDUSE + offload, the NIC's link down and up) =====");
    for l in lines_with(&link_log, &["link", "attach with", "DRIVER_OK"]) {
        eprintln!("{l}");
    }
    assert!(
        down.contains("rc=0 link: down"),
        "the driver did not see the NIC's link go down: {down}\n{link_log}"
    );
    assert!(up.contains("rc=0 link: up"), "{up}\n{link_log}");
    assert!(link_exit.contains("rc=0"), "{link_exit}\n{link_log}");
    for what in [
        "link down (the datapath's NIC says so)",
        "link up (the datapath's NIC says so)",
    ] {
        assert!(link_log.contains(what), "{what:?} not logged:\n{link_log}");
    }
    eprintln!("\n===== vdpad (VDUSE + offload, real VFIO) =====");
    for l in lines_with(&offload_log, &key) {
        eprintln!("{l}");
    }
    eprintln!(
        "===== vdpa-rig =====\n{}",
        share("rig-offload.log").trim_end()
    );
    eprintln!("===== vdpad (VDUSE, auto) =====");
    for l in lines_with(&auto_log, &key) {
        eprintln!("{l}");
    }
    eprintln!("===== end (wall time {:.1} s) =====\n", wall.as_secs_f64());

    assert_eq!(rc, 0, "guest script failed{}", guest.tail());
    assert!(
        exit.contains("rc=0") && exit.ends_with("left=0"),
        "{exit}\n{offload_log}"
    );
    let need = |log: &str, what: &str| {
        assert!(
            log.contains(what),
            "{what:?} expected in the vdpad log:\n{log}"
        );
    };
    need(&offload_log, "mode=\"offload\"");
    need(&offload_log, "vfio: function opened");
    need(&offload_log, "offload: MSI-X routed");
    need(&offload_log, "offload: queue enabled device=vo0 ring=0");
    need(&offload_log, "offload: queue enabled device=vo0 ring=1");
    need(&offload_log, "offload: DRIVER_OK");
    assert!(
        !offload_log.contains("falling back"),
        "offload fell back:\n{offload_log}"
    );
    // Every IOTLB region vdpad mapped is DMA-mapped at the same IOVA, as the driver
    // sees it, and nothing else is.
    let iotlb = regions(&offload_log, "VDUSE IOTLB region mapped");
    let dma = regions(&offload_log, "offload: DMA mapped");
    assert!(!iotlb.is_empty(), "no IOTLB region logged:\n{offload_log}");
    for r in &iotlb {
        assert!(
            dma.contains(r),
            "IOTLB region {r:?} was not DMA-mapped:\n{offload_log}"
        );
    }
    for r in &dma {
        assert!(
            iotlb.contains(r),
            "DMA map {r:?} is not an IOTLB region:\n{offload_log}"
        );
    }
    need(
        &offload_log,
        "offload: DMA mapped (IOVA = the driver's IOVA",
    );
    // The NIC runs the rings at the IOVAs the driver gave VDUSE.
    for l in lines_with(&offload_log, &["virtqueue ready"]) {
        let desc = log_field(l, "desc").expect("desc");
        assert!(
            offload_log
                .lines()
                .any(|o| o.contains("offload: queue enabled") && log_field(o, "desc") == Some(desc)),
            "ring at {desc} (from VDUSE) not programmed into the NIC:\n{offload_log}"
        );
    }

    // Auto mode: offload on the virtio function until the NIC cannot serve a ring,
    // then software; software on the e1000e from the start.
    let c1 = datapath_chosen(&auto_log, "vo1");
    assert!(
        c1.contains("mode=\"offload\"") && c1.contains("auto: "),
        "{c1}"
    );
    let c2 = datapath_chosen(&auto_log, "vo2");
    assert!(
        c2.contains("mode=\"software\"") && c2.contains("is not a virtio device"),
        "{c2}"
    );
    assert_verify(
        &vo1,
        SHORT_PACKETS,
        "vo1 (auto, offload)",
        &format!("\n{auto_log}"),
    );
    assert!(
        reflected_offload >= OFFLOAD_PACKETS + SHORT_PACKETS,
        "vo1's frames did not go through the NIC: the virtio tap reflected {reflected_offload}"
    );
    assert_verify(
        &fb,
        SHORT_PACKETS,
        "vo1 (fallback)",
        &format!("\n{auto_log}"),
    );
    need(&auto_log, "cannot resume at avail index 1000");
    assert_eq!(
        virtio_refl.reflected(),
        reflected_offload,
        "after the fallback no frame may reach the NIC"
    );
    assert_verify(
        &vo2,
        SHORT_PACKETS,
        "vo2 (auto, software)",
        &format!("\n{auto_log}"),
    );
    assert!(
        e1000e_refl.reflected() >= SHORT_PACKETS,
        "the e1000e tap saw {} frames",
        e1000e_refl.reflected()
    );
    assert!(
        auto_exit.contains("rc=0") && auto_exit.ends_with("left=0"),
        "{auto_exit}"
    );
    assert!(
        faults.ends_with(" 0"),
        "IOMMU faults in the guest: {faults}{}",
        guest.tail()
    );
    note(t0, "done");
}
