//! A real guest: QEMU 10 (TCG) boots the lab's Linux guest with a virtio-net-pci NIC
//! whose vhost-user backend is vdpad's loopback device.
//!
//! * `guest_traffic_through_vdpad_loopback`: in the guest, eth0 gets 192.0.2.2/24 and
//!   pings 192.0.2.1. Nobody answers, but the ARP requests go out through vdpad and the
//!   loopback reflects them into the guest's RX queue; the guest prints its eth0
//!   counters and both must grow.
//! * `guest_survives_vdpad_restart`: while the guest keeps sending, vdpad is killed
//!   (SIGKILL, a crash that leaves the socket behind) and started again on the same
//!   socket; QEMU reconnects (`reconnect-ms=1000`) and the guest's RX counter must grow
//!   again without a guest reboot. Then the same with SIGTERM (clean shutdown, which
//!   must remove the socket).
//! * `client_mode_guest_survives_vdpad_and_qemu_restarts`: the same restarts with
//!   vdpad in client mode (`socket_role = "client"`): QEMU owns the socket
//!   (`server=on,wait=off`) and keeps it, vdpad reconnects to it; then a second QEMU
//!   replaces the first on the same socket and the same vdpad serves it.
//! * `control_*`: the same scenarios with DPDK testpmd's vhost-user backend
//!   (`net_vhost`, io forwarding on a looped port) instead of vdpad. They prove the
//!   harness and the guest independently of vdpad; skip them with `--skip control`.
//!
//! Host and guest coordinate through console lines (`VDPAD-NET-UP`, `VDPAD-STATS ...`)
//! and a file on the guest's read-write share (`/lab/stop`). Every wait is bounded.
//!
//! Needs the lab (`sudo tests/lab/setup.sh`); run with
//! `cargo test -p vdpad-tests --test qemu_guest -- --include-ignored --nocapture`.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::daemon::{Daemon, DeviceSpec};
use support::guest::{parse_kv, Guest, GuestConfig};
use support::lab::Lab;
use support::note;
use support::testpmd::{Testpmd, TestpmdConfig};
use support::tmp::TempDir;

/// The guest NIC's MAC (also offered by the vdpad device).
const MAC: &str = "52:54:00:00:02:02";
/// Boot plus network setup; TCG boots in 7-12 s on an idle lab machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the RX counter may take to move again after a backend restart.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// Guest side: bring eth0 up, then keep resolving 192.0.2.1 (ARP requests out, the
/// backend reflects them back) and print the counters, for `rounds` rounds or until
/// the host creates /lab/stop.
fn guest_script(rounds: u32) -> String {
    format!(
        r#"
dev=eth0
s=/sys/class/net/$dev/statistics
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
ip link set $dev up
ip addr add 192.0.2.2/24 dev $dev
drv=$(basename "$(readlink /sys/class/net/$dev/device/driver)")
echo "VDPAD-NET-UP dev=$dev driver=$drv mac=$(cat /sys/class/net/$dev/address)"
i=0
while [ $i -lt {rounds} ] && [ ! -e /lab/stop ]; do
  ping -c 1 -W 1 192.0.2.1 >/dev/null 2>&1
  echo "VDPAD-STATS n=$i rx=$(cat $s/rx_packets) tx=$(cat $s/tx_packets) carrier=$(cat /sys/class/net/$dev/carrier 2>/dev/null)"
  i=$((i + 1))
  sleep 0.2
done
echo "VDPAD-STOPPED n=$i"
"#
    )
}

/// QEMU arguments attaching the guest NIC to the vhost-user socket: QEMU connects
/// (and reconnects every second), or, with `qemu_listens`, QEMU owns the socket and
/// the backend connects (vdpad's client mode; no `reconnect-ms` needed).
fn vhost_user_nic(socket: &Path, qemu_listens: bool) -> Vec<String> {
    let role = if qemu_listens {
        "server=on,wait=off"
    } else {
        "reconnect-ms=1000"
    };
    vec![
        "-chardev".into(),
        format!("socket,id=c0,path={},{role}", socket.display()),
        "-netdev".into(),
        "vhost-user,id=n0,chardev=c0".into(),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={MAC},romfile="),
    ]
}

