//! A real vhost-user frontend that nobody in this project wrote: DPDK's virtio-user PMD
//! in `dpdk-testpmd`, against vdpad's loopback device.
//!
//! testpmd (`--forward-mode=io --tx-first`) sends a burst, vdpad's loopback returns
//! every frame to testpmd's RX queue, and testpmd forwards it again: the frames go
//! round the loop for the whole run. When it stops, testpmd's RX and TX counters must
//! both be nonzero and differ by no more than the frames in flight. The numbers are
//! printed; rates are not asserted (the machine is too noisy).
//!
//! `virtio_user_as_server_survives_vdpad_restarts` turns the roles around: virtio-user
//! owns the socket (`server=1`), vdpad connects in client mode, and vdpad is killed
//! and restarted under the running frontend.
//!
//! The control test runs the same frontend against DPDK's own vhost-user backend
//! (`net_vhost`), which proves the harness and gives the anchor numbers.
//!
//! Needs the lab (`sudo tests/lab/setup.sh`); run with
//! `cargo test -p vdpad-tests --test dpdk_virtio_user -- --include-ignored --nocapture`.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::daemon::{Daemon, DeviceSpec};
use support::lab::Lab;
use support::testpmd::{PortCounters, Testpmd, TestpmdConfig};
use support::tmp::TempDir;

/// How long testpmd forwards.
const RUN_FOR: Duration = Duration::from_secs(5);
/// Longest wait for the first frame to come back before the timed run starts.
const WARM_UP: Duration = Duration::from_secs(15);
/// Ring size of the vdpad device (and testpmd's virtio-user default).
const QUEUE_SIZE: u16 = 256;

/// Runs testpmd as a virtio-user frontend on `socket` for [`RUN_FOR`], stops it and
/// returns its final port-0 counters, after checking it exited cleanly.
fn run_frontend(testpmd: &Path, dir: &TempDir, socket: &Path, vdev_extra: &str) -> PortCounters {
    let vdev = format!(
        "net_virtio_user0,path={},queues=1{vdev_extra}",
        socket.display()
    );
    let mut config = TestpmdConfig::io_forward(&vdev, 1, RUN_FOR);
    config.app_args.push("--tx-first".into());
    // The `timeout` safety net fires at run_for + 30 s from start: the warm-up must
    // end well before it.
    let mut tp = Testpmd::start(testpmd, dir.path(), "testpmd-frontend", &config);
    let flowing = tp.wait_until_receiving(0, WARM_UP);
    eprintln!("testpmd virtio-user [{vdev_extra}]: frames flowing: {flowing}");
    let started = Instant::now();
    let (status, stats) = tp.run_and_stop();
    assert!(
        status.success(),
        "testpmd frontend exited with {status}{}",
        tp.tail()
    );
    let last = stats.final_counters(0).unwrap_or_else(|| {
        panic!(
            "no final forward statistics in the testpmd log{}",
            tp.tail()
        )
    });
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "testpmd virtio-user [{vdev_extra}]: RX-packets {} TX-packets {} (in flight {}), {} periodic samples, {:.1} s wall, ~{:.2} Mpps RX over the run",
        last.rx,
        last.tx,
        last.tx as i64 - last.rx as i64,
        stats.periodic.len(),
        secs,
        last.rx as f64 / RUN_FOR.as_secs_f64() / 1e6
    );
    last
}

/// The loop invariant: frames went out and came back, and only the frames still in
/// the rings are missing.
fn assert_looped(c: PortCounters, log: &str) {
    assert!(c.tx > 0, "testpmd sent nothing: {c:?}{log}");
    assert!(c.rx > 0, "no frame came back from the loopback: {c:?}{log}");
    // --tx-first sends one burst of 32 and io forwarding keeps that many frames
    // circulating; anything lost shrinks the loop. Allow a few ring sizes in flight.
    let window = 4 * u64::from(QUEUE_SIZE);
    assert!(
        c.tx.abs_diff(c.rx) <= window,
        "RX and TX differ by more than {window} frames in flight: {c:?}{log}"
    );
    // More than a few laps of the initial burst: the loop kept going.
    assert!(
        c.rx >= 8 * 32,
        "frames did not keep circulating: {c:?}{log}"
    );
}

