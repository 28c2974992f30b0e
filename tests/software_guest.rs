//! The software datapath with a real guest: QEMU 10 (TCG, memfd `share=on`) boots the
//! lab's Linux guest with a virtio-net-pci NIC whose vhost-user backend is `vdpad`, and
//! vdpad moves the guest's frames to a real kernel interface inside a network namespace
//! that the test creates: a tap (`backend = "tap"`) or one end of a veth pair
//! (`backend = "af_packet"`). The namespace side has 192.0.2.1/24, the guest's eth0
//! 192.0.2.2/24.
//!
//! vdpad runs *inside* the namespace (`ip netns exec`), so the tap it creates or
//! attaches to is the namespace's; QEMU stays outside and only needs the socket.
//!
//! What is checked, per test:
//!
//! * `tap_ping_and_iperf3_both_ways`: ping guest → namespace and namespace → guest with
//!   0 % loss; iperf3 TCP in both directions moves data (the rates are printed, never
//!   asserted).
//! * `tap_two_queue_pairs`, `af_packet_two_queue_pairs`: `queue_pairs = 2`, QEMU
//!   `queues=2`, `mq=on`. The one-vCPU guest starts with one pair in use: vdpad runs
//!   pair 0 only, and UDP datagrams from 200 source ports in the namespace all reach
//!   the guest (the kernel spreads flows over the backend's queues; none may land on
//!   the idle pair's). After `ethtool -L eth0 combined 2` both pairs run, and with
//!   parallel TCP flows both ways vdpad's per-queue counters (SIGUSR1 dump) show
//!   packets on rings 0 to 3; after `combined 1` pair 1 stops and every flow arrives
//!   again.
//! * `tap_guest_without_mrg_rxbuf`, `tap_guest_without_event_idx`: the guest driver
//!   without mergeable RX buffers / without event-index suppression (QEMU device
//!   properties) still pings with 0 % loss and moves iperf3 data both ways.
//! * `tap_busy_poll_and_rx_coalescing`: `busy_poll_us = 100` and RX coalescing
//!   (32 frames / 50 µs) on: ping and iperf3 still work both ways; the counters show
//!   the knobs' effect.
//! * `tap_restart_persistent_tap`, `tap_restart_daemon_created_tap`: vdpad is killed
//!   with SIGKILL and started again (same config, same namespace) while QEMU runs with
//!   `reconnect-ms=1000`; connectivity comes back without restarting the guest, and
//!   both queue pairs carry traffic again. With a persistent tap (`ip tuntap add ...
//!   multi_queue vnet_hdr`, created by the test) the namespace's address survives the
//!   daemon; a tap created by vdpad vanishes with it and the address is added again.
//! * `af_packet_ping_and_iperf3_both_ways`: AF_PACKET on one end of a veth pair, the
//!   peer address on the other end.
//!
//! The tests print ping round-trip times, iperf3 rates, and per-ring packets, kicks,
//! interrupts, packets per kick and per interrupt (`RESULT` lines). Every wait is
//! bounded; the namespace (with its interfaces and processes), the daemon and QEMU are
//! cleaned up on drop, also when a test fails. Guests never run concurrently (the
//! harness holds a machine-wide lock).
//!
//! Needs the lab (`sudo tests/lab/setup.sh`, root); run with
//! `cargo test -p vdpad-tests --test software_guest -- --include-ignored --nocapture --test-threads=1`.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::guest::{Guest, GuestConfig, READY};
use support::guest_shell::{shell_script, CmdResult, GuestShell};
use support::lab::Lab;
use support::netns::Netns;
use support::note;
use support::process::{Proc, Spawn};
use support::swdev::{dump, start_daemon, QueueStat, StatsDump, SwBackend, SwDevice};
use support::tapnet::GUEST_NET_SETUP;
use support::tmp::TempDir;
use support::traffic::{parse_iperf3, parse_ping, IperfSummary, PingSummary};
use vdpa::virtio::features::{VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX};

/// The guest NIC's MAC (also offered by the device).
const MAC: &str = "52:54:00:00:02:02";
/// The guest's address.
const GUEST_ADDR: &str = "192.0.2.2";
/// The namespace side's address.
const PEER_ADDR: &str = "192.0.2.1";
/// The tap's name inside the namespace.
const TAP: &str = "vdt0";
/// vdpad's end of the veth pair (AF_PACKET) and the peer end with the address.
const VETH_DEV: &str = "veth0";
const VETH_PEER: &str = "veth1";
/// Boot to the guest's command loop; TCG boots in 5-12 s on an idle lab machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for one guest command (each also bounds itself with `timeout`).
const CMD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long connectivity may take to come back after a daemon restart.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// Seconds per iperf3 run.
const IPERF_SECONDS: u32 = 3;

