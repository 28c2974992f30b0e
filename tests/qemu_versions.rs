//! The QEMU options vdpad prints, on the QEMU releases operators run: Debian 12's own
//! QEMU 7.2 (`tests/lab/setup.sh` unpacks it into `<lab>/qemu-7.2`, beside the lab's
//! QEMU 10) and QEMU 10.
//!
//! For each release the lab's Linux guest boots (TCG, memfd `share=on`) with exactly
//! the NIC options `vdpad::qemu::nic_options` gives for that release (the ones vdpad
//! logs as `attach with`; before QEMU 9.2 the chardev reconnects with `reconnect=1`,
//! from 9.2 on with `reconnect-ms=1000`) for a two-pair tap device of vdpad running in
//! a test namespace. Then:
//!
//! * the guest pings the namespace and the namespace pings the guest, 0 % loss;
//! * (QEMU 7.2 under TCG gets `vectors=0`: see [`tcg_msix_workaround`])
//! * with both queue pairs enabled in the guest (`ethtool -L eth0 combined 2`; with MSI-X,
//!   vectors for every queue), pings still get through;
//! * vdpad is killed (SIGKILL) and started again: the guest's pings fail while it is
//!   gone, and come back without a guest reboot once QEMU has reconnected with the
//!   release's reconnect option (one `VDPAD-GUEST-READY` on the console).
//!
//! Needs the lab (`sudo tests/lab/setup.sh`, root); run with
//! `cargo test -p vdpad-tests --test qemu_versions -- --include-ignored --nocapture --test-threads=1`.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use vdpad::qemu::QemuVersion;

use support::guest::{Guest, GuestConfig, READY};
use support::guest_shell::{shell_script, GuestShell};
use support::lab::{qemu_version, Lab};
use support::note;
use support::tapnet::{
    assert_no_loss, logs, ping_from_guest, restart_vdpad_under, tap_device, TapNet, GUEST_NET_SETUP,
};
use support::tmp::TempDir;

/// Boot to the guest's command loop.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long connectivity may take to come back after vdpad restarts.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// QEMU 7.2 under TCG (the lab has no KVM) crashes with a NULL pointer in
/// `msix_set_vector_notifiers` when a vhost-user virtio-net device with MSI-X starts
/// (its vector notifiers expect KVM's irqfds); `vectors=0` gives the device legacy
/// interrupts instead. QEMU 10 needs nothing.
fn tcg_msix_workaround(mut nic: Vec<String>, version: QemuVersion) -> Vec<String> {
    if version.major == 7 {
        let device = nic.last_mut().expect("nic_options ends with the device");
        let kept: Vec<&str> = device
            .split(',')
            .filter(|p| !p.starts_with("vectors="))
            .collect();
        *device = format!("{},vectors=0", kept.join(","));
    }
    nic
}

/// The scenario of the module documentation with `qemu`.
fn guest_pings_through_vdpad(tag: &str, lab: &Lab, qemu: &Path) {
    let t0 = Instant::now();
    let version = qemu_version(qemu).unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new(tag);
    let mut net = TapNet::start(dir.path(), tap_device("qv0", 2));
    let nic = tcg_msix_workaround(
        vdpad::qemu::nic_options(&net.device_config(), version),
        version,
    );
    println!(
        "RESULT QEMU {version} ({}): {}",
        qemu.display(),
        nic.join(" ")
    );
    let config = GuestConfig::new(&shell_script(GUEST_NET_SETUP))
        .qemu(qemu)
        .qemu_args(nic);
    let mut guest = Guest::boot(lab, dir.path(), config);
    let up = guest.wait_for("VDPAD-NET-UP", BOOT_TIMEOUT);
    note(t0, &format!("QEMU {version} guest: {up}"));
    assert!(up.contains("driver=virtio_net"), "{up}{}", guest.tail());
    let mut shell = GuestShell::attach(guest, BOOT_TIMEOUT);

    let p = ping_from_guest(&mut shell, 10);
    assert_no_loss("ping from the guest", &p, &logs(&shell, &net));
    let p = net.ping_from_ns(10);
    assert_no_loss("ping from the namespace", &p, &logs(&shell, &net));

    shell
        .run(
            "chroot /host ethtool -L eth0 combined 2",
            Duration::from_secs(30),
        )
        .ok();
    let p = ping_from_guest(&mut shell, 10);
    assert_no_loss("ping with two queue pairs", &p, &logs(&shell, &net));
    note(t0, "pings through vdpad, one and two queue pairs");

    let back = restart_vdpad_under(&mut shell, &mut net, RECOVER_TIMEOUT);
    println!(
        "RESULT QEMU {version}: connectivity back {:.1} s after vdpad restarted",
        back.as_secs_f64()
    );
    let p = ping_from_guest(&mut shell, 10);
    assert_no_loss("ping after the restart", &p, &logs(&shell, &net));
    let boots = shell.guest.lines_starting_with(READY).len();
    assert_eq!(boots, 1, "the guest rebooted{}", shell.guest.tail());
    let rc = shell.stop(Duration::from_secs(60));
    assert_eq!(rc, 0, "guest script failed");
    println!(
        "RESULT QEMU {version}: test took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn qemu_7_2_guest_pings_and_reconnects() {
    let (lab, qemu) = Lab::require_qemu_7_2();
    guest_pings_through_vdpad("qv-72", &lab, &qemu);
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn qemu_10_guest_pings_and_reconnects() {
    let lab = Lab::require();
    let qemu = lab.qemu.clone();
    guest_pings_through_vdpad("qv-10", &lab, &qemu);
}
