//! The lab's 6.12 guest, ready for vdpad's VDUSE frontend.
//!
//! * `guest_6_12_has_vduse_and_the_vdpa_bus_drivers` (lab): boots bookworm-backports'
//!   6.12 kernel (virtio-net over VDUSE needs Linux >= 6.8; the lab's 6.1 cannot) and
//!   checks that the guest script can load `vduse`, `virtio_vdpa` and `vhost_vdpa`,
//!   that `/dev/vduse/control` appears, and that the kernel's vDPA management
//!   interface lists the `vduse` management device with the net class — through
//!   iproute2's `vdpa mgmtdev show` and through `vdpad::vdpa_netlink` (its
//!   `vdpa_netlink` example, run from the host root). With no VDUSE device yet, the
//!   client's error paths are checked against the real kernel: `dev add` of a name
//!   VDUSE does not know, `dev add` on a management device that does not exist (with
//!   the kernel's extended-ack message), `dev get` and `dev del` of a missing device.
//!
//! Run: `cargo test -p vdpad --test vduse_lab -- --include-ignored --nocapture`.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::guest::{Guest, GuestConfig, READY};
use support::lab::{Lab, HOWTO};
use support::note;
use support::tmp::TempDir;

/// iproute2's vdpa tool on the host (run in the guest through `chroot /host`).
const IPROUTE2_VDPA: &str = "/usr/sbin/vdpa";

/// The guest script: every check writes `<name>.out` (stdout and stderr) and
/// `<name>.rc` on the share, each command bounded by busybox `timeout`.
fn guest_script(netlink_bin: &Path) -> String {
    format!(
        r#"
run() {{ name=$1; shift; timeout 60 "$@" >/lab/$name.out 2>&1; echo $? >/lab/$name.rc; }}
uname -r >/lab/uname.out
run modprobe-vduse modprobe vduse
run modprobe-virtio_vdpa modprobe virtio_vdpa
run modprobe-vhost_vdpa modprobe vhost_vdpa
if [ -c /dev/vduse/control ]; then echo present; else echo missing; fi >/lab/control.out
cat /proc/modules >/lab/modules.out
run iproute2-mgmtdev chroot /host {vdpa} mgmtdev show
run nl-mgmtdev chroot /host {nl} mgmtdev
run nl-dev chroot /host {nl} dev
run nl-add-unknown chroot /host {nl} dev-add vdpadt-nosuch vduse
run nl-add-nomgmt chroot /host {nl} dev-add vdpadt-x vdpadt-nomgmt
run nl-get-missing chroot /host {nl} dev-get vdpadt-nosuch
run nl-del-missing chroot /host {nl} dev-del vdpadt-nosuch
echo VDPAD-VDUSE-DONE
"#,
        vdpa = IPROUTE2_VDPA,
        nl = netlink_bin.display(),
    )
}

/// A guest result: the text of `<name>.out` and the status in `<name>.rc`.
struct Outcome {
    out: String,
    rc: i32,
}

fn outcome(share: &Path, name: &str) -> Outcome {
    let out = std::fs::read_to_string(share.join(format!("{name}.out")))
        .unwrap_or_else(|e| panic!("guest left no {name}.out: {e}"));
    let rc = std::fs::read_to_string(share.join(format!("{name}.rc")))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("guest left no {name}.rc; output: {out}"));
    Outcome { out, rc }
}

