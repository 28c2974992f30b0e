//! vdpa-rig (a real vhost-user frontend, over a socket) ⇄ the control plane ⇄ the
//! loopback software datapath: every frame must come back intact, in order, exactly
//! once — across feature combinations, ring sizes that force index wrap-around, large
//! packet counts, reconnects and hostile descriptors.

mod support;

use std::time::Duration;

use support::Served;
use swpath::{Backend, Polling, SoftwareDatapath, Tuning};
use vdpa::stats::BadDescriptor;
use vdpa_rig::{run_latency, Hostile, LatencyOptions, PairRing, Rig, RigSetup, SetupStep};
use vdpad_config::Backend as CfgBackend;

/// A loopback device with default knobs.
fn served(pairs: u16, queue_size: u16) -> Served {
    tuned(pairs, queue_size, Tuning::default())
}

/// A loopback device with `tuning`.
fn tuned(pairs: u16, queue_size: u16, tuning: Tuning) -> Served {
    Served::start("lo", CfgBackend::Loopback, pairs, queue_size, |name| {
        SoftwareDatapath::new(name, Backend::Loopback, 1500, tuning)
    })
}

#[test]
fn one_packet_with_every_feature_combination() {
    let d = served(1, 1024);
    for event_idx in [true, false] {
        for mrg in [true, false] {
            d.verify(
                |o| {
                    o.event_idx = event_idx;
                    o.mrg_rxbuf = mrg;
                },
                1,
                64,
            );
        }
    }
}

#[test]
fn a_hundred_thousand_packets_with_event_idx_on_and_off() {
    let d = served(1, 1024);
    d.verify(|_| {}, 100_000, 64);
    d.verify(|o| o.event_idx = false, 100_000, 64);
    // One-descriptor frames take the single-buffer fast path.
    d.verify(|o| o.tx_two_desc = false, 100_000, 64);
    d.verify(
        |o| {
            o.tx_two_desc = false;
            o.event_idx = false;
        },
        20_000,
        1514,
    );
}

#[test]
fn ring_indices_wrap_around() {
    let d = served(1, 1024);
    // A 16-entry ring wraps its slots every 16 frames; starting near 65535 wraps the
    // 16-bit indices themselves after a few dozen.
    d.verify(
        |o| {
            o.queue_size = 16;
            o.initial_index = 65_500;
        },
        20_000,
        128,
    );
    d.verify(
        |o| {
            o.queue_size = 16;
            o.initial_index = 65_500;
            o.event_idx = false;
        },
        5_000,
        128,
    );
}

#[test]
fn mergeable_buffers_spread_big_frames_and_chains_carry_them_without() {
    let d = served(1, 1024);
    // 1514-byte frames into 256-byte buffers: six buffers per frame, num_buffers = 6.
    d.verify(|o| o.rx_buf_size = 256, 2_000, 1514);
    // Without MRG_RXBUF the rig chains 512-byte buffers into one descriptor chain.
    d.verify(
        |o| {
            o.mrg_rxbuf = false;
            o.rx_buf_size = 512;
        },
        2_000,
        1514,
    );
    // One-descriptor TX frames and two memory regions.
    d.verify(
        |o| {
            o.tx_two_desc = false;
            o.mem_regions = 2;
        },
        2_000,
        700,
    );
}

#[test]
fn two_queue_pairs_each_loop_back_their_own_frames() {
    let d = served(2, 256);
    d.verify(|o| o.queue_pairs = 2, 20_000, 64);
    let rings: Vec<u64> = d.handle.stats().iter().map(|q| q.packets).collect();
    assert_eq!(rings.len(), 4);
    assert!(
        rings.iter().all(|&p| p >= 10_000),
        "every ring carried its share: {rings:?}"
    );
}

#[test]
fn disconnect_mid_setup_then_a_full_connection_works() {
    let d = served(1, 1024);
    for stop in [
        SetupStep::MemTable,
        SetupStep::VringAddr(0),
        SetupStep::VringKick(1),
    ] {
        let mut s = RigSetup::new(d.options()).unwrap();
        s.run_until(stop).unwrap();
        s.disconnect();
        d.verify(|_| {}, 1_000, 64);
    }
    assert_eq!(d.handle.status().connections, 6);
}

