//! Starting and stopping a daemon: every configured device wired to its datapath and
//! served on its socket.

use anyhow::{Context, Result};
use tracing::info;
use vdpa::server::{DeviceServer, Shutdown};
use vdpa::DeviceHandle;
use vdpad_config::Config;

use crate::wiring::{self, Containers};

/// A running daemon.
pub struct Daemon {
    servers: Vec<DeviceServer>,
    shutdown: Shutdown,
}

impl Daemon {
    /// Creates the run directory and starts every device of `cfg`. Nothing is left
    /// listening if any device fails.
    pub fn start(cfg: &Config) -> Result<Daemon> {
        std::fs::create_dir_all(&cfg.daemon.run_dir)
            .with_context(|| format!("creating run directory {}", cfg.daemon.run_dir.display()))?;
        let shutdown = Shutdown::new().context("creating the shutdown eventfd")?;
        let mut daemon = Daemon {
            servers: Vec::new(),
            shutdown,
        };
        let mut containers = Containers::default();
        for dev in &cfg.devices {
            let wired = match wiring::build(dev, &mut containers) {
                Ok(w) => w,
                Err(e) => {
                    daemon.stop();
                    return Err(e.into());
                }
            };
            info!(device = %dev.name, mode = wired.mode, reason = %wired.reason,
                  datapath = %wired.device.handle().datapath_description(), "datapath chosen");
            match DeviceServer::start(wired.device, daemon.shutdown.clone()) {
                Ok(s) => daemon.servers.push(s),
                Err(e) => {
                    daemon.stop();
                    return Err(e).with_context(|| format!("device {}", dev.name));
                }
            }
        }
        Ok(daemon)
    }

    /// Views of every device.
    pub fn devices(&self) -> Vec<DeviceHandle> {
        self.servers.iter().map(|s| s.handle().clone()).collect()
    }

    /// The device called `name`.
    pub fn device(&self, name: &str) -> Option<DeviceHandle> {
        self.servers
            .iter()
            .find(|s| s.handle().name() == name)
            .map(|s| s.handle().clone())
    }

    /// Logs every queue's counters (SIGUSR1).
    pub fn log_stats(&self) {
        for d in self.devices() {
            let st = d.status();
            info!(device = d.name(), state = ?st.state, running_pairs = ?st.running_pairs,
                  connections = st.connections, "device status");
            for q in d.stats() {
                info!(device = d.name(), ring = q.ring, dir = q.direction, packets = q.packets,
                      bytes = q.bytes, kicks = q.kicks, interrupts = q.interrupts,
                      suppressed = q.interrupts_suppressed, bursts = q.bursts,
                      rx_no_buffer = q.rx_no_buffer, drops = q.total_drops(),
                      bad_descriptors = q.total_bad_descriptors(),
                      packets_per_kick = ?q.packets_per_kick(),
                      packets_per_interrupt = ?q.packets_per_interrupt(), "queue stats");
            }
        }
    }

    /// Stops every device: datapaths stopped, frontends disconnected, sockets removed.
    pub fn stop(&mut self) {
        self.shutdown.raise();
        for s in self.servers.drain(..) {
            s.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
