//! QEMU's `-netdev vhost-vdpa` on vdpad's VDUSE device, inside the lab guest: a VM in
//! a VM, both under TCG (the lab has no KVM). A manual experiment, not part of CI
//! (`test = false` in tests/Cargo.toml: `cargo test --workspace` neither builds nor
//! runs it); docs/vhost-vdpa.md records what one run did and how long it took.
//!
//! The lab guest boots the 6.12 kernel and runs vdpad with one VDUSE device (`vhv0`,
//! tap backend `vqt0` at 192.0.2.1/24) bound to `vhost_vdpa`. Then the host's QEMU
//! (`chroot /host`) boots the lab's small 6.1 guest inside it, with its memory a shared
//! memfd and its NIC `-netdev vhost-vdpa,vhostdev=/dev/vhost-vdpa-N` plus
//! `virtio-net-pci`. The inner guest's script gives `eth0` 192.0.2.2/24 and pings the
//! tap. The test prints the inner guest's boot time and ping results and asserts 0 %
//! loss; it may take many minutes.
//!
//! Run (needs the lab with the 6.12 guest):
//! `cargo test -p vdpad-tests --test vduse_qemu_nested -- --include-ignored --nocapture`.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::guest::{Guest, GuestConfig, READY};
use support::lab::Lab;
use support::nested::{NestedGuest, GUEST_FUNCTIONS};
use support::netns::Netns;
use support::note;
use support::tmp::TempDir;

/// How long the inner VM may take, boot and pings together.
const INNER_LIMIT: Duration = Duration::from_secs(1500);
/// Pings the inner guest sends.
const PINGS: u32 = 10;

/// The inner guest's script (run by the lab initramfs's init from its `lab` share).
fn inner_script() -> String {
    format!(
        r#"read -r up _ </proc/uptime
echo "INNER-SCRIPT uptime=$up"
ip link set eth0 up
ip addr add 192.0.2.2/24 dev eth0
ping -c {PINGS} -W 10 192.0.2.1 > /lab/ping.log 2>&1
rc=$?
read -r up _ </proc/uptime
echo "INNER-PING rc=$rc uptime=$up $(grep -E 'transmitted|round-trip' /lab/ping.log | tr '\n' ' ')"
cat /lab/ping.log
"#
    )
}

/// How vdpad serves the inner VM's NIC.
struct Serving {
    /// Shell run before vdpad starts (sets variables the device keys use).
    prepare: &'static str,
    /// The device's datapath keys.
    device: &'static str,
    /// Shell run once the device is on the bus (the ping target's address).
    attached: &'static str,
}

/// vdpad's tap in the lab guest is the ping target.
const SOFTWARE: Serving = Serving {
    prepare: "",
    device: "backend = \"tap\"\ntap_name = \"vqt0\"",
    attached: "ip addr add 192.0.2.1/24 dev vqt0\nip link set vqt0 up",
};

/// The nested VFIO lab's virtio function, bound to vfio-pci, carries the rings; the
/// ping target is the test's namespace behind the function's host tap.
const OFFLOAD: Serving = Serving {
    prepare: "VN=$(bdf_of 0x1af4:0x1041) || fail \"no virtio-net function\"\n\
              bind_vfio $VN || fail \"vfio-pci did not take $VN\"",
    device: "mode = \"offload\"\npci = \"$VN\"\nvm = \"inner\"\nfallback = false",
    attached: "",
};

