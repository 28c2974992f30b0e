//! vdpad under a real libvirt: Debian 12's libvirtd (9.0, started by the test when it
//! is not running, which is what a container without systemd needs) defines and runs
//! a TCG domain whose `<interface type='vhostuser'>` and `<memoryBacking>` are taken
//! verbatim from the shipped `tools/examples/libvirt-vm1.xml` (only the socket path
//! and MAC are changed); the rest of the domain boots the lab's Linux guest directly
//! (kernel and initramfs, the guest's script and share over 9p filesystems).
//!
//! vdpad runs in a test namespace with a two-pair tap device (`queue_size = 1024` to
//! match the XML's ring sizes), as an operator following docs/attaching.md would set
//! it up, in both socket modes: vdpad listens (`<source mode='client'>`, the shipped
//! XML as it is, `socket_owner = "libvirt-qemu"` because libvirt runs QEMU as that
//! user), or QEMU listens (`<source mode='server'>` without `<reconnect>`, the device
//! in client mode, `socket_role = "client"`: vdpad connects and reconnects).
//!
//! The scenario ([`libvirt_scenario`]), per socket mode:
//!
//! 1. `virsh define` and `virsh start`: the guest's eth0 is virtio-net and pings the
//!    namespace, and the namespace pings the guest, 0 % loss;
//! 2. `virsh domifstat` on the vhost-user interface (and `virsh domstats
//!    --interface`): what libvirt answers is printed; vdpad's own per-queue counters
//!    (its SIGUSR1 dump, what `vdpactl stats` shows) must have moved;
//! 3. vdpad is killed and started again under the running domain: QEMU reconnects
//!    (`<reconnect enabled='yes' timeout='1'/>`), or vdpad reconnects to QEMU's
//!    socket, and the same boot pings again;
//! 4. `virsh reboot` (ACPI: the guest powers off on the power button, libvirt resets
//!    it): the guest boots a second time in the same QEMU and pings;
//! 5. `virsh shutdown` (ACPI) leaves the domain `shut off`; `virsh start` boots it a
//!    third time and it pings;
//! 6. the guest's script ends, it powers off, the domain is undefined.
//!
//! The emulator is the lab's QEMU 10: libvirt 9.0 drives it without trouble, while
//! QEMU 7.2 under TCG crashes when a vhost-user NIC uses MSI-X and libvirt's
//! `<interface>` has no way to ask for `vectors=0` (see tests/qemu_versions.rs).
//!
//! Needs the lab (`sudo tests/lab/setup.sh`, root); run with
//! `cargo test -p vdpad-tests --test libvirt_guest -- --include-ignored --nocapture`.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::guest::{Guest, GuestConfig, GuestFiles, READY};
use support::guest_shell::{shell_script, GuestShell};
use support::lab::Lab;
use support::libvirt::{Domain, Libvirtd, DOMAIN_PREFIX};
use support::note;
use support::swdev::dump;
use support::tapnet::{
    assert_no_loss, logs, ping_from_guest, restart_vdpad_under, tap_device, TapNet, GUEST_NET_SETUP,
};
use support::tmp::TempDir;

/// Boot to the guest's command loop.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long connectivity may take to come back after vdpad restarts.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// The guest NIC's MAC (the device's too).
const MAC: &str = "52:54:00:00:02:02";
/// libvirt's QEMU user (Debian's build of libvirt).
const QEMU_USER: &str = "libvirt-qemu";

/// Which side owns the vhost-user socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SocketSide {
    /// vdpad listens, QEMU connects: libvirt's `<source mode='client'>`.
    VdpadListens,
    /// QEMU listens, vdpad connects (`socket_role = "client"`): libvirt's
    /// `<source mode='server'>`, OpenStack's `vhostuser_mode=server`.
    QemuListens,
}

impl SocketSide {
    /// The `mode` of the interface's `<source>`, as libvirt sees QEMU's role.
    fn libvirt_mode(self) -> &'static str {
        match self {
            SocketSide::VdpadListens => "client",
            SocketSide::QemuListens => "server",
        }
    }
}

