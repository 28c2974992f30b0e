//! The offload datapath end to end: a test guest's rings → OffloadDatapath → simulated
//! NIC (DMA through the simulated IOMMU) → loopback wire → back into the guest.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use hwdrv::spec::status;
use hwdrv::{OffloadDatapath, OffloadError, PciFunction, SimConfig, SimNic};
use vdpa::virtio::features::{
    VIRTIO_F_RING_RESET, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_RING_F_EVENT_IDX,
};
use vdpa::{Datapath, DatapathError};

fn no_ring_state() -> SimConfig {
    SimConfig {
        ring_state: false,
        ..Default::default()
    }
}

fn generic() -> SimConfig {
    SimConfig {
        ring_state: false,
        features: SimConfig::default().features & !VIRTIO_F_RING_RESET,
        ..Default::default()
    }
}

#[test]
fn loopback_integrity_with_wraparound_and_event_idx() {
    let (nic, mut dp) = offload(SimConfig::default(), 1);
    let mut g = Guest::new(4 << 20);
    let mut p = PairRig::new(&mut g, 0, 64, true, 2048);
    p.fill_rx(&g);
    dp.start(p.config(&g, features(VIRTIO_RING_F_EVENT_IDX)))
        .unwrap();
    assert_eq!(dp.describe(), "offload/sim (loopback)");
    assert_eq!(nic.dma_mappings(), vec![(GPA_BASE, 4 << 20)]);
    assert_eq!(nic.msix_routed(), 3);
    assert_eq!(nic.device_status(), 0xf);
    // 1000 frames through rings of 64: the indices wrap around 15 times.
    exchange(&g, &mut p, 0, 1000);
    assert!(
        !nic.watching_doorbell_pages(),
        "no frontend asked for a doorbell page: the NIC must not poll its pages"
    );
    assert_eq!(nic.dma_faults(), 0);
    assert_eq!(nic.tx_frames(), 1000);
    assert_eq!(nic.rx_frames(), 1000);
    let stats = p.stats();
    let tx = stats.iter().find(|s| s.ring == 1).unwrap();
    let rx = stats.iter().find(|s| s.ring == 0).unwrap();
    // Kicks written close together coalesce in the eventfd: at most one relay per kick.
    assert!(
        tx.kicks > 0 && tx.kicks <= 1000,
        "tx kicks relayed: {}",
        tx.kicks
    );
    assert!(
        rx.interrupts > 0 && rx.interrupts <= 1001,
        "rx interrupts: {}",
        rx.interrupts
    );
    // Packets and bytes come from the used rings in guest memory, sampled every 10 ms
    // by the relay: every frame is counted; more than a ring of 64 completes between
    // two samples here, so the bytes of the overwritten elements are estimated.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while p.stats().iter().any(|q| q.packets < 1000) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_counted(&p, 1000, 0.15);
}

/// Asserts that both rings of `p` counted `n` frames (sequence numbers from 0) and
/// their bytes within `tolerance` (a fraction; 0 = exact).
fn assert_counted(p: &PairRig, n: u32, tolerance: f64) {
    let sent: u64 = (0..n).map(|seq| frame(p.pair, seq).len() as u64).sum();
    for q in p.stats() {
        let off = q.bytes.abs_diff(sent) as f64 / sent as f64;
        assert!(
            q.packets == u64::from(n) && off <= tolerance,
            "ring {} ({}): {} packets, {} bytes; sent {n} frames, {sent} bytes",
            q.ring,
            q.direction,
            q.packets,
            q.bytes
        );
    }
}

#[test]
fn used_ring_counts_are_exact_within_a_ring() {
    // 200 frames through rings of 256: no used element is overwritten before it is
    // read, so bytes are exact, both ways; stopping the pair takes the last sample.
    let (_nic, mut dp) = offload(SimConfig::default(), 1);
    let mut g = Guest::new(4 << 20);
    let mut p = PairRig::new(&mut g, 0, 256, true, 2048);
    p.fill_rx(&g);
    dp.start(p.config(&g, features(VIRTIO_RING_F_EVENT_IDX)))
        .unwrap();
    exchange(&g, &mut p, 0, 200);
    assert_eq!(dp.stop(0).len(), 1);
    assert_counted(&p, 200, 0.0);
}

