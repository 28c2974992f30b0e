//! A device served in the test process by the offload datapath over a simulated NIC
//! (`hwdrv::SimNic`): the vdpad binary cannot use a simulated NIC, so the tests that
//! need one run the control plane themselves.

use std::sync::Arc;

use hwdrv::{OffloadDatapath, SimNic};
use vdpa::server::{DeviceServer, Shutdown};
use vdpa::Device;
use vdpa_rig::{run_verify, Rig, RigOptions, VerifyOptions};
use vdpad_config::{Config, DeviceConfig};

use hwdrv::sim::TapLink;

use super::netns::Netns;
use super::packet::run_in;
use super::tmp::TempDir;

/// The guest NIC's MAC.
pub const MAC: &str = "52:54:00:00:02:02";
/// A PCI address that exists on no machine this runs on (bus 0xff, device 0x1f, fn 7).
pub const NO_SUCH_PCI: &str = "0000:ff:1f.7";

/// Sends the offload datapath's logs to the test output (shown with `--nocapture`).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VDPAD_TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// Parses a configuration file's text; panics with the error.
pub fn config(text: &str) -> Config {
    Config::from_toml_str(text, "test.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// One offload device `name` with its socket and run_dir in `dir`; `pci` is only
/// there to satisfy the configuration rules (the datapath gets a simulated NIC).
pub fn sim_device_config(dir: &TempDir, name: &str) -> DeviceConfig {
    let text = format!(
        "[daemon]\nrun_dir = \"{run}\"\n\n[[device]]\nname = \"{name}\"\n\
         socket = \"{sock}\"\nmode = \"offload\"\npci = \"{NO_SUCH_PCI}\"\nfallback = false\n\
         backend = \"loopback\"\nmac = \"{MAC}\"\nqueue_size = 256\n",
        run = dir.join("run").display(),
        sock = dir.join(&format!("{name}.sock")).display(),
    );
    config(&text).devices.remove(0)
}

/// A device served in this process by the offload datapath over `nic`.
pub struct SimServed {
    server: Option<DeviceServer>,
    shutdown: Shutdown,
    pub socket: std::path::PathBuf,
}

impl SimServed {
    pub fn start(cfg: &DeviceConfig, nic: Arc<SimNic>) -> SimServed {
        let dp = OffloadDatapath::for_device(nic, cfg).expect("the simulated NIC can serve");
        let shutdown = Shutdown::new().expect("shutdown eventfd");
        let server = DeviceServer::start(Device::new(cfg.clone(), Box::new(dp)), shutdown.clone())
            .expect("serve the device");
        SimServed {
            server: Some(server),
            shutdown,
            socket: cfg.socket.clone(),
        }
    }

    /// The server's handle to the device.
    pub fn handle(&self) -> &vdpa::DeviceHandle {
        self.server.as_ref().expect("serving").handle()
    }

    /// What the device reports about itself.
    pub fn status(&self) -> vdpa::DeviceStatus {
        self.server.as_ref().expect("serving").handle().status()
    }

    /// Runs `vdpa-rig verify` (`frames` frames of 512 bytes) against the device and
    /// asserts it passed.
    pub fn verify(&self, frames: u64) {
        let mut rig = Rig::connect(RigOptions::new(&self.socket)).expect("rig connects");
        let report = run_verify(&mut rig, &VerifyOptions::new(frames, 512)).expect("verify ran");
        rig.disconnect();
        assert!(report.passed(), "{}", report.summary());
    }

    /// The device's per-ring counters.
    pub fn stats(&self) -> Vec<vdpa::QueueStats> {
        self.server
            .as_ref()
            .map_or_else(Vec::new, |s| s.handle().stats())
    }

    /// Raises the shutdown signal and waits for the device thread (bounded by the
    /// server, which disconnects its frontend).
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            self.shutdown.raise();
            s.join();
        }
    }
}

impl Drop for SimServed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tap `name` for a simulated NIC's port, opened inside `ns` (IPv6 off there) and
/// given 192.0.2.1/24; it lives as long as the NIC that owns it.
pub fn tap_in_namespace(ns: &Netns, name: &str) -> TapLink {
    ns.exec("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    ns.exec("sysctl", &["-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    let owned = name.to_owned();
    let tap = run_in(ns, move || TapLink::open(&owned))
        .join()
        .expect("namespace thread")
        .unwrap_or_else(|e| panic!("open tap {name} in the namespace: {e}"));
    ns.addr(name, "192.0.2.1/24");
    ns.up(name);
    tap
}
