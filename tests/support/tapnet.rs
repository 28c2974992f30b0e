//! A guest network through vdpad's tap backend: a fresh network namespace, vdpad
//! running inside it with one software device on a tap (`backend = "tap"`, created by
//! vdpad), and the namespace's side of that tap at [`PEER_ADDR`]. Whoever runs the
//! guest (QEMU directly, libvirt) only needs the device's socket; the guest's eth0 gets
//! [`GUEST_ADDR`] from [`GUEST_NET_SETUP`].
//!
//! Used by the tests that attach guests in different ways (QEMU releases, libvirt) and
//! only need "the guest pings its neighbour through vdpad, also after vdpad restarts".

use std::path::Path;
use std::time::{Duration, Instant};

use super::daemon::Daemon;
use super::guest_shell::GuestShell;
use super::netns::Netns;
use super::swdev::{start_daemon, SwBackend, SwDevice};
use super::traffic::{parse_ping, PingSummary};

/// The guest's address.
pub const GUEST_ADDR: &str = "192.0.2.2";
/// The namespace side's address.
pub const PEER_ADDR: &str = "192.0.2.1";
/// The tap's name inside the namespace.
pub const TAP: &str = "vdt0";

/// The guest's setup before its command loop ([`super::guest_shell::shell_script`]):
/// eth0 up with [`GUEST_ADDR`], and a `VDPAD-NET-UP` line naming the NIC's driver and
/// negotiated virtio features.
pub const GUEST_NET_SETUP: &str = r#"
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
dev=eth0
ip link set $dev up
ip addr add 192.0.2.2/24 dev $dev
drv=$(basename "$(readlink /sys/class/net/$dev/device/driver)")
echo "VDPAD-NET-UP dev=$dev driver=$drv features=$(cat /sys/class/net/$dev/device/features)"
"#;

/// A tap device called [`TAP`] named `name`, with `queue_pairs` pairs.
pub fn tap_device(name: &str, queue_pairs: u16) -> SwDevice {
    let mut device = SwDevice::new(name, SwBackend::Tap(TAP.to_string()));
    device.queue_pairs = queue_pairs;
    device
}

/// The namespace, and vdpad in it serving one tap device.
pub struct TapNet {
    /// The daemon (drops before the namespace).
    pub daemon: Daemon,
    /// The namespace holding the tap and the daemon.
    pub ns: Netns,
    /// The device vdpad serves.
    pub device: SwDevice,
}

impl TapNet {
    /// Creates the namespace (IPv6 off, so no stray neighbour discovery), starts vdpad
    /// in it with `device` (a [`tap_device`]) and its socket in `dir`, and gives the
    /// tap [`PEER_ADDR`].
    pub fn start(dir: &Path, device: SwDevice) -> TapNet {
        assert_eq!(
            device.backend,
            SwBackend::Tap(TAP.to_string()),
            "TapNet serves a tap_device()"
        );
        let ns = Netns::new();
        for key in ["all", "default"] {
            let out = ns.exec(
                "sysctl",
                &["-qw", &format!("net.ipv6.conf.{key}.disable_ipv6=1")],
            );
            assert!(out.status.success(), "sysctl in {}", ns.name());
        }
        let daemon = start_daemon(dir, Some(ns.name()), std::slice::from_ref(&device));
        // vdpad created the tap (and brought it up) before it made the socket.
        ns.addr(TAP, &format!("{PEER_ADDR}/24"));
        TapNet { daemon, ns, device }
    }

    /// The device's vhost-user socket.
    pub fn socket(&self) -> std::path::PathBuf {
        self.daemon.socket(0).to_path_buf()
    }

