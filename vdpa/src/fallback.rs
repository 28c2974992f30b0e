//! A datapath with a second one behind it: [`FallbackDatapath`] serves with its first
//! datapath until that one cannot start a queue pair, then moves every pair — where
//! its rings are — to the second and stays there.
//!
//! The device core sees one datapath throughout; moving between datapaths is this
//! wrapper's business, not the control plane's.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{error, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::datapath::{Datapath, DatapathError, PairPosition, QueuePairConfig, StartFailure};

/// Builds the datapath a device falls back to, when it is first needed.
pub type FallbackFactory =
    Box<dyn FnOnce() -> Result<Box<dyn Datapath>, Box<dyn std::error::Error + Send + Sync>> + Send>;

/// A first datapath and the fallback that replaces it for good when it fails.
pub struct FallbackDatapath {
    active: Box<dyn Datapath>,
    make: Option<FallbackFactory>,
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
            make: Some(make),
            running: BTreeMap::new(),
            reason: None,
        }
    }

    /// Moves every running pair from the failed datapath to the fallback. On failure
    /// the running pairs are lost (returned with where they resume).
    fn switch(&mut self, cause: DatapathError) -> Result<(), StartFailure> {
        let from = self.active.describe();
        let make = self.make.take().expect("switch happens once");
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
        let positions = |qps: &[QueuePairConfig]| -> Vec<PairPosition> {
            qps.iter()
                .map(|qp| PairPosition {
                    pair: qp.pair,
                    rx: qp.rx.base,
                    tx: qp.tx.base,
                })
                .collect()
        };
        let new = match make() {
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
        self.active = new;
        let reason = format!("{from} failed: {cause}");
        warn!(%from, to = %self.active.describe(), %reason, "falling back to the second datapath");
        self.reason = Some(reason);
        let mut lost = Vec::new();
        for qp in moving {
            let pair = qp.pair;
            match self.active.start(qp.clone()) {
                Ok(()) => {
                    self.running.insert(pair, qp);
                }
                Err(f) => {
                    warn!(pair, error = %f.error, "pair could not resume on the fallback");
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
                    why: "could not resume on the fallback datapath".into(),
                },
                lost,
            })
        }
    }
}

impl Datapath for FallbackDatapath {
    fn describe(&self) -> String {
        self.active.describe()
    }

    fn datapath_features(&self) -> u64 {
        self.features
    }

    /// Only if the first datapath logs (the device's offer is made before any switch;
    /// the software fallback always can).
    fn supports_dirty_log(&self) -> bool {
        self.active.supports_dirty_log()
    }

    fn announce(&mut self, mac: [u8; 6]) -> bool {
        self.active.announce(mac)
    }

    fn start(&mut self, qp: QueuePairConfig) -> Result<(), StartFailure> {
        match self.active.start(qp.clone()) {
            Ok(()) => {
                self.running.insert(qp.pair, qp);
                Ok(())
            }
            Err(f) if self.make.is_some() => {
                for p in &f.lost {
                    if let Some(lost) = self.running.get_mut(&p.pair) {
                        lost.rx.base = p.rx;
                        lost.tx.base = p.tx;
                    }
                }
                let pair = qp.pair;
                self.switch(f.error)?;
                self.active.start(qp.clone())?;
                self.running.insert(pair, qp);
                Ok(())
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

    fn reset(&mut self) {
        self.running.clear();
        self.active.reset();
    }
}
