//! A datapath with a second one behind it: [`FallbackDatapath`] serves with its first
//! datapath until that one cannot start a queue pair, then moves every pair — where
//! its rings are — to the second and stays there until the device is reset (the
//! frontend reconnects, or its driver resets the device): the first then gets another
//! chance, and the device falls back again only if it fails again.
//!
//! With [`FallbackDatapath::relays_migrations`] it also hands the device to the second
//! datapath while a live migration logs dirty pages and the first cannot (an offload
//! NIC writes guest memory behind the daemon's back), and takes it back when the
//! pairs start without a log again (a migration that was cancelled or failed) — at
//! once if the first can resume rings where they are, otherwise at the next reset of
//! the device (a NIC that starts every queue at 0).
//!
//! The device core sees one datapath throughout; moving between datapaths is this
//! wrapper's business, not the control plane's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::{error, info, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::datapath::{
    Datapath, DatapathError, NotifyArea, PairPosition, QueuePairConfig, RelayTime, StartFailure,
};

/// Builds the datapath a device falls back to, when it is first needed.
pub type FallbackFactory =
    Box<dyn FnOnce() -> Result<Box<dyn Datapath>, Box<dyn std::error::Error + Send + Sync>> + Send>;

/// Which of its two datapaths serves the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serving {
    /// The first datapath.
    First,
    /// The second, while a migration logs (the first is parked, reset, in `other`).
    Relay,
    /// The second, after a migration, until the device is reset: the first cannot
    /// resume the rings where they are (parked in `other`).
    RelayUntilReset,
    /// The second, until the device is reset: the first failed (parked in `other`).
    FellBack,
}

/// A first datapath and the fallback that replaces it, until the device is reset, when
/// it fails.
pub struct FallbackDatapath {
    active: Box<dyn Datapath>,
    /// The datapath not serving now: the fallback once built and parked after a
    /// migration, or the first datapath parked during one.
    other: Option<Box<dyn Datapath>>,
    make: Option<FallbackFactory>,
    serving: Serving,
    /// The fallback logs dirty pages, and takes over while a migration logs.
    relay: bool,
    /// Migrations relayed, and for how long.
    relayed: RelayTime,
    /// Datapath features both can serve: offered either way, so the guest sees the
    /// same device before and after the switch.
    features: u64,
    /// The pairs running now, as they were started (bases updated when they move).
    running: BTreeMap<u16, QueuePairConfig>,
    reason: Option<String>,
}

impl FallbackDatapath {
    /// Serves with `primary`; the first time it cannot start a pair, `make` builds
    /// the replacement. `fallback_features` are the datapath features the
    /// replacement will offer: only those both offer are offered at all.
    pub fn new(primary: Box<dyn Datapath>, make: FallbackFactory, fallback_features: u64) -> Self {
        FallbackDatapath {
            features: primary.datapath_features() & fallback_features,
            active: primary,
            other: None,
            make: Some(make),
            serving: Serving::First,
            relay: false,
            relayed: RelayTime::default(),
            running: BTreeMap::new(),
            reason: None,
        }
    }

    /// Declares that the fallback logs dirty pages (the software datapath does): the
    /// device then offers live migration even when the first datapath cannot log, and
    /// the fallback serves while a migration logs.
    pub fn relays_migrations(mut self) -> Self {
        self.relay = true;
        self
    }

    /// The fallback, built now if it was not yet.
    fn fallback(&mut self) -> Result<Box<dyn Datapath>, Box<dyn std::error::Error + Send + Sync>> {
        match (self.other.take(), self.make.take()) {
            (Some(d), make) => {
                self.make = make;
                Ok(d)
            }
            (None, Some(make)) => make(),
            (None, None) => Err("the fallback datapath is gone".into()),
        }
    }

    /// Stops every running pair on the active datapath and resets it; returns the
    /// pairs with the bases they resume at.
    fn stop_all_running(&mut self) -> Vec<QueuePairConfig> {
        let mut moving: Vec<QueuePairConfig> =
            std::mem::take(&mut self.running).into_values().collect();
        let stopped: Vec<PairPosition> = moving
            .iter()
            .flat_map(|qp| self.active.stop(qp.pair))
            .collect();
        for p in stopped {
            if let Some(qp) = moving.iter_mut().find(|qp| qp.pair == p.pair) {
                qp.rx.base = p.rx;
                qp.tx.base = p.tx;
            }
        }
        self.active.reset();
        moving
    }