/// One `VDPAD-STATS` sample.
#[derive(Clone, Copy, Debug)]
struct Sample {
    n: u64,
    rx: u64,
    tx: u64,
}

/// Waits for the next stats line and parses it.
fn next_sample(guest: &mut Guest, timeout: Duration) -> Sample {
    let line = guest.wait_for("VDPAD-STATS ", timeout);
    let field = |k| parse_kv(&line, k).unwrap_or_else(|| panic!("bad stats line {line:?}"));
    Sample {
        n: field("n"),
        rx: field("rx"),
        tx: field("tx"),
    }
}

/// Consumes stats lines until one has `rx > above`; returns it. Panics after `timeout`.
fn wait_rx_above(
    guest: &mut Guest,
    above: u64,
    timeout: Duration,
    backend: &dyn Backend,
) -> Sample {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match guest.try_wait_for("VDPAD-STATS ", left) {
            Ok(line) => {
                let rx = parse_kv(&line, "rx").unwrap_or(0);
                if rx > above {
                    return Sample {
                        n: parse_kv(&line, "n").unwrap_or(0),
                        rx,
                        tx: parse_kv(&line, "tx").unwrap_or(0),
                    };
                }
            }
            Err(why) => panic!(
                "guest RX did not grow above {above} ({why}){}{}",
                guest.tail(),
                backend.tail()
            ),
        }
    }
}

/// The last stats sample printed so far (without consuming lines).
fn latest_sample(guest: &Guest) -> Option<Sample> {
    guest
        .lines_starting_with("VDPAD-STATS ")
        .last()
        .map(|line| Sample {
            n: parse_kv(line, "n").unwrap_or(0),
            rx: parse_kv(line, "rx").unwrap_or(0),
            tx: parse_kv(line, "tx").unwrap_or(0),
        })
}

/// The vhost-user backend behind the guest's NIC.
trait Backend {
    /// The socket QEMU connects to.
    fn socket(&self) -> PathBuf;
    /// Crash: SIGKILL, socket left behind.
    fn crash(&mut self);
    /// Clean stop: SIGTERM.
    fn shut_down(&mut self);
    /// Start again on the same socket.
    fn restart(&mut self);
    /// Log tail for panic messages.
    fn tail(&self) -> String;
    /// Whether QEMU must own the socket (the backend connects to it).
    fn qemu_listens(&self) -> bool {
        false
    }
}

impl Backend for Daemon {
    fn socket(&self) -> PathBuf {
        Daemon::socket(self, 0).to_path_buf()
    }
    fn crash(&mut self) {
        let status = self.kill9();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "vdpad was not killed by SIGKILL: {status}"
        );
    }
    fn shut_down(&mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "vdpad exited with {status} on SIGTERM{}",
            self.tail()
        );
        // A server removes its socket; a client leaves QEMU's alone.
        assert_eq!(
            Daemon::socket(self, 0).exists(),
            self.is_client(0),
            "vdpad (client: {}) got its socket wrong on SIGTERM{}",
            self.is_client(0),
            self.tail()
        );
    }
    fn restart(&mut self) {
        Daemon::restart(self);
    }
    fn tail(&self) -> String {
        Daemon::tail(self)
    }
    fn qemu_listens(&self) -> bool {
        self.is_client(0)
    }
}

/// testpmd as the vhost-user backend: `net_vhost` reflecting frames like a loopback.
struct TestpmdBackend {
    testpmd: PathBuf,
    dir: PathBuf,
    socket: PathBuf,
    runs: u32,
    pmd: Option<Testpmd>,
}

impl TestpmdBackend {
    fn start(testpmd: &Path, dir: &Path) -> TestpmdBackend {
        let mut backend = TestpmdBackend {
            testpmd: testpmd.to_path_buf(),
            dir: dir.to_path_buf(),
            socket: dir.join("vhost.sock"),
            runs: 0,
            pmd: None,
        };
        backend.launch();
        backend
    }

