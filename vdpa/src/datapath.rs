//! The vocabulary both datapaths share with the control plane: what a ring looks
//! like, the kick/call eventfds that drive it, and the [`Datapath`] trait.
//!
//! The control plane (this crate) decides *when* a queue pair runs; a datapath
//! (`swpath` in software, `hwdrv` in hardware) decides *how*. Both get the same
//! [`QueuePairConfig`]: guest-physical ring addresses, the index to start from, and the
//! same kick and call eventfds — software reads kicks and writes calls itself, offload
//! routes them to a NIC's doorbell and MSI-X vectors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use crate::dirty_log::DirtyLog;
use crate::features::Negotiated;
use crate::memory::GuestMemory;
use crate::stats::QueueCounters;

/// Guest-physical addresses of one split virtqueue's three parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingAddrs {
    /// Descriptor table (16-byte aligned).
    pub desc: u64,
    /// Available ring, written by the driver (2-byte aligned).
    pub avail: u64,
    /// Used ring, written by the device (4-byte aligned).
    pub used: u64,
}

/// The notification pair of one ring.
#[derive(Clone, Debug)]
pub struct RingEvents {
    /// Guest → device: signalled when the driver adds buffers.
    pub kick: Arc<EventFd>,
    /// Device → guest: written to interrupt the guest. `None` when the frontend polls.
    pub call: Option<Arc<EventFd>>,
}

/// Everything needed to serve one ring.
#[derive(Clone, Debug)]
pub struct RingConfig {
    /// vhost-user ring index (RX of pair i is 2i, TX is 2i+1).
    pub index: u16,
    /// Number of descriptors (a power of two).
    pub size: u16,
    /// Where the ring lives in guest memory.
    pub addrs: RingAddrs,
    /// Avail index to resume from (SET_VRING_BASE, or where a previous run stopped).
    pub base: u16,
    /// Kick and call eventfds.
    pub events: RingEvents,
    /// The ring's counters. They belong to the device and outlive every run and every
    /// datapath: a datapath adds to them, observers read them without asking it.
    pub counters: Arc<QueueCounters>,
    /// While a migration logs dirty pages (and the frontend asked for the ring's used
    /// ring to be logged, VHOST_VRING_F_LOG): the guest-physical address the used
    /// ring's writes are logged at. `None` otherwise.
    pub log_used: Option<u64>,
}

/// One RX/TX queue pair ready to run.
#[derive(Clone, Debug)]
pub struct QueuePairConfig {
    /// Queue pair number.
    pub pair: u16,
    /// The receive ring (device writes frames into guest buffers).
    pub rx: RingConfig,
    /// The transmit ring (device reads frames from guest buffers).
    pub tx: RingConfig,
    /// Features the frontend acked.
    pub features: Negotiated,
    /// Guest memory the rings and buffers live in.
    pub mem: Arc<GuestMemory>,
    /// Signalled when the pair stops on its own (its guest memory faulted, a worker
    /// panicked): the device then asks [`Datapath::reap`] which pairs ended.
    pub ended: Arc<EventFd>,
    /// While a migration runs (VHOST_F_LOG_ALL acked, a log mapped): the dirty log in
    /// which every write into guest memory is marked. `None` otherwise: nothing is
    /// logged, at no cost.
    pub log: Option<Arc<DirtyLog>>,
}

/// Where the rings of a stopped queue pair resume: the avail index of each ring that
/// the next run starts from (its `last_avail_idx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairPosition {
    /// Queue pair number.
    pub pair: u16,
    /// Where the receive ring resumes.
    pub rx: u16,
    /// Where the transmit ring resumes.
    pub tx: u16,
}