fn guest_script(lab: &Lab, vdpad: &Path, serving: &Serving) -> String {
    let limit = INNER_LIMIT.as_secs();
    format!(
        r#"{GUEST_FUNCTIONS}
H="chroot /host"
fail() {{ echo "VQ-FAIL $*"; tail -n 30 /lab/vdpad.log; exit 1; }}
up() {{ read -r u _ </proc/uptime; echo $u; }}
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
modprobe vduse || fail "modprobe vduse"
modprobe vhost_vdpa || fail "modprobe vhost_vdpa"
mkdir -p /host/run/vdpad-vq /host/run/inner
{prepare}
cat > /host/run/vq.toml <<EOF
[daemon]
run_dir = "/run/vdpad-vq"
log_level = "info"

[[device]]
name = "vhv0"
frontend = "vduse"
vdpa_driver = "vhost_vdpa"
mac = "52:54:00:00:0e:02"
{device}
EOF
$H env NO_COLOR=1 RUST_LOG=info,vdpa::vduse::iotlb=debug {vdpad} --config /run/vq.toml > /lab/vdpad.log 2>&1 &
VP=$!
wait_grep "attach with: /dev/vhost-vdpa-" /lab/vdpad.log 60 || fail "not attached"
VDEV=$(sed -n 's/.*attach with: \(\/dev\/vhost-vdpa-[0-9]*\).*/\1/p' /lab/vdpad.log | tail -n 1)
{attached}
cat > /host/run/inner/inner.sh <<'EOF'
{inner}
EOF
echo "VQ-INNER-START vhost=$VDEV outer_uptime=$(up)"
$H /usr/bin/timeout {limit} {qemu} -machine q35,memory-backend=mem -accel tcg -smp 1 -m 256M \
  -object memory-backend-memfd,id=mem,size=256M,share=on \
  -nodefaults -display none -serial file:/run/inner/console.log -no-reboot \
  -kernel {kernel} -initrd {initrd} \
  -append "console=ttyS0 quiet panic=-1 lab.script=/lab/inner.sh lab.nomod=vfio,vfio_pci,vfio_iommu_type1,e1000e,igb,tun" \
  -virtfs local,path=/run/inner,mount_tag=lab,security_model=none \
  -netdev vhost-vdpa,id=n0,vhostdev=$VDEV \
  -device virtio-net-pci,netdev=n0,mac=52:54:00:00:0e:02,romfile= > /lab/inner-qemu.log 2>&1 &
QP=$!
seen_ready=0
while kill -0 $QP 2>/dev/null; do
  if [ $seen_ready = 0 ] && grep -q VDPAD-GUEST-READY /host/run/inner/console.log 2>/dev/null; then
    echo "VQ-INNER-READY outer_uptime=$(up) $(grep VDPAD-GUEST-READY /host/run/inner/console.log)"
    seen_ready=1
  fi
  sleep 2
done
wait $QP
echo "VQ-INNER-EXIT rc=$? outer_uptime=$(up)"
cp /host/run/inner/console.log /lab/inner-console.log
grep -E "INNER-|VDPAD-GUEST" /lab/inner-console.log
tail -n 5 /lab/inner-qemu.log
kill -USR1 $VP; sleep 1
kill -TERM $VP; wait $VP
echo "VQ-DONE"
"#,
        vdpad = vdpad.display(),
        prepare = serving.prepare,
        device = serving.device,
        attached = serving.attached,
        inner = inner_script(),
        qemu = lab.qemu.display(),
        kernel = lab.kernel.display(),
        initrd = lab.initrd.display(),
    )
}

