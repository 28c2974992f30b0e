//! The software [`Datapath`]: one worker thread per running queue pair, ring positions
//! kept across stops, counters kept for the life of the device.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::debug;
use vdpa::{Datapath, DatapathError, QueueCounters, QueuePairConfig, QueueStats, RingConfig};

use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::Interrupt;
use crate::loopback::Loopback;
use crate::queue::Queue;
use crate::ring::DeviceRing;
use crate::rxq::RxQueue;
use crate::txq::TxQueue;
use crate::worker::Worker;

/// The software datapath of one device.
pub struct SoftwareDatapath {
    device: String,
    workers: BTreeMap<u16, Worker>,
    bases: BTreeMap<u16, u16>,
    counters: BTreeMap<u16, Arc<QueueCounters>>,
    interrupts: BTreeMap<u16, Arc<Interrupt>>,
}

impl SoftwareDatapath {
    /// A loopback datapath for device `device`: every transmitted frame comes back.
    pub fn loopback(device: &str) -> Self {
        SoftwareDatapath {
            device: device.to_owned(),
            workers: BTreeMap::new(),
            bases: BTreeMap::new(),
            counters: BTreeMap::new(),
            interrupts: BTreeMap::new(),
        }
    }

    fn queue(&mut self, cfg: &RingConfig, qp: &QueuePairConfig) -> Result<Queue, DatapathError> {
        let ring = DeviceRing::new(cfg, qp.mem.clone(), qp.features.event_idx())?;
        let counters = self.counters.entry(cfg.index).or_default().clone();
        let interrupt = Arc::new(Interrupt::new(cfg.events.call.clone()));
        self.interrupts.insert(cfg.index, interrupt.clone());
        Ok(Queue::new(ring, interrupt, counters))
    }
}

impl Datapath for SoftwareDatapath {
    fn describe(&self) -> String {
        "software/loopback".to_owned()
    }

    fn start(&mut self, qp: QueuePairConfig) -> Result<(), DatapathError> {
        let hdr_len = qp.features.net_header_len();
        let rx = RxQueue::new(self.queue(&qp.rx, &qp)?, hdr_len, qp.features.mrg_rxbuf());
        let tx = TxQueue::new(self.queue(&qp.tx, &qp)?, hdr_len);
        let engine = Box::new(Loopback::new(rx, tx));
        let worker = Worker::spawn(
            format!("{}-q{}", self.device, qp.pair),
            engine,
            qp.rx.events.kick.clone(),
            qp.tx.events.kick.clone(),
        )
        .map_err(|source| DatapathError::Spawn {
            pair: qp.pair,
            source,
        })?;
        self.workers.insert(qp.pair, worker);
        Ok(())
    }

    fn stop(&mut self, pair: u16) {
        let Some(worker) = self.workers.remove(&pair) else {
            return;
        };
        self.interrupts.remove(&(2 * pair));
        self.interrupts.remove(&(2 * pair + 1));
        if let Some((rx, tx)) = worker.stop() {
            debug!(device = %self.device, pair, rx, tx, "worker stopped");
            self.bases.insert(2 * pair, rx);
            self.bases.insert(2 * pair + 1, tx);
        }
    }

    fn set_call(&mut self, ring: u16, call: Option<Arc<EventFd>>) -> bool {
        match self.interrupts.get(&ring) {
            Some(i) if self.workers.contains_key(&(ring / 2)) => {
                i.replace(call);
                true
            }
            _ => false,
        }
    }

    fn base(&self, ring: u16) -> Option<u16> {
        self.bases.get(&ring).copied()
    }

    fn stats(&self) -> Vec<QueueStats> {
        self.counters
            .iter()
            .map(|(&ring, c)| c.snapshot(ring))
            .collect()
    }

    fn reset(&mut self) {
        let pairs: Vec<u16> = self.workers.keys().copied().collect();
        for p in pairs {
            self.stop(p);
        }
        self.bases.clear();
    }
}
