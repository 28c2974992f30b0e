//! Multiqueue on an offloaded device whose NIC switches pairs on through its control
//! queue (VIRTIO_NET_F_MQ + VIRTIO_NET_F_CTRL_VQ: the spec way, as QEMU's virtio-net
//! with `mq=on` does it), with a real Linux guest (docs/offload.md, "Multiqueue").
//!
//! * `guest_ethtool_switches_the_nics_pairs_through_its_control_queue` (lab): the
//!   control plane runs in this test process with the offload datapath on the
//!   simulated NIC (`SimConfig::control_queue`: pair 0 only until VQ_PAIRS_SET; flows
//!   received on its tap, in a private namespace with 192.0.2.1/24, are spread over
//!   the pairs in use). QEMU boots the one-vCPU lab guest with `queues=2`, `mq=on`:
//!   1. the guest starts with one pair: it pings with 0 % loss and the NIC uses one
//!      pair, no control command sent;
//!   2. `ethtool -L eth0 combined 2`: QEMU enables pair 1 (SET_VRING_ENABLE), vdpad
//!      programs it on the NIC and sends VQ_PAIRS_SET 2 on the NIC's control queue;
//!      parallel TCP flows both ways (iperf3, at most three rounds) move packets on
//!      all four rings, by vdpad's per-ring counters;
//!   3. `ethtool -L eth0 combined 1`: the NIC is told 1 pair again and the guest still
//!      pings with 0 % loss.
//!
//!   No DMA fault on the NIC's IOMMU at any point.
//!
//! Run: `cargo test -p vdpad-tests --test offload_multiqueue -- --include-ignored --nocapture`.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hwdrv::{SimConfig, SimNic};
use support::guest::{Guest, GuestConfig};
use support::guest_shell::{shell_script, CmdResult, GuestShell};
use support::lab::Lab;
use support::netns::Netns;
use support::note;
use support::process::{Proc, Spawn};
use support::sim_served::{init_logging, sim_device_config, tap_in_namespace, SimServed, MAC};
use support::tapnet::{GUEST_NET_SETUP, PEER_ADDR};
use support::tmp::TempDir;
use support::traffic::{parse_iperf3, parse_ping};

/// Bound on the guest's boot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on one guest command.
const CMD_TIMEOUT: Duration = Duration::from_secs(90);
/// Seconds of each iperf3 run.
const IPERF_SECONDS: u32 = 2;

struct Bench {
    t0: Instant,
    shell: GuestShell,
    nic: Arc<SimNic>,
    served: SimServed,
    dir: TempDir,
    _iperf_server: Proc,
    _ns: Netns,
}

impl Bench {
    fn guest(&mut self, cmd: &str) -> CmdResult {
        self.shell.run(cmd, CMD_TIMEOUT)
    }

    /// Pings from the guest with 0 % loss.
    fn pings(&mut self, count: u64) {
        let r = self.guest(&format!(
            "timeout 60 ping -c {count} -i 0.2 -W 5 {PEER_ADDR}"
        ));
        let p = parse_ping(&r.output)
            .unwrap_or_else(|| panic!("no ping summary from the guest:\n{}", r.output));
        println!("RESULT ping guest -> {PEER_ADDR}: {}", p.summary());
        assert!(
            p.transmitted == count && p.received == count,
            "{}{}",
            p.summary(),
            self.shell.guest.tail()
        );
    }

    /// `ethtool -L eth0 combined N`, checked with `ethtool -l`.
    fn combined(&mut self, pairs: u16) {
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
        note(self.t0, &format!("guest: ethtool -L eth0 combined {pairs}"));
    }

