//! A running daemon: every configured device wired to its datapath and served on its
//! socket, with devices added and removed while it runs (`vdpactl add/remove`, SIGHUP).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use tracing::{error, info};
use vdpa::server::{DeviceServer, Shutdown};
use vdpa::DeviceHandle;
use vdpad_config::{Config, DeviceConfig, Frontend};

use crate::vdpa_bus;
use crate::wiring::{self, Containers};

/// How long stopping devices may take before the daemon leaves a stuck device thread
/// behind: SIGTERM and `vdpactl remove` answer within this, whatever a frontend does.
const STOP_BOUND: Duration = Duration::from_millis(1500);

/// One served device.
struct Served {
    server: DeviceServer,
    shutdown: Shutdown,
    config: DeviceConfig,
    mode: &'static str,
    reason: String,
    pci_name: Option<String>,
}

/// What the daemon knows about one device, for `vdpactl list` and metrics.
#[derive(Clone)]
pub struct DeviceInfo {
    /// Its configuration.
    pub config: DeviceConfig,
    /// `offload` or `software`, as chosen at start.
    pub mode: &'static str,
    /// Why.
    pub reason: String,
    /// Vendor and device name of its PCI function, if it has one.
    pub pci_name: Option<String>,
    /// Live status and counters.
    pub handle: DeviceHandle,
}

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Devices started.
    pub added: Vec<String>,
    /// Devices stopped and removed.
    pub removed: Vec<String>,
    /// Devices whose configuration changed: stopped and started again.
    pub restarted: Vec<String>,
    /// Devices left running untouched.
    pub unchanged: Vec<String>,
}

/// A running daemon.
pub struct Daemon {
    config: Config,
    devices: BTreeMap<String, Served>,
    containers: Containers,
}

impl Daemon {
    /// Creates the run directory and starts every device of `cfg`. Nothing is left
    /// listening if any device fails.
    pub fn start(cfg: &Config) -> Result<Daemon> {
        prepare_run_dir(&cfg.daemon.run_dir)?;
        let mut daemon = Daemon {
            config: Config {
                daemon: cfg.daemon.clone(),
                devices: Vec::new(),
            },
            devices: BTreeMap::new(),
            containers: Containers::default(),
        };
        for dev in &cfg.devices {
            if let Err(e) = daemon.serve(dev.clone()) {
                daemon.stop();
                return Err(e);
            }
        }
        Ok(daemon)
    }

    /// The configuration in effect (devices added or removed at run time included).
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn serve(&mut self, dev: DeviceConfig) -> Result<()> {
        let wired = wiring::build(&dev, &mut self.containers)?;
        info!(device = %dev.name, mode = wired.mode, reason = %wired.reason,
              datapath = %wired.device.handle().datapath_description(), "datapath chosen");
        let shutdown = Shutdown::new().context("creating a shutdown eventfd")?;
        let server = DeviceServer::start(wired.device, shutdown.clone())
            .with_context(|| format!("device {}", dev.name))?;
        attach_to_vdpa_bus(&dev);
        let pci_name = dev
            .pci
            .and_then(|p| hwdrv::classify(&p.to_string()).ok())
            .map(|c| c.name);
        self.config.devices.push(dev.clone());
        self.devices.insert(
            dev.name.clone(),
            Served {
                server,
                shutdown,
                config: dev,
                mode: wired.mode,
                reason: wired.reason,
                pci_name,
            },
        );
        Ok(())
    }

    /// Adds and starts a device. Its name and socket must be new; the caller validated
    /// it (see `Config::with_added_devices`).
    pub fn add(&mut self, dev: DeviceConfig) -> Result<()> {
        let check = self.config.with_added_devices(vec![dev.clone()]);
        check.map_err(|e| anyhow!("{e}"))?;
        self.serve(dev)
    }