/// Guest script prefix: power off when the ACPI power button is pressed (what
/// `virsh shutdown` and `virsh reboot` do without a guest agent). The kernel's
/// `button` driver reports it as a key on an input device; `evdev` makes that a
/// `/dev/input/event*` node a watcher can read.
const POWER_BUTTON: &str = r#"
modprobe button; modprobe evdev
watchers=0
for n in /sys/class/input/input*/name; do
  grep -q "Power Button" "$n" 2>/dev/null || continue
  for ev in "${n%/name}"/event*; do
    [ -e "$ev" ] || continue
    node=/dev/input/${ev##*/}
    ( head -c 1 "$node" >/dev/null && echo "VDPAD-POWER-BUTTON $node" && sync && poweroff -f ) &
    watchers=$((watchers + 1))
  done
done
echo "VDPAD-POWER-WATCH watchers=$watchers"
"#;

/// Extracts `<tag ...>...</tag>` (the first one) from `xml`.
fn element(xml: &str, tag: &str) -> String {
    let start = xml
        .find(&format!("<{tag}"))
        .unwrap_or_else(|| panic!("no <{tag}> in the shipped XML"));
    let close = format!("</{tag}>");
    let end = xml[start..]
        .find(&close)
        .map(|i| start + i + close.len())
        .unwrap_or_else(|| panic!("no </{tag}> in the shipped XML"));
    xml[start..end].to_string()
}

/// Extracts the empty element `<tag .../>` (the first one) from `xml`.
fn element_empty(xml: &str, tag: &str) -> String {
    let start = xml
        .find(&format!("<{tag}"))
        .unwrap_or_else(|| panic!("no <{tag}> in the shipped XML"));
    let end = xml[start..]
        .find("/>")
        .map(|i| start + i + 2)
        .unwrap_or_else(|| panic!("<{tag}> in the shipped XML is not empty"));
    xml[start..end].to_string()
}

/// The value of `attr='...'` in `xml`, the first one.
fn attr<'a>(xml: &'a str, attr: &str) -> &'a str {
    let key = format!("{attr}='");
    let start = xml
        .find(&key)
        .unwrap_or_else(|| panic!("no {attr}= in {xml}"))
        + key.len();
    &xml[start..start + xml[start..].find('\'').expect("closing quote")]
}

/// The domain XML: the shipped file's `<memoryBacking>`, `<features>` and
/// `<interface type='vhostuser'>` with our socket, MAC and socket mode, in a TCG
/// domain that boots `files` directly.
fn domain_xml(
    name: &str,
    files: &GuestFiles,
    socket: &Path,
    side: SocketSide,
    qemu: &Path,
) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/examples/libvirt-vm1.xml"),
    )
    .expect("read tools/examples/libvirt-vm1.xml");
    let memory_backing = element(&shipped, "memoryBacking");
    let features = element(&shipped, "features");
    let mut interface = element(&shipped, "interface");
    let source = element(&interface, "source");
    for (key, value) in [
        ("path", socket.to_string_lossy().into_owned()),
        ("mode", side.libvirt_mode().to_string()),
    ] {
        let old = format!("{key}='{}'", attr(&source, key));
        interface = interface.replacen(&old, &format!("{key}='{value}'"), 1);
    }
    if side == SocketSide::QemuListens {
        // QEMU keeps listening when the backend goes away: nothing to reconnect.
        let reconnect = element_empty(&interface, "reconnect");
        interface = interface.replacen(&reconnect, "", 1);
    }
    let old_mac = attr(&interface, "address").to_string();
    interface = interface.replacen(&old_mac, MAC, 1);
    let share = files.share.to_string_lossy();
    format!(
        r#"<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>1024</memory>
  <vcpu placement='static'>1</vcpu>
  {memory_backing}
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{append}</cmdline>
  </os>
  {features}
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{qemu}</emulator>
    <filesystem type='mount' accessmode='squash' multidevs='remap'>
      <source dir='/'/>
      <target dir='hostroot'/>
      <readonly/>
    </filesystem>
    <filesystem type='mount' accessmode='squash'>
      <source dir='{share}'/>
      <target dir='lab'/>
    </filesystem>
    {interface}
    <serial type='file'>
      <source path='{console}' append='on'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"#,
        kernel = files.kernel.display(),
        initrd = files.initrd.display(),
        append = files.append,
        qemu = qemu.display(),
        console = files.console.display(),
    )
}