/// What sits on the namespace side of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HostSide {
    /// vdpad creates the tap; it lives only as long as the daemon keeps it open.
    DaemonTap,
    /// The test creates a persistent `multi_queue vnet_hdr` tap that vdpad attaches to.
    PersistentTap,
    /// A veth pair: vdpad's AF_PACKET sockets on one end, the address on the other.
    Veth,
}

/// One test's world. Fields drop in order: the guest first, then the iperf3 server,
/// the daemon, the namespace (and whatever is left in it), the scratch directory.
struct Rig {
    shell: GuestShell,
    /// Held for its drop: the server stops before the namespace goes.
    _iperf_server: Proc,
    daemon: Daemon,
    ns: Netns,
    dir: TempDir,
    device: String,
    rings: usize,
    t0: Instant,
}

impl Rig {
    /// Builds the namespace side, starts vdpad in the namespace with `device`, starts
    /// an iperf3 server there, and boots the guest with its NIC on the device's socket
    /// (`nic_props` are extra virtio-net-pci properties, e.g. `mrg_rxbuf=off`).
    fn start(tag: &str, host_side: HostSide, device: SwDevice, nic_props: &[&str]) -> Rig {
        let t0 = Instant::now();
        let lab = Lab::require();
        let dir = TempDir::new(tag);
        let ns = Netns::new();
        for key in ["all", "default"] {
            let out = ns.exec(
                "sysctl",
                &["-qw", &format!("net.ipv6.conf.{key}.disable_ipv6=1")],
            );
            assert!(out.status.success(), "sysctl in {}", ns.name());
        }
        match host_side {
            HostSide::PersistentTap => {
                ns.ip(&[
                    "tuntap",
                    "add",
                    "dev",
                    TAP,
                    "mode",
                    "tap",
                    "multi_queue",
                    "vnet_hdr",
                ]);
                ns.addr(TAP, &format!("{PEER_ADDR}/24"));
                ns.up(TAP);
            }
            HostSide::Veth => {
                ns.veth_pair(VETH_DEV, VETH_PEER);
                ns.addr(VETH_PEER, &format!("{PEER_ADDR}/24"));
            }
            HostSide::DaemonTap => {}
        }
        let name = device.name.clone();
        let rings = 2 * usize::from(device.queue_pairs);
        let queues = device.queue_pairs;
        let socket = device.socket(dir.path());
        let daemon = start_daemon(dir.path(), Some(ns.name()), &[device]);
        note(t0, &format!("vdpad runs in {}", ns.name()));
        if host_side == HostSide::DaemonTap {
            // vdpad created the tap (and brought it up) before it made the socket.
            ns.addr(TAP, &format!("{PEER_ADDR}/24"));
        }
        let iperf_server = ns.spawn(
            Spawn::new("iperf3-server", "iperf3", dir.join("iperf3-server.log"))
                .args(["-s"])
                .limit(Duration::from_secs(900))
                .cpu(Some(0)),
        );

        let mut nic = format!("virtio-net-pci,netdev=n0,mac={MAC},romfile=");
        if queues > 1 {
            nic.push_str(&format!(",mq=on,vectors={}", 2 * queues + 2));
        }
        for p in nic_props {
            nic.push(',');
            nic.push_str(p);
        }
        let qemu_args = [
            "-chardev".to_string(),
            format!("socket,id=c0,path={},reconnect-ms=1000", socket.display()),
            "-netdev".to_string(),
            format!("vhost-user,id=n0,chardev=c0,queues={queues}"),
            "-device".to_string(),
            nic,
        ];
        let config = GuestConfig::new(&shell_script(GUEST_NET_SETUP)).qemu_args(qemu_args);
        let mut guest = Guest::boot(&lab, dir.path(), config);
        let up = guest.wait_for("VDPAD-NET-UP", BOOT_TIMEOUT);
        note(t0, &format!("guest: {up}"));
        assert!(
            up.contains("driver=virtio_net"),
            "eth0 is not the virtio-net NIC: {up}{}",
            guest.tail()
        );
        let shell = GuestShell::attach(guest, BOOT_TIMEOUT);
        Rig {
            shell,
            _iperf_server: iperf_server,
            daemon,
            ns,
            dir,
            device: name,
            rings,
            t0,
        }
    }