    /// Stops and removes device `name`: its frontend is disconnected, its datapath
    /// stopped, its socket removed.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        let served = self
            .devices
            .remove(name)
            .ok_or_else(|| anyhow!("no device named {name:?}"))?;
        detach_from_vdpa_bus(&served.config);
        served.shutdown.raise();
        served.server.join_by(Some(Instant::now() + STOP_BOUND));
        self.config.devices.retain(|d| d.name != name);
        info!(device = name, "device removed");
        Ok(())
    }

    /// Applies a new configuration: new devices start, vanished ones stop, changed
    /// ones restart, unchanged ones keep running untouched. Daemon-wide settings that
    /// need a restart (run_dir, control socket) are not changed.
    pub fn reload(&mut self, new: &Config) -> Result<ReloadReport> {
        let mut report = ReloadReport::default();
        let old: BTreeMap<String, DeviceConfig> = self
            .config
            .devices
            .iter()
            .map(|d| (d.name.clone(), d.clone()))
            .collect();
        for (name, cfg) in &old {
            match new.device(name) {
                None => {
                    self.remove(name)?;
                    report.removed.push(name.clone());
                }
                Some(n) if n != cfg => {
                    self.remove(name)?;
                    report.restarted.push(name.clone());
                }
                Some(_) => report.unchanged.push(name.clone()),
            }
        }
        for dev in &new.devices {
            if !self.devices.contains_key(&dev.name) {
                self.serve(dev.clone())?;
                if !report.restarted.contains(&dev.name) {
                    report.added.push(dev.name.clone());
                }
            }
        }
        self.config.daemon.log_level = new.daemon.log_level.clone();
        Ok(report)
    }

    /// Every device, in name order.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.devices
            .values()
            .map(|s| DeviceInfo {
                config: s.config.clone(),
                mode: s.mode,
                reason: s.reason.clone(),
                pci_name: s.pci_name.clone(),
                handle: s.server.handle().clone(),
            })
            .collect()
    }

    /// The device called `name`.
    pub fn device(&self, name: &str) -> Option<DeviceHandle> {
        self.devices.get(name).map(|s| s.server.handle().clone())
    }

    /// Logs every queue's counters (SIGUSR1).
    pub fn log_stats(&self) {
        for d in self.devices() {
            let h = &d.handle;
            let st = h.status();
            info!(device = h.name(), state = ?st.state, running_pairs = ?st.running_pairs,
                  connections = st.connections, "device status");
            for q in h.stats() {
                info!(device = h.name(), ring = q.ring, dir = q.direction, packets = q.packets,
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
        for s in self.devices.values() {
            detach_from_vdpa_bus(&s.config);
            s.shutdown.raise();
        }
        // One bound for all: whatever a frontend does, the daemon ends in time.
        let deadline = Instant::now() + STOP_BOUND;
        for (_, s) in std::mem::take(&mut self.devices) {
            s.server.join_by(Some(deadline));
        }
        self.config.devices.clear();
    }
}

/// Puts a VDUSE device on the vDPA bus with the driver its configuration names, and
/// says what it became. A failure is logged and the device keeps serving: the
/// operator can still attach it by hand (`vdpa dev add name <name> mgmtdev vduse`).
fn attach_to_vdpa_bus(dev: &DeviceConfig) {
    let Frontend::Vduse {
        driver: Some(driver),
    } = dev.frontend
    else {
        return;
    };
    match vdpa_bus::attach(&dev.name, driver) {
        Ok(attached) => info!(device = %dev.name, %driver, "attach with: {attached}"),
        Err(e) => error!(device = %dev.name, %driver, error = %e,
                         "VDUSE device not attached to the vDPA bus; attach it by hand"),
    }
}

/// Takes a VDUSE device off the vDPA bus before its thread stops (the kernel resets
/// the device through that thread).
fn detach_from_vdpa_bus(dev: &DeviceConfig) {
    if let Frontend::Vduse { .. } = dev.frontend {
        let _ = vdpa_bus::detach(&dev.name);
    }
}

/// Creates the run directory (mode 0755: frontends running as other users must reach
/// the sockets, which have their own modes) or checks an existing one: it must be a
/// real directory owned by us and writable by nobody else, or another user could swap
/// our sockets (the non-root default lives under /tmp).
fn prepare_run_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating run directory {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
    }
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("checking run directory {}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_dir() {
        return Err(anyhow!(
            "run directory {} is not a directory (a symlink?)",
            dir.display()
        ));
    }
    if meta.uid() != euid && euid != 0 {
        return Err(anyhow!(
            "run directory {} belongs to uid {}, not to us (uid {euid}); remove it or set run_dir",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(anyhow!(
            "run directory {} is writable by group or others (mode {:o}); chmod go-w it",
            dir.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