/// Copies `file` into `dir` (libvirt hands the kernel and initramfs to QEMU's user
/// while the domain runs; the copies keep the lab's own files out of that).
fn copy_into(file: &Path, dir: &Path) -> PathBuf {
    let to = dir.join(file.file_name().expect("a file name"));
    std::fs::copy(file, &to).unwrap_or_else(|e| panic!("copy {}: {e}", file.display()));
    to
}

/// Hands `path` to libvirt's QEMU user (`chown`).
fn give_to_qemu_user(path: &Path) {
    let out = std::process::Command::new("chown")
        .args([
            &format!("{QEMU_USER}:{QEMU_USER}"),
            &*path.to_string_lossy(),
        ])
        .output()
        .expect("run chown");
    assert!(out.status.success(), "chown {}: {out:?}", path.display());
}

/// Pings both ways with 0 % loss.
fn pings_both_ways(shell: &mut GuestShell, net: &TapNet, when: &str) {
    let p = ping_from_guest(shell, 10);
    assert_no_loss(
        &format!("{when}: ping from the guest"),
        &p,
        &logs(shell, net),
    );
    let p = net.ping_from_ns(10);
    assert_no_loss(
        &format!("{when}: ping from the namespace"),
        &p,
        &logs(shell, net),
    );
}

/// Waits for the guest's next boot after a power event and its network; returns the
/// time it took.
fn next_boot(shell: &mut GuestShell, domain: &Domain, what: &str) -> Duration {
    let started = Instant::now();
    let up = shell
        .guest
        .try_wait_for("VDPAD-NET-UP", BOOT_TIMEOUT)
        .unwrap_or_else(|e| {
            panic!(
                "{what}: {e} (domain {}){}",
                domain.state(),
                shell.guest.tail()
            )
        });
    assert!(up.contains("driver=virtio_net"), "{what}: {up}");
    shell.wait_ready(BOOT_TIMEOUT);
    started.elapsed()
}