#[test]
fn mergeable_rx_buffers_carry_large_frames() {
    let (nic, mut dp) = offload(SimConfig::default(), 1);
    let mut g = Guest::new(4 << 20);
    let mut p = PairRig::new(&mut g, 0, 128, false, 256);
    p.fill_rx(&g);
    dp.start(p.config(&g, features(VIRTIO_NET_F_MRG_RXBUF)))
        .unwrap();
    exchange(&g, &mut p, 0, 300);
    assert_eq!(nic.dma_faults(), 0);
    assert_eq!(nic.rx_dropped(), 0);
}

#[test]
fn pairs_added_one_at_a_time() {
    // With RING_RESET (live enable), with ring-state only (reset and reprogram,
    // resuming the running pair where it was), and on a generic device while the
    // first pair is still pristine.
    for (what, cfg, traffic_first) in [
        ("ring_reset", SimConfig::default(), true),
        (
            "ring_state",
            SimConfig {
                features: SimConfig::default().features & !VIRTIO_F_RING_RESET,
                ..Default::default()
            },
            true,
        ),
        ("generic", generic(), false),
    ] {
        let (nic, mut dp) = offload(cfg, 2);
        let mut g = Guest::new(8 << 20);
        let mut p0 = PairRig::new(&mut g, 0, 64, true, 2048);
        let mut p1 = PairRig::new(&mut g, 1, 64, true, 2048);
        p0.fill_rx(&g);
        p1.fill_rx(&g);
        let f = features(VIRTIO_RING_F_EVENT_IDX | VIRTIO_NET_F_MQ);
        dp.start(p0.config(&g, f)).unwrap();
        if traffic_first {
            exchange(&g, &mut p0, 0, 100);
        }
        dp.start(p1.config(&g, f))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(dp.running_pairs(), vec![0, 1], "{what}");
        exchange(&g, &mut p0, 100, 100);
        exchange(&g, &mut p1, 0, 100);
        assert_eq!(nic.dma_faults(), 0, "{what}");
        assert_eq!(nic.msix_routed(), 5, "{what}");
    }
}

#[test]
fn generic_nic_refuses_to_add_a_pair_once_traffic_flowed() {
    let (_nic, mut dp) = offload(generic(), 2);
    let mut g = Guest::new(8 << 20);
    let mut p0 = PairRig::new(&mut g, 0, 64, false, 2048);
    let mut p1 = PairRig::new(&mut g, 1, 64, false, 2048);
    p0.fill_rx(&g);
    p1.fill_rx(&g);
    dp.start(p0.config(&g, features(0))).unwrap();
    exchange(&g, &mut p0, 0, 10);
    let e = dp.start(p1.config(&g, features(0))).unwrap_err().error;
    assert!(e.to_string().contains("cannot add a queue pair"), "{e}");
    // The running pair is untouched.
    exchange(&g, &mut p0, 10, 10);
}

#[test]
fn set_call_reroutes_interrupts_while_running() {
    let (nic, mut dp) = offload(SimConfig::default(), 1);
    let mut g = Guest::new(4 << 20);
    let mut p = PairRig::new(&mut g, 0, 64, false, 2048);
    p.fill_rx(&g);
    dp.start(p.config(&g, features(0))).unwrap();
    exchange(&g, &mut p, 0, 5);
    let old = p.rx_call.clone();
    let new = efd();
    let routings = nic.msix_routings();
    assert!(dp.set_call(0, Some(new.clone())));
    assert_eq!(
        nic.msix_routings(),
        routings,
        "one vector changes, the table is not routed again"
    );
    // set_call signals the new eventfd once, so a switch cannot lose an interrupt.
    assert!(wait_fd(&new, Duration::from_secs(1)));
    while old.read().is_ok() {}
    p.rx_call = new.clone();
    let before = nic.vector_fired(1).unwrap();
    exchange(&g, &mut p, 5, 20);
    assert!(nic.vector_fired(1).unwrap() > before);
    assert!(old.read().is_err(), "the old call eventfd must stay silent");
    assert!(
        !dp.set_call(4, Some(efd())),
        "a ring that does not run cannot switch"
    );
    // Polling (no call eventfd): the vector goes to a spare, the old one stays silent.
    assert!(dp.set_call(0, None));
    exchange(&g, &mut p, 25, 5);
    assert!(
        new.read().is_err(),
        "a polled ring's interrupt went to its old eventfd"
    );
}