fn loopback_session(tag: &str, device: DeviceSpec, vdev_extra: &str) {
    let testpmd = Lab::require_testpmd();
    let _cpus = support::exclusive();
    let dir = TempDir::new(tag);
    let mut daemon = Daemon::start(dir.path(), &[device]);
    let counters = run_frontend(&testpmd, &dir, daemon.socket(0), vdev_extra);
    assert_looped(counters, &daemon.tail());
    // The loopback offers IN_ORDER and virtio-user takes it (its in-order Rx/Tx paths,
    // which free buffers by count: an out-of-order completion would break the loop).
    let negotiated = daemon
        .log()
        .lines()
        .find(|l| l.contains("features negotiated"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        negotiated.contains("IN_ORDER"),
        "IN_ORDER not negotiated: {negotiated:?}{}",
        daemon.tail()
    );
    // The frontend has disconnected; the daemon must still be serving its socket.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        daemon.is_running(),
        "vdpad died after the frontend disconnected{}",
        daemon.tail()
    );
    assert!(
        daemon.socket(0).exists(),
        "vdpad removed its socket{}",
        daemon.tail()
    );
    let status = daemon.terminate();
    assert!(
        status.success(),
        "vdpad exited with {status} on SIGTERM{}",
        daemon.tail()
    );
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn virtio_user_io_forwarding_through_vdpad_loopback() {
    loopback_session("dpdk-lo", DeviceSpec::loopback("lo0"), "");
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn virtio_user_without_mrg_rxbuf_through_vdpad_loopback() {
    loopback_session("dpdk-lo-nomrg", DeviceSpec::loopback("lo0"), ",mrg_rxbuf=0");
}

/// Client mode: testpmd's virtio-user owns the socket (`server=1`, DPDK's own model
/// for a backend that restarts) and vdpad (`socket_role = "client"`, started first,
/// waiting for it) connects. While frames loop through vdpad's loopback, vdpad is
/// killed (SIGKILL) and started again, then stopped (SIGTERM) and started again:
/// each time virtio-user accepts the new connection, replays its setup on the rings
/// it kept, and frames flow again (testpmd's RX counter grows by more than eight
/// bursts after each restart).
#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn virtio_user_as_server_survives_vdpad_restarts() {
    let testpmd = Lab::require_testpmd();
    let _cpus = support::exclusive();
    let dir = TempDir::new("dpdk-client");
    let mut daemon = Daemon::start(dir.path(), &[DeviceSpec::loopback("lo0").client()]);
    let vdev = format!(
        "net_virtio_user0,path={},queues=1,server=1",
        daemon.socket(0).display()
    );
    // flowgen, not io --tx-first: testpmd turns the link-state interrupt off for
    // --tx-first, and virtio-user accepts a reconnecting backend from that interrupt.
    let config = TestpmdConfig::forward("flowgen", &vdev, 1, Duration::from_secs(150));
    let mut tp = Testpmd::start(&testpmd, dir.path(), "testpmd-server", &config);
    let rx = |tp: &Testpmd| tp.stats().last_periodic(0).map_or(0, |c| c.rx);
    let flowing = tp.wait_until_receiving(0, WARM_UP);
    assert!(
        flowing,
        "no frame came back through vdpad{}{}",
        tp.tail(),
        daemon.tail()
    );
    for phase in ["SIGKILL", "SIGTERM"] {
        let before = rx(&tp);
        if phase == "SIGKILL" {
            daemon.kill9();
        } else {
            let status = daemon.terminate();
            assert!(
                status.success(),
                "vdpad exited with {status}{}",
                daemon.tail()
            );
        }
        assert!(daemon.socket(0).exists(), "vdpad removed testpmd's socket");
        // Nothing comes back while no backend is connected: two periodic blocks a
        // second apart agree (testpmd's log is block-buffered, so wait for them to
        // show up rather than sleep), and what flows afterwards went through vdpad.
        let down = support::poll(Duration::from_secs(30), Duration::from_millis(200), || {
            let p = tp.stats().periodic;
            match p.as_slice() {
                [.., a, b] if a.rx == b.rx => Some(b.rx),
                _ => None,
            }
        });
        let down = down.unwrap_or_else(|| {
            panic!(
                "{phase}: frames kept coming back with vdpad down{}",
                tp.tail()
            )
        });
        daemon.restart();
        let back = support::poll(Duration::from_secs(30), Duration::from_millis(200), || {
            Some(rx(&tp)).filter(|&n| n > down + 8 * 32)
        });
        eprintln!(
            "{phase}: testpmd RX {before} before, {down} while down, {back:?} after the restart"
        );
        assert!(
            back.is_some(),
            "{phase}: frames did not flow again after the restart{}{}",
            tp.tail(),
            daemon.tail()
        );
    }
    let reconnects = tp.log().matches("reconnection succeeds").count();
    let (status, stats) = tp.stop();
    assert!(
        status.success(),
        "testpmd exited with {status}{}",
        tp.tail()
    );
    let last = stats.final_counters(0).expect("final forward statistics");
    eprintln!("testpmd virtio-user server: {last:?}, {reconnects} reconnection(s)");
    assert_eq!(
        reconnects,
        2,
        "virtio-user did not reconnect twice{}",
        tp.tail()
    );
    // A loopback returns what was sent; after a SIGKILL a burst the dead daemon had
    // already returned may come back twice (it had not marked it used).
    assert!(
        last.rx > 0 && last.rx <= last.tx + u64::from(QUEUE_SIZE),
        "{last:?}{}",
        daemon.tail()
    );
}

/// Control: the same frontend against DPDK's vhost-user backend reflecting frames
/// (`net_vhost` + `--port-topology=loop`). Proves the harness independently of vdpad.
#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn control_virtio_user_through_testpmd_vhost_backend() {
    let testpmd = Lab::require_testpmd();
    let _cpus = support::exclusive();
    let dir = TempDir::new("dpdk-ctl");
    let socket = dir.join("vhost.sock");
    let mut config = TestpmdConfig::io_forward(
        &format!("net_vhost0,iface={},queues=1", socket.display()),
        0,
        RUN_FOR + WARM_UP + Duration::from_secs(20),
    );
    config.app_args.push("--port-topology=loop".into());
    let mut backend = Testpmd::start(&testpmd, dir.path(), "testpmd-backend", &config);
    let ready = support::poll(Duration::from_secs(20), Duration::from_millis(50), || {
        socket.exists().then_some(())
    });
    assert!(
        ready.is_some(),
        "net_vhost socket not created{}",
        backend.tail()
    );
    let counters = run_frontend(&testpmd, &dir, &socket, "");
    assert_looped(counters, &backend.tail());
    let (_, backend_stats) = backend.stop();
    eprintln!(
        "testpmd net_vhost backend: {:?}",
        backend_stats.final_counters(0)
    );
}