/// The scenario of the module documentation, with the socket owned by `side`.
fn libvirt_scenario(tag: &str, side: SocketSide) {
    // One scenario at a time: each may start (and then stop) libvirtd, and the domain
    // is defined before the guest lock is taken.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let lab = Lab::require();
    let dir = TempDir::new(tag);
    let libvirtd = Libvirtd::ensure(dir.path());
    note(
        t0,
        &format!(
            "libvirt {} ({})",
            libvirtd.version.lines().next().unwrap_or_default().trim(),
            if libvirtd.started_here() {
                "started by the test"
            } else {
                "already running"
            }
        ),
    );

    let mut device = tap_device("lv0", 2);
    device.queue_size = Some(1024);
    match side {
        SocketSide::VdpadListens => device.socket_owner = Some(QEMU_USER.to_string()),
        SocketSide::QemuListens => {
            // QEMU, as libvirt's user, creates the socket in the test's directory.
            device.client = true;
            give_to_qemu_user(dir.path());
        }
    }
    let mut net = TapNet::start(dir.path(), device);

    let script = shell_script(&format!("{POWER_BUTTON}{GUEST_NET_SETUP}"));
    let mut files = GuestFiles::prepare(&lab, dir.path(), &GuestConfig::new(&script));
    files.kernel = copy_into(&files.kernel, dir.path());
    files.initrd = copy_into(&files.initrd, dir.path());
    give_to_qemu_user(&files.share);
    let name = format!("{DOMAIN_PREFIX}{tag}-{}", std::process::id());
    let xml = domain_xml(&name, &files, &net.socket(), side, &lab.qemu);
    let xml_path = dir.join("domain.xml");
    std::fs::write(&xml_path, &xml).expect("write domain.xml");
    let defined = Domain::define(&name, &xml_path);
    let domain = defined.0.clone();

    let guest = Guest::start_with(&files, || {
        domain
            .virsh("start", &[])
            .unwrap_or_else(|e| panic!("{e}\n----- domain.xml -----\n{xml}"));
        Box::new(domain.clone())
    });
    let mut shell = GuestShell::attach(guest, BOOT_TIMEOUT);
    note(
        t0,
        &format!("virsh start: guest up, domain {}", domain.state()),
    );
    let up = shell.guest.lines_starting_with("VDPAD-NET-UP").join("");
    assert!(
        up.contains("driver=virtio_net"),
        "{up}{}",
        logs(&shell, &net)
    );
    let watch = shell
        .guest
        .lines_starting_with("VDPAD-POWER-WATCH")
        .join("");
    assert!(
        !watch.contains("watchers=0"),
        "no power button in the guest: {watch}"
    );
    pings_both_ways(&mut shell, &net, "after virsh start");

    // What libvirt can tell about the vhost-user interface.
    for args in [
        vec!["domifstat", MAC],
        vec!["domiflist"],
        vec!["domstats", "--interface"],
    ] {
        let (command, rest) = args.split_first().expect("a command");
        let answer = domain.virsh(command, rest);
        println!(
            "RESULT virsh {} {name}: {}",
            args.join(" "),
            match &answer {
                Ok(text) => text.trim().replace('\n', " | "),
                Err(e) => format!("refused: {e}"),
            }
        );
    }
    let stats = dump(&mut net.daemon, "lv0");
    for q in &stats.queues {
        println!("RESULT vdpad {}", q.summary());
    }
    let moved: u64 = stats.queues.iter().map(|q| q.packets).sum();
    assert!(
        moved >= 40,
        "vdpad counted {moved} packets for 40 pings: {stats:?}"
    );

    // vdpad restarts under the running domain.
    let back = restart_vdpad_under(&mut shell, &mut net, RECOVER_TIMEOUT);
    println!(
        "RESULT libvirt {tag}: connectivity back {:.1} s after vdpad restarted",
        back.as_secs_f64()
    );
    pings_both_ways(&mut shell, &net, "after the vdpad restart");
    assert_eq!(
        shell.guest.lines_starting_with(READY).len(),
        1,
        "the guest rebooted"
    );

    // virsh reboot: same QEMU, second boot.
    shell.forget_commands();
    domain
        .virsh("reboot", &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let took = next_boot(&mut shell, &domain, "virsh reboot");
    println!(
        "RESULT virsh reboot: guest back in {:.1} s",
        took.as_secs_f64()
    );
    assert_eq!(domain.state(), "running");
    assert_eq!(shell.guest.lines_starting_with(READY).len(), 2);
    pings_both_ways(&mut shell, &net, "after virsh reboot");

    // virsh shutdown, then virsh start: a new QEMU, third boot.
    shell.forget_commands();
    domain
        .virsh("shutdown", &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        domain.wait_state("shut off", Duration::from_secs(60)),
        "virsh shutdown: domain still {}{}",
        domain.state(),
        shell.guest.tail()
    );
    note(t0, "virsh shutdown: shut off");
    domain.virsh("start", &[]).unwrap_or_else(|e| panic!("{e}"));
    let took = next_boot(&mut shell, &domain, "virsh start after shutdown");
    println!(
        "RESULT virsh shutdown + start: guest back in {:.1} s",
        took.as_secs_f64()
    );
    assert_eq!(shell.guest.lines_starting_with(READY).len(), 3);
    pings_both_ways(&mut shell, &net, "after virsh shutdown and start");

    let rc = shell.stop(Duration::from_secs(60));
    assert_eq!(rc, 0, "guest script failed");
    assert!(domain.wait_state("shut off", Duration::from_secs(30)));
    drop(defined);
    println!(
        "RESULT libvirt {tag}: test took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn libvirt_domain_with_vdpad_listening() {
    libvirt_scenario("lv-srv", SocketSide::VdpadListens);
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn libvirt_domain_with_qemu_listening() {
    libvirt_scenario("lv-cli", SocketSide::QemuListens);
}
