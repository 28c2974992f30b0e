//! The offload datapath under a real Linux guest, and the daemon's fallback.
//!
//! * `linux_guest_pings_through_offload_over_the_simulated_nic` (lab): the control
//!   plane runs in this test process with the offload datapath on the simulated NIC
//!   (`hwdrv::SimNic`, IOMMU-checked DMA), whose port is a tap in a private network
//!   namespace holding 192.0.2.1/24. QEMU boots the lab guest with `-netdev
//!   vhost-user` on the device's socket; the guest's Linux virtio-net driver owns the
//!   rings the simulated NIC processes, and `eth0` (192.0.2.2/24) pings 192.0.2.1 with
//!   0 % loss. The vdpad binary cannot use a simulated NIC, hence in-process.
//! * `offload_fallback_to_software_when_vfio_cannot_open` (plain `cargo test`): the
//!   daemon (`vdpad::daemon::Daemon`) with `mode = "offload"` on a PCI function that
//!   does not exist: with `fallback = true` it serves the device in software (the
//!   reason names the failed VFIO open) and the rig's verify passes through it; with
//!   `fallback = false` starting fails with an error naming the device and the cause.
//! * `injected_frames_reach_rig_listen_through_simulated_offload` (plain `cargo
//!   test`): frames injected on the simulated NIC's link arrive in `vdpa-rig`'s
//!   `listen` workload byte for byte, through the offload datapath.
//!
//! * `a_frontend_truncating_its_memory_stops_only_its_offloaded_device` (plain `cargo
//!   test`): two offloaded devices on simulated NICs; one frontend truncates its guest
//!   memory; the fault is contained, that device closes the connection and serves the
//!   next frontend, the other one never stops moving frames.
//! * `a_migration_moves_an_offloaded_device_to_software_and_back` (plain `cargo
//!   test`): an offload device on the simulated NIC with its software fallback
//!   offers live migration (VHOST_F_LOG_ALL) although the NIC cannot log; a rig that
//!   plays a migrating QEMU (dirty log shared, LOG_ALL acked) is served by the
//!   software datapath, which marks the pages it writes, and the next connection
//!   without a log is served by the NIC again.
//!
//! Run: `cargo test -p vdpad-tests --test offload_guest -- --include-ignored --nocapture`.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hwdrv::sim::{ChannelLink, LoopbackLink};
use hwdrv::{OffloadDatapath, SimConfig, SimNic};
use support::guest::{Guest, GuestConfig, READY};
use support::lab::Lab;
use support::netns::Netns;
use support::note;
use support::tmp::TempDir;
use vdpa::server::{DeviceServer, Shutdown};
use vdpa::Device;
use vdpa_rig::{run_listen, run_verify, ListenOptions, Rig, RigOptions, VerifyOptions};
use vdpad_config::Config;

use support::sim_served::{
    config, init_logging, sim_device_config, tap_in_namespace, SimServed, MAC, NO_SUCH_PCI,
};

