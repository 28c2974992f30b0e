//! The `latency` workload (one frame in flight, ping-pong) against the in-process
//! loopback backend: the library call and the CLI subcommand.

mod support;

use std::process::Command;
use std::time::Duration;

use support::backend::{temp_socket, BackendConfig, FakeBackend};
use vdpa_rig::{run_latency, run_verify, LatencyOptions, Rig, RigOptions, VerifyOptions};

#[test]
fn ping_pong_interrupt_and_poll() {
    let path = temp_socket("latency");
    let _be = FakeBackend::start(&path, BackendConfig::loopback(1));
    let mut o = RigOptions::new(&path);
    o.queue_size = 64;
    let mut rig = Rig::connect(o).unwrap();

    let mut l = LatencyOptions::new(300, 64);
    l.warmup = 50;
    // More round trips than the ring has entries: slots and descriptors are recycled.
    let r = run_latency(&mut rig, &l).unwrap();
    assert_eq!(r.count, 300, "{r:?}");
    assert_eq!(r.mode, "interrupt");
    assert_eq!(r.rx_errors, 0);
    assert!(r.min_us > 0.0 && r.min_us <= r.p50_us, "{r:?}");
    assert!(r.p50_us <= r.p99_us && r.p99_us <= r.p999_us && r.p999_us <= r.max_us);
    assert!(r.render().contains("p99.9"));

    l.poll = true;
    l.size = 1000;
    let r = run_latency(&mut rig, &l).unwrap();
    assert_eq!(r.mode, "poll");
    assert_eq!(r.count, 300);

    // A time limit ends the measurement early but still reports what was measured.
    l.count = u64::MAX;
    l.max_duration = Some(Duration::from_millis(100));
    let r = run_latency(&mut rig, &l).unwrap();
    assert!(r.count > 0 && r.count < u64::MAX);

    // The rig keeps working for other workloads afterwards.
    let v = run_verify(&mut rig, &VerifyOptions::new(200, 64)).unwrap();
    assert!(v.passed(), "{}", v.summary());
}

#[test]
fn cli_latency_json() {
    let be = FakeBackend::start(&temp_socket("cli-latency"), BackendConfig::loopback(1));
    let o = Command::new(env!("CARGO_BIN_EXE_vdpa-rig"))
        .args([
            "--socket",
            be.path.to_str().unwrap(),
            "--json",
            "latency",
            "--count",
            "200",
            "--warmup",
            "20",
            "--size",
            "128",
        ])
        .output()
        .expect("run vdpa-rig");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["count"], 200);
    assert_eq!(v["size"], 128);
    for k in ["p50_us", "p99_us", "p999_us"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
}