    /// Moves every running pair to the fallback: until the device is reset (`to` =
    /// `FellBack`, the first datapath failed with `cause`) or while a migration logs
    /// (`to` = `Relay`). On failure the running pairs are lost (returned with where they
    /// resume).
    fn switch(&mut self, cause: DatapathError, to: Serving) -> Result<(), StartFailure> {
        let from = self.active.describe();
        let moving = self.stop_all_running();
        let new = match self.fallback() {
            Ok(d) => d,
            Err(source) => {
                error!(%from, error = %cause, fallback_error = %source,
                       "datapath failed and the fallback cannot be built");
                return Err(StartFailure {
                    lost: positions(&moving),
                    error: DatapathError::Fallback {
                        from,
                        cause: Box::new(cause),
                        source,
                    },
                });
            }
        };
        let old = std::mem::replace(&mut self.active, new);
        self.other = Some(old);
        if to == Serving::Relay {
            self.relayed.begin(Instant::now());
            info!(%from, to = %self.active.describe(), "a live migration logs dirty pages: the fallback serves until it ends");
        } else {
            let reason = format!("{from} failed: {cause}");
            warn!(%from, to = %self.active.describe(), %reason,
                  "falling back to the second datapath until the device is reset");
            self.reason = Some(reason);
        }
        self.serving = to;
        self.resume(moving)
    }

    /// The migration ended: the first datapath takes the pairs back if it can resume
    /// them where they are; otherwise the relay keeps serving until the next reset.
    fn end_relay(&mut self) -> Result<(), StartFailure> {
        if self.other.as_ref().is_none_or(|d| d.resumes_anywhere()) {
            return self.switch_back();
        }
        self.serving = Serving::RelayUntilReset;
        info!(to = %self.active.describe(),
              "the migration ended; the first datapath cannot resume the rings where they are, \
               so the software relay serves until the driver resets the device");
        Ok(())
    }

    /// Gives the device back to the parked first datapath after a migration (the
    /// fallback is parked in turn, for the next one). If the first cannot take the
    /// pairs, the fallback takes them back until the device is reset.
    fn switch_back(&mut self) -> Result<(), StartFailure> {
        let Some(first) = self.other.take() else {
            return Ok(());
        };
        let moving = self.stop_all_running();
        let relay = std::mem::replace(&mut self.active, first);
        self.other = Some(relay);
        self.serving = Serving::First;
        self.relayed.end(Instant::now());
        info!(to = %self.active.describe(), "the migration ended: the first datapath serves again");
        self.resume(moving)
    }

    /// Starts `moving` on the active datapath; pairs that cannot start are lost.
    fn resume(&mut self, moving: Vec<QueuePairConfig>) -> Result<(), StartFailure> {
        let mut lost = Vec::new();
        for qp in moving {
            let pair = qp.pair;
            match self.start(qp.clone()) {
                Ok(()) => {}
                Err(f) => {
                    warn!(pair, error = %f.error, "pair could not resume after the switch");
                    lost.extend(positions(std::slice::from_ref(&qp)));
                    lost.extend(f.lost);
                }
            }
        }
        if lost.is_empty() {
            Ok(())
        } else {
            Err(StartFailure {
                error: DatapathError::Pair {
                    pair: lost[0].pair,
                    why: "could not resume on the other datapath".into(),
                },
                lost,
            })
        }
    }

    /// Whether the fallback can still be had (built, parked, or buildable).
    fn has_fallback(&self) -> bool {
        self.serving == Serving::First && (self.other.is_some() || self.make.is_some())
    }

    /// What the parked datapath is, for descriptions.
    fn parked(&self) -> String {
        self.other
            .as_ref()
            .map_or_else(String::new, |d| d.describe())
    }
}

/// Where each of `qps` resumes.
fn positions(qps: &[QueuePairConfig]) -> Vec<PairPosition> {
    qps.iter()
        .map(|qp| PairPosition {
            pair: qp.pair,
            rx: qp.rx.base,
            tx: qp.tx.base,
        })
        .collect()
}

impl Datapath for FallbackDatapath {
    fn describe(&self) -> String {
        match self.serving {
            Serving::Relay => format!(
                "{} (while a migration logs; {} parked)",
                self.active.describe(),
                self.parked()
            ),
            Serving::RelayUntilReset => format!(
                "{} (after a migration, until the device is reset; {} parked)",
                self.active.describe(),
                self.parked()
            ),
            _ => self.active.describe(),
        }
    }