/// Guest side, in three phases, each ending with 10 pings from eth0 (192.0.2.2/24)
/// to the tap's 192.0.2.1 that must all be answered:
///
/// 1. `first`: right after boot;
/// 2. `rebind`: after unbinding and binding the virtio-net driver, which resets the
///    device: QEMU stops the rings (GET_VRING_BASE) and starts them again;
/// 3. `reconnect`: after the host restarted the backend (a new datapath on the same
///    NIC): QEMU reconnects and resumes the rings at the index where they were.
const PING_SCRIPT: &str = r#"
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
up() {
  i=0
  while [ ! -e /sys/class/net/eth0 ]; do i=$((i + 1)); [ $i -gt 100 ] && return 1; sleep 0.1; done
  ip link set eth0 up
  ip addr add 192.0.2.2/24 dev eth0 2>/dev/null
  drv=$(basename "$(readlink /sys/class/net/eth0/device/driver)")
  echo "VDPAD-NET-UP dev=eth0 driver=$drv features=$(cat /sys/class/net/eth0/device/features)"
}
# The first answer may take a moment (ARP, a reconnecting backend): up to 30 tries.
reach() {
  i=0
  until ping -c 1 -W 1 192.0.2.1 >/dev/null 2>&1; do i=$((i + 1)); [ $i -ge 30 ] && return 1; done
}
phase() {
  reach
  ping -c 10 -i 0.2 -W 2 192.0.2.1 > /lab/ping-$1.log 2>&1
  rc=$?
  s=/sys/class/net/eth0/statistics
  echo "VDPAD-PING phase=$1 rc=$rc $(grep 'packets transmitted' /lab/ping-$1.log) rx=$(cat $s/rx_packets) tx=$(cat $s/tx_packets)"
  return $rc
}
up || exit 1
phase first || exit 1
vdev=$(basename "$(readlink /sys/class/net/eth0/device)")
echo $vdev > /sys/bus/virtio/drivers/virtio_net/unbind
echo $vdev > /sys/bus/virtio/drivers/virtio_net/bind
up || exit 1
phase rebind || exit 1
echo "VDPAD-WAIT-RESTART"
i=0
while [ ! -e /lab/restarted ]; do i=$((i + 1)); [ $i -gt 600 ] && exit 1; sleep 0.1; done
phase reconnect
"#;

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn linux_guest_pings_through_offload_over_the_simulated_nic() {
    let t0 = Instant::now();
    init_logging();
    let lab = Lab::require();
    let dir = TempDir::new("offload-guest");
    let ns = Netns::new();
    let tap = tap_in_namespace(&ns, "vdo0");
    let nic = Arc::new(SimNic::new(SimConfig::default(), Box::new(tap)).expect("simulated NIC"));
    let cfg = sim_device_config(&dir, "simoff0");
    let mut served = SimServed::start(&cfg, nic.clone());
    note(
        t0,
        &format!(
            "offload over {} serving {} (namespace {})",
            nic.link(),
            served.socket.display(),
            ns.name()
        ),
    );

    let config = GuestConfig::new(PING_SCRIPT).qemu_args([
        "-chardev".to_string(),
        format!(
            "socket,id=c0,path={},reconnect-ms=1000",
            served.socket.display()
        ),
        "-netdev".to_string(),
        "vhost-user,id=n0,chardev=c0".to_string(),
        "-device".to_string(),
        format!("virtio-net-pci,netdev=n0,mac={MAC},romfile="),
    ]);
    let mut guest = Guest::boot(&lab, dir.path(), config);
    let booted = Instant::now();
    let ready = guest.wait_for(READY, Duration::from_secs(120));
    note(t0, &format!("guest: {ready}"));
    let up = guest.wait_for("VDPAD-NET-UP", Duration::from_secs(30));
    note(t0, &format!("guest: {up}"));
    assert!(up.contains("driver=virtio_net"), "{up}{}", guest.tail());
    let nic_state = |nic: &SimNic| {
        format!(
            "NIC: tx {} rx {} rx_dropped {} doorbells {} (page {}) dma_faults {}",
            nic.tx_frames(),
            nic.rx_frames(),
            nic.rx_dropped(),
            nic.doorbells(),
            nic.page_doorbells(),
            nic.dma_faults()
        )
    };
    let mut pings = Vec::new();
    for phase in ["first", "rebind"] {
        let line = guest.wait_for(
            &format!("VDPAD-PING phase={phase} "),
            Duration::from_secs(90),
        );
        note(t0, &format!("guest: {line}; {}", nic_state(&nic)));
        pings.push(line);
    }
    guest.wait_for("VDPAD-WAIT-RESTART", Duration::from_secs(30));
    // The backend goes away (QEMU sees the socket close) and comes back on the same
    // socket with a new datapath on the same NIC; QEMU reconnects within a second.
    served.stop();
    note(t0, &format!("backend stopped; {}", nic_state(&nic)));
    served = SimServed::start(&cfg, nic.clone());
    std::fs::write(guest.share().join("restarted"), b"1\n").expect("write /lab/restarted");
    note(t0, "backend restarted on the same socket");
    let line = guest.wait_for("VDPAD-PING phase=reconnect ", Duration::from_secs(90));
    note(t0, &format!("guest: {line}; {}", nic_state(&nic)));
    pings.push(line);
    // The restarted device's counters saw the reconnect phase: at least its 10 echo
    // requests (TX, 98-byte frames) and replies (RX), packets and bytes counted from
    // the used rings in guest memory (sampled every 10 ms).
    let counted = support::poll(Duration::from_secs(2), Duration::from_millis(50), || {
        let stats = served.stats();
        let total = |dir: &str| -> (u64, u64) {
            stats
                .iter()
                .filter(|q| q.direction == dir)
                .fold((0, 0), |(p, b), q| (p + q.packets, b + q.bytes))
        };
        let (rx, tx) = (total("rx"), total("tx"));
        (rx.0 >= 10 && tx.0 >= 10 && rx.1 >= 980 && tx.1 >= 980).then_some((rx, tx))
    });
    let ((rx_packets, rx_bytes), (tx_packets, tx_bytes)) =
        counted.unwrap_or_else(|| panic!("offload counters did not move: {:?}", served.stats()));
    println!(
        "RESULT offload counters after the reconnect phase: rx {rx_packets} packets \
         {rx_bytes} bytes, tx {tx_packets} packets {tx_bytes} bytes"
    );
    let rc = guest.wait_exit(Duration::from_secs(60));
    note(
        t0,
        &format!(
            "guest finished {:.1} s after QEMU started",
            booted.elapsed().as_secs_f64()
        ),
    );
    for (phase, line) in ["first", "rebind", "reconnect"].iter().zip(&pings) {
        let log = support::read_log(&guest.share().join(format!("ping-{phase}.log")));
        assert!(
            line.contains("rc=0")
                && line.contains("10 packets transmitted, 10 packets received, 0% packet loss"),
            "phase {phase}: {line}\n{log}{}",
            guest.tail()
        );
    }
    assert_eq!(rc, 0, "guest script failed{}", guest.tail());
    assert!(
        nic.tx_frames() >= 30 && nic.rx_frames() >= 30,
        "the NIC moved too little: {}",
        nic_state(&nic)
    );
    assert_eq!(
        nic.dma_faults(),
        0,
        "IOMMU faults: {:?}",
        nic.last_dma_fault()
    );
    // Without page-per-vq QEMU refuses the host notifiers vdpad offers: every kick
    // goes through the kick relay, and traffic flows as above.
    assert_eq!(nic.page_doorbells(), 0, "{}", nic_state(&nic));
    let relayed: u64 = served.stats().iter().map(|q| q.kicks).sum();
    assert!(relayed > 0, "no kick relayed: {:?}", served.stats());
    served.stop();
    note(t0, "done");
}

