//! One frontend connection's state, and the lifecycle rules that turn it into running
//! queue pairs: a pair runs when both its rings are complete and enabled and memory
//! is present; any change to a running pair's rings, to memory or to features stops
//! it first (recording where each ring stopped) and lets it start again afterwards.

use std::sync::Arc;

use tracing::{debug, error, info, warn};

use crate::datapath::{QueuePairConfig, RingConfig};
use crate::device::{ConnectionState, Device};
use crate::features::{feature_names, Negotiated, VHOST_USER_F_PROTOCOL_FEATURES};
use crate::memory::GuestMemory;
use crate::vring::{CallSetting, VringState};

/// State of one vhost-user connection.
pub struct Session<'d> {
    pub(crate) dev: &'d Device,
    pub(crate) owner: bool,
    pub(crate) acked_features: Option<u64>,
    pub(crate) protocol_features: u64,
    pub(crate) mem: Arc<GuestMemory>,
    pub(crate) rings: Vec<VringState>,
    pub(crate) running: Vec<bool>,
    /// Why each pair could not start last time, to log a reason once, not per message.
    not_ready: Vec<Option<String>>,
    pub(crate) status: u8,
    pub(crate) mtu: Option<u16>,
}

impl<'d> Session<'d> {
    /// A fresh session for a new connection to `dev`.
    pub fn new(dev: &'d Device) -> Self {
        let pairs = usize::from(dev.config().queue_pairs);
        Session {
            dev,
            owner: false,
            acked_features: None,
            protocol_features: 0,
            mem: Arc::new(GuestMemory::empty()),
            rings: (0..2 * pairs).map(|_| VringState::default()).collect(),
            running: vec![false; pairs],
            not_ready: vec![None; pairs],
            status: 0,
            mtu: None,
        }
    }

    /// Number of rings this device has (two per queue pair).
    pub fn ring_count(&self) -> usize {
        self.rings.len()
    }

    /// Negotiated features (empty before SET_FEATURES).
    pub fn negotiated(&self) -> Negotiated {
        Negotiated {
            bits: self.acked_features.unwrap_or(0),
        }
    }

    /// Stops queue pair `pair` if it runs and records where its rings stopped.
    pub(crate) fn stop_pair(&mut self, pair: usize) {
        if !self.running[pair] {
            return;
        }
        let mut dp = self.dev.datapath();
        dp.stop(pair as u16);
        let mut stopped = vec![pair];
        for lost in dp.take_lost() {
            let lost = usize::from(lost);
            if lost < self.running.len() && self.running[lost] && lost != pair {
                warn!(
                    device = self.dev.name(),
                    pair = lost,
                    "queue pair went down with pair {pair}; restarting it"
                );
                self.running[lost] = false;
                stopped.push(lost);
            }
        }
        for p in stopped {
            for ring in [2 * p, 2 * p + 1] {
                if let Some(base) = dp.base(ring as u16) {
                    self.rings[ring].base = base;
                }
            }
        }
        drop(dp);
        self.running[pair] = false;
        info!(
            device = self.dev.name(),
            pair,
            rx_base = self.rings[2 * pair].base,
            tx_base = self.rings[2 * pair + 1].base,
            "queue pair stopped"
        );
        self.publish_status();
    }

    /// Records where `pair`'s rings stopped.
    fn record_bases(&mut self, dp: &dyn crate::Datapath, pair: usize) {
        for ring in [2 * pair, 2 * pair + 1] {
            if let Some(base) = dp.base(ring as u16) {
                self.rings[ring].base = base;
            }
        }
    }

    /// Marks pairs the datapath lost on its own as stopped (recording their bases), so
    /// that the next reconcile starts them again.
    fn collect_lost(&mut self) {
        let mut dp = self.dev.datapath();
        for lost in dp.take_lost() {
            let lost = usize::from(lost);
            if lost < self.running.len() && self.running[lost] {
                warn!(
                    device = self.dev.name(),
                    pair = lost,
                    "queue pair went down on its own; it will be restarted"
                );
                self.running[lost] = false;
                self.record_bases(&**dp, lost);
            }
        }
    }

    /// Stops every running queue pair.
    pub(crate) fn stop_all(&mut self) {
        for pair in 0..self.running.len() {
            self.stop_pair(pair);
        }
    }

    /// Stops the pair that owns `ring` before the ring's settings change.
    pub(crate) fn before_ring_change(&mut self, ring: usize) {
        self.stop_pair(ring / 2);
    }

    /// Applies SET_VRING_CALL: a running pair switches its interrupts over in place
    /// when the datapath can, and is stopped (to restart afterwards) otherwise.
    pub(crate) fn change_call(&mut self, ring: usize, call: CallSetting) {
        let pair = ring / 2;
        if self.running[pair] {
            let fd = match &call {
                CallSetting::Fd(fd) => Some(fd.clone()),
                _ => None,
            };
            if !self.dev.datapath().set_call(ring as u16, fd) {
                self.stop_pair(pair);
            }
        }
        self.rings[ring].call = call;
    }