    fn datapath_features(&self) -> u64 {
        self.features
    }

    /// If the first datapath logs, or the fallback relays migrations (the device's
    /// offer is made before any switch).
    fn supports_dirty_log(&self) -> bool {
        self.active.supports_dirty_log() || self.relay
    }

    fn announce(&mut self, mac: [u8; 6]) -> bool {
        self.active.announce(mac)
    }

    fn start(&mut self, qp: QueuePairConfig) -> Result<(), StartFailure> {
        let logging = qp.log.is_some();
        if logging && !self.active.supports_dirty_log() && self.relay && self.has_fallback() {
            self.switch(
                DatapathError::Pair {
                    pair: qp.pair,
                    why: "a live migration logs dirty pages, which this datapath cannot".into(),
                },
                Serving::Relay,
            )?;
        } else if !logging && self.serving == Serving::Relay {
            self.end_relay()?;
        }
        match self.active.start(qp.clone()) {
            Ok(()) => {
                self.running.insert(qp.pair, qp);
                Ok(())
            }
            Err(f) if self.has_fallback() => {
                for p in &f.lost {
                    if let Some(lost) = self.running.get_mut(&p.pair) {
                        lost.rx.base = p.rx;
                        lost.tx.base = p.tx;
                    }
                }
                self.switch(f.error, Serving::FellBack)?;
                self.start(qp)
            }
            Err(f) => {
                for p in &f.lost {
                    self.running.remove(&p.pair);
                }
                Err(f)
            }
        }
    }

    fn stop(&mut self, pair: u16) -> Vec<PairPosition> {
        let positions = self.active.stop(pair);
        for p in &positions {
            self.running.remove(&p.pair);
        }
        self.running.remove(&pair);
        positions
    }

    fn reap(&mut self) -> Vec<PairPosition> {
        let ended = self.active.reap();
        for p in &ended {
            self.running.remove(&p.pair);
        }
        ended
    }

    fn set_call(&mut self, ring: u16, call: Option<Arc<EventFd>>) -> bool {
        let switched = self.active.set_call(ring, call.clone());
        if switched {
            if let Some(qp) = self.running.get_mut(&(ring / 2)) {
                let r = if ring.is_multiple_of(2) {
                    &mut qp.rx
                } else {
                    &mut qp.tx
                };
                r.events.call = call;
            }
        }
        switched
    }

    fn fallback_reason(&self) -> Option<String> {
        self.reason.clone()
    }

    /// If the first datapath can: the offer is made before any switch.
    fn offers_notify_areas(&self) -> bool {
        match self.serving {
            Serving::First => self.active.offers_notify_areas(),
            _ => self
                .other
                .as_ref()
                .is_some_and(|first| first.offers_notify_areas()),
        }
    }

    /// If the first datapath does: the offer is made before any switch.
    fn reports_link(&self) -> bool {
        match self.serving {
            Serving::First => self.active.reports_link(),
            _ => self
                .other
                .as_ref()
                .is_some_and(|first| first.reports_link()),
        }
    }

    fn link_event(&self) -> Option<std::os::fd::RawFd> {
        self.active.link_event()
    }

    fn link_up(&mut self) -> Option<bool> {
        self.active.link_up()
    }

    /// The serving datapath's: none once the device fell back to software, so the
    /// frontend's notifiers are removed and kicks come through the eventfds again.
    fn notify_area(&self, ring: u16) -> Option<NotifyArea> {
        self.active.notify_area(ring)
    }

    fn migration_relay(&self) -> Option<RelayTime> {
        self.relay.then_some(self.relayed)
    }

    /// The frontend went away or reset the device: a migration relay ends with it, and
    /// a first datapath that failed gets another chance with the next session.
    fn reset(&mut self) {
        self.running.clear();
        self.active.reset();
        if self.serving != Serving::First {
            if let Some(first) = self.other.take() {
                let second = std::mem::replace(&mut self.active, first);
                self.other = Some(second);
                if let Some(reason) = self.reason.take() {
                    info!(to = %self.active.describe(), after = %reason,
                          "the device was reset: the first datapath serves again");
                }
                self.serving = Serving::First;
            }
        }
        self.relayed.end(Instant::now());
    }
}