/// A configuration with one offload device on a missing PCI function, falling back
/// (or not) to the loopback backend.
fn missing_pci_config(dir: &TempDir, fallback: bool) -> Config {
    config(&format!(
        "[daemon]\nrun_dir = \"{run}\"\ncontrol_socket = \"control.sock\"\n\n[[device]]\n\
         name = \"hw-missing\"\nsocket = \"{sock}\"\nmode = \"offload\"\npci = \"{NO_SUCH_PCI}\"\n\
         fallback = {fallback}\nbackend = \"loopback\"\nmac = \"{MAC}\"\n",
        run = dir.join("run").display(),
        sock = dir.join("hw-missing.sock").display(),
    ))
}

#[test]
fn offload_fallback_to_software_when_vfio_cannot_open() {
    init_logging();
    let dir = TempDir::new("offload-fallback");

    // fallback = true: the device runs in software, and says why.
    let mut daemon = vdpad::daemon::Daemon::start(&missing_pci_config(&dir, true))
        .unwrap_or_else(|e| panic!("the daemon must fall back, not fail: {e:#}"));
    let devices = daemon.devices();
    assert_eq!(devices.len(), 1);
    let d = &devices[0];
    assert_eq!(d.mode, "software", "reason: {}", d.reason);
    assert!(
        d.reason.contains("fallback") && d.reason.contains(&format!("VFIO on {NO_SUCH_PCI}")),
        "the reason must name the failed VFIO open: {}",
        d.reason
    );
    let mut rig = Rig::connect(RigOptions::new(dir.join("hw-missing.sock")))
        .unwrap_or_else(|e| panic!("rig cannot connect: {e}"));
    let report = run_verify(&mut rig, &VerifyOptions::new(1000, 64)).expect("verify ran");
    assert!(
        report.passed(),
        "{}\n{}",
        report.summary(),
        report.failure_details()
    );
    rig.disconnect();
    daemon.stop();

    // fallback = false: starting fails, naming the device and the cause.
    let err = match vdpad::daemon::Daemon::start(&missing_pci_config(&dir, false)) {
        Ok(_) => panic!("the daemon started without VFIO and without fallback"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("hw-missing")
            && err.contains(&format!("VFIO on {NO_SUCH_PCI}"))
            && err.contains("fallback = true"),
        "unclear error: {err}"
    );
    assert!(
        !dir.join("hw-missing.sock").exists(),
        "a failed start left the socket behind"
    );
}

#[test]
fn injected_frames_reach_rig_listen_through_simulated_offload() {
    init_logging();
    let dir = TempDir::new("offload-listen");
    let link = ChannelLink::new();
    let nic = Arc::new(SimNic::new(SimConfig::default(), Box::new(link.clone())).expect("NIC"));
    let cfg = sim_device_config(&dir, "listen0");
    let mut served = SimServed::start(&cfg, nic.clone());
    let mut rig = Rig::connect(RigOptions::new(&served.socket)).expect("rig connects");
    let frames: Vec<Vec<u8>> = (0..16usize)
        .map(|i| {
            let mut f = vec![0u8; 60 + 90 * i];
            f[..6].fill(0xff);
            f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0x05, 0x05]);
            f[12..14].copy_from_slice(&[0x88, 0xb6]);
            for (k, b) in f.iter_mut().enumerate().skip(14) {
                *b = (k * 7 + i) as u8;
            }
            f
        })
        .collect();
    // A frame of another ethertype first: listen must skip it.
    let mut other = frames[0].clone();
    other[13] = 0xb5;
    link.inject(0, &other);
    for f in &frames {
        link.inject(0, f);
    }
    let mut opts = ListenOptions::new(frames.len() as u64);
    opts.ethertype = Some(0x88b6);
    opts.timeout = Duration::from_secs(10);
    let mut got = Vec::new();
    let report = run_listen(&mut rig, &opts, |pair, data| {
        got.push((pair, data.to_vec()))
    })
    .expect("listen ran");
    assert!(report.complete(&opts), "{}", report.summary());
    assert_eq!(report.ignored, 1, "{}", report.summary());
    let want: Vec<(usize, Vec<u8>)> = frames.into_iter().map(|f| (0, f)).collect();
    assert_eq!(got, want);
    assert_eq!(nic.dma_faults(), 0);
    rig.disconnect();
    served.stop();
}