    fn note(&self, msg: &str) {
        note(self.t0, msg);
    }

    /// Runs `cmd` in the guest.
    fn guest(&mut self, cmd: &str) -> CmdResult {
        self.shell.run(cmd, CMD_TIMEOUT)
    }

    /// The guest NIC's negotiated virtio features, as the `0`/`1` string of sysfs
    /// (position = bit number).
    fn guest_features(&mut self) -> String {
        self.guest("cat /sys/class/net/eth0/device/features")
            .ok()
            .output
            .trim()
            .to_string()
    }

    /// `count` pings from the guest to the namespace side (0.2 s apart).
    fn ping_from_guest(&mut self, count: u32) -> PingSummary {
        let r = self.guest(&format!(
            "timeout 60 ping -c {count} -i 0.2 -W 5 {PEER_ADDR}"
        ));
        let p = parse_ping(&r.output)
            .unwrap_or_else(|| panic!("no ping summary from the guest:\n{}", r.output));
        println!("RESULT ping guest -> {PEER_ADDR}: {}", p.summary());
        p
    }

    /// `count` pings from the namespace to the guest (0.2 s apart).
    fn ping_from_ns(&mut self, count: u32) -> PingSummary {
        support::tapnet::ping_guest_from(&self.ns, count)
    }

    /// Asserts 0 % loss of `p`, with the logs.
    fn assert_no_loss(&self, what: &str, p: &PingSummary) {
        assert!(
            p.transmitted > 0 && p.received == p.transmitted,
            "{what}: {}{}{}",
            p.summary(),
            self.shell.guest.tail(),
            self.daemon.tail()
        );
    }

    /// An iperf3 TCP run from the guest's client to the namespace's server with
    /// `streams` parallel streams; `reverse` makes the namespace send (`-R`). Asserts
    /// that data moved; prints the rate.
    fn iperf(&mut self, reverse: bool, streams: u32) -> IperfSummary {
        let (flag, what) = if reverse {
            ("-R", format!("{PEER_ADDR} -> guest"))
        } else {
            ("", format!("guest -> {PEER_ADDR}"))
        };
        let r = self.guest(&format!(
            "TMPDIR=/run timeout {limit} chroot /host /usr/bin/iperf3 -c {PEER_ADDR} \
             -t {IPERF_SECONDS} -P {streams} --connect-timeout 5000 -J {flag}",
            limit = IPERF_SECONDS + 40
        ));
        let s = parse_iperf3(&r.output).unwrap_or_else(|e| {
            panic!(
                "iperf3 {what} (rc {}): {e}\n{}{}{}",
                r.rc,
                r.output,
                support::log_tail(&self.dir.join("iperf3-server.log"), 20),
                self.daemon.tail()
            )
        });
        println!(
            "RESULT iperf3 TCP {what}, {streams} stream(s), {IPERF_SECONDS} s: {:.0} Mbit/s \
             ({} bytes received, {} retransmits)",
            s.mbit_s(),
            s.received_bytes,
            s.retransmits
        );
        assert!(
            s.received_bytes > 0 && s.sent_bytes > 0,
            "iperf3 {what} moved no data: {s:?}\n{}",
            r.output
        );
        s
    }

    /// vdpad's SIGUSR1 dump of the device, its per-ring counters printed.
    fn dump(&mut self) -> StatsDump {
        let device = self.device.clone();
        let d = dump(&mut self.daemon, &device);
        println!(
            "RESULT vdpad {device}: state {} running pairs {:?}",
            d.state, d.running_pairs
        );
        for q in &d.queues {
            println!("RESULT vdpad {}", q.summary());
        }
        d
    }

    /// vdpad's per-ring counters (SIGUSR1 dump), printed.
    fn stats(&mut self) -> Vec<QueueStat> {
        self.dump().queues
    }

