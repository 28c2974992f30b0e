//! Host notifiers: the guest's kicks reach the NIC's doorbell page directly, with no
//! eventfd and no vdpad thread in between (docs/offload.md, "Host notifiers").
//!
//! * `rig_kicks_reach_the_simulated_nic_through_its_doorbell_pages` (plain `cargo
//!   test`): an offload device on the simulated NIC, whose doorbells each sit alone on
//!   a page of a memfd it watches; `vdpa-rig` asks for host notifiers, maps the pages
//!   vdpad sends (VRING_HOST_NOTIFIER_MSG) and kicks by storing into them. Every kick
//!   of a 5000-frame verify goes through the pages; the kick relay counts none.
//! * `a_nic_whose_doorbells_share_a_page_offers_no_host_notifiers` (plain): the same
//!   NIC with doorbells packed 4 bytes apart: HOST_NOTIFIER is not offered, a rig that
//!   insists is told so, and a plain rig is served through the kick relay.
//! * `what_a_kick_costs_vdpad_on_the_simulated_nic` (plain): `vdpa-rig latency` runs
//!   (every round trip one TX kick), with and without host notifiers, interleaved; for
//!   each, the kick relay thread's wake-ups and CPU time (its `/proc` schedstat, read
//!   while the connection is up) per round trip are printed, and the relay must have
//!   relayed no kick with notifiers and every kick without.
//! * `linux_guest_kicks_the_simulated_nic_through_a_host_notifier` (lab): QEMU with
//!   `virtio-net-pci,page-per-vq=on` maps the pages into the guest (QMP's `info mtree`
//!   lists them); while the guest pings through a tap 20 times with 0 % loss, the
//!   NIC's doorbell pages are written and the kick relay relays nothing.
//!   (`offload_guest`'s guest, without page-per-vq, is the other side: QEMU refuses
//!   the notifiers and every kick goes through the relay.)
//!
//! Run: `cargo test -p vdpad-tests --test host_notifiers -- --include-ignored --nocapture`.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hwdrv::{SimConfig, SimNic};
use serde_json::json;
use support::guest::{Guest, GuestConfig, READY};
use support::lab::Lab;
use support::netns::Netns;
use support::note;
use support::qmp::Qmp;
use support::sim_served::{init_logging, sim_device_config, tap_in_namespace, SimServed, MAC};
use support::tmp::TempDir;
use vdpa_rig::{run_latency, run_verify, LatencyOptions, Rig, RigError, RigOptions, VerifyOptions};

/// Kicks the device's kick relay passed on to the NIC, all rings.
fn relayed_kicks(served: &SimServed) -> u64 {
    served.stats().iter().map(|q| q.kicks).sum()
}

#[test]
fn rig_kicks_reach_the_simulated_nic_through_its_doorbell_pages() {
    init_logging();
    let dir = TempDir::new("hn-rig");
    let nic = Arc::new(SimNic::loopback(SimConfig::default()).expect("simulated NIC"));
    let served = SimServed::start(&sim_device_config(&dir, "hn0"), nic.clone());
    let mut opts = RigOptions::new(&served.socket);
    opts.host_notifiers = true;
    let mut rig = Rig::connect(opts).expect("the rig connects with host notifiers");
    assert_eq!(
        rig.notifier_rings(),
        vec![0, 1],
        "vdpad sent a doorbell page for both rings"
    );
    let (relayed, pages) = (relayed_kicks(&served), nic.page_doorbells());
    let report = run_verify(&mut rig, &VerifyOptions::new(5000, 512)).expect("verify ran");
    rig.disconnect();
    assert!(report.passed(), "{}", report.summary());
    let kicks = report.tx_kicks + report.rx_kicks;
    println!(
        "RESULT host notifiers, rig on the simulated NIC: {} frames, {kicks} kicks, {} through \
         doorbell pages, {} relayed by vdpad, {} page doorbells seen by the NIC",
        report.received,
        report.page_kicks,
        relayed_kicks(&served) - relayed,
        nic.page_doorbells() - pages
    );
    assert!(
        kicks > 0 && report.page_kicks == kicks,
        "{}",
        report.summary()
    );
    assert_eq!(
        relayed_kicks(&served),
        relayed,
        "the kick relay relayed kicks that went through the pages: {:?}",
        served.stats()
    );
    assert!(nic.page_doorbells() > pages, "the NIC saw no page doorbell");
    assert!(nic.watching_doorbell_pages());
    assert_eq!(nic.dma_faults(), 0, "{:?}", nic.last_dma_fault());
}