/// Why a datapath could not do what it was asked.
#[derive(Debug, Error)]
pub enum DatapathError {
    /// A ring does not lie within guest memory or is misaligned.
    #[error("ring {ring}: {what}")]
    Ring {
        /// vhost-user ring index.
        ring: u16,
        /// What is wrong with it.
        what: String,
    },
    /// The queue pair is not one this datapath can serve.
    #[error("queue pair {pair} is not available: {why}")]
    Pair {
        /// Queue pair number.
        pair: u16,
        /// Why not.
        why: String,
    },
    /// A worker thread could not be started.
    #[error("starting worker for queue pair {pair}")]
    Spawn {
        /// Queue pair number.
        pair: u16,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The host backend (tap, socket, NIC) failed.
    #[error("{what}")]
    Backend {
        /// What was being done, and with which backend object.
        what: String,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The datapath that should have taken over from a failed one could not be built.
    #[error("{from} failed ({cause}) and its fallback could not be built")]
    Fallback {
        /// The datapath that failed.
        from: String,
        /// Why it failed.
        cause: Box<DatapathError>,
        /// Why the fallback could not be built.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl DatapathError {
    /// A backend failure: `what` was being done when `source` happened.
    pub fn backend(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        DatapathError::Backend {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// A queue pair that could not start, and the pairs that went down with the attempt.
#[derive(Debug, Error)]
#[error("{error}")]
pub struct StartFailure {
    /// Why the pair could not start.
    pub error: DatapathError,
    /// Pairs that were running before and are not any more (e.g. a NIC reset needed to
    /// add the pair took the others down and they could not be brought back), with
    /// where their rings resume. The control plane starts them again.
    pub lost: Vec<PairPosition>,
}

impl From<DatapathError> for StartFailure {
    fn from(error: DatapathError) -> Self {
        StartFailure {
            error,
            lost: Vec::new(),
        }
    }
}

/// A way of moving packets for one device: software workers or a NIC.
///
/// How long a device has been served by a software relay while live migrations
/// logged dirty pages (an offload device hands its rings to the software datapath for
/// each migration, see [`crate::fallback`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayTime {
    /// Migrations relayed so far (each switch to the relay counts one).
    pub relays: u64,
    /// Time spent in relays that ended.
    pub completed: Duration,
    /// When the relay running now began, if one runs.
    pub since: Option<Instant>,
}

impl RelayTime {
    /// Total time relayed up to `now`, the running relay included.
    pub fn total(&self, now: Instant) -> Duration {
        self.completed
            + self
                .since
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// A relay begins at `now`.
    pub fn begin(&mut self, now: Instant) {
        if self.since.is_none() {
            self.since = Some(now);
            self.relays += 1;
        }
    }

    /// The running relay, if any, ends at `now`.
    pub fn end(&mut self, now: Instant) {
        if let Some(t) = self.since.take() {
            self.completed += now.saturating_duration_since(t);
        }
    }
}

/// The control plane calls these from one thread, never concurrently. Implementations
/// must not block for long: a frontend waits for the reply. Counters are not asked
/// for: every ring's [`QueueCounters`] come with its [`RingConfig`].
pub trait Datapath: Send {
    /// Short description for logs and `vdpactl`, e.g. `software/loopback`.
    fn describe(&self) -> String;

    /// Features only some datapaths can serve, added to what the device offers:
    /// checksum and segmentation offloads (VIRTIO_NET_F_CSUM, GUEST_TSO4, ...) and
    /// VIRTIO_F_IN_ORDER (every ring's buffers are used in the order the driver made
    /// them available, which lets a driver such as DPDK's take its cheaper in-order
    /// paths). None by default.
    fn datapath_features(&self) -> u64 {
        0
    }

    /// Whether a queue pair can start at any ring position, not only at 0. Software
    /// datapaths can; a NIC only with a way to load its rings' state (vdpad's ring-state
    /// registers on the simulated NIC; no standard virtio-pci function has one).
    fn resumes_anywhere(&self) -> bool {
        true
    }

    /// Whether this datapath marks what it writes into guest memory in a
    /// [`QueuePairConfig::log`] (live migration). Only then does a vhost-user device
    /// offer VHOST_F_LOG_ALL. False by default.
    fn supports_dirty_log(&self) -> bool {
        false
    }

    /// Announces the guest at its new place after a migration (vhost-user SEND_RARP):
    /// sends a RARP frame from `mac` on the host side so that switches learn where the
    /// guest is now. Returns whether it was sent (false by default: nothing to do).
    fn announce(&mut self, _mac: [u8; 6]) -> bool {
        false
    }

    /// Starts serving a queue pair. The pair is not running when this is called.
    fn start(&mut self, qp: QueuePairConfig) -> Result<(), StartFailure>;

    /// Stops a running queue pair and waits until it no longer touches guest memory
    /// or the eventfds. Returns where its rings resume, first, followed by any other
    /// pair that went down with it and could not be brought back (the control plane
    /// starts those again). Stopping a pair that is not running returns nothing.
    fn stop(&mut self, pair: u16) -> Vec<PairPosition>;

    /// Points a running ring's interrupts at a new call eventfd (the frontend re-sent
    /// SET_VRING_CALL, e.g. QEMU masking or unmasking a vector). Returns false if this
    /// datapath cannot do that while running; the control plane then stops and
    /// restarts the pair. Implementations signal the new eventfd once, so an
    /// interrupt raised during the switch is not lost.
    fn set_call(&mut self, _ring: u16, _call: Option<Arc<EventFd>>) -> bool {
        false
    }

    /// Pairs that stopped on their own since the last call (guest memory that faulted,
    /// a worker that panicked), with where their rings resume. Called when a pair's
    /// [`QueuePairConfig::ended`] eventfd fired; the control plane starts them again
    /// (a pair whose memory faulted waits for a new memory table).
    fn reap(&mut self) -> Vec<PairPosition> {
        Vec::new()
    }

    /// Why this datapath no longer serves with the choice it started with (a wrapper
    /// that moved the device to its fallback says why), if it did.
    fn fallback_reason(&self) -> Option<String> {
        None
    }

    /// For a datapath that relays migrations through another one: how long it has
    /// (`None`: it never relays).
    fn migration_relay(&self) -> Option<RelayTime> {
        None
    }

    /// Whether this datapath can hand out [`NotifyArea`]s (a NIC whose doorbells each
    /// sit alone on a page the daemon can map). Only then does a vhost-user device
    /// offer the HOST_NOTIFIER protocol feature. False by default.
    fn offers_notify_areas(&self) -> bool {
        false
    }

    /// The page a frontend may map as ring `ring`'s notify area, so that the guest's
    /// kicks reach the NIC without the daemon: only while the ring runs on hardware
    /// whose doorbell for it is alone on a mappable page. None by default.
    fn notify_area(&self, _ring: u16) -> Option<NotifyArea> {
        None
    }

    /// Whether this datapath knows the state of its link (a NIC with
    /// VIRTIO_NET_F_STATUS). Only then does a VDUSE device offer STATUS to its driver.
    fn reports_link(&self) -> bool {
        false
    }

    /// A descriptor that becomes readable when the link under this datapath may have
    /// changed (a NIC's config interrupt), while pairs run on it; then
    /// [`link_up`](Self::link_up) says how it is. None by default: the link is up.
    fn link_event(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// After [`link_event`](Self::link_event) fired: consumes the event and says
    /// whether the link is up, if this datapath knows.
    fn link_up(&mut self) -> Option<bool> {
        None
    }

    /// Stops everything and releases what the frontend's last session gave it (a
    /// NIC is reset, DMA unmapped). Called when the frontend disconnects or resets the
    /// device; ring positions are the control plane's to keep.
    fn reset(&mut self);
}

/// One ring's doorbell page, to be mapped by the frontend into the guest as the ring's
/// notify area (vhost-user VRING_HOST_NOTIFIER_MSG): a store of the queue index into
/// it rings the NIC directly.
#[derive(Clone, Debug)]
pub struct NotifyArea {
    /// The file to map: a VFIO device descriptor, or the simulated NIC's doorbell memfd.
    pub file: Arc<std::fs::File>,
    /// Offset of the page in `file`.
    pub offset: u64,
    /// Length to map: one page.
    pub size: u64,
}

impl NotifyArea {
    /// Whether `other` maps the same page of the same file.
    pub fn same_page(&self, other: &NotifyArea) -> bool {
        Arc::ptr_eq(&self.file, &other.file) && self.offset == other.offset
    }
}

#[cfg(test)]
mod relay_time_tests {
    use super::*;

    #[test]
    fn relays_are_counted_and_timed_running_or_ended() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut r = RelayTime::default();
        assert_eq!(r.total(t0 + s), Duration::ZERO);
        r.begin(t0);
        r.begin(t0 + s); // already relaying: neither a second relay nor a new start
        assert_eq!((r.relays, r.total(t0 + 2 * s)), (1, 2 * s));
        r.end(t0 + 3 * s);
        r.end(t0 + 9 * s); // nothing runs: nothing added
        assert_eq!((r.since, r.total(t0 + 9 * s)), (None, 3 * s));
        r.begin(t0 + 10 * s);
        assert_eq!((r.relays, r.total(t0 + 11 * s)), (2, 4 * s));
    }
}
