//! End to end against an in-process vhost-user backend (the `vhost` crate's dispatcher
//! and a loopback device built on virtio-queue): setup sequence, verify in every
//! option combination, disconnect mid-setup, GET_VRING_BASE, hostile descriptors.

mod support;

use std::time::Duration;

use support::backend::{temp_socket, BackendConfig, FakeBackend};
use vdpa::virtio::features::{
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vdpa_rig::frame::build_frame;
use vdpa_rig::{
    run_bench, run_verify, BenchOptions, Hostile, PairRing, Rig, RigOptions, RigSetup, SetupStep,
    VerifyOptions,
};

fn start(name: &str, cfg: BackendConfig) -> (FakeBackend, RigOptions) {
    let path = temp_socket(name);
    let be = FakeBackend::start(&path, cfg);
    let mut o = RigOptions::new(&path);
    o.queue_size = 64;
    (be, o)
}

fn verify_ok(rig: &mut Rig, packets: u64, size: usize, size_max: usize) {
    let mut v = VerifyOptions::new(packets, size);
    v.size_max = size_max;
    v.timeout = Duration::from_secs(20);
    let r = run_verify(rig, &v).expect("verify runs");
    assert!(r.passed(), "{}\n{}", r.summary(), r.failure_details());
    assert_eq!(r.received, packets);
}

#[test]
fn setup_sequence_and_negotiation() {
    let (mut be, o) = start("seq", BackendConfig::loopback(1));
    let mut rig = Rig::connect(o).unwrap();
    let n = *rig.negotiated();
    assert!(n.event_idx() && n.mrg_rxbuf() && n.reply_ack() && n.protocol_features());
    assert_eq!(n.acked_features & VIRTIO_RING_F_INDIRECT_DESC, 0);
    assert_eq!(n.queue_num, Some(1));
    verify_ok(&mut rig, 2000, 64, 64);
    drop(rig);
    assert!(be.wait_disconnect(Duration::from_secs(5)));
    let log = be.log();
    let head: Vec<&str> = log.iter().take(8).map(String::as_str).collect();
    assert_eq!(
        head,
        [
            "SET_OWNER",
            "GET_FEATURES",
            "GET_PROTOCOL_FEATURES",
            "SET_PROTOCOL_FEATURES 0x9",
            "SET_FEATURES 0x160008000",
            "GET_QUEUE_NUM",
            "SET_MEM_TABLE 1",
            "SET_VRING_NUM 0 64",
        ]
    );
    let ring1: Vec<&String> = log
        .iter()
        .filter(|l| l.ends_with(" 1") || l.contains(" 1 "))
        .collect();
    assert!(
        ring1.iter().any(|l| l.starts_with("SET_VRING_ENABLE 1 1")),
        "{log:?}"
    );
    assert!(log.contains(&"device started".to_string()));
}

#[test]
fn verify_option_matrix() {
    struct Case {
        event_idx: bool,
        mrg: bool,
        rx_buf: u32,
        two_desc: bool,
        regions: usize,
        slots: bool,
        base: u16,
        sizes: (usize, usize),
    }
    let case = |event_idx, mrg, rx_buf, two_desc, regions, slots, base, sizes| Case {
        event_idx,
        mrg,
        rx_buf,
        two_desc,
        regions,
        slots,
        base,
        sizes,
    };
    let cases = [
        case(true, true, 1548, true, 1, false, 0, (60, 1514)),
        case(false, true, 1548, false, 2, false, 0, (64, 64)),
        case(true, true, 200, true, 2, true, 65500, (60, 1514)),
        case(true, false, 1548, true, 1, false, 65530, (60, 1514)),
        case(false, false, 512, true, 1, false, 0, (60, 1514)),
        case(true, false, 4096, false, 2, true, 100, (1000, 9000)),
    ];
    for (i, c) in cases.into_iter().enumerate() {
        let (mut be, mut o) = start(&format!("matrix{i}"), BackendConfig::loopback(1));
        o.event_idx = c.event_idx;
        o.mrg_rxbuf = c.mrg;
        o.rx_buf_size = c.rx_buf;
        o.tx_two_desc = c.two_desc;
        o.mem_regions = c.regions;
        o.mem_slots = c.slots;
        o.initial_index = c.base;
        o.max_frame = c.sizes.1 as u32;
        o.queue_size = 32;
        let mut rig = Rig::connect(o).unwrap_or_else(|e| panic!("case {i}: {e:?}"));
        assert_eq!(rig.negotiated().event_idx(), c.event_idx, "case {i}");
        assert_eq!(rig.negotiated().mrg_rxbuf(), c.mrg, "case {i}");
        verify_ok(&mut rig, 3000, c.sizes.0, c.sizes.1);
        drop(rig);
        assert!(be.wait_disconnect(Duration::from_secs(5)));
        let log = be.log();
        if c.slots {
            assert_eq!(
                log.iter().filter(|l| *l == "ADD_MEM_REG").count(),
                c.regions,
                "case {i}"
            );
        } else {
            assert!(
                log.contains(&format!("SET_MEM_TABLE {}", c.regions)),
                "case {i}: {log:?}"
            );
        }
        let acked = be.handler.lock().unwrap().acked_features;
        assert_eq!(acked & VIRTIO_RING_F_EVENT_IDX != 0, c.event_idx);
        assert_eq!(acked & VIRTIO_NET_F_MRG_RXBUF != 0, c.mrg);
    }
}

#[test]
fn mergeable_buffers_are_counted() {
    let (_be, mut o) = start("mrg", BackendConfig::loopback(1));
    o.rx_buf_size = 128;
    let mut rig = Rig::connect(o).unwrap();
    let f = build_frame(0, 7, 1000);
    let r = rig.send_and_wait(0, &f, Duration::from_secs(5)).unwrap();
    // 12 + 1000 bytes in 128-byte buffers: 8 buffers, announced in num_buffers.
    assert_eq!(r.buffers, 8);
    assert_eq!(r.hdr.num_buffers, 8);
    assert_eq!(r.others, 0);
}

#[test]
fn two_queue_pairs() {
    let (_be, mut o) = start("mq", BackendConfig::loopback(2));
    o.queue_pairs = 2;
    let mut rig = Rig::connect(o).unwrap();
    assert_eq!(rig.negotiated().queue_num, Some(2));
    verify_ok(&mut rig, 4001, 60, 200);
    let r = run_verify(&mut rig, &VerifyOptions::new(10, 64)).unwrap();
    assert_eq!(r.pairs.len(), 2);
    assert_eq!(r.pairs[0].sent, 5);
    let mut one = VerifyOptions::new(10, 64);
    one.only_pair = Some(1);
    let r = run_verify(&mut rig, &one).unwrap();
    assert!(r.passed(), "{}", r.summary());
    assert_eq!((r.pairs[0].sent, r.pairs[1].sent), (0, 10));
    one.only_pair = Some(2);
    let e = run_verify(&mut rig, &one).unwrap_err();
    assert!(e.to_string().contains("pair 2 to send on"), "{e}");
}

#[test]
fn too_many_pairs_is_a_setup_error() {
    let (_be, mut o) = start("mq-short", BackendConfig::loopback(1));
    o.queue_pairs = 2;
    let e = RigSetup::new(o).unwrap().finish().unwrap_err();
    assert!(e.to_string().contains("does not support"), "{e}");
}

#[test]
fn disconnect_mid_setup() {
    let stops = [
        SetupStep::Connect,
        SetupStep::SetOwner,
        SetupStep::GetFeatures,
        SetupStep::ProtocolFeatures,
        SetupStep::SetFeatures,
        SetupStep::MemTable,
        SetupStep::VringAddr(0),
        SetupStep::VringCall(1),
    ];
    for stop in stops {
        let (mut be, o) = start("mid", BackendConfig::loopback(1));
        let mut s = RigSetup::new(o).unwrap();
        s.run_until(stop).unwrap();
        assert_eq!(s.done().last(), Some(&stop));
        s.disconnect();
        assert!(be.wait_disconnect(Duration::from_secs(5)), "after {stop}");
        assert!(!be.handler.lock().unwrap().running(), "after {stop}");
    }
    // A step that is not ahead is refused.
    let (_be, o) = start("mid-order", BackendConfig::loopback(1));
    let mut s = RigSetup::new(o).unwrap();
    s.run_until(SetupStep::SetFeatures).unwrap();
    assert!(s.run_until(SetupStep::SetOwner).is_err());
}

#[test]
fn connect_retries_until_socket_appears() {
    let path = temp_socket("late");
    let p = path.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        FakeBackend::start(&p, BackendConfig::loopback(1))
    });
    let mut rig = Rig::connect(RigOptions::new(&path)).unwrap();
    verify_ok(&mut rig, 100, 64, 64);
    drop(rig);
    drop(t.join().unwrap());
    let mut o = RigOptions::new(temp_socket("never"));
    o.connect_timeout = Duration::from_millis(100);
    let e = Rig::connect(o).unwrap_err();
    assert!(e.to_string().contains("cannot connect"), "{e}");
}