/// Boots the lab guest with `config` (its script from [`guest_script`]), waits for the
/// inner VM, prints what happened and checks that all pings came back; returns
/// vdpad's log.
fn run(t0: Instant, lab: &Lab, dir: &Path, config: GuestConfig) -> String {
    // The host's QEMU needs more than QEMU's default TCG CPU model; the inner VM's
    // 256 MiB and QEMU itself live in the outer guest's memory.
    let mut config = config.kernel_6_12().qemu_args(["-cpu", "max"]);
    config.mem_mib = 2048;
    config.limit = INNER_LIMIT + Duration::from_secs(300);
    let mut guest = Guest::boot(lab, dir, config);
    let ready = guest.wait_for(READY, Duration::from_secs(180));
    note(t0, &format!("outer guest: {ready}"));
    let start = guest.wait_for("VQ-INNER-START", Duration::from_secs(180));
    note(t0, &format!("outer guest: {start}"));
    let inner_t0 = Instant::now();
    let inner_ready = guest.try_wait_for("VQ-INNER-READY", INNER_LIMIT);
    note(
        t0,
        &format!(
            "inner guest ready after {:.0} s: {inner_ready:?}",
            inner_t0.elapsed().as_secs_f64()
        ),
    );
    let exit = guest.wait_for("VQ-INNER-EXIT", INNER_LIMIT);
    note(
        t0,
        &format!(
            "inner guest done after {:.0} s: {exit}",
            inner_t0.elapsed().as_secs_f64()
        ),
    );
    guest.wait_for("VQ-DONE", Duration::from_secs(120));
    let share = |name: &str| support::read_log(&guest.share().join(name));
    let console = share("inner-console.log");
    eprintln!("===== inner guest console =====\n{}", console.trim_end());
    eprintln!(
        "===== inner QEMU =====\n{}",
        share("inner-qemu.log").trim_end()
    );
    let log = share("vdpad.log");
    eprintln!(
        "===== vdpad =====\n{}",
        support::rig_lines::lines_with(
            &log,
            &[
                "VDUSE",
                "IOTLB entry",
                "virtqueue ready",
                "attach with",
                "offload:",
                "vfio: DMA",
                "datapath chosen",
                "queue stats"
            ]
        )
        .join("\n")
    );
    eprintln!("===== wall time {:.0} s =====", t0.elapsed().as_secs_f64());
    let ping = console
        .lines()
        .find(|l| l.contains("INNER-PING"))
        .unwrap_or_else(|| panic!("the inner guest did not ping:\n{console}{}", guest.tail()));
    assert!(
        ping.contains("rc=0") && ping.contains(&format!("{PINGS} packets received")),
        "{ping}"
    );
    log
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh (manual: many minutes)"]
fn qemu_vhost_vdpa_guest_pings_through_vdpad_inside_the_lab_guest() {
    let t0 = Instant::now();
    let lab = Lab::require_6_12();
    let vdpad = Path::new(support::bins::vdpad());
    let dir = TempDir::new("vduse-qemu");
    let config = GuestConfig::new(&guest_script(&lab, vdpad, &SOFTWARE));
    run(t0, &lab, dir.path(), config);
}

/// The issue's whole chain: QEMU → vhost-vdpa → VDUSE → vdpad → a VFIO NIC that DMAs
/// the inner VM's rings and buffers at the IOVAs QEMU gave VDUSE.
#[test]
#[ignore = "needs the lab: tests/lab/setup.sh (manual: many minutes)"]
fn qemu_vhost_vdpa_guest_pings_through_offload_to_a_real_vfio_nic() {
    let t0 = Instant::now();
    let lab = Lab::require_6_12();
    let vdpad = Path::new(support::bins::vdpad());
    let dir = TempDir::new("vduse-qemu-hw");
    let ns = Netns::new();
    let machine = NestedGuest::new(&lab, "vqo");
    machine.create_taps(&ns);
    ns.addr(&machine.virtio.tap, "192.0.2.1/24");
    let config = machine.guest_config(&guest_script(&lab, vdpad, &OFFLOAD), &ns);
    let log = run(t0, &lab, dir.path(), config);
    for what in [
        "mode=\"offload\"",
        "offload: DMA mapped (IOVA = the driver's IOVA",
        "offload: DRIVER_OK",
    ] {
        assert!(
            log.contains(what),
            "{what:?} expected in the vdpad log:\n{log}"
        );
    }
    assert!(!log.contains("falling back"), "offload fell back:\n{log}");
    // QEMU hands VDUSE the firmware areas that SeaBIOS locked (PAM) as entries the
    // device may only read (perm=1): vdpad maps them copy-on-write, and the NIC gets
    // a shared read-only view of the same memory, read-only in the IOMMU too.
    let read_only: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("offload: DMA mapped") && l.contains("access=read-only"))
        .collect();
    assert!(
        log.contains("perm=1") && !read_only.is_empty(),
        "no read-only IOTLB entry DMA-mapped read-only:\n{log}"
    );
    assert!(log.contains("vfio: DMA mapped read-only"), "{log}");
}
