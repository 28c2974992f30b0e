//! A running daemon: every configured device wired to its datapath and served on its
//! socket, with devices added and removed while it runs (`vdpactl add/remove`, SIGHUP).
//!
//! A device that cannot start (a missing interface, a PCI function VFIO cannot open,
//! a socket that cannot be bound) does not stop the others: unless the daemon starts
//! [`Daemon::start`]-strict, it is kept as *failed* — configured, listed with the reason,
//! counted in the metrics — and retried with exponential backoff
//! ([`Daemon::retry_due`]), from 1 s up to 60 s between attempts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use tracing::{error, info, warn};
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
    start_failures: u32,
    /// Its rate limits, changeable at run time (software datapath, or the fallback).
    rates: Option<Arc<swpath::ratelimit::RateControl>>,
    /// A VDUSE device: what its vDPA bus driver made of it, or why it is not attached.
    vdpa_attach: Option<String>,
}

/// A configured device that could not start, waiting for its next attempt.
struct Failed {
    config: DeviceConfig,
    error: String,
    failures: u32,
    next_attempt: Instant,
}

/// First wait before a failed device is tried again; doubled after each failure.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// The wait after the `failures`-th failed attempt: 1 s, 2 s, 4 s ... 60 s.
pub fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (RETRY_FIRST * (1u32 << doublings)).min(RETRY_MAX)
}

/// What the daemon knows about a device that could not start.
#[derive(Clone, Debug)]
pub struct FailedInfo {
    /// Its configuration.
    pub config: DeviceConfig,
    /// Why the last attempt failed.
    pub error: String,
    /// Attempts that failed so far.
    pub failures: u32,
    /// Time until the next attempt.
    pub retry_in: Duration,
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
    /// Attempts that failed before it started (0 if it started at once).
    pub start_failures: u32,
    /// Live status and counters.
    pub handle: DeviceHandle,
    /// A VDUSE device: what its vDPA bus driver made of it (`/dev/vhost-vdpa-0`,
    /// `network interface eth1`), or why it is not attached.
    pub vdpa_attach: Option<String>,
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
    /// Devices (new or restarted) that could not start and are retried.
    pub failed: Vec<String>,
}

/// A running daemon.
pub struct Daemon {
    config: Config,
    devices: BTreeMap<String, Served>,
    failed: BTreeMap<String, Failed>,
    containers: Containers,
}

impl Daemon {
    /// Creates the run directory and starts every device of `cfg`, all or nothing:
    /// nothing is left listening if any device fails (`vdpad --strict`).
    pub fn start(cfg: &Config) -> Result<Daemon> {
        Self::start_with(cfg, true)
    }

    /// Creates the run directory and starts every device of `cfg`; a device that
    /// cannot start is kept as failed and retried (see [`Daemon::retry_due`]), the
    /// others run. Only a run directory that cannot be prepared is an error.
    pub fn start_degraded(cfg: &Config) -> Result<Daemon> {
        Self::start_with(cfg, false)
    }

    fn start_with(cfg: &Config, strict: bool) -> Result<Daemon> {
        prepare_run_dir(&cfg.daemon.run_dir)?;
        let mut daemon = Daemon {
            config: Config {
                daemon: cfg.daemon.clone(),
                devices: Vec::new(),
            },
            devices: BTreeMap::new(),
            failed: BTreeMap::new(),
            containers: Containers::default(),
        };
        for dev in &cfg.devices {
            if strict {
                if let Err(e) = daemon.serve(dev.clone(), 0) {
                    daemon.stop();
                    return Err(e);
                }
            } else {
                daemon.serve_or_park(dev.clone(), 0);
            }
        }
        Ok(daemon)
    }

    /// Starts `dev`, or keeps it as failed for a later attempt; true if it started.
    fn serve_or_park(&mut self, dev: DeviceConfig, failures: u32) -> bool {
        let config = dev.clone();
        match self.serve(dev, failures) {
            Ok(()) => true,
            Err(e) => {
                let failures = failures + 1;
                let delay = retry_delay(failures);
                let error = format!("{e:#}");
                warn!(device = %config.name, error = %error, failures,
                      retry_in_seconds = delay.as_secs(), "device cannot start; retrying later");
                self.config.devices.push(config.clone());
                self.failed.insert(
                    config.name.clone(),
                    Failed {
                        config,
                        error,
                        failures,
                        next_attempt: Instant::now() + delay,
                    },
                );
                false
            }
        }
    }

    /// Tries again every failed device whose wait is over; returns the ones that
    /// started. Called periodically by the daemon's retry thread.
    pub fn retry_due(&mut self) -> Vec<String> {
        let now = Instant::now();
        let due: Vec<String> = self
            .failed
            .iter()
            .filter(|(_, f)| f.next_attempt <= now)
            .map(|(n, _)| n.clone())
            .collect();
        let mut started = Vec::new();
        for name in due {
            let Some(f) = self.failed.remove(&name) else {
                continue;
            };
            self.config.devices.retain(|d| d.name != name);
            if self.serve_or_park(f.config, f.failures) {
                info!(device = %name, failed_attempts = f.failures, "device started after failing");
                started.push(name);
            }
        }
        started
    }

