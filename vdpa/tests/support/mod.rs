//! Shared by the control-plane tests: a datapath that records what the device core
//! asks of it, and a device configuration.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vdpa::{Datapath, DatapathError, PairPosition, QueuePairConfig, StartFailure};
use vdpad_config::{DeviceConfig, MacAddress};
use vmm_sys_util::eventfd::EventFd;

/// What the control plane asked of the datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Start {
        pair: u16,
        rx_base: u16,
        tx_base: u16,
        rx_desc: u64,
    },
    Stop(u16),
    Call(u16),
    Reset,
}

/// A datapath that records calls and pretends each run moved rings forward by 5.
#[derive(Clone, Default)]
pub struct Recorder {
    /// Whether it switches call eventfds of running rings in place.
    pub live_call: bool,
    /// Pairs it refuses to start.
    pub refuse: Vec<u16>,
    /// Whether it marks dirty pages (offered as `supports_dirty_log`).
    pub logs: bool,
    /// Whether it can only start rings at position 0 (a NIC without ring state).
    pub zero_only: bool,
    /// Whether a reset makes it accept the pairs it refused (a NIC that was busy).
    pub heal_on_reset: bool,
    /// Panics in the next `start` (once), as a datapath with a bug would.
    pub panic_next_start: Arc<std::sync::atomic::AtomicBool>,
    pub events: Arc<Mutex<Vec<Event>>>,
    pub running: Arc<Mutex<std::collections::BTreeMap<u16, (u16, u16)>>>,
}

impl Recorder {
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
    pub fn starts(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e, Event::Start { .. }))
            .count()
    }
}

impl Datapath for Recorder {
    fn describe(&self) -> String {
        "recorder".into()
    }
    fn supports_dirty_log(&self) -> bool {
        self.logs
    }
    fn resumes_anywhere(&self) -> bool {
        !self.zero_only
    }
    fn start(&mut self, qp: QueuePairConfig) -> Result<(), StartFailure> {
        if self
            .panic_next_start
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("the recorder panics starting pair {}", qp.pair);
        }
        if self.zero_only && (qp.rx.base, qp.tx.base) != (0, 0) {
            return Err(DatapathError::Pair {
                pair: qp.pair,
                why: "this datapath starts rings at 0 only".into(),
            }
            .into());
        }
        if self.refuse.contains(&qp.pair) {
            return Err(DatapathError::Pair {
                pair: qp.pair,
                why: "refused by the test".into(),
            }
            .into());
        }
        self.events.lock().unwrap().push(Event::Start {
            pair: qp.pair,
            rx_base: qp.rx.base,
            tx_base: qp.tx.base,
            rx_desc: qp.rx.addrs.desc,
        });
        self.running
            .lock()
            .unwrap()
            .insert(qp.pair, (qp.rx.base, qp.tx.base));
        Ok(())
    }
    fn stop(&mut self, pair: u16) -> Vec<PairPosition> {
        let Some((rx, tx)) = self.running.lock().unwrap().remove(&pair) else {
            return Vec::new();
        };
        self.events.lock().unwrap().push(Event::Stop(pair));
        vec![PairPosition {
            pair,
            rx: rx.wrapping_add(5),
            tx: tx.wrapping_add(5),
        }]
    }
    fn set_call(&mut self, ring: u16, _call: Option<Arc<EventFd>>) -> bool {
        if self.live_call {
            self.events.lock().unwrap().push(Event::Call(ring));
        }
        self.live_call
    }
    fn reset(&mut self) {
        if self.heal_on_reset {
            self.refuse.clear();
        }
        let pairs: Vec<u16> = self.running.lock().unwrap().keys().copied().collect();
        for p in pairs {
            self.stop(p);
        }
        self.events.lock().unwrap().push(Event::Reset);
    }
}

pub fn device_config(socket: PathBuf, pairs: u16) -> DeviceConfig {
    DeviceConfig {
        queue_pairs: pairs,
        mac: Some(MacAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
        ..DeviceConfig::software_loopback("t0", socket)
    }
}