    /// The device as vdpad reads it from its configuration file (every default filled
    /// in), e.g. for `vdpad::qemu::nic_options`.
    pub fn device_config(&self) -> vdpad_config::DeviceConfig {
        let path = self.daemon.config_path();
        let cfg = vdpad_config::Config::from_file(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cfg.device(&self.device.name)
            .unwrap_or_else(|| panic!("no device {} in {}", self.device.name, path.display()))
            .clone()
    }

    /// Kills vdpad with SIGKILL: its socket stays behind, as after a crash.
    pub fn kill_daemon(&mut self) {
        self.daemon.kill9();
    }

    /// Starts vdpad again (after [`TapNet::kill_daemon`]) with the same configuration,
    /// and gives its new tap the address again.
    pub fn restart_daemon(&mut self) {
        self.daemon.restart();
        self.ns.addr(TAP, &format!("{PEER_ADDR}/24"));
    }

    /// `count` pings from the namespace to the guest (0.2 s apart); prints the result.
    pub fn ping_from_ns(&self, count: u32) -> PingSummary {
        ping_guest_from(&self.ns, count)
    }
}

/// `count` pings from `ns` to the guest at [`GUEST_ADDR`] (0.2 s apart); prints the
/// result.
pub fn ping_guest_from(ns: &Netns, count: u32) -> PingSummary {
    let out = ns.exec(
        "ping",
        &["-c", &count.to_string(), "-i", "0.2", "-W", "5", GUEST_ADDR],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let p = parse_ping(&text).unwrap_or_else(|| {
        panic!(
            "no ping summary from the namespace:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    println!("RESULT ping {} -> {GUEST_ADDR}: {}", ns.name(), p.summary());
    p
}

/// `count` pings from the guest to [`PEER_ADDR`] (0.2 s apart); prints the result.
pub fn ping_from_guest(shell: &mut GuestShell, count: u32) -> PingSummary {
    let r = shell.run(
        &format!("timeout 60 ping -c {count} -i 0.2 -W 5 {PEER_ADDR}"),
        Duration::from_secs(90),
    );
    let p = parse_ping(&r.output)
        .unwrap_or_else(|| panic!("no ping summary from the guest:\n{}", r.output));
    println!("RESULT ping guest -> {PEER_ADDR}: {}", p.summary());
    p
}

/// Pings once a second from the guest until an answer comes back; returns how long
/// that took, or `None` after `timeout`.
pub fn wait_until_guest_pings(shell: &mut GuestShell, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    super::poll(timeout, Duration::from_millis(200), || {
        let r = shell.run(
            &format!("timeout 10 ping -c 1 -W 1 {PEER_ADDR}"),
            Duration::from_secs(30),
        );
        (r.rc == 0).then(|| started.elapsed())
    })
}

/// The guest's console tail and vdpad's log tail, for panic messages.
pub fn logs(shell: &GuestShell, net: &TapNet) -> String {
    format!("{}{}", shell.guest.tail(), net.daemon.tail())
}

/// Kills vdpad under the running guest (SIGKILL: its socket stays behind, as after a
/// crash), checks that the guest's pings then go unanswered, starts vdpad again, and
/// waits up to `timeout` until the guest pings through it again. Returns how long
/// that took after the restart; panics with both logs if it did not come back.
pub fn restart_vdpad_under(
    shell: &mut GuestShell,
    net: &mut TapNet,
    timeout: Duration,
) -> Duration {
    net.kill_daemon();
    let down = shell.run(
        &format!("timeout 20 ping -c 3 -i 0.3 -W 1 {PEER_ADDR}"),
        Duration::from_secs(30),
    );
    assert_ne!(
        down.rc, 0,
        "pings answered with vdpad dead:\n{}",
        down.output
    );
    net.restart_daemon();
    wait_until_guest_pings(shell, timeout).unwrap_or_else(|| {
        panic!(
            "the vhost-user connection did not come back within {timeout:?}{}",
            logs(shell, net)
        )
    })
}

/// Panics unless every ping of `p` was answered; `context` (log tails) goes into the
/// message.
pub fn assert_no_loss(what: &str, p: &PingSummary, context: &str) {
    assert!(
        p.transmitted > 0 && p.received == p.transmitted,
        "{what}: {}{context}",
        p.summary()
    );
}