    fn launch(&mut self) {
        // DPDK does not replace a stale socket file.
        let _ = std::fs::remove_file(&self.socket);
        self.runs += 1;
        let mut config = TestpmdConfig::io_forward(
            &format!("net_vhost0,iface={},queues=1", self.socket.display()),
            0,
            Duration::from_secs(600),
        );
        config.app_args.push("--port-topology=loop".into());
        let pmd = Testpmd::start(
            &self.testpmd,
            &self.dir,
            &format!("testpmd-backend-{}", self.runs),
            &config,
        );
        let ready = support::poll(Duration::from_secs(20), Duration::from_millis(50), || {
            self.socket.exists().then_some(())
        });
        assert!(
            ready.is_some(),
            "net_vhost did not create its socket{}",
            pmd.tail()
        );
        self.pmd = Some(pmd);
    }
}

impl Backend for TestpmdBackend {
    fn socket(&self) -> PathBuf {
        self.socket.clone()
    }
    fn crash(&mut self) {
        let mut pmd = self.pmd.take().expect("testpmd running");
        pmd.kill9();
    }
    fn shut_down(&mut self) {
        let mut pmd = self.pmd.take().expect("testpmd running");
        let (status, _) = pmd.stop();
        assert!(
            status.success(),
            "testpmd exited with {status}{}",
            pmd.tail()
        );
    }
    fn restart(&mut self) {
        self.launch();
    }
    fn tail(&self) -> String {
        self.pmd.as_ref().map(|p| p.tail()).unwrap_or_default()
    }
}

/// Boots the guest on `backend` and checks that TX and RX both grow.
fn traffic_test(lab: &Lab, dir: &TempDir, backend: &dyn Backend) {
    let t0 = Instant::now();
    let config = GuestConfig::new(&guest_script(8))
        .qemu_args(vhost_user_nic(&backend.socket(), backend.qemu_listens()));
    let mut guest = Guest::boot(lab, dir.path(), config);
    let ready = guest.wait_for(support::guest::READY, BOOT_TIMEOUT);
    note(t0, &format!("guest: {ready}"));
    let up = guest.wait_for("VDPAD-NET-UP", Duration::from_secs(30));
    note(t0, &format!("guest: {up}"));
    assert!(
        up.contains("driver=virtio_net"),
        "eth0 is not the virtio-net NIC: {up}{}",
        guest.tail()
    );
    let mut samples = Vec::new();
    while samples.len() < 8 {
        let s = next_sample(&mut guest, Duration::from_secs(30));
        note(
            t0,
            &format!("guest eth0: n={} rx={} tx={}", s.n, s.rx, s.tx),
        );
        samples.push(s);
    }
    let rc = guest.wait_exit(Duration::from_secs(30));
    assert_eq!(rc, 0, "guest script failed{}", guest.tail());
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let why = format!("samples {samples:?}{}{}", guest.tail(), backend.tail());
    assert!(last.tx > first.tx, "guest TX did not grow: {why}");
    assert!(last.rx > first.rx, "guest RX did not grow: {why}");
    assert!(
        samples.iter().all(|s| s.rx <= s.tx),
        "a loopback cannot deliver more frames than were sent: {why}"
    );
    note(t0, "done");
}