/// Asserts a client call failed with errno `want` (the example's `error errno=N`
/// line) and returns its error line.
fn expect_errno(share: &Path, name: &str, want: i32, want_name: &str) -> String {
    let o = outcome(share, name);
    assert_eq!(
        o.rc, 1,
        "{name}: expected a failure, got rc {}: {}",
        o.rc, o.out
    );
    let line = o
        .out
        .lines()
        .find(|l| l.starts_with("error errno="))
        .unwrap_or_else(|| panic!("{name}: no error line in {:?}", o.out))
        .to_string();
    assert!(
        line.starts_with(&format!("error errno={want} ({want_name}): ")),
        "{name}: expected errno {want} ({want_name}): {line}"
    );
    line
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn guest_6_12_has_vduse_and_the_vdpa_bus_drivers() {
    let start = Instant::now();
    let lab = Lab::require_6_12();
    assert!(
        Path::new(IPROUTE2_VDPA).is_file(),
        "{IPROUTE2_VDPA} missing (package iproute2); {HOWTO}"
    );
    let nl = std::path::Path::new(support::bins::vdpa_netlink_example());
    note(start, &format!("vdpa_netlink example: {}", nl.display()));
    let dir = TempDir::new("vduse-lab");
    let config = GuestConfig::new(&guest_script(nl)).kernel_6_12();
    let mut guest = Guest::boot(&lab, dir.path(), config);
    let ready = guest.wait_for(READY, Duration::from_secs(180));
    note(start, &ready);
    guest.wait_for("VDPAD-VDUSE-DONE", Duration::from_secs(180));
    let rc = guest.wait_exit(Duration::from_secs(30));
    note(start, &format!("guest script exited {rc}"));
    assert_eq!(rc, 0, "guest script failed{}", guest.tail());
    let share = guest.share().to_path_buf();

    let uname = std::fs::read_to_string(share.join("uname.out")).expect("uname.out");
    println!("RESULT uname -r: {}", uname.trim());
    assert!(uname.starts_with("6.12."), "guest runs {uname:?}, not 6.12");
    for m in ["vduse", "virtio_vdpa", "vhost_vdpa"] {
        let o = outcome(&share, &format!("modprobe-{m}"));
        println!("RESULT modprobe {m}: rc={}", o.rc);
        assert_eq!(o.rc, 0, "modprobe {m} failed in the guest: {}", o.out);
    }
    let modules = std::fs::read_to_string(share.join("modules.out")).expect("modules.out");
    for m in [
        "vdpa",
        "vduse",
        "virtio_vdpa",
        "vhost_vdpa",
        "vhost",
        "vhost_iotlb",
    ] {
        assert!(
            modules
                .lines()
                .any(|l| l.split_whitespace().next() == Some(m)),
            "module {m} not loaded in the guest:\n{modules}"
        );
    }
    let control = std::fs::read_to_string(share.join("control.out")).expect("control.out");
    println!("RESULT /dev/vduse/control: {}", control.trim());
    assert_eq!(control.trim(), "present", "/dev/vduse/control");

    // iproute2 and our client see the same management device.
    let ip = outcome(&share, "iproute2-mgmtdev");
    for l in ip.out.lines() {
        println!("RESULT iproute2 vdpa mgmtdev show: {l}");
    }
    assert_eq!(ip.rc, 0, "vdpa mgmtdev show failed: {}", ip.out);
    assert!(
        ip.out.lines().any(|l| l.starts_with("vduse:")),
        "iproute2 lists no vduse management device:\n{}",
        ip.out
    );
    let ours = outcome(&share, "nl-mgmtdev");
    for l in ours.out.lines() {
        println!("RESULT vdpa_netlink mgmtdev: {l}");
    }
    assert_eq!(ours.rc, 0, "vdpa_netlink mgmtdev failed: {}", ours.out);
    let vduse = ours
        .out
        .lines()
        .find(|l| l.starts_with("mgmtdev vduse "))
        .unwrap_or_else(|| panic!("vdpa_netlink lists no vduse:\n{}", ours.out));
    assert!(
        vduse.contains(" net=true "),
        "the 6.12 vduse management device must offer the net class: {vduse}"
    );
    // Same set of handles: iproute2 prints "HANDLE:" on an unindented line
    // (`pci/0000:03:00.2:`), ours "mgmtdev HANDLE ...".
    let mut theirs: Vec<&str> = ip
        .out
        .lines()
        .filter(|l| !l.starts_with(char::is_whitespace) && !l.trim().is_empty())
        .map(|l| l.trim_end().strip_suffix(':').unwrap_or(l))
        .collect();
    let mut mine: Vec<&str> = ours
        .out
        .lines()
        .filter_map(|l| l.strip_prefix("mgmtdev "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    theirs.sort_unstable();
    mine.sort_unstable();
    assert_eq!(
        mine, theirs,
        "vdpa_netlink and iproute2 list different management devices"
    );

    // No vDPA device exists yet.
    let devs = outcome(&share, "nl-dev");
    assert_eq!(
        (devs.rc, devs.out.trim()),
        (0, ""),
        "vdpa_netlink dev: expected no devices"
    );
    // Error paths against the real kernel. vduse's dev_add refuses a name it has no
    // (ready) VDUSE device for with EINVAL (vduse_dev.c, vdpa_dev_add).
    let e = expect_errno(&share, "nl-add-unknown", libc::EINVAL, "EINVAL");
    println!("RESULT dev-add of an unknown VDUSE name: {e}");
    assert!(e.contains("VDPA_CMD_DEV_NEW"), "{e}");
    // vdpa.c looks the management device up first: ENODEV with an extended ack.
    let e = expect_errno(&share, "nl-add-nomgmt", libc::ENODEV, "ENODEV");
    println!("RESULT dev-add on a missing mgmtdev: {e}");
    assert!(
        // 6.12 says "management device", older kernels "mgmt device".
        e.contains(": vdpa: Fail to find the specified m"),
        "the kernel's extended ack message is missing: {e}"
    );
    let e = expect_errno(&share, "nl-get-missing", libc::ENODEV, "ENODEV");
    println!("RESULT dev-get of a missing device: {e}");
    let e = expect_errno(&share, "nl-del-missing", libc::ENODEV, "ENODEV");
    println!("RESULT dev-del of a missing device: {e}");
    note(start, "done");
}
