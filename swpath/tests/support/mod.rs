//! What the software datapath's integration tests share: a device served on a socket
//! in a private directory, driven by the vdpa-rig frontend.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use swpath::SoftwareDatapath;
use vdpa::server::{DeviceServer, Shutdown};
use vdpa::{Device, DeviceHandle};
use vdpa_rig::{run_verify, Rig, RigOptions, VerifyOptions};
use vdpad_config::{Backend, DeviceConfig, MacAddress};

/// A device configuration for tests: software mode, the given backend.
pub fn device_config(
    name: &str,
    socket: PathBuf,
    backend: Backend,
    pairs: u16,
    queue_size: u16,
) -> DeviceConfig {
    DeviceConfig {
        backend,
        queue_pairs: pairs,
        queue_size,
        mac: Some(MacAddress([0x52, 0x54, 0, 0, 0, 1])),
        ..DeviceConfig::software_loopback(name, socket)
    }
}

/// A device served on a socket in a private directory; stopped and cleaned up on drop.
pub struct Served {
    /// Device name (unique per test process).
    pub name: String,
    /// Its private directory.
    pub dir: PathBuf,
    shutdown: Shutdown,
    server: Option<DeviceServer>,
    /// A view of the device.
    pub handle: DeviceHandle,
}

impl Served {
    /// Serves `datapath` for a device with `backend` in its configuration.
    pub fn start(
        prefix: &str,
        backend: Backend,
        pairs: u16,
        queue_size: u16,
        datapath: impl FnOnce(&str) -> SoftwareDatapath,
    ) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}{n}");
        let dir = std::env::temp_dir().join(format!("swpath-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = device_config(&name, dir.join("dev.sock"), backend, pairs, queue_size);
        let dp = datapath(&name);
        let shutdown = Shutdown::new().unwrap();
        let server = DeviceServer::start(Device::new(cfg, Box::new(dp)), shutdown.clone()).unwrap();
        let handle = server.handle().clone();
        Served {
            name,
            dir,
            shutdown,
            server: Some(server),
            handle,
        }
    }

    /// Rig options for this device's socket.
    pub fn options(&self) -> RigOptions {
        RigOptions::new(self.dir.join("dev.sock"))
    }

    /// Runs `vdpa-rig verify` against the device and asserts it passed.
    pub fn verify(&self, tweak: impl FnOnce(&mut RigOptions), packets: u64, size: usize) {
        let mut o = self.options();
        tweak(&mut o);
        let mut rig = Rig::connect(o).expect("rig setup");
        let report = run_verify(&mut rig, &VerifyOptions::new(packets, size)).expect("verify ran");
        println!("{}", report.summary());
        assert!(
            report.passed(),
            "{}\n{:#?}",
            report.failure_details(),
            self.handle.stats()
        );
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.raise();
        if let Some(s) = self.server.take() {
            s.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU time (user + system, in clock ticks) of this process's thread named `name`.
pub fn thread_cpu_ticks(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the parenthesised command name: state is field 3, utime 14,
        // stime 15 (proc(5)).
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        return Some(utime + stime);
    }
    None
}