#[test]
fn a_nic_whose_doorbells_share_a_page_offers_no_host_notifiers() {
    init_logging();
    let dir = TempDir::new("hn-packed");
    let packed = SimConfig {
        doorbell_pages: false,
        ..SimConfig::default()
    };
    let nic = Arc::new(SimNic::loopback(packed).expect("simulated NIC"));
    let served = SimServed::start(&sim_device_config(&dir, "hn1"), nic.clone());
    let mut opts = RigOptions::new(&served.socket);
    opts.host_notifiers = true;
    match Rig::connect(opts) {
        Err(RigError::Unsupported(why)) => assert!(why.contains("HOST_NOTIFIER"), "{why}"),
        other => panic!("host notifiers on packed doorbells: {other:?}"),
    }
    served.verify(500);
    assert!(relayed_kicks(&served) > 0, "{:?}", served.stats());
    assert_eq!(nic.page_doorbells(), 0);
}

/// The kick relay thread of device `name` (`{name}-kick`): CPU time in ns and the
/// number of times it ran, from its schedstat.
fn relay_thread_usage(name: &str) -> Option<(u64, u64)> {
    let want = format!("{name}-kick");
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != want {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        let mut f = stat.split_whitespace().map(|v| v.parse::<u64>().ok());
        let cpu = f.next()??;
        let _wait = f.next()??;
        return Some((cpu, f.next()??));
    }
    None
}

#[test]
fn what_a_kick_costs_vdpad_on_the_simulated_nic() {
    const ROUND_TRIPS: u64 = 1000;
    init_logging();
    let dir = TempDir::new("hn-econ");
    let nic = Arc::new(SimNic::loopback(SimConfig::default()).expect("simulated NIC"));
    let served = SimServed::start(&sim_device_config(&dir, "hn2"), nic.clone());
    for notifiers in [false, true, false, true, false, true] {
        let mut opts = RigOptions::new(&served.socket);
        opts.host_notifiers = notifiers;
        let mut rig = Rig::connect(opts).expect("rig connects");
        // The thread names itself once it runs: give it a moment.
        let relay0 = support::poll(Duration::from_secs(2), Duration::from_millis(10), || {
            relay_thread_usage("hn2")
        })
        .expect("the kick relay thread runs");
        let kicks0 = relayed_kicks(&served);
        let mut lo = LatencyOptions::new(ROUND_TRIPS, 64);
        lo.warmup = 0;
        let report = run_latency(&mut rig, &lo).expect("latency ran");
        let relay1 = relay_thread_usage("hn2").expect("the kick relay thread runs");
        let relayed = relayed_kicks(&served) - kicks0;
        rig.disconnect();
        let (cpu, runs) = (relay1.0 - relay0.0, relay1.1 - relay0.1);
        let trips = report.count as f64;
        println!(
            "RESULT kick economics on the simulated NIC, host notifiers {}: {} round trips, \
             p50 {:.1} us; kicks relayed {relayed}; relay thread {:.2} runs and {:.0} ns CPU \
             per round trip",
            if notifiers { "on" } else { "off" },
            report.count,
            report.p50_us,
            runs as f64 / trips,
            cpu as f64 / trips
        );
        if notifiers {
            assert_eq!(relayed, 0, "kicks went through the relay with notifiers");
        } else {
            assert!(
                relayed >= report.tx_kicks,
                "{relayed} relayed, {} sent",
                report.tx_kicks
            );
        }
    }
}