#[test]
fn a_migration_moves_an_offloaded_device_to_software_and_back() {
    init_logging();
    let dir = TempDir::new("offload-migrate");
    let nic =
        Arc::new(SimNic::new(SimConfig::default(), Box::new(LoopbackLink::new())).expect("NIC"));
    let mut cfg = sim_device_config(&dir, "mig0");
    cfg.fallback = true;
    let offload =
        OffloadDatapath::for_device(nic.clone(), &cfg).expect("the simulated NIC can serve");
    let make: vdpa::FallbackFactory = Box::new(|| {
        Ok(Box::new(swpath::SoftwareDatapath::loopback("mig0")) as Box<dyn vdpa::Datapath>)
    });
    let datapath = vdpa::FallbackDatapath::new(Box::new(offload), make, 0).relays_migrations();
    let shutdown = Shutdown::new().expect("shutdown eventfd");
    let server = DeviceServer::start(
        Device::new(cfg.clone(), Box::new(datapath)),
        shutdown.clone(),
    )
    .expect("serve the device");
    let handle = server.handle().clone();
    let verify = |dirty_log: bool| {
        let mut opts = RigOptions::new(&cfg.socket);
        opts.dirty_log = dirty_log;
        let mut rig = Rig::connect(opts).expect("rig connects");
        let report = run_verify(&mut rig, &VerifyOptions::new(2000, 512)).expect("verify ran");
        // Read while the rig is still attached: its hang-up releases the dirty log.
        let serving = (handle.datapath_description(), handle.status());
        rig.disconnect();
        assert!(report.passed(), "{}", report.summary());
        serving
    };

    let (before, _) = verify(false);
    assert!(before.starts_with("offload"), "{before}");
    let (during, status) = verify(true);
    assert!(
        during.starts_with("software/loopback (while a migration logs; offload"),
        "{during}"
    );
    let log = status.dirty_log.expect("a dirty log was shared");
    assert!(log.pages_marked > 0 && log.outside_log == 0, "{log:?}");
    assert_eq!(status.fallback_reason, None, "a relay is not a fallback");
    let relay = status.relay.expect("the relay is reported");
    assert_eq!(
        (relay.relays, relay.since.is_some()),
        (1, true),
        "{relay:?}"
    );
    let (after, status) = verify(false);
    assert!(after.starts_with("offload"), "{after}");
    let relay = status.relay.expect("the relay is still reported");
    assert_eq!((relay.relays, relay.since), (1, None), "{relay:?}");
    assert!(!relay.completed.is_zero(), "{relay:?}");

    // As QEMU does it: logging starts and stops while frames flow on one connection.
    // The rings move from the NIC to the software relay and back where they are.
    let mut rig = Rig::connect(RigOptions::new(&cfg.socket)).expect("rig connects");
    let mut opts = VerifyOptions::new(6000, 512);
    opts.migrate = Some((1000, 4000));
    let report = run_verify(&mut rig, &opts).expect("verify ran");
    let serving = handle.datapath_description();
    let relay = handle.status().relay.expect("the relay is reported");
    rig.disconnect();
    assert!(report.passed(), "{}", report.summary());
    assert!(report.logged.is_some(), "{}", report.summary());
    assert!(serving.starts_with("offload"), "{serving}");
    assert_eq!((relay.relays, relay.since), (2, None), "{relay:?}");
    assert_eq!(nic.dma_faults(), 0);
    shutdown.raise();
    server.join();
}