/// Boots the guest, then crashes and restarts the backend, then stops it cleanly and
/// restarts it; after each restart the guest's RX counter must grow again.
fn restart_test(lab: &Lab, dir: &TempDir, backend: &mut dyn Backend) {
    let t0 = Instant::now();
    let config = GuestConfig::new(&guest_script(1000))
        .qemu_args(vhost_user_nic(&backend.socket(), backend.qemu_listens()));
    let mut guest = Guest::boot(lab, dir.path(), config);
    guest.wait_for(support::guest::READY, BOOT_TIMEOUT);
    let up = guest.wait_for("VDPAD-NET-UP", Duration::from_secs(30));
    note(t0, &format!("guest: {up}"));
    let s = wait_rx_above(&mut guest, 1, RECOVER_TIMEOUT, backend);
    note(
        t0,
        &format!("traffic flows: n={} rx={} tx={}", s.n, s.rx, s.tx),
    );

    for (phase, clean) in [("SIGKILL", false), ("SIGTERM", true)] {
        if clean {
            backend.shut_down();
        } else {
            backend.crash();
        }
        note(t0, &format!("{phase}: backend stopped"));
        // Let QEMU notice and the counters settle; frames sent now go nowhere.
        std::thread::sleep(Duration::from_millis(2500));
        let dead = latest_sample(&guest).expect("stats");
        note(
            t0,
            &format!(
                "{phase}: while down: n={} rx={} tx={}",
                dead.n, dead.rx, dead.tx
            ),
        );
        backend.restart();
        note(t0, &format!("{phase}: backend restarted"));
        let back = wait_rx_above(&mut guest, dead.rx, RECOVER_TIMEOUT, backend);
        note(
            t0,
            &format!(
                "{phase}: RX grows again: n={} rx={} tx={}",
                back.n, back.rx, back.tx
            ),
        );
    }

    std::fs::write(guest.share().join("stop"), b"stop\n").expect("write stop file");
    let rc = guest.wait_exit(Duration::from_secs(60));
    assert_eq!(rc, 0, "guest script failed{}", guest.tail());
    let console = guest.console();
    assert_eq!(
        console.matches(support::guest::READY).count(),
        1,
        "the guest rebooted{}",
        guest.tail()
    );
    let vhost_msgs: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("vhost"))
        .take(12)
        .collect();
    note(
        t0,
        &format!(
            "QEMU vhost messages (first 12):\n  {}",
            vhost_msgs.join("\n  ")
        ),
    );
    note(t0, "done");
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn guest_traffic_through_vdpad_loopback() {
    let lab = Lab::require();
    let dir = TempDir::new("qemu-lo");
    let daemon = Daemon::start(dir.path(), &[DeviceSpec::loopback("lo0")]);
    traffic_test(&lab, &dir, &daemon);
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn guest_survives_vdpad_restart() {
    let lab = Lab::require();
    let dir = TempDir::new("qemu-restart");
    let mut daemon = Daemon::start(dir.path(), &[DeviceSpec::loopback("lo0")]);
    restart_test(&lab, &dir, &mut daemon);
}

/// Client mode: QEMU owns the socket (`server=on,wait=off`) and vdpad connects.
/// vdpad is killed (SIGKILL) and stopped (SIGTERM) under the running guest and
/// started again; each time it reconnects to QEMU's socket, which QEMU kept, and the
/// guest's RX grows again without QEMU restarting. Then QEMU itself is replaced: a
/// second guest on the same socket, with the same vdpad, gets traffic too.
#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn client_mode_guest_survives_vdpad_and_qemu_restarts() {
    let lab = Lab::require();
    let dir = TempDir::new("qemu-client");
    let mut daemon = Daemon::start(dir.path(), &[DeviceSpec::loopback("lo0").client()]);
    restart_test(&lab, &dir, &mut daemon);
    // Sessions with a guest: the features a driver negotiated. (A QEMU that is
    // quitting closes the connection before its listening socket, and vdpad may
    // connect once more in between, to a socket that then resets: that is not a
    // session, and whether it happens is a matter of microseconds.)
    let sessions = |d: &Daemon| d.log().matches("features negotiated").count();
    // One session per vdpad run (start, after SIGKILL, after SIGTERM).
    assert_eq!(sessions(&daemon), 3, "{}", daemon.tail());
    let second = TempDir::new("qemu-client-2");
    traffic_test(&lab, &second, &daemon);
    assert_eq!(sessions(&daemon), 4, "{}", daemon.tail());
    assert!(
        !daemon.log().contains("WARN"),
        "client mode warned about something{}",
        daemon.tail()
    );
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn control_guest_traffic_through_testpmd_backend() {
    let lab = Lab::require();
    let dir = TempDir::new("qemu-ctl");
    let backend = TestpmdBackend::start(&lab.testpmd, dir.path());
    traffic_test(&lab, &dir, &backend);
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn control_guest_survives_testpmd_restart() {
    let lab = Lab::require();
    let dir = TempDir::new("qemu-ctl-restart");
    let mut backend = TestpmdBackend::start(&lab.testpmd, dir.path());
    restart_test(&lab, &dir, &mut backend);
}
