//! The device model: what one configured device is across connections — its
//! configuration, offered features, datapath, and the status observers can read.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use vdpad_config::DeviceConfig;

use crate::datapath::Datapath;
use crate::features::{feature_names, offered_features};
use crate::stats::QueueStats;

/// Where a device is in its life with a frontend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    /// Listening, no frontend.
    #[default]
    Waiting,
    /// A frontend is connected; no queue pair runs.
    Connected,
    /// At least one queue pair runs.
    Running,
}

/// What an observer (`vdpactl`, logs, tests) can see of a device.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeviceStatus {
    /// Connection state.
    pub state: ConnectionState,
    /// Connections accepted so far.
    pub connections: u64,
    /// Features the current frontend acked (0 before SET_FEATURES).
    pub acked_features: u64,
    /// Names of the acked features.
    pub acked_feature_names: Vec<&'static str>,
    /// Queue pairs running now.
    pub running_pairs: Vec<u16>,
    /// The last error a frontend caused, if any.
    pub last_error: Option<String>,
    /// Why the device left its first datapath for the fallback, if it did.
    pub fallback_reason: Option<String>,
}

/// The datapath of a device, shared between the message thread and observers.
pub type SharedDatapath = Arc<Mutex<Box<dyn Datapath>>>;

/// Builds the datapath a device falls back to when its first one cannot serve.
pub type FallbackFactory = Box<dyn FnOnce() -> Result<Box<dyn Datapath>, String> + Send>;

/// One configured device.
pub struct Device {
    cfg: DeviceConfig,
    offered: u64,
    datapath: SharedDatapath,
    status: Arc<Mutex<DeviceStatus>>,
    fallback: Mutex<Option<FallbackFactory>>,
}

impl Device {
    /// A device served by `datapath`.
    pub fn new(cfg: DeviceConfig, datapath: Box<dyn Datapath>) -> Self {
        Device {
            offered: offered_features(&cfg) | datapath.datapath_features(),
            cfg,
            datapath: Arc::new(Mutex::new(datapath)),
            status: Arc::default(),
            fallback: Mutex::new(None),
        }
    }

    /// A device served by `primary`, which switches for good to the datapath `make`
    /// builds the first time `primary` cannot start a queue pair. The guest sees the
    /// same features either way: only datapath features both can serve
    /// (`fallback_features` for the fallback) are offered.
    pub fn with_fallback(
        cfg: DeviceConfig,
        primary: Box<dyn Datapath>,
        make: FallbackFactory,
        fallback_features: u64,
    ) -> Self {
        let shared = primary.datapath_features() & fallback_features;
        Device {
            offered: offered_features(&cfg) | shared,
            cfg,
            datapath: Arc::new(Mutex::new(primary)),
            status: Arc::default(),
            fallback: Mutex::new(Some(make)),
        }
    }

    pub(crate) fn take_fallback(&self) -> Option<FallbackFactory> {
        lock(&self.fallback).take()
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Virtio features offered to frontends.
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// A handle observers can keep after the device moved into its server thread.
    pub fn handle(&self) -> DeviceHandle {
        DeviceHandle {
            name: self.cfg.name.clone(),
            datapath: self.datapath.clone(),
            status: self.status.clone(),
        }
    }

    pub(crate) fn datapath(&self) -> MutexGuard<'_, Box<dyn Datapath>> {
        lock(&self.datapath)
    }

    pub(crate) fn update_status(&self, f: impl FnOnce(&mut DeviceStatus)) {
        f(&mut lock(&self.status));
    }
}

/// A cloneable view of a device for observers.
#[derive(Clone)]
pub struct DeviceHandle {
    name: String,
    datapath: SharedDatapath,
    status: Arc<Mutex<DeviceStatus>>,
}

impl DeviceHandle {
    /// Device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Current status.
    pub fn status(&self) -> DeviceStatus {
        let mut s = lock(&self.status).clone();
        s.acked_feature_names = feature_names(s.acked_features);
        s
    }

    /// Per-queue counters.
    pub fn stats(&self) -> Vec<QueueStats> {
        lock(&self.datapath).stats()
    }

    /// What serves the device, e.g. `software/loopback`.
    pub fn datapath_description(&self) -> String {
        lock(&self.datapath).describe()
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: counters and
/// status stay meaningful, and a daemon must not die because one worker did.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