    /// Asserts that exactly `pairs` run in vdpad (waiting up to 5 s for the frontend's
    /// ring enables and disables to arrive).
    fn assert_running_pairs(&mut self, pairs: &[u16]) {
        let mut running = Vec::new();
        for _ in 0..10 {
            running = self.dump().running_pairs;
            if running == pairs {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "running queue pairs {running:?}, want {pairs:?}{}",
            self.daemon.tail()
        );
    }

    /// The guest's count of UDP datagrams that arrived for a closed port
    /// (`Udp: NoPorts` of /proc/net/snmp).
    fn guest_udp_noports(&mut self) -> u64 {
        let snmp = self.guest("cat /proc/net/snmp").ok().output;
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (udp.next(), udp.next());
        let (Some(names), Some(values)) = (names, values) else {
            panic!("no Udp lines in /proc/net/snmp:\n{snmp}");
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "NoPorts")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no Udp NoPorts in /proc/net/snmp:\n{snmp}"))
    }

    /// Sends one UDP datagram from each of `flows` source ports in the namespace to a
    /// closed port of the guest, and asserts that every one arrived: the kernel
    /// spreads these flows over the backend's queues (tap queues, fanout members), and
    /// none may land on a queue that no running pair reads.
    fn udp_flows_all_arrive(&mut self, flows: u16) {
        let before = self.guest_udp_noports();
        let script = format!(
            "import socket, time\n\
             for port in range(20000, 20000 + {flows}):\n\
             \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             \x20   s.bind(('{PEER_ADDR}', port))\n\
             \x20   s.sendto(b'vdpad-flow', ('{GUEST_ADDR}', 9))\n\
             \x20   s.close()\n\
             \x20   time.sleep(0.002)\n"
        );
        let out = self.ns.exec("python3", &["-c", &script]);
        assert!(
            out.status.success(),
            "UDP sender in the namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = before + u64::from(flows);
        let mut got = before;
        for _ in 0..20 {
            got = self.guest_udp_noports();
            if got >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        println!(
            "RESULT {} of {flows} UDP flows from {} reached the guest",
            got - before,
            self.ns.name()
        );
        assert_eq!(
            got - before,
            u64::from(flows),
            "UDP datagrams from {flows} source ports: some flows were lost{}",
            self.daemon.tail()
        );
    }

    /// Ping both ways with 0 % loss and iperf3 both ways with data moved.
    fn check_connectivity(&mut self) {
        let p = self.ping_from_guest(20);
        self.assert_no_loss("ping from the guest", &p);
        let p = self.ping_from_ns(10);
        self.assert_no_loss("ping from the namespace", &p);
        self.iperf(false, 1);
        self.iperf(true, 1);
        let stats = self.stats();
        for q in &stats {
            assert!(
                q.packets > 0,
                "ring {} moved nothing: {}{}",
                q.ring,
                q.summary(),
                self.daemon.tail()
            );
            assert_eq!(q.bad_descriptors, 0, "{}", q.summary());
        }
    }

    /// Turns on `pairs` queue pairs in the guest (`ethtool -L eth0 combined N`).
    fn enable_pairs(&mut self, pairs: u16) {
        self.guest(&format!("chroot /host ethtool -L eth0 combined {pairs}"))
            .ok();
        let l = self.guest("chroot /host ethtool -l eth0").ok().output;
        let current = l
            .split("Current hardware settings:")
            .nth(1)
            .and_then(|s| s.lines().find(|l| l.starts_with("Combined:")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u16>().ok());
        assert_eq!(current, Some(pairs), "ethtool -l eth0:\n{l}");
        self.note(&format!("guest: ethtool -L eth0 combined {pairs}"));
    }

    /// Parallel TCP flows in both directions until every ring has moved packets
    /// (at most three rounds: flows are spread over the pairs by hash, so one round of
    /// 8 flows per direction leaves a pair idle only with probability ~1/64). Returns
    /// the last counters.
    fn traffic_on_every_ring(&mut self) -> Vec<QueueStat> {
        let mut stats = Vec::new();
        for round in 1..=3 {
            self.iperf(false, 8);
            self.iperf(true, 8);
            stats = self.stats();
            let idle: Vec<u16> = stats
                .iter()
                .filter(|q| q.packets == 0)
                .map(|q| q.ring)
                .collect();
            self.note(&format!("round {round}: idle rings {idle:?}"));
            if idle.is_empty() {
                break;
            }
        }
        stats
    }

    /// Asserts that rings 0 .. 2*pairs all moved packets.
    fn assert_every_ring_moved(&self, stats: &[QueueStat]) {
        let rings: Vec<u16> = stats.iter().map(|q| q.ring).collect();
        assert_eq!(
            rings,
            (0..self.rings as u16).collect::<Vec<_>>(),
            "rings in the dump"
        );
        let lines: Vec<String> = stats.iter().map(QueueStat::summary).collect();
        for q in stats {
            assert!(
                q.packets > 0,
                "ring {} ({}) carried no packets:\n{}{}",
                q.ring,
                q.dir,
                lines.join("\n"),
                self.daemon.tail()
            );
        }
    }

    /// Ends the guest's command loop and checks that the guest booted exactly once.
    fn finish(self) {
        let t0 = self.t0;
        let reboots = self.shell.guest.console().matches(READY).count();
        assert_eq!(reboots, 1, "the guest rebooted{}", self.shell.guest.tail());
        let rc = self.shell.stop(Duration::from_secs(60));
        assert_eq!(rc, 0, "guest script failed");
        note(t0, "done");
        println!("RESULT wall time {:.1} s", t0.elapsed().as_secs_f64());
    }
}

/// Whether the features string has bit `bit` set.
/// Whether the guest's `features` string (one character per bit, bit 0 first) has the
/// bit of `mask` set.
fn has_feature(features: &str, mask: u64) -> bool {
    features.as_bytes().get(mask.trailing_zeros() as usize) == Some(&b'1')
}

/// A tap device named [`TAP`] with `pairs` queue pairs.
fn tap_device(pairs: u16) -> SwDevice {
    let mut d = SwDevice::new("swtap0", SwBackend::Tap(TAP.to_string()));
    d.queue_pairs = pairs;
    d.mac = MAC.to_string();
    d
}

/// AF_PACKET on [`VETH_DEV`] with `pairs` queue pairs.
fn af_packet_device(pairs: u16) -> SwDevice {
    let mut d = SwDevice::new("swpkt0", SwBackend::AfPacket(VETH_DEV.to_string()));
    d.queue_pairs = pairs;
    d.mac = MAC.to_string();
    d
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn tap_ping_and_iperf3_both_ways() {
    let mut rig = Rig::start("swg-tap", HostSide::DaemonTap, tap_device(1), &[]);
    rig.check_connectivity();
    rig.finish();
}

/// Two queue pairs offered: the guest (one vCPU) starts with one pair in use, and
/// every flow from the namespace still reaches it; with `ethtool -L eth0 combined 2`
/// both pairs run and all four rings carry packets; back to one pair, every flow
/// arrives again.
fn two_pairs_test(mut rig: Rig) {
    let features = rig.guest_features();
    assert!(
        has_feature(&features, VIRTIO_NET_F_MQ),
        "MQ not negotiated: {features}"
    );
    let p = rig.ping_from_guest(10);
    rig.assert_no_loss("ping from the guest, one pair in use", &p);
    rig.assert_running_pairs(&[0]);
    rig.udp_flows_all_arrive(200);

    rig.enable_pairs(2);
    rig.assert_running_pairs(&[0, 1]);
    let p = rig.ping_from_guest(10);
    rig.assert_no_loss("ping from the guest, two pairs", &p);
    let before = rig.stats();
    rig.udp_flows_all_arrive(200);
    let after = rig.stats();
    // 200 flows over two attached queues: both RX rings get some (all on one queue
    // has probability 2^-199).
    for ring in [0, 2] {
        let moved = |s: &[QueueStat]| s.iter().find(|q| q.ring == ring).map_or(0, |q| q.packets);
        let delta = moved(&after) - moved(&before);
        println!("RESULT UDP flows on RX ring {ring}: {delta}");
        assert!(delta > 0, "RX ring {ring} got none of the 200 UDP flows");
    }
    let stats = rig.traffic_on_every_ring();
    rig.assert_every_ring_moved(&stats);

    rig.enable_pairs(1);
    rig.assert_running_pairs(&[0]);
    rig.udp_flows_all_arrive(200);
    let p = rig.ping_from_ns(10);
    rig.assert_no_loss("ping from the namespace, back to one pair", &p);
    rig.iperf(true, 8);
    rig.finish();
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn tap_two_queue_pairs() {
    two_pairs_test(Rig::start(
        "swg-mq",
        HostSide::DaemonTap,
        tap_device(2),
        &[],
    ));
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn af_packet_two_queue_pairs() {
    two_pairs_test(Rig::start(
        "swg-afp-mq",
        HostSide::Veth,
        af_packet_device(2),
        &[],
    ));
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn tap_guest_without_mrg_rxbuf() {
    let mut rig = Rig::start(
        "swg-nomrg",
        HostSide::DaemonTap,
        tap_device(1),
        &["mrg_rxbuf=off"],
    );
    let features = rig.guest_features();
    assert!(
        !has_feature(&features, VIRTIO_NET_F_MRG_RXBUF),
        "the guest still negotiated MRG_RXBUF: {features}"
    );
    rig.check_connectivity();
    rig.finish();
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn tap_guest_without_event_idx() {
    let mut rig = Rig::start(
        "swg-noevidx",
        HostSide::DaemonTap,
        tap_device(1),
        &["event_idx=off"],
    );
    let features = rig.guest_features();
    assert!(
        !has_feature(&features, VIRTIO_RING_F_EVENT_IDX),
        "the guest still negotiated EVENT_IDX: {features}"
    );
    rig.check_connectivity();
    rig.finish();
}

/// The latency/throughput knobs with a real guest: busy polling (100 µs) and RX
/// interrupt coalescing (32 frames / 50 µs) on: ping and iperf3 still work both ways,
/// and the counters show what the knobs do (fewer TX kicks, fewer RX interrupts).
#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn tap_busy_poll_and_rx_coalescing() {
    let mut device = tap_device(1);
    device.busy_poll_us = Some(100);
    device.rx_coalesce = Some((32, 50));
    device.cpus = vec![0];
    let mut rig = Rig::start("swg-knobs", HostSide::DaemonTap, device, &[]);
    rig.check_connectivity();
    rig.finish();
}

/// Two queue pairs carry traffic; vdpad is SIGKILLed (the guest's pings now fail),
/// started again in the namespace, and QEMU's reconnect brings the same guest back:
/// ping with 0 % loss both ways, iperf3, and both pairs busy again.
fn restart_test(tag: &str, host_side: HostSide) {
    let mut rig = Rig::start(tag, host_side, tap_device(2), &[]);
    rig.enable_pairs(2);
    let p = rig.ping_from_guest(5);
    rig.assert_no_loss("ping before the restart", &p);
    let before = rig.traffic_on_every_ring();
    rig.assert_every_ring_moved(&before);

    let status = rig.daemon.kill9();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "vdpad was not killed by SIGKILL: {status}"
    );
    rig.note("vdpad killed (SIGKILL)");
    let tap_left = support::netns::ip(&["-n", rig.ns.name(), "link", "show", TAP]).is_ok();
    match host_side {
        HostSide::PersistentTap => assert!(tap_left, "the persistent tap went away"),
        _ => assert!(!tap_left, "vdpad's own tap outlived it"),
    }
    let down = rig.guest(&format!("timeout 20 ping -c 3 -i 0.3 -W 1 {PEER_ADDR}"));
    assert_ne!(
        down.rc, 0,
        "the guest reached {PEER_ADDR} with vdpad dead:\n{}",
        down.output
    );

    let restarted = Instant::now();
    rig.daemon.restart();
    rig.note("vdpad restarted");
    if host_side == HostSide::DaemonTap {
        // The new daemon made a new tap: the namespace's address went with the old one.
        rig.ns.addr(TAP, &format!("{PEER_ADDR}/24"));
    }
    let mut tries = 0;
    let recovered = support::poll(RECOVER_TIMEOUT, Duration::from_millis(200), || {
        tries += 1;
        let r = rig.guest(&format!("timeout 10 ping -c 1 -W 1 {PEER_ADDR}"));
        (r.rc == 0).then_some(())
    });
    assert!(
        recovered.is_some(),
        "no connectivity {RECOVER_TIMEOUT:?} after the restart{}{}",
        rig.shell.guest.tail(),
        rig.daemon.tail()
    );
    println!(
        "RESULT connectivity back {:.1} s after the restart ({tries} ping attempts)",
        restarted.elapsed().as_secs_f64()
    );
    rig.assert_running_pairs(&[0, 1]);
    let p = rig.ping_from_guest(20);
    rig.assert_no_loss("ping from the guest after the restart", &p);
    let p = rig.ping_from_ns(10);
    rig.assert_no_loss("ping from the namespace after the restart", &p);
    let after = rig.traffic_on_every_ring();
    rig.assert_every_ring_moved(&after);
    rig.finish();
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn tap_restart_persistent_tap() {
    restart_test("swg-restart-ptap", HostSide::PersistentTap);
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn tap_restart_daemon_created_tap() {
    restart_test("swg-restart-dtap", HostSide::DaemonTap);
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn af_packet_ping_and_iperf3_both_ways() {
    let mut rig = Rig::start("swg-afp", HostSide::Veth, af_packet_device(1), &[]);
    rig.check_connectivity();
    rig.finish();
}