#[test]
fn hostile_descriptors_are_counted_and_good_traffic_continues() {
    let d = served(1, 1024);
    let mut o = d.options();
    o.queue_size = 64;
    let mut rig = Rig::connect(o).unwrap();
    let good = vec![0x5au8; 80];
    for dir in [PairRing::Tx, PairRing::Rx] {
        for kind in Hostile::ALL {
            if !kind.applies_to(dir) {
                continue;
            }
            if dir == PairRing::Rx {
                // Rings are FIFO: use up the posted RX buffers so the device meets the
                // hostile chain first.
                rig.drain_rx(0, Duration::from_secs(5)).unwrap();
            }
            if kind == Hostile::ChainLongerThanQueue && dir == PairRing::Tx {
                // The chain needs every descriptor: wait for earlier frames first.
                wait_for_free_descriptors(&mut rig, 64);
            }
            rig.inject(0, dir, kind).unwrap();
            if kind == Hostile::ChainLongerThanQueue && dir == PairRing::Tx {
                // On RX the device only looks at buffers when a frame arrives.
                wait_for_free_descriptors(&mut rig, 1);
            }
            let got = rig
                .send_and_wait(0, &good, Duration::from_secs(5))
                .unwrap_or_else(|e| {
                    panic!(
                        "{kind:?} on {dir:?}: good frame lost: {e}\n{:#?}",
                        d.handle.stats()
                    )
                });
            assert_eq!(got.data, good);
        }
    }
    let stats = d.handle.stats();
    let (rx, tx) = (&stats[0], &stats[1]);
    println!(
        "rx bad: {:?}\ntx bad: {:?}",
        rx.bad_descriptors, tx.bad_descriptors
    );
    for q in [rx, tx] {
        assert_eq!(q.bad(BadDescriptor::Address), 4, "{q:?}");
        assert_eq!(q.bad(BadDescriptor::ZeroLength), 1);
        assert_eq!(
            q.bad(BadDescriptor::ChainTooLong),
            2,
            "loop and over-long chain"
        );
        assert_eq!(q.bad(BadDescriptor::NextOutOfRange), 1);
        assert_eq!(q.bad(BadDescriptor::WrongDirection), 1);
        assert_eq!(q.bad(BadDescriptor::Indirect), 1);
        assert_eq!(q.bad(BadDescriptor::HeadOutOfRange), 1);
    }
    // Every frame that left was delivered (counters of the two rings are flushed one
    // after the other, so give the worker a moment).
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let s = d.handle.stats();
        if s[0].packets == s[1].packets || std::time::Instant::now() > deadline {
            assert_eq!(s[0].packets, s[1].packets);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // The rig's own verify still passes on the same device afterwards.
    drop(rig);
    d.verify(|_| {}, 1_000, 64);
}

/// A chain that takes every descriptor of a ring leaves the rig unable to send until
/// the device has returned it: wait (bounded) for that.
fn wait_for_free_descriptors(rig: &mut Rig, want: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let p = &mut rig.pairs_mut()[0];
        p.tx.reap().unwrap();
        if p.tx.ring().num_free() >= want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the device never returned the chain"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn coalesced_interrupts_are_released_by_their_deadline() {
    // Hold RX interrupts for 64 frames or 2 ms: a lone frame must still arrive (the
    // deadline releases it), and a stream must arrive complete.
    let tuning = Tuning {
        rx_coalesce_frames: 64,
        rx_coalesce_time: Duration::from_millis(2),
        ..Tuning::default()
    };
    let d = tuned(1, 256, tuning);
    d.verify(|_| {}, 1, 64);
    d.verify(|o| o.event_idx = false, 1, 64);
    d.verify(|_| {}, 20_000, 64);
    let rx = &d.handle.stats()[0];
    println!(
        "coalesced: {} frames, {} interrupts",
        rx.packets, rx.interrupts
    );
    assert!(rx.interrupts <= rx.packets / 2 + 4, "{rx:?}");
}

#[test]
fn busy_polling_and_small_bursts_still_deliver_everything() {
    let tuning = Tuning {
        burst: 4,
        polling: Polling::Fixed(Duration::from_micros(200)),
        ..Tuning::default()
    };
    let d = tuned(1, 256, tuning);
    d.verify(|_| {}, 20_000, 64);
    d.verify(|o| o.event_idx = false, 5_000, 1514);
}

#[test]
fn workers_run_on_the_configured_cpu() {
    let cpu = 1 % std::thread::available_parallelism().map_or(1, |n| n.get());
    let d = tuned(
        1,
        256,
        Tuning {
            cpus: vec![cpu],
            ..Tuning::default()
        },
    );
    let mut rig = Rig::connect(d.options()).unwrap();
    rig.send_and_wait(0, &[0x42u8; 60], Duration::from_secs(5))
        .unwrap();
    let mut found = false;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == format!("{}-q0", d.name) {
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            let line = status
                .lines()
                .find(|l| l.starts_with("Cpus_allowed_list"))
                .unwrap();
            assert_eq!(
                line.split_whitespace().last(),
                Some(cpu.to_string().as_str())
            );
            found = true;
        }
    }
    assert!(found, "worker thread not found");
}

#[test]
fn busy_polling_needs_no_kicks_while_frames_keep_flowing() {
    // A one-second budget and a ping-pong of 1.5 s: frames keep moving, so the budget
    // keeps restarting and the worker never sleeps, and the rig never has to kick. (A
    // budget that ran from the first idle pass, whatever moved since, put the worker
    // to sleep once a second and made the next frame wait for a kick.)
    let tuning = Tuning {
        polling: Polling::Fixed(Duration::from_secs(1)),
        ..Tuning::default()
    };
    let d = tuned(1, 256, tuning);
    let mut rig = Rig::connect(d.options()).unwrap();
    let mut o = LatencyOptions::new(u64::MAX, 64);
    o.warmup = 100;
    o.max_duration = Some(Duration::from_millis(1500));
    let r = run_latency(&mut rig, &o).unwrap();
    println!("{}", r.render());
    assert!(r.count > 100, "{r:?}");
    // A polling worker leaves avail_event where it was, so the driver's avail index
    // crosses it once per 65536 frames and the driver kicks then: allowed, nothing more.
    let wraps = (o.warmup + r.count) / 65536;
    assert!(
        r.tx_kicks <= wraps,
        "the worker slept while frames kept flowing: {} kicks for {wraps} index wraps: {r:?}",
        r.tx_kicks
    );
}

