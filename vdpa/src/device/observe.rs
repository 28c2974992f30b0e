//! What observers (`vdpactl`, metrics, logs, tests) see of a device: its status, its
//! per-ring counters and what serves it. Shared with the device through an `Arc`, so
//! reading never waits for the device's thread or its datapath.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::dirty_log::DirtyLog;
use crate::features::feature_names;
use crate::stats::{QueueCounters, QueueStats};

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
    /// Client mode only: how the connection to the frontend's socket is doing.
    pub peer: Option<PeerStatus>,
    /// Whether the frontend acked VHOST_F_LOG_ALL: a migration runs and every write
    /// into guest memory is logged.
    pub logging: bool,
    /// The dirty log of the current or last migration of this connection, if any.
    pub dirty_log: Option<DirtyLogStatus>,
    /// The link under the device is down (its offload NIC said so).
    pub link_down: bool,
    /// A device whose datapath relays migrations (offload with its software
    /// fallback): how many it relayed, and for how long.
    #[serde(skip)]
    pub relay: Option<crate::datapath::RelayTime>,
}

/// A client-mode device's connection to the socket its frontend listens on.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PeerStatus {
    /// Whether a connection is up.
    pub connected: bool,
    /// Connection attempts since the device started.
    pub attempts: u64,
    /// Attempts that failed in a row before now (0 while connected).
    pub failed_attempts: u64,
    /// Why the last attempt failed, or why the last connection ended.
    pub last_error: Option<String>,
    /// When the next attempt is due, while waiting for the peer.
    #[serde(skip)]
    pub next_attempt: Option<std::time::Instant>,
}

/// What a device's dirty log holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DirtyLogStatus {
    /// Size of the shared log in bytes (one bit per 4 KiB guest page).
    pub bytes: u64,
    /// Pages the device marked that were not marked yet.
    pub pages_marked: u64,
    /// Pages that lay beyond the end of the log and could not be marked (should stay
    /// 0: the frontend's log did not cover memory the device wrote).
    pub outside_log: u64,
}

/// The part of a device that observers share with it.
#[derive(Debug)]
pub(crate) struct Observed {
    name: String,
    status: Mutex<DeviceStatus>,
    datapath: Mutex<String>,
    /// One set of counters per ring, for the life of the device.
    counters: Vec<Arc<QueueCounters>>,
    /// Whether each ring has ever run (only those are reported).
    ran: Vec<AtomicBool>,
    /// The dirty log the frontend shared, read for its counters.
    log: Mutex<Option<Arc<DirtyLog>>>,
}

impl Observed {
    pub(crate) fn new(name: &str, rings: usize, datapath: String) -> Self {
        Observed {
            name: name.to_owned(),
            status: Mutex::default(),
            datapath: Mutex::new(datapath),
            counters: (0..rings).map(|_| Arc::default()).collect(),
            ran: (0..rings).map(|_| AtomicBool::new(false)).collect(),
            log: Mutex::new(None),
        }
    }

    /// The counters of `ring`, marked as having run.
    pub(crate) fn counters_for_run(&self, ring: usize) -> Arc<QueueCounters> {
        self.ran[ring].store(true, Ordering::Relaxed);
        self.counters[ring].clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut DeviceStatus)) {
        f(&mut lock(&self.status));
    }

    pub(crate) fn set_log(&self, log: Option<Arc<DirtyLog>>) {
        *lock(&self.log) = log;
    }

    pub(crate) fn set_datapath(&self, description: String) {
        *lock(&self.datapath) = description;
    }
}

/// A cloneable view of a device for observers.
#[derive(Clone, Debug)]
pub struct DeviceHandle {
    pub(crate) inner: Arc<Observed>,
}

impl DeviceHandle {
    /// Device name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Current status.
    pub fn status(&self) -> DeviceStatus {
        let mut s = lock(&self.inner.status).clone();
        s.acked_feature_names = feature_names(s.acked_features);
        s.dirty_log = lock(&self.inner.log).as_ref().map(|l| DirtyLogStatus {
            bytes: l.size(),
            pages_marked: l.pages_marked(),
            outside_log: l.outside(),
        });
        s
    }

    /// Counters of every ring that has run since the device was created.
    pub fn stats(&self) -> Vec<QueueStats> {
        self.inner
            .counters
            .iter()
            .zip(&self.inner.ran)
            .enumerate()
            .filter(|(_, (_, ran))| ran.load(Ordering::Relaxed))
            .map(|(ring, (c, _))| c.snapshot(ring as u16))
            .collect()
    }

    /// What serves the device, e.g. `software/loopback`.
    pub fn datapath_description(&self) -> String {
        lock(&self.inner.datapath).clone()
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: counters and
/// status stay meaningful, and a daemon must not die because one worker did.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