/// Guest side: eth0 up, then (once the host took its counters) 20 pings to the tap.
const PING_SCRIPT: &str = r#"
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
i=0
while [ ! -e /sys/class/net/eth0 ]; do i=$((i + 1)); [ $i -gt 100 ] && exit 1; sleep 0.1; done
ip link set eth0 up
ip addr add 192.0.2.2/24 dev eth0
i=0
until ping -c 1 -W 1 192.0.2.1 >/dev/null 2>&1; do i=$((i + 1)); [ $i -ge 30 ] && exit 1; done
echo "VDPAD-NET-UP"
i=0
while [ ! -e /lab/go ]; do i=$((i + 1)); [ $i -gt 600 ] && exit 1; sleep 0.1; done
ping -c 20 -i 0.2 -W 2 192.0.2.1 > /lab/ping.log 2>&1
rc=$?
echo "VDPAD-PING rc=$rc $(grep 'packets transmitted' /lab/ping.log)"
"#;

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn linux_guest_kicks_the_simulated_nic_through_a_host_notifier() {
    let t0 = Instant::now();
    init_logging();
    let lab = Lab::require();
    let dir = TempDir::new("hn-guest");
    let ns = Netns::new();
    let tap = tap_in_namespace(&ns, "vdh0");
    let nic = Arc::new(SimNic::new(SimConfig::default(), Box::new(tap)).expect("simulated NIC"));
    let served = SimServed::start(&sim_device_config(&dir, "hnguest0"), nic.clone());
    let qmp_path = dir.join("qmp.sock");
    let config = GuestConfig::new(PING_SCRIPT).qemu_args([
        "-chardev".to_string(),
        format!("socket,id=c0,path={}", served.socket.display()),
        "-netdev".to_string(),
        "vhost-user,id=n0,chardev=c0".to_string(),
        "-device".to_string(),
        format!("virtio-net-pci,netdev=n0,mac={MAC},page-per-vq=on,romfile="),
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", qmp_path.display()),
    ]);
    let mut guest = Guest::boot(&lab, dir.path(), config);
    note(
        t0,
        &format!("guest: {}", guest.wait_for(READY, Duration::from_secs(120))),
    );
    note(
        t0,
        &format!(
            "guest: {}",
            guest.wait_for("VDPAD-NET-UP", Duration::from_secs(60))
        ),
    );
    let mut qmp = Qmp::connect(&qmp_path, Duration::from_secs(10));
    let mtree = qmp.execute(
        "human-monitor-command",
        json!({"command-line": "info mtree"}),
    );
    let mtree = mtree.as_str().unwrap_or_default().to_owned();
    // The region shows once per address space that sees the device; count names.
    let notifiers: std::collections::BTreeSet<&str> = mtree
        .lines()
        .filter(|l| l.contains("vhost-user/host-notifier"))
        .filter_map(|l| l.rsplit(' ').next())
        .collect();
    note(
        t0,
        &format!(
            "QEMU maps {} host notifiers: {notifiers:?}",
            notifiers.len()
        ),
    );
    let (relayed, pages) = (relayed_kicks(&served), nic.page_doorbells());
    std::fs::write(guest.share().join("go"), b"1\n").expect("write /lab/go");
    let line = guest.wait_for("VDPAD-PING ", Duration::from_secs(90));
    let (relayed, pages) = (
        relayed_kicks(&served) - relayed,
        nic.page_doorbells() - pages,
    );
    note(t0, &format!("guest: {line}"));
    println!(
        "RESULT host notifiers, Linux guest on the simulated NIC: 20 pings, {pages} page \
         doorbells seen by the NIC, {relayed} kicks relayed by vdpad"
    );
    assert!(
        line.contains("rc=0") && line.contains("20 packets transmitted, 20 packets received"),
        "{line}{}",
        guest.tail()
    );
    assert_eq!(
        notifiers.len(),
        2,
        "QEMU did not map both notifiers:\n{mtree}"
    );
    assert!(
        pages >= 20,
        "the guest's kicks did not reach the doorbell pages: {pages}"
    );
    assert_eq!(
        relayed,
        0,
        "kicks still went through the relay: {:?}",
        served.stats()
    );
    assert_eq!(nic.dma_faults(), 0, "{:?}", nic.last_dma_fault());
    let _ = guest.wait_exit(Duration::from_secs(30));
}