#[test]
fn stop_reports_used_index_and_restart_resumes_there() {
    let (nic, mut dp) = offload(SimConfig::default(), 1);
    let mut g = Guest::new(4 << 20);
    let mut p = PairRig::new(&mut g, 0, 64, true, 2048);
    p.fill_rx(&g);
    let f = features(VIRTIO_RING_F_EVENT_IDX);
    dp.start(p.config(&g, f)).unwrap();
    exchange(&g, &mut p, 0, 77);
    let at = dp.stop(0);
    assert_eq!(dp.running_pairs(), Vec::<u16>::new());
    assert_eq!(nic.device_status(), 0);
    assert_eq!(at.len(), 1);
    assert_eq!(at[0].rx, p.rx.device_used(&g));
    assert_eq!(at[0].tx, 77);
    // Restart at the reported bases (ring-state registers make that possible).
    let mut cfg = p.config(&g, f);
    cfg.rx.base = at[0].rx;
    cfg.tx.base = at[0].tx;
    dp.start(cfg).unwrap();
    exchange(&g, &mut p, 77, 100);
    assert_eq!(nic.dma_faults(), 0);
    // Memory mapping survived the stop/start cycle (same table).
    assert_eq!(nic.dma_mappings().len(), 1);
}

#[test]
fn restart_at_nonzero_base_without_ring_state_is_refused() {
    let (_nic, mut dp) = offload(no_ring_state(), 1);
    let mut g = Guest::new(4 << 20);
    let mut p = PairRig::new(&mut g, 0, 64, false, 2048);
    p.fill_rx(&g);
    dp.start(p.config(&g, features(0))).unwrap();
    exchange(&g, &mut p, 0, 3);
    let at = dp.stop(0);
    let mut cfg = p.config(&g, features(0));
    cfg.tx.base = at[0].tx;
    let e = dp.start(cfg).unwrap_err().error;
    assert!(matches!(e, DatapathError::Ring { ring: 0 | 1, .. }), "{e}");
    assert!(e.to_string().contains("ring-state"), "{e}");
}

#[test]
fn stopping_one_of_two_pairs_keeps_the_other_running() {
    for cfg in [
        SimConfig::default(),
        SimConfig {
            features: SimConfig::default().features & !VIRTIO_F_RING_RESET,
            ..Default::default()
        },
    ] {
        let (nic, mut dp) = offload(cfg, 2);
        let mut g = Guest::new(8 << 20);
        let mut p0 = PairRig::new(&mut g, 0, 64, false, 2048);
        let mut p1 = PairRig::new(&mut g, 1, 64, false, 2048);
        p0.fill_rx(&g);
        p1.fill_rx(&g);
        let f = features(VIRTIO_NET_F_MQ);
        dp.start(p0.config(&g, f)).unwrap();
        dp.start(p1.config(&g, f)).unwrap();
        exchange(&g, &mut p0, 0, 30);
        exchange(&g, &mut p1, 0, 30);
        let at = dp.stop(1);
        assert_eq!(at.len(), 1, "no pair lost: {at:?}");
        assert_eq!((at[0].pair, at[0].tx), (1, 30));
        assert_eq!(dp.running_pairs(), vec![0]);
        exchange(&g, &mut p0, 30, 30);
        assert!(!nic.queue_enabled(3));
        assert_eq!(nic.dma_faults(), 0);
    }
}

