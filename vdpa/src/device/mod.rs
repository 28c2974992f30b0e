//! The device core: one configured virtio-net device, whatever drives it.
//!
//! A [`Device`] owns what the driver negotiated (features, the memory table, each
//! ring's size, addresses, position, eventfds and enable bit), the per-ring counters
//! and the datapath. A frontend — the vhost-user session today ([`crate::session`]) —
//! turns its protocol into calls of the methods below and then calls
//! [`Device::reconcile`]; the core decides when queue pairs start and stop
//! ([`lifecycle`]). Nothing here knows which frontend drives it or which datapath
//! serves it.

mod lifecycle;
mod link;
mod observe;

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use thiserror::Error;
use tracing::info;
use vdpad_config::{DeviceConfig, Frontend};
use vmm_sys_util::eventfd::EventFd;

use crate::datapath::{Datapath, NotifyArea};
use crate::dirty_log::DirtyLog;
use crate::features::{feature_names, offered_features, Negotiated};
use crate::memory::GuestMemory;
use crate::net_config::net_config_bytes;
use crate::virtio::features::{VHOST_F_LOG_ALL, VIRTIO_NET_F_STATUS};
use crate::virtio::net_config::NET_CONFIG_LEN;
use crate::vring::{CallSetting, RingLocation, RingState};

use observe::Observed;
pub use observe::{ConnectionState, DeviceHandle, DeviceStatus, DirtyLogStatus, PeerStatus};

/// A change the device refuses.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// The driver acked features the device did not offer.
    #[error("acks features {extra:#x} that were not offered")]
    FeaturesNotOffered {
        /// The bits acked but not offered.
        extra: u64,
    },
}

/// One configured device: its configuration, datapath and the driver's state.
pub struct Device {
    cfg: DeviceConfig,
    offered: u64,
    datapath: Box<dyn Datapath>,
    observed: Arc<Observed>,
    /// Features the driver acked; `None` before it did.
    features: Option<u64>,
    /// Rings run only once enabled (vhost-user with PROTOCOL_FEATURES acked).
    rings_need_enable: bool,
    mem: Arc<GuestMemory>,
    rings: Vec<RingState>,
    running: Vec<bool>,
    /// Why each pair could not start last time, to log a reason once, not per message.
    not_ready: Vec<Option<String>>,
    /// The virtio device status byte the driver set.
    status: u8,
    /// The MTU the driver set (vhost-user NET_SET_MTU), over the configured one.
    mtu: Option<u16>,
    /// The link as the datapath last reported it ([`Device::poll_link`]).
    link_up: bool,
    /// Signalled by the datapath when a pair stops on its own ([`Device::attend`]).
    ended: Arc<EventFd>,
    /// The dirty log the frontend shared for a migration (vhost-user SET_LOG_BASE).
    /// Marked only while VHOST_F_LOG_ALL is acked.
    log: Option<Arc<DirtyLog>>,
}

impl Device {
    /// A device served by `datapath`. The features it offers are those of its
    /// configuration and those the datapath adds.
    pub fn new(cfg: DeviceConfig, datapath: Box<dyn Datapath>) -> Self {
        let pairs = usize::from(cfg.queue_pairs);
        // Only vhost-user migrates this way, and only a datapath that logs can.
        let log_all = if cfg.frontend == Frontend::VhostUser && datapath.supports_dirty_log() {
            VHOST_F_LOG_ALL
        } else {
            0
        };
        // A VDUSE device owns its config space: where the datapath knows the link (an
        // offload NIC), the driver is told its status (vhost-user: QEMU keeps it).
        let status = if cfg.frontend != Frontend::VhostUser && datapath.reports_link() {
            VIRTIO_NET_F_STATUS
        } else {
            0
        };
        Device {
            offered: offered_features(&cfg) | datapath.datapath_features() | log_all | status,
            observed: Arc::new(Observed::new(&cfg.name, 2 * pairs, datapath.describe())),
            datapath,
            features: None,
            rings_need_enable: false,
            mem: Arc::new(GuestMemory::empty_with_limit(cfg.max_guest_memory)),
            rings: (0..2 * pairs).map(|_| RingState::default()).collect(),
            running: vec![false; pairs],
            not_ready: vec![None; pairs],
            status: 0,
            mtu: None,
            link_up: true,
            ended: Arc::new(
                EventFd::new(libc::EFD_NONBLOCK).expect("an eventfd for the device (fd limit?)"),
            ),
            log: None,
            cfg,
        }
    }

    /// The eventfd a frontend's loop polls beside its own: readable when a pair
    /// stopped on its own; then call [`attend`](Self::attend).
    pub fn attention_fd(&self) -> RawFd {
        self.ended.as_raw_fd()
    }