#[test]
fn a_frontend_truncating_its_memory_stops_only_its_offloaded_device() {
    init_logging();
    let dir = TempDir::new("offload-contain");
    let nic =
        || Arc::new(SimNic::new(SimConfig::default(), Box::new(LoopbackLink::new())).unwrap());
    let (nic_a, nic_b) = (nic(), nic());
    let a = SimServed::start(&sim_device_config(&dir, "hostile0"), nic_a.clone());
    let b = SimServed::start(&sim_device_config(&dir, "other0"), nic_b.clone());
    let mut rig = Rig::connect(RigOptions::new(&a.socket)).expect("rig connects");
    let report = run_verify(&mut rig, &VerifyOptions::new(1000, 512)).expect("verify ran");
    assert!(report.passed(), "{}", report.summary());
    b.verify(1000);

    // The rig's memfd was created without MFD_ALLOW_SEALING: vdpad could not seal it.
    rig.memory().memfd().set_len(0).expect("truncate");
    let end = Instant::now() + Duration::from_secs(10);
    let faulted = |s: &vdpa::DeviceStatus| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("guest memory faulted"))
    };
    while !faulted(&a.status()) && Instant::now() < end {
        b.verify(200);
    }
    let status = a.status();
    assert!(faulted(&status), "{status:#?}");
    let counted: u64 = a
        .stats()
        .iter()
        .map(|s| s.faulted(vdpa::stats::QueueFault::GuestMemory))
        .sum();
    assert_eq!(counted, 1, "{:#?}", a.stats());
    // The rig still maps the truncated file: it must never touch it again.
    std::mem::forget(rig);

    // The other device never noticed; the hostile one serves the next good frontend,
    // offloaded again.
    b.verify(1000);
    a.verify(1000);
    assert_eq!((nic_a.dma_faults(), nic_b.dma_faults()), (0, 0));
    let desc = a.handle().datapath_description();
    assert!(desc.starts_with("offload"), "{desc}");
}