    /// Devices that could not start and are waiting for another attempt, by name.
    pub fn failed_devices(&self) -> Vec<FailedInfo> {
        let now = Instant::now();
        self.failed
            .values()
            .map(|f| FailedInfo {
                config: f.config.clone(),
                error: f.error.clone(),
                failures: f.failures,
                retry_in: f.next_attempt.saturating_duration_since(now),
            })
            .collect()
    }

    /// The configuration in effect (devices added or removed at run time included).
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn serve(&mut self, dev: DeviceConfig, start_failures: u32) -> Result<()> {
        let wired = wiring::build(&dev, &mut self.containers)?;
        info!(device = %dev.name, mode = wired.mode, reason = %wired.reason,
              datapath = %wired.device.handle().datapath_description(), "datapath chosen");
        let shutdown = Shutdown::new().context("creating a shutdown eventfd")?;
        let server = DeviceServer::start(wired.device, shutdown.clone())
            .with_context(|| format!("device {}", dev.name))?;
        let vdpa_attach = attach_to_vdpa_bus(&dev);
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
                start_failures,
                rates: wired.rates,
                vdpa_attach,
            },
        );
        Ok(())
    }

    /// Adds and starts a device. Its name and socket must be new; the caller validated
    /// it (see `Config::with_added_devices`).
    pub fn add(&mut self, dev: DeviceConfig) -> Result<()> {
        let check = self.config.with_added_devices(vec![dev.clone()]);
        check.map_err(|e| anyhow!("{e}"))?;
        check_socket_dir(&dev)?;
        self.serve(dev, 0)
    }

    /// Stops and removes device `name`: its frontend is disconnected, its datapath
    /// stopped, its socket removed.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        if self.failed.remove(name).is_some() {
            self.config.devices.retain(|d| d.name != name);
            info!(device = name, "device removed (it had not started)");
            return Ok(());
        }
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
            if !self.devices.contains_key(&dev.name) && !self.failed.contains_key(&dev.name) {
                if !self.serve_or_park(dev.clone(), 0) {
                    report.failed.push(dev.name.clone());
                }
                if !report.restarted.contains(&dev.name) {
                    report.added.push(dev.name.clone());
                }
            }
        }
        self.config.daemon.log_level = new.daemon.log_level.clone();
        // Where drop-ins are read from and where run-time sockets may go apply at once.
        self.config.daemon.include_dir = new.daemon.include_dir.clone();
        self.config.daemon.socket_dirs = new.daemon.socket_dirs.clone();
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
                start_failures: s.start_failures,
                handle: s.server.handle().clone(),
                vdpa_attach: s.vdpa_attach.clone(),
            })
            .collect()
    }

    /// The rate limits of running device `name`, if its datapath (or fallback) is
    /// software.
    pub fn rate_control(&self, name: &str) -> Option<Arc<swpath::ratelimit::RateControl>> {
        self.devices.get(name).and_then(|s| s.rates.clone())
    }

    /// Whether a device named `name` is configured (running or waiting to retry).
    pub fn has_device(&self, name: &str) -> bool {
        self.devices.contains_key(name) || self.failed.contains_key(name)
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
                      rx_no_buffer = q.rx_no_buffer, sleeps = q.sleeps, drops = q.total_drops(),
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
        self.failed.clear();
        self.config.devices.clear();
    }
}

/// Puts a VDUSE device on the vDPA bus with the driver its configuration names, and
/// says what it became. A failure is logged and the device keeps serving: the
/// operator can still attach it by hand (`vdpa dev add name <name> mgmtdev vduse`).
fn attach_to_vdpa_bus(dev: &DeviceConfig) -> Option<String> {
    let Frontend::Vduse { driver } = dev.frontend else {
        return None;
    };
    let Some(driver) = driver else {
        return Some("not attached (vdpa_driver = \"none\": attach it by hand)".into());
    };
    match vdpa_bus::attach(&dev.name, driver) {
        Ok(attached) => {
            info!(device = %dev.name, %driver, "attach with: {attached}");
            Some(format!("{driver}: {}", attached.short()))
        }
        Err(e) => {
            error!(device = %dev.name, %driver, error = %e,
                   "VDUSE device not attached to the vDPA bus; attach it by hand");
            Some(format!("{driver}: not attached ({e})"))
        }
    }
}

/// Takes a VDUSE device off the vDPA bus before its thread stops (the kernel resets
/// the device through that thread).
fn detach_from_vdpa_bus(dev: &DeviceConfig) {
    if let Frontend::Vduse { .. } = dev.frontend {
        let _ = vdpa_bus::detach(&dev.name);
    }
}

/// A device added at run time gets its socket only in an existing, real directory:
/// not a symbolic link (which could lead anywhere), and not created on demand.
fn check_socket_dir(dev: &DeviceConfig) -> Result<()> {
    let Some(dir) = dev.socket.parent() else {
        return Err(anyhow!("socket {} has no directory", dev.socket.display()));
    };
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("device {}: socket directory {}", dev.name, dir.display()))?;
    if meta.file_type().is_symlink() {
        return Err(anyhow!(
            "device {}: socket directory {} is a symbolic link; vdpad does not follow links \
             to create sockets (list the real directory in socket_dirs)",
            dev.name,
            dir.display()
        ));
    }
    if !meta.is_dir() {
        return Err(anyhow!(
            "device {}: socket directory {} is not a directory",
            dev.name,
            dir.display()
        ));
    }
    Ok(())
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