    /// Restarts pairs that stopped on their own. Returns why the frontend should drop
    /// its driver when that cannot help: the guest memory faulted (it shrank, or a
    /// mapping went away), so nothing runs until the driver sends a new memory table
    /// or reconnects.
    pub fn attend(&mut self) -> Option<String> {
        let _ = self.ended.read();
        let ended = self.datapath.reap();
        self.mark_lost(&ended, "stopped on its own");
        if let Some(fault) = self.mem.fault() {
            let why = format!("guest memory faulted: {fault}");
            self.record_error(why.clone());
            return Some(why);
        }
        self.reconcile();
        None
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Virtio features offered to drivers.
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// Whether the device offers dirty logging for live migration (VHOST_F_LOG_ALL).
    pub fn offers_dirty_log(&self) -> bool {
        self.offered & VHOST_F_LOG_ALL != 0
    }

    /// Whether the datapath can hand out doorbell pages for the frontend to map into
    /// the guest (vhost-user host notifiers).
    pub fn offers_host_notifiers(&self) -> bool {
        self.datapath.offers_notify_areas()
    }

    /// Ring `ring`'s doorbell page, while the ring runs on hardware that has one.
    pub fn notify_area(&self, ring: u16) -> Option<NotifyArea> {
        self.datapath.notify_area(ring)
    }

    /// Whether the frontend shared a dirty log (SET_LOG_BASE) on this connection.
    pub fn has_log(&self) -> bool {
        self.log.is_some()
    }

    /// Whether the device logs dirty pages now: LOG_ALL is acked and a log is mapped.
    pub fn logging(&self) -> bool {
        self.negotiated().has(VHOST_F_LOG_ALL) && self.log.is_some()
    }

    /// Takes the dirty log the frontend shared. Pairs that log stop first and start
    /// again with the new log (the frontend sends a larger one when guest memory grows
    /// during a migration).
    pub fn set_log(&mut self, log: DirtyLog) {
        if self.negotiated().has(VHOST_F_LOG_ALL) {
            self.stop_all();
        }
        info!(
            device = self.name(),
            bytes = log.size(),
            "dirty log mapped (SET_LOG_BASE)"
        );
        let log = Arc::new(log);
        self.observed.set_log(Some(log.clone()));
        self.log = Some(log);
    }

    /// Announces the guest with `mac` on the host side after a migration (a RARP
    /// through the datapath's backend). Returns whether the datapath sent it.
    pub fn announce(&mut self, mac: [u8; 6]) -> bool {
        self.datapath.announce(mac)
    }

    /// Number of rings (two per queue pair).
    pub fn ring_count(&self) -> u16 {
        self.rings.len() as u16
    }

    /// A handle observers can keep after the device moved into its frontend's thread.
    pub fn handle(&self) -> DeviceHandle {
        DeviceHandle {
            inner: self.observed.clone(),
        }
    }

    /// Negotiated features (empty before the driver acked any).
    pub fn negotiated(&self) -> Negotiated {
        Negotiated {
            bits: self.features.unwrap_or(0),
        }
    }

    /// The guest memory table.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// An empty memory table with this device's size limit (`max_guest_memory`):
    /// frontends build every table from it, so none maps more than the limit.
    pub fn no_memory(&self) -> GuestMemory {
        GuestMemory::empty_with_limit(self.cfg.max_guest_memory)
    }

    /// The virtio device status byte the driver last set.
    pub fn status_byte(&self) -> u8 {
        self.status
    }

    /// The virtio-net config space as the driver sees it now.
    pub fn config_space(&self) -> [u8; NET_CONFIG_LEN] {
        net_config_bytes(&self.cfg, self.mtu, self.link_up)
    }

    /// A frontend connected: counted, and the device is ready for a new driver.
    pub fn connected(&mut self) {
        self.observed.update(|s| s.connections += 1);
        self.publish_status();
    }

    /// Changes what observers see of a client-mode device's peer connection.
    pub(crate) fn observe_peer(&self, f: impl FnOnce(&mut PeerStatus)) {
        self.observed
            .update(|s| f(s.peer.get_or_insert_with(PeerStatus::default)));
    }

    /// Records an error the frontend caused, for observers.
    pub fn record_error(&self, text: String) {
        self.observed.update(|s| s.last_error = Some(text));
    }

    /// Applies the driver's acked features. Running pairs stop first when they change.
    pub fn set_features(&mut self, bits: u64) -> Result<(), DeviceError> {
        let extra = bits & !self.offered;
        if extra != 0 {
            return Err(DeviceError::FeaturesNotOffered { extra });
        }
        if self.features == Some(bits) {
            return Ok(());
        }
        self.stop_all();
        let was_logging = self.logging();
        self.features = Some(bits);
        info!(device = self.name(), features = format_args!("{bits:#x}"),
              names = ?feature_names(bits), "features negotiated");
        if self.logging() != was_logging {
            let log = self.log.as_ref();
            info!(
                device = self.name(),
                logging = self.logging(),
                pages_marked = log.map_or(0, |l| l.pages_marked()),
                outside_log = log.map_or(0, |l| l.outside()),
                "dirty logging {}",
                if self.logging() { "starts" } else { "ends" }
            );
        }
        self.publish_status();
        Ok(())
    }

    /// Whether rings wait for an explicit enable before they run (the frontend's
    /// protocol says so: vhost-user does once PROTOCOL_FEATURES is acked).
    pub fn set_rings_need_enable(&mut self, needed: bool) {
        self.rings_need_enable = needed;
    }

    /// Replaces guest memory: everything that runs is quiesced first.
    pub fn set_memory(&mut self, mem: GuestMemory) {
        self.stop_all();
        info!(
            device = self.name(),
            regions = mem.regions().len(),
            bytes = mem.total_size(),
            "guest memory table set"
        );
        self.mem = Arc::new(mem);
    }

    /// Sets a ring's size. `ring` must be below [`ring_count`](Self::ring_count).
    pub fn set_ring_size(&mut self, ring: usize, size: u16) {
        if self.rings[ring].num != Some(size) {
            self.stop_pair_of(ring);
            self.rings[ring].num = Some(size);
        }
    }

    /// Sets where a ring lives.
    pub fn set_ring_location(&mut self, ring: usize, location: RingLocation) {
        if self.rings[ring].addr != Some(location) {
            self.stop_pair_of(ring);
            self.rings[ring].addr = Some(location);
        }
    }

    /// Sets the avail index a ring starts from.
    pub fn set_ring_base(&mut self, ring: usize, base: u16) {
        self.stop_pair_of(ring);
        self.rings[ring].base = base;
    }

    /// Stops a ring's pair and returns where the ring resumes. The ring stays stopped
    /// until it gets a kick eventfd again (vhost-user GET_VRING_BASE).
    pub fn stop_ring(&mut self, ring: usize) -> u16 {
        self.stop_pair_of(ring);
        self.rings[ring].kick = None;
        self.rings[ring].base
    }

    /// Sets a ring's kick eventfd.
    pub fn set_kick(&mut self, ring: usize, kick: EventFd) {
        self.stop_pair_of(ring);
        self.rings[ring].kick = Some(Arc::new(kick));
    }

    /// Sets a ring's call eventfd (`None`: the driver polls). A running pair switches
    /// its interrupts over in place when the datapath can, and restarts otherwise.
    pub fn set_call(&mut self, ring: usize, call: Option<EventFd>) {
        let call = match call {
            None => CallSetting::Polling,
            Some(fd) => CallSetting::Fd(Arc::new(fd)),
        };
        let pair = ring / 2;
        if self.running[pair] {
            let fd = match &call {
                CallSetting::Fd(fd) => Some(fd.clone()),
                _ => None,
            };
            if !self.datapath.set_call(ring as u16, fd) {
                self.stop_pair(pair);
            }
        }
        self.rings[ring].call = call;
    }

    /// Keeps a ring's error fd (never signalled).
    pub fn set_err(&mut self, ring: usize, err: Option<File>) {
        self.rings[ring].err = err;
    }

    /// Enables or disables a ring.
    pub fn enable_ring(&mut self, ring: usize, enable: bool) {
        if self.rings[ring].enabled != enable {
            self.stop_pair_of(ring);
            self.rings[ring].enabled = enable;
        }
    }

    /// Sets the virtio device status byte.
    pub fn set_status_byte(&mut self, status: u8) {
        self.status = status;
    }

    /// Sets the MTU the config space reports.
    pub fn set_mtu(&mut self, mtu: u16) {
        self.mtu = Some(mtu);
    }

    /// Forgets what the driver configured (a device reset): features, rings, eventfds,
    /// status. The guest memory table survives: QEMU sends RESET_DEVICE when the guest
    /// resets its NIC (driver rebind, reboot) and afterwards only sends memory regions
    /// that changed, so a device that dropped the table could never start its rings
    /// again (libvhost-user keeps it too). A new table still replaces it.
    pub fn reset(&mut self) {
        self.stop_all();
        self.datapath.reset();
        self.observe_fallback();
        self.forget_driver();
        self.publish_status();
    }

    /// The frontend went away: every pair stops, the datapath releases what it was
    /// given, and memory and eventfds are dropped.
    pub fn disconnected(&mut self) {
        self.stop_all();
        self.datapath.reset();
        self.observe_fallback();
        self.forget_driver();
        self.mem = Arc::new(self.no_memory());
        let relay = self.datapath.migration_relay();
        self.observed.update(|s| {
            s.state = ConnectionState::Waiting;
            s.acked_features = 0;
            s.running_pairs.clear();
            s.relay = relay;
        });
    }

    fn forget_driver(&mut self) {
        self.features = None;
        self.log = None;
        self.observed.set_log(None);
        self.rings_need_enable = false;
        self.rings
            .iter_mut()
            .for_each(|r| *r = RingState::default());
        self.not_ready.iter_mut().for_each(|r| *r = None);
        self.status = 0;
        self.mtu = None;
    }

    pub(crate) fn publish_status(&self) {
        let running: Vec<u16> = (0..self.running.len())
            .filter(|&p| self.running[p])
            .map(|p| p as u16)
            .collect();
        let features = self.features.unwrap_or(0);
        let relay = self.datapath.migration_relay();
        self.observed.update(|s| {
            s.state = if running.is_empty() {
                ConnectionState::Connected
            } else {
                ConnectionState::Running
            };
            s.acked_features = features;
            s.running_pairs = running;
            s.logging = features & VHOST_F_LOG_ALL != 0;
            s.relay = relay;
        });
    }
}
