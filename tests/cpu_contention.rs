//! A worker that shares its CPU with a busy process keeps a fair share of it, in every
//! polling mode.
//!
//! Measured on Linux 6.18 before the fix: vdpad's loopback worker pinned to CPU 0 with
//! `busy_poll_us = 200`, vdpa-rig polling from CPU 1; one `while :; do :; done` on CPU
//! 0 took the round trip from 10.2 to 0.048 Mpps, and the worker used 0.7 % of the CPU.
//! It yielded (`sched_yield`) every 256 frames, and under EEVDF every yield pushes the
//! thread's deadline a slice further out. DPDK, which never yields, keeps about half.
//!
//! The test compares counters, not clocks: the frames vdpa-rig got back in the same
//! number of seconds with and without the hog, best of two interleaved pairs. In
//! release builds the fixed worker keeps about half and the yielding one kept 0.5–2 %;
//! in the debug build the tests use, a pass costs more and the worker yields less
//! often, so the yielding one still kept 10–18 % (and the fixed one 50–70 %): the bound
//! sits between, at 30 %.

#[path = "support/mod.rs"]
mod support;

use std::process::{Command, Stdio};

use support::daemon::{config_toml, Daemon, DeviceSpec};
use support::process::{Proc, Spawn};
use support::tmp::TempDir;

/// Seconds of each vdpa-rig bench run.
const SECONDS: &str = "2";
/// Frames a contended run must get back, as a fraction of the quiet run's.
const FAIR_SHARE_FLOOR: f64 = 0.3;
/// Interleaved (quiet, contended) pairs per mode; the best ratio counts.
const PAIRS: usize = 2;

/// Frames vdpa-rig (polling, pinned to CPU 1) got back from `socket` in [`SECONDS`].
fn bench(socket: &std::path::Path) -> u64 {
    let out = Command::new("taskset")
        .args(["-c", "1", support::bins::vdpa_rig(), "--socket"])
        .arg(socket)
        .args([
            "--json",
            "bench",
            "--seconds",
            SECONDS,
            "--size",
            "64",
            "--poll",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("run vdpa-rig");
    assert!(out.status.success(), "vdpa-rig bench failed: {out:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("vdpa-rig --json output");
    report["rx_frames"].as_u64().expect("rx_frames")
}

/// A shell spinning on CPU 0 until it is dropped.
fn hog(dir: &std::path::Path) -> Proc {
    Spawn::new("hog", "taskset", dir.join("hog.log"))
        .args(["-c", "0", "sh", "-c", "while :; do :; done"])
        .start()
        .expect("start the CPU hog")
}

/// One loopback device, its worker pinned to CPU 0, with the polling lines `tuning`.
fn contended_share(tag: &str, tuning: &str) -> (u64, u64) {
    let dir = TempDir::new(tag);
    let spec = DeviceSpec::loopback("lo0");
    let toml = format!("{}cpus = [0]\n{tuning}\n", config_toml(dir.path(), &[spec]));
    let socket = dir.join("lo0.sock");
    let mut daemon =
        Daemon::start_custom(dir.path(), &toml, vec![(socket.clone(), false)], None, None);
    let mut best = (0, 0);
    for _ in 0..PAIRS {
        let quiet = bench(&socket);
        let contended = {
            let _hog = hog(dir.path());
            bench(&socket)
        };
        println!(
            "{tag} ({}): quiet {quiet} frames, with a CPU hog {contended} frames in {SECONDS} s each: {:.3}",
            tuning.replace('\n', ", "),
            ratio(contended, quiet)
        );
        if ratio(contended, quiet) >= ratio(best.1, best.0) {
            best = (quiet, contended);
        }
    }
    assert!(daemon.is_running(), "vdpad died{}", daemon.tail());
    best
}

fn ratio(part: u64, whole: u64) -> f64 {
    part as f64 / whole.max(1) as f64
}

#[test]
#[ignore = "CPU-heavy: needs two CPUs to itself (tests/run.sh runs it)"]
fn a_worker_sharing_its_cpu_keeps_a_fair_share_in_every_polling_mode() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("skipped: needs two CPUs");
        return;
    }
    let _cpus = support::exclusive();
    let modes = [
        ("adaptive", ""),
        ("fixed-200", "polling = \"fixed\"\nbusy_poll_us = 200"),
        ("notify", "polling = \"fixed\"\nbusy_poll_us = 0"),
    ];
    let mut failures = Vec::new();
    for (tag, tuning) in modes {
        let (quiet, contended) = contended_share(tag, tuning);
        assert!(quiet > 0, "{tag}: nothing came back without contention");
        if ratio(contended, quiet) < FAIR_SHARE_FLOOR {
            failures.push(format!("{tag}: {contended} of {quiet} frames"));
        }
    }
    assert!(
        failures.is_empty(),
        "a worker sharing its CPU fell below 30 % of its quiet rate: {failures:?}"
    );
}
