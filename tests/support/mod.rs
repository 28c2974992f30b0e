//! Test harness for vdpad's real-peer end-to-end tests.
//!
//! Every test file that talks to real peers includes this tree with
//! `#[path = "support/mod.rs"] mod support;`. It provides:
//!
//! - [`lab::Lab`]: finds the lab prepared by `tests/lab/setup.sh` (QEMU >= 10, the guest
//!   kernel and initramfs, `dpdk-testpmd`) and fails loudly when something is missing;
//! - [`process::Proc`]: a child process bounded by coreutils `timeout`, logged to a file,
//!   signalled by PID and reaped on drop;
//! - [`tmp::TempDir`]: a unique scratch directory per test, removed on drop;
//! - [`netns::Netns`]: a uniquely named network namespace with veth/tap helpers;
//! - [`guest::Guest`]: a QEMU (TCG) guest running a shell script from the host, with
//!   console markers to wait for; guests never boot concurrently in one test binary;
//! - [`daemon::Daemon`]: the `vdpad` binary under test with a generated config;
//! - [`testpmd::Testpmd`]: DPDK's testpmd with its port statistics parsed;
//! - [`swdev`]: software-datapath devices (tap, af_packet, knobs) for a daemon in a
//!   namespace, and the per-queue counters of its SIGUSR1 dump;
//! - [`guest_shell::GuestShell`]: commands run one by one in a booted guest;
//! - [`traffic`]: `ping` and `iperf3 --json` results;
//! - [`libvirt`]: libvirtd (started when not running) and domains driven with virsh;
//! - [`tapnet::TapNet`]: vdpad with a tap device in a fresh namespace, for tests that
//!   attach a guest in different ways (QEMU releases, libvirt) and ping through it;
//! - [`nested::NestedGuest`]: a guest with an emulated IOMMU and real NIC models
//!   (virtio-net for VFIO, e1000e, igb) on taps, for hardware-in-the-loop tests;
//! - [`qmp::Qmp`]: a QMP client (live migration of a guest);
//! - [`packet`]: AF_PACKET sockets in a test namespace, a frame reflector, an injector;
//! - [`operator`]: a `vdpad` with loopback devices and a private control socket, and
//!   vdpactl, as the operations tests drive them;
//! - [`raw_frontend`]: a vhost-user frontend that sends exactly the bytes and
//!   descriptors a test asks for (hostile frontends);
//! - [`rig_lines`]: rig verify lines, frames on the wire and log lines, checked;
//! - [`sim_served`]: an offload device on a simulated NIC, served in the test process;
//! - [`bins`]: the workspace's programs (`vdpad`, `vdpactl`, `vdpa-rig`, `vdpa-bench`),
//!   built on first use.
//!
//! Everything cleans up on drop, including while a test panics. Panic messages carry
//! the tail of the relevant log file so that a failing run can be understood from the
//! test output alone.

// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

pub mod bins;
pub mod daemon;
pub mod guest;
pub mod guest_shell;
pub mod lab;
pub mod libvirt;
pub mod nested;
pub mod netns;
pub mod operator;
pub mod packet;
pub mod process;
pub mod qmp;
pub mod raw_frontend;
pub mod rig_lines;
pub mod sim_served;
pub mod swdev;
pub mod tapnet;
pub mod testpmd;
pub mod tmp;
pub mod traffic;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// Serialises CPU-heavy tests (testpmd sessions) within one test binary: the lab
/// machines have two cores, and tests of one binary run on parallel threads.
/// Hold the guard for the whole test. (Guests have their own lock, see
/// [`guest::Guest`]; do not boot a guest while holding this one.)
pub fn exclusive() -> MutexGuard<'static, ()> {
    // A poisoned lock only means another test failed; its processes are gone.
    EXCLUSIVE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads a log file (lossy UTF-8); an unreadable file reads as a short explanation.
pub fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// The last `lines` lines of a log file, framed for inclusion in a panic message.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = read_log(path);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = format!(
        "\n----- {} (last {} of {} lines) -----\n",
        path.display(),
        all.len() - start,
        all.len()
    );
    for line in &all[start..] {
        // Strip terminal control sequences (testpmd clears the screen between stats).
        out.push_str(&line.replace("\x1b[2J", "").replace("\x1b[1;1H", ""));
        out.push('\n');
    }
    out.push_str("----- end -----\n");
    out
}

/// Polls `check` every `every` until it returns `Some`, for at most `timeout`.
///
/// Returns `None` when the time is up. `check` runs at least once.
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Prints a progress line to stderr, prefixed with the seconds since `start`.
///
/// Shown with `--nocapture`; captured (and shown on failure) otherwise.
pub fn note(start: Instant, msg: &str) {
    eprintln!("[{:7.2}s] {msg}", start.elapsed().as_secs_f64());
}