#[test]
fn get_vring_base_reports_progress() {
    let (mut be, mut o) = start("base", BackendConfig::loopback(1));
    o.initial_index = 65000;
    let mut rig = Rig::connect(o).unwrap();
    verify_ok(&mut rig, 1000, 64, 64);
    let tx_avail = rig.pairs()[0].tx.ring().avail_idx();
    assert_eq!(tx_avail, 65000u16.wrapping_add(1000));
    let bases = rig.stop().unwrap();
    assert_eq!(bases.len(), 2);
    assert_eq!(bases[1], u32::from(tx_avail));
    // RX: the device took exactly the buffers of the 1000 frames.
    assert_eq!(bases[0], u32::from(65000u16.wrapping_add(1000)));
    let log = be.log();
    assert!(log.contains(&"SET_VRING_ENABLE 0 0".to_string()));
    assert!(log.contains(&"GET_VRING_BASE 1".to_string()));
    drop(rig);
    assert!(be.wait_disconnect(Duration::from_secs(5)));
}

#[test]
fn hostile_chains_then_traffic() {
    for dir in [PairRing::Tx, PairRing::Rx] {
        for kind in Hostile::ALL {
            if !kind.applies_to(dir) {
                continue;
            }
            let (_be, mut o) = start("hostile", BackendConfig::loopback(1));
            o.queue_size = 16;
            let mut rig = Rig::connect(o).unwrap();
            // Normal traffic first, so RX buffers are posted; drain them so the device
            // meets the hostile RX chain first.
            verify_ok(&mut rig, 50, 64, 64);
            if dir == PairRing::Rx {
                let n = rig.drain_rx(0, Duration::from_secs(5)).unwrap();
                assert_eq!(n, 16);
                assert_eq!(rig.pairs()[0].rx.ring().in_flight(), 0);
            }
            let inj = rig
                .inject(0, dir, kind)
                .unwrap_or_else(|e| panic!("{kind:?} {dir:?}: {e}"));
            let f = build_frame(0, 1, 100);
            let r = rig
                .send_and_wait(0, &f, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("{kind:?} on {dir:?}: {e}"));
            assert_eq!(r.data, f);
            let dev = _be.dev_stats().unwrap();
            let bad = match dir {
                PairRing::Tx => dev.bad_tx_chains,
                PairRing::Rx => dev.bad_rx_chains,
            };
            assert_eq!(bad, 1, "{kind:?} on {dir:?}: {dev:?}");
            let ring = match dir {
                PairRing::Tx => rig.pairs()[0].tx.ring(),
                PairRing::Rx => rig.pairs()[0].rx.ring(),
            };
            if kind == Hostile::HeadOutOfRange {
                // The device cannot complete a head it cannot name: it stays outstanding.
                assert_eq!(ring.raw_outstanding(), 1);
                assert!(inj.descs.is_empty());
            } else {
                assert_eq!(ring.raw_outstanding(), 0, "{kind:?} on {dir:?}");
                let s = rig.stats();
                let raw = match dir {
                    PairRing::Tx => s.tx.raw_completions,
                    PairRing::Rx => s.rx.raw_completions,
                };
                assert_eq!(raw, 1);
            }
            // And the pair keeps working in bulk.
            verify_ok(&mut rig, 200, 64, 64);
        }
    }
}

#[test]
fn bench_runs_briefly() {
    let (_be, o) = start("bench", BackendConfig::loopback(1));
    let mut rig = Rig::connect(o).unwrap();
    let mut b = BenchOptions::new(0.3, 64);
    b.drain = Duration::from_secs(2);
    let r = run_bench(&mut rig, &b).unwrap();
    assert!(r.rx_frames > 0 && r.tx_frames > 0, "{r:?}");
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(r.rx_errors, 0);
    assert!(r.render().contains("pkts/kick"));
    b.poll = true;
    let r = run_bench(&mut rig, &b).unwrap();
    assert!(r.rx_frames > 0);
    assert_eq!(r.mode, "poll");
    // Verify still works on the same rig after bench.
    verify_ok(&mut rig, 500, 64, 64);
}