    /// Starts every queue pair that is ready and not running.
    pub(crate) fn reconcile(&mut self) {
        let Some(features) = self.acked_features else {
            return;
        };
        let protocol = features & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        for pair in 0..self.running.len() {
            if self.running[pair] {
                continue;
            }
            let (rx, tx) = (&self.rings[2 * pair], &self.rings[2 * pair + 1]);
            let ready = rx
                .ready(&self.mem, protocol)
                .map_err(|e| format!("rx ring {}: {e}", 2 * pair))
                .and_then(|r| {
                    tx.ready(&self.mem, protocol)
                        .map(|t| (r, t))
                        .map_err(|e| format!("tx ring {}: {e}", 2 * pair + 1))
                });
            let ((rx_size, rx_addrs, rx_ev), (tx_size, tx_addrs, tx_ev)) = match ready {
                Ok(r) => r,
                Err(why) => {
                    if self.not_ready[pair].as_deref() != Some(why.as_str()) {
                        debug!(device = self.dev.name(), pair, %why, "queue pair not ready");
                        self.not_ready[pair] = Some(why);
                    }
                    continue;
                }
            };
            let qp = QueuePairConfig {
                pair: pair as u16,
                rx: RingConfig {
                    index: (2 * pair) as u16,
                    size: rx_size,
                    addrs: rx_addrs,
                    base: rx.base,
                    events: rx_ev,
                },
                tx: RingConfig {
                    index: (2 * pair + 1) as u16,
                    size: tx_size,
                    addrs: tx_addrs,
                    base: tx.base,
                    events: tx_ev,
                },
                features: Negotiated { bits: features },
                mem: self.mem.clone(),
            };
            let (rx_base, tx_base) = (qp.rx.base, qp.tx.base);
            let mut dp = self.dev.datapath();
            match dp.start(qp) {
                Ok(()) => {
                    let how = dp.describe();
                    drop(dp);
                    self.running[pair] = true;
                    self.not_ready[pair] = None;
                    info!(device = self.dev.name(), pair, datapath = %how, rx_base, tx_base,
                          "queue pair started");
                    self.publish_status();
                }
                Err(e) => {
                    drop(dp);
                    self.collect_lost();
                    if self.fall_back(&e) {
                        // Every pair starts again, on the new datapath.
                        return self.reconcile();
                    }
                    let why = format!("datapath refused to start: {e}");
                    if self.not_ready[pair].as_deref() != Some(why.as_str()) {
                        warn!(device = self.dev.name(), pair, error = %e, "queue pair cannot start");
                        self.dev.update_status(|s| s.last_error = Some(why.clone()));
                        self.not_ready[pair] = Some(why);
                    }
                }
            }
        }
    }

    /// Switches the device to its fallback datapath after `cause`, if it has one:
    /// every running pair stops where it is (bases recorded), the first datapath is
    /// reset (releasing its NIC), and the fallback takes over. Returns whether it did.
    fn fall_back(&mut self, cause: &crate::DatapathError) -> bool {
        let Some(make) = self.dev.take_fallback() else {
            return false;
        };
        let from = self.dev.datapath().describe();
        self.stop_all();
        let new = match make() {
            Ok(d) => d,
            Err(why) => {
                error!(device = self.dev.name(), %from, error = %cause, fallback_error = %why,
                       "datapath failed and the fallback cannot be built");
                return false;
            }
        };
        let mut dp = self.dev.datapath();
        dp.reset();
        *dp = new;
        let to = dp.describe();
        drop(dp);
        let reason = format!("{from} failed: {cause}");
        warn!(device = self.dev.name(), %from, %to, %reason, "falling back to the software datapath");
        self.dev.update_status(|s| s.fallback_reason = Some(reason));
        true
    }

    /// Replaces guest memory: quiesce everything that runs, swap, restart.
    pub(crate) fn set_memory(&mut self, mem: GuestMemory) {
        self.stop_all();
        info!(
            device = self.dev.name(),
            regions = mem.regions().len(),
            bytes = mem.total_size(),
            "guest memory table set"
        );
        self.mem = Arc::new(mem);
    }

    /// Applies SET_FEATURES.
    pub(crate) fn set_features(&mut self, bits: u64) {
        if self.acked_features == Some(bits) {
            return;
        }
        self.stop_all();
        self.acked_features = Some(bits);
        info!(device = self.dev.name(), features = format_args!("{bits:#x}"),
              names = ?feature_names(bits), "features negotiated");
        self.publish_status();
    }

    /// Forgets what the frontend configured for the device (RESET_OWNER,
    /// RESET_DEVICE): features, rings, eventfds, status. Ownership, protocol features
    /// and the guest memory table survive: QEMU sends RESET_DEVICE when the guest
    /// resets its NIC (driver rebind, reboot) and afterwards only sends memory regions
    /// that changed, so a backend that dropped the table could never start the rings
    /// again (libvhost-user keeps it too). A new table still replaces it.
    pub(crate) fn reset(&mut self) {
        self.stop_all();
        self.dev.datapath().reset();
        let fresh = Session::new(self.dev);
        let owner = self.owner;
        let protocol = self.protocol_features;
        let mem = self.mem.clone();
        *self = fresh;
        self.owner = owner;
        self.protocol_features = protocol;
        self.mem = mem;
        self.publish_status();
    }

    pub(crate) fn publish_status(&self) {
        let running: Vec<u16> = (0..self.running.len())
            .filter(|&p| self.running[p])
            .map(|p| p as u16)
            .collect();
        let features = self.acked_features.unwrap_or(0);
        self.dev.update_status(|s| {
            s.state = if running.is_empty() {
                ConnectionState::Connected
            } else {
                ConnectionState::Running
            };
            s.acked_features = features;
            s.running_pairs = running;
        });
    }

    /// Ends the session: every pair stops, the datapath forgets ring positions, and
    /// memory and eventfds are released when the session is dropped.
    pub fn close(mut self) {
        self.stop_all();
        self.dev.datapath().reset();
        self.dev.update_status(|s| {
            s.state = ConnectionState::Waiting;
            s.acked_features = 0;
            s.running_pairs.clear();
        });
    }
}