#[test]
fn adaptive_polling_takes_over_from_kicks_while_frames_flow() {
    // The default policy: a ping-pong sends the next frame as soon as the last one is
    // back, microseconds later. The first sleeps end that quickly, so the budget grows
    // and the worker soon polls through the gaps: few kicks for many frames.
    let d = tuned(1, 256, Tuning::default());
    let mut rig = Rig::connect(d.options()).unwrap();
    let mut o = LatencyOptions::new(20_000, 64);
    o.warmup = 200;
    let r = run_latency(&mut rig, &o).unwrap();
    println!("{}", r.render());
    let rx = &d.handle.stats()[0];
    println!("worker sleeps {} for {} frames", rx.sleeps, r.count);
    assert!(
        r.tx_kicks * 4 <= r.count,
        "the adaptive worker kept sleeping between frames: {} kicks for {} frames",
        r.tx_kicks,
        r.count
    );
}

#[test]
fn adaptive_polling_stops_when_the_ring_goes_quiet() {
    // After traffic the budget is at its ceiling; once nothing comes, each poll runs out
    // and halves it, and the worker sleeps: it must use (almost) no CPU while idle.
    let d = tuned(1, 256, Tuning::default());
    // The frontend stays connected (the worker lives as long as the connection).
    let mut rig = Rig::connect(d.options()).unwrap();
    let mut o = LatencyOptions::new(5_000, 64);
    o.warmup = 100;
    run_latency(&mut rig, &o).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let worker = format!("{}-q0", d.name);
    let before = support::thread_cpu_ticks(&worker).expect("worker thread");
    let sleeps_before = d.handle.stats()[0].sleeps;
    std::thread::sleep(Duration::from_millis(500));
    let after = support::thread_cpu_ticks(&worker).expect("worker thread");
    let sleeps_after = d.handle.stats()[0].sleeps;
    println!(
        "idle worker: {} clock ticks in 500 ms, {} sleeps",
        after - before,
        sleeps_after - sleeps_before
    );
    // A spinning worker would use ~50 ticks (100 Hz) in 500 ms.
    assert!(after - before <= 5, "the worker kept polling an idle ring");
    assert_eq!(sleeps_after, sleeps_before, "an idle worker woke up");
}

#[test]
fn coalescing_workers_sleep_with_a_tight_timer_slack() {
    // A held interrupt is due in microseconds; the default 50 µs slack would let the
    // kernel end the worker's sleep that much later.
    let tuning = Tuning {
        rx_coalesce_frames: 32,
        rx_coalesce_time: Duration::from_micros(20),
        ..Tuning::default()
    };
    let d = tuned(1, 256, tuning);
    let mut rig = Rig::connect(d.options()).unwrap();
    rig.send_and_wait(0, &[0x42u8; 60], Duration::from_secs(5))
        .unwrap();
    let worker = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|t| t.unwrap().path())
        .find(|dir| {
            std::fs::read_to_string(dir.join("comm"))
                .is_ok_and(|c| c.trim() == format!("{}-q0", d.name))
        })
        .expect("the pair's worker thread");
    let tid = worker.file_name().unwrap().to_string_lossy().into_owned();
    let slack = std::fs::read_to_string(format!("/proc/{tid}/timerslack_ns")).unwrap();
    assert_eq!(slack.trim(), "1");
}

#[test]
fn a_migration_starting_and_stopping_under_traffic_loses_nothing() {
    // As QEMU migrates: logging is switched on and off while frames flow (SET_LOG_BASE,
    // SET_FEATURES with LOG_ALL and SET_VRING_ADDR with the log flag, then back); the
    // software datapath restarts its pair where the rings are each time.
    let d = served(1, 256);
    let mut rig = Rig::connect(d.options()).expect("rig setup");
    let mut o = vdpa_rig::VerifyOptions::new(20_000, 256);
    o.migrate = Some((2_000, 12_000));
    let report = vdpa_rig::run_verify(&mut rig, &o).expect("verify ran");
    println!("{}", report.summary());
    let status = d.handle.status();
    rig.disconnect();
    assert!(report.passed(), "{}", report.failure_details());
    let (from, to) = report.logged.expect("logging started and stopped");
    assert!(from >= 2_000 && to >= 12_000 && to > from, "{from}..{to}");
    assert!(!status.logging, "logging is off after the migration");
    let log = status
        .dirty_log
        .expect("the log stays mapped until it is replaced");
    assert!(log.pages_marked > 0 && log.outside_log == 0, "{log:?}");
}