    /// Waits (bounded) until the NIC uses `pairs` pairs.
    fn nic_uses(&self, pairs: u16) {
        let start = Instant::now();
        while self.nic.pairs_in_use() != pairs && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            self.nic.pairs_in_use(),
            pairs,
            "the NIC was not told: {} control commands, running rings {:?}",
            self.nic.control_commands(),
            self.served.stats()
        );
    }

    /// An iperf3 TCP run between the guest and the namespace, `streams` flows.
    fn iperf(&mut self, reverse: bool, streams: u32) {
        let flag = if reverse { "-R" } else { "" };
        let r = self.guest(&format!(
            "TMPDIR=/run timeout {limit} chroot /host /usr/bin/iperf3 -c {PEER_ADDR} \
             -t {IPERF_SECONDS} -P {streams} --connect-timeout 5000 -J {flag}",
            limit = IPERF_SECONDS + 40
        ));
        let s = parse_iperf3(&r.output).unwrap_or_else(|e| {
            panic!(
                "iperf3 {flag} (rc {}): {e}\n{}{}",
                r.rc,
                r.output,
                support::log_tail(&self.dir.join("iperf3-server.log"), 20)
            )
        });
        println!(
            "RESULT iperf3 TCP {}, {streams} flows, {IPERF_SECONDS} s: {:.0} Mbit/s",
            if reverse {
                "namespace -> guest"
            } else {
                "guest -> namespace"
            },
            s.mbit_s()
        );
        assert!(s.received_bytes > 0, "iperf3 moved no data: {s:?}");
    }

    /// Packets per ring, by vdpad's counters.
    fn ring_packets(&self) -> Vec<(u16, u64)> {
        self.served
            .stats()
            .iter()
            .map(|q| (q.ring, q.packets))
            .collect()
    }
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn guest_ethtool_switches_the_nics_pairs_through_its_control_queue() {
    let t0 = Instant::now();
    init_logging();
    let lab = Lab::require();
    let dir = TempDir::new("offload-mq");
    let ns = Netns::new();
    let tap = tap_in_namespace(&ns, "vdq0");
    let cfg = SimConfig {
        control_queue: true,
        max_pairs: 2,
        msix_vectors: 6,
        ..Default::default()
    };
    let nic = Arc::new(SimNic::new(cfg, Box::new(tap)).expect("simulated NIC"));
    let mut device = sim_device_config(&dir, "mqguest0");
    device.queue_pairs = 2;
    let served = SimServed::start(&device, nic.clone());
    let iperf_server = ns.spawn(
        Spawn::new("iperf3-server", "iperf3", dir.join("iperf3-server.log"))
            .args(["-s"])
            .limit(Duration::from_secs(600)),
    );
    let config = GuestConfig::new(&shell_script(GUEST_NET_SETUP)).qemu_args([
        "-chardev".to_string(),
        format!("socket,id=c0,path={}", served.socket.display()),
        "-netdev".to_string(),
        "vhost-user,id=n0,chardev=c0,queues=2".to_string(),
        "-device".to_string(),
        format!("virtio-net-pci,netdev=n0,mac={MAC},mq=on,vectors=6,romfile="),
    ]);
    let mut guest = Guest::boot(&lab, dir.path(), config);
    let up = guest.wait_for("VDPAD-NET-UP", BOOT_TIMEOUT);
    note(t0, &format!("guest: {up}"));
    let shell = GuestShell::attach(guest, BOOT_TIMEOUT);
    let mut b = Bench {
        t0,
        shell,
        nic,
        served,
        dir,
        _iperf_server: iperf_server,
        _ns: ns,
    };

    // 1. One pair, as the one-vCPU guest starts.
    b.pings(5);
    b.nic_uses(1);
    assert_eq!(b.nic.control_commands(), 0, "one pair needs no command");

    // 2. Both pairs.
    b.combined(2);
    b.nic_uses(2);
    let mut packets = Vec::new();
    for round in 1..=3 {
        b.iperf(false, 8);
        b.iperf(true, 8);
        packets = b.ring_packets();
        note(t0, &format!("round {round}: packets per ring {packets:?}"));
        if packets.len() == 4 && packets.iter().all(|&(_, n)| n > 0) {
            break;
        }
    }
    println!(
        "RESULT offload multiqueue (simulated NIC, control queue): packets per ring \
         {packets:?}, {} control commands",
        b.nic.control_commands()
    );
    assert_eq!(packets.len(), 4, "both pairs run: {packets:?}");
    assert!(
        packets.iter().all(|&(_, n)| n > 0),
        "a ring moved nothing: {packets:?}"
    );

    // 3. Back to one pair.
    b.combined(1);
    b.nic_uses(1);
    b.pings(5);
    assert!(
        b.nic.control_commands() >= 2,
        "{}",
        b.nic.control_commands()
    );
    assert_eq!(b.nic.dma_faults(), 0, "{:?}", b.nic.last_dma_fault());
    let _ = b.shell.stop(Duration::from_secs(30));
}