/// A NIC with MQ and CTRL_VQ (the spec way, QEMU's virtio-net with `mq=on`) uses
/// pair 0 only until told otherwise: the datapath sends VQ_PAIRS_SET on its own
/// control queue whenever the running pairs change. Without the command the second
/// pair's frames would never come back.
#[test]
fn pairs_on_a_spec_nic_are_switched_on_through_its_control_queue() {
    let spec = SimConfig {
        control_queue: true,
        ..Default::default()
    };
    let spec_generic = SimConfig {
        control_queue: true,
        ..generic()
    };
    for (what, cfg, live) in [("ring_reset", spec), ("generic", spec_generic)]
        .map(|(w, c)| (w, c.clone(), c.features & VIRTIO_F_RING_RESET != 0))
    {
        let (nic, mut dp) = offload(cfg, 2);
        let mut g = Guest::new(8 << 20);
        let mut p0 = PairRig::new(&mut g, 0, 64, true, 2048);
        let mut p1 = PairRig::new(&mut g, 1, 64, true, 2048);
        p0.fill_rx(&g);
        p1.fill_rx(&g);
        let f = features(VIRTIO_RING_F_EVENT_IDX | VIRTIO_NET_F_MQ);
        dp.start(p0.config(&g, f)).unwrap();
        assert_eq!(nic.pairs_in_use(), 1, "{what}");
        assert_eq!(
            nic.control_commands(),
            0,
            "{what}: one pair needs no command"
        );
        let both = VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ;
        assert_eq!(nic.driver_features() & both, both, "{what}");
        if live {
            exchange(&g, &mut p0, 0, 50);
        }
        dp.start(p1.config(&g, f))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(nic.pairs_in_use(), 2, "{what}");
        assert_eq!(nic.control_commands(), 1, "{what}");
        let first = if live { 50 } else { 0 };
        exchange(&g, &mut p0, first, 50);
        exchange(&g, &mut p1, 0, 50);
        let page = nic
            .dma_mappings()
            .into_iter()
            .find(|&(iova, _)| iova >= 4 << 30);
        assert_eq!(page, Some((4 << 30, 4096)), "{what}: the control page");
        let at = dp.stop(1);
        if live {
            assert_eq!(at.len(), 1, "{what}: {at:?}");
            assert_eq!(nic.pairs_in_use(), 1, "{what}");
            assert_eq!(nic.control_commands(), 2, "{what}");
            exchange(&g, &mut p0, first + 50, 20);
        } else {
            // A NIC reset cannot resume pair 0 without ring-state registers.
            assert_eq!(at.len(), 2, "{what}: {at:?}");
        }
        assert_eq!(nic.dma_faults(), 0, "{what}");
        dp.reset();
        assert!(nic.dma_mappings().is_empty(), "{what}: everything unmapped");
    }
}

#[test]
fn memory_table_change_remaps_dma() {
    let (nic, mut dp) = offload(SimConfig::default(), 1);
    let mut g1 = Guest::new(4 << 20);
    let mut p = PairRig::new(&mut g1, 0, 64, false, 2048);
    p.fill_rx(&g1);
    dp.start(p.config(&g1, features(0))).unwrap();
    exchange(&g1, &mut p, 0, 10);
    // The control plane quiesces, swaps the table and restarts; the new table lives
    // at another guest-physical address (a fresh guest here).
    dp.stop(0);
    let mut g2 = Guest::at(0x4000_0000, 4 << 20);
    let mut p2 = PairRig::new(&mut g2, 0, 64, false, 2048);
    p2.fill_rx(&g2);
    dp.start(p2.config(&g2, features(0))).unwrap();
    assert_eq!(nic.dma_mappings(), vec![(0x4000_0000, 4 << 20)]);
    exchange(&g2, &mut p2, 0, 10);
    assert_eq!(nic.dma_faults(), 0);
}

#[test]
fn reset_unmaps_dma_clears_msix_and_zeroes_status() {
    let (nic, mut dp) = offload(SimConfig::default(), 1);
    let mut g = Guest::new(4 << 20);
    let mut p = PairRig::new(&mut g, 0, 64, false, 2048);
    p.fill_rx(&g);
    dp.start(p.config(&g, features(0))).unwrap();
    exchange(&g, &mut p, 0, 10);
    dp.reset();
    assert!(nic.dma_mappings().is_empty());
    assert_eq!(nic.device_status(), 0);
    assert_eq!(nic.msix_routed(), 0);
    assert_eq!(nic.function_resets(), 1);
    // Counters survive a reset (they are the device's); a new connection starts from
    // scratch.
    assert!(p.stats().iter().any(|s| s.kicks > 0));
    let mut g2 = Guest::new(4 << 20);
    let mut p2 = PairRig::new(&mut g2, 0, 64, false, 2048);
    p2.fill_rx(&g2);
    dp.start(p2.config(&g2, features(0))).unwrap();
    exchange(&g2, &mut p2, 0, 10);
    drop(dp);
    assert!(
        nic.dma_mappings().is_empty(),
        "dropping the datapath unmaps"
    );
}

#[test]
fn too_few_vectors_is_a_clear_error() {
    let nic = Arc::new(
        SimNic::loopback(SimConfig {
            msix_vectors: 4,
            ..Default::default()
        })
        .unwrap(),
    );
    let e = OffloadDatapath::new("vm1-net0", nic.clone(), 2)
        .err()
        .unwrap();
    assert!(matches!(e, OffloadError::Unsuitable { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("need 5 MSI-X vectors") && msg.contains("has 4"),
        "{msg}"
    );
    assert!(OffloadDatapath::new("vm1-net0", nic, 1).is_ok());
}

#[test]
fn guest_feature_the_nic_lacks_is_refused_at_start() {
    let (nic, mut dp) = offload(
        SimConfig {
            features: SimConfig::default().features & !VIRTIO_RING_F_EVENT_IDX,
            ..Default::default()
        },
        1,
    );
    let mut g = Guest::new(4 << 20);
    let p = PairRig::new(&mut g, 0, 64, true, 2048);
    let e = dp
        .start(p.config(&g, features(VIRTIO_RING_F_EVENT_IDX)))
        .unwrap_err()
        .error;
    assert!(e.to_string().contains("lacks EVENT_IDX"), "{e}");
    assert!(
        nic.dma_mappings().is_empty(),
        "nothing mapped for a refused start"
    );
}

#[test]
fn dma_outside_guest_memory_is_caught() {
    let (nic, mut dp) = offload(SimConfig::default(), 1);
    let mut g = Guest::new(4 << 20);
    let mut p = PairRig::new(&mut g, 0, 64, false, 2048);
    p.fill_rx(&g);
    dp.start(p.config(&g, features(0))).unwrap();
    exchange(&g, &mut p, 0, 5);
    // A TX buffer just past the end of guest memory, and one far away.
    let outside = GPA_BASE + (4 << 20);
    for gpa in [outside, 0xdead_0000_0000] {
        p.tx.add(&g, &[(gpa, 100, false)]);
        p.tx.publish(&g);
        p.tx_kick.write(1).unwrap();
    }
    let deadline = std::time::Instant::now() + WAIT;
    while p.tx.device_used(&g) != p.tx.avail_idx && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(nic.dma_faults(), 2);
    let f = nic.last_dma_fault().unwrap();
    assert_eq!(f.iova, 0xdead_0000_0000);
    assert!(!f.write);
    // The device completed the chains (nothing sent) and keeps working.
    assert_eq!(p.reap_tx(&g), 2);
    assert_eq!(nic.tx_frames(), 5);
    assert_eq!(nic.device_status() & status::DEVICE_NEEDS_RESET, 0);
    exchange(&g, &mut p, 5, 5);
    assert_eq!(nic.dma_faults(), 2);
}

#[test]
fn for_device_checks_the_configuration_up_front() {
    let nic = Arc::new(
        SimNic::loopback(SimConfig {
            features: SimConfig::default().features & !VIRTIO_NET_F_MRG_RXBUF,
            queue_max_size: 256,
            ..Default::default()
        })
        .unwrap(),
    );
    let mut cfg = device_config();
    cfg.mrg_rxbuf = true;
    cfg.queue_size = 512;
    let e = OffloadDatapath::for_device(nic.clone(), &cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("lacks MRG_RXBUF") && e.contains("queue_size 512"),
        "{e}"
    );
    cfg.mrg_rxbuf = false;
    cfg.queue_size = 256;
    assert!(OffloadDatapath::for_device(nic, &cfg).is_ok());
}

fn device_config() -> vdpad_config::DeviceConfig {
    vdpad_config::DeviceConfig {
        mode: vdpad_config::Mode::Offload,
        mrg_rxbuf: false,
        ..vdpad_config::DeviceConfig::software_loopback("vm1-net0", "/tmp/vm1-net0.sock".into())
    }
}

/// Whether `fd` becomes readable within a second.
fn readable(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, alive across the call.
    unsafe { libc::poll(&mut p, 1, 1000) == 1 }
}

#[test]
fn a_link_change_on_the_nic_is_read_through_its_config_interrupt() {
    let (nic, mut dp) = offload(SimConfig::default(), 1);
    let mut g = Guest::new(4 << 20);
    let mut p = PairRig::new(&mut g, 0, 64, true, 2048);
    p.fill_rx(&g);
    assert_eq!(dp.link_event(), None, "no link events before a pair runs");
    dp.start(p.config(&g, features(0))).unwrap();
    let fd = dp
        .link_event()
        .expect("a NIC with VIRTIO_NET_F_STATUS reports its link");
    // Bring-up asks for one read: the link may have changed while the NIC was down.
    assert!(readable(fd));
    assert_eq!(dp.link_up(), Some(true));
    nic.set_link(false);
    assert!(readable(fd), "the config interrupt (vector 0) fired");
    assert_eq!(dp.link_up(), Some(false));
    nic.set_link(true);
    assert!(readable(fd));
    assert_eq!(dp.link_up(), Some(true));
    exchange(&g, &mut p, 0, 10);
    dp.reset();
    assert_eq!(dp.link_event(), None);
}
