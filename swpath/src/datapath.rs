//! The software [`Datapath`]: a worker per running queue pair (on a thread of its own or
//! its CPU's shared one), ring positions kept across stops, counters kept for the life
//! of the device.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{debug, info, warn};
use vdpa::virtio::features::VIRTIO_F_IN_ORDER;
use vdpa::virtio::net_hdr::LEGACY_NET_HDR_LEN;
use vdpa::{
    Datapath, DatapathError, LogWriter, PairPosition, QueuePairConfig, RingConfig, StartFailure,
};

use vmm_sys_util::eventfd::EventFd;

use crate::af_packet::{AfPacket, AfPacketPort, AF_PACKET_OFFLOADS};
use crate::announce;
use crate::engine::Engine;
use crate::interrupt::Interrupt;
use crate::loopback::Loopback;
use crate::port::PortEngine;
use crate::portsec::PortSecurity;
use crate::queue::Queue;
use crate::ratelimit::RateControl;
use crate::ring::DeviceRing;
use crate::rxq::RxQueue;
use crate::tap::{Tap, TapPort, GUEST_GSO, TAP_OFFLOADS};
use crate::tuning::{Tuning, Workers};
use crate::txq::TxQueue;
use crate::txq::MAX_FRAME;
use crate::worker::{Job, Placement, Worker};

/// Where a software device's frames go.
pub enum Backend {
    /// Back to the guest.
    Loopback,
    /// A tap device, one queue per queue pair.
    Tap(Tap),
    /// Packet sockets on a network interface, one per queue pair.
    AfPacket(AfPacket),
}

/// The software datapath of one device.
pub struct SoftwareDatapath {
    device: String,
    backend: Backend,
    /// Largest L3 packet the device carries (for sizing RX reads).
    mtu: u16,
    tuning: Tuning,
    offloads: bool,
    workers: BTreeMap<u16, Worker>,
    interrupts: BTreeMap<u16, Arc<Interrupt>>,
    /// The vnet header length the tap's queues were last set to.
    tap_hdr_len: usize,
    /// What the device may receive and send (af_packet and tap).
    security: Arc<PortSecurity>,
    /// The device's rate limits, shared with the control plane.
    rates: Option<Arc<RateControl>>,
}

impl SoftwareDatapath {
    /// A loopback datapath for device `device`: every transmitted frame comes back.
    pub fn loopback(device: &str) -> Self {
        Self::new(device, Backend::Loopback, 1500, Tuning::default())
    }

    /// A datapath for device `device` moving frames to and from `backend`; `mtu`
    /// bounds the frames received without segmentation offload.
    pub fn new(device: &str, mut backend: Backend, mtu: u16, tuning: Tuning) -> Self {
        // No pair runs yet: a tap queue is attached only while its pair's worker runs,
        // so that the kernel never steers a flow to a queue nobody reads.
        match &mut backend {
            Backend::Tap(tap) => {
                for i in 0..tap.queues() {
                    if let Err(e) = tap.detach_queue(i) {
                        warn!(device, error = %e,
                              "cannot detach tap queue; flows steered to it are lost until its pair runs");
                    }
                }
            }
            Backend::AfPacket(p) => (0..p.queues()).for_each(|i| p.detach_queue(i)),
            Backend::Loopback => {}
        }
        SoftwareDatapath {
            device: device.to_owned(),
            backend,
            mtu,
            tuning,
            offloads: true,
            workers: BTreeMap::new(),
            interrupts: BTreeMap::new(),
            tap_hdr_len: LEGACY_NET_HDR_LEN,
            security: Arc::new(PortSecurity::default()),
            rates: None,
        }
    }

    /// Checks (and on a VLAN tags) what the guest sends according to `security`, and
    /// on a tap has the kernel filter what it receives (an AF_PACKET backend was
    /// opened with its filter, [`AfPacket::open_secured`]).
    pub fn with_port_security(mut self, security: Arc<PortSecurity>) -> std::io::Result<Self> {
        if let Backend::Tap(tap) = &self.backend {
            tap.set_rx_filter(&security)?;
        }
        self.security = security;
        Ok(self)
    }

    /// Limits the device's rates (split over its queue pairs) as `rates` says, now and
    /// after every change to it.
    pub fn with_rates(mut self, rates: Arc<RateControl>) -> Self {
        self.rates = Some(rates);
        self
    }

    /// Offers no checksum/segmentation offloads even if the backend could.
    pub fn without_offloads(mut self) -> Self {
        self.offloads = false;
        self
    }

    /// The offloads `backend` can serve (what the device will offer with it).
    pub fn backend_offloads(backend: &Backend) -> u64 {
        match backend {
            Backend::Tap(t) if t.supports_offloads() => TAP_OFFLOADS,
            Backend::AfPacket(_) => AF_PACKET_OFFLOADS,
            _ => 0,
        }
    }

    /// Ring features `backend` keeps its promises for: VIRTIO_F_IN_ORDER where every
    /// buffer is used in ring order — loopback and tap, which take and complete one
    /// frame at a time. Not AF_PACKET: a batch receive hands back a buffer whose frame
    /// was dropped after later ones. (A malformed chain is returned as soon as it is
    /// found, possibly ahead of buffers reserved before it: the driver broke the ring
    /// first.)
    pub fn backend_ring_features(backend: &Backend) -> u64 {
        match backend {
            Backend::Loopback | Backend::Tap(_) => VIRTIO_F_IN_ORDER,
            Backend::AfPacket(_) => 0,
        }
    }

    fn queue(&mut self, cfg: &RingConfig, qp: &QueuePairConfig) -> Result<Queue, DatapathError> {
        let mut ring = DeviceRing::new(cfg, qp.mem.clone(), qp.features.event_idx())?;
        if let (Some(log), Some(gpa)) = (&qp.log, cfg.log_used) {
            ring.log_used_at(log.clone(), gpa);
        }
        let interrupt = Arc::new(Interrupt::new(cfg.events.call.clone()));
        self.interrupts.insert(cfg.index, interrupt.clone());
        Ok(Queue::new(ring, interrupt, cfg.counters.clone()))
    }
}

impl Datapath for SoftwareDatapath {
    fn describe(&self) -> String {
        match &self.backend {
            Backend::Loopback => "software/loopback".to_owned(),
            Backend::Tap(t) => format!("software/tap {}", t.name()),
            Backend::AfPacket(p) => format!("software/af_packet {}", p.ifname()),
        }
    }

    fn datapath_features(&self) -> u64 {
        let offloads = if self.offloads {
            Self::backend_offloads(&self.backend)
        } else {
            0
        };
        offloads | Self::backend_ring_features(&self.backend)
    }

    fn supports_dirty_log(&self) -> bool {
        true
    }

    fn announce(&mut self, mac: [u8; 6]) -> bool {
        self.send_rarp(mac)
    }

    fn start(&mut self, qp: QueuePairConfig) -> Result<(), StartFailure> {
        Ok(self.start_pair(qp)?)
    }

    fn stop(&mut self, pair: u16) -> Vec<PairPosition> {
        let Some(worker) = self.workers.remove(&pair) else {
            return Vec::new();
        };
        self.interrupts.remove(&(2 * pair));
        self.interrupts.remove(&(2 * pair + 1));
        let stopped = worker.stop();
        self.detach_backend_queue(pair);
        match stopped {
            Some(exit) => {
                let (rx, tx) = exit.bases();
                debug!(device = %self.device, pair, rx, tx, ?exit, "worker stopped");
                vec![PairPosition { pair, rx, tx }]
            }
            None => Vec::new(),
        }
    }

    /// Pairs whose worker ended on its own (its guest memory faulted, or it
    /// panicked), stopped now, with where their rings resume.
    fn reap(&mut self) -> Vec<PairPosition> {
        let ended: Vec<u16> = self
            .workers
            .iter()
            .filter(|(_, w)| w.finished())
            .map(|(&p, _)| p)
            .collect();
        ended.into_iter().flat_map(|p| self.stop(p)).collect()
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

    fn reset(&mut self) {
        let pairs: Vec<u16> = self.workers.keys().copied().collect();
        for p in pairs {
            self.stop(p);
        }
    }
}

impl SoftwareDatapath {
    /// Builds the queues and engine of a pair and starts its worker.
    fn start_pair(&mut self, qp: QueuePairConfig) -> Result<(), DatapathError> {
        if let Some(f) = qp.mem.fault() {
            return Err(DatapathError::Pair {
                pair: qp.pair,
                why: format!("{f}; waiting for a new memory table"),
            });
        }
        let hdr_len = qp.features.net_header_len();
        let mut rxq = self.queue(&qp.rx, &qp)?;
        if self.tuning.coalescing() {
            rxq.set_coalescing(self.tuning.rx_coalesce_frames, self.tuning.rx_coalesce_time);
        }
        let mut rx = RxQueue::new(rxq, hdr_len, qp.features.mrg_rxbuf());
        // TX writes nothing into guest memory but its used ring.
        rx.set_log(qp.log.clone().map(|l| LogWriter::new(l, qp.mem.clone())));
        let tx = TxQueue::new(self.queue(&qp.tx, &qp)?, hdr_len);
        let max_rx = hdr_len as u64
            + if qp.features.bits & GUEST_GSO != 0 {
                MAX_FRAME
            } else {
                u64::from(self.mtu) + 18
            };
        let pair = usize::from(qp.pair);
        let engine: Box<dyn Engine> = match &mut self.backend {
            Backend::Loopback => Box::new(Loopback::new(rx, tx)),
            Backend::Tap(tap) => {
                let tap_name = tap.name().to_owned();
                let backend =
                    |e: std::io::Error| DatapathError::backend(format!("tap {tap_name}"), e);
                check_queue(qp.pair, tap.queues(), tap.name())?;
                tap.set_vnet_hdr_len(hdr_len).map_err(backend)?;
                self.tap_hdr_len = hdr_len;
                tap.set_offload(qp.features.bits).map_err(backend)?;
                let fd = tap.queue(pair).map_err(backend)?;
                tap.attach_queue(pair).map_err(backend)?;
                Box::new(PortEngine::new(
                    rx,
                    tx,
                    TapPort::secured(fd, max_rx, qp.features.mrg_rxbuf(), &self.security),
                ))
            }
            Backend::AfPacket(p) => {
                check_queue(qp.pair, p.queues(), p.ifname())?;
                let ifname = p.ifname().to_owned();
                let backend =
                    |e: std::io::Error| DatapathError::backend(format!("AF_PACKET on {ifname}"), e);
                p.attach_queue(pair).map_err(backend)?;
                let sock = p.queue(pair).map_err(backend)?;
                Box::new(PortEngine::new(
                    rx,
                    tx,
                    AfPacketPort::secured(sock, max_rx, qp.features.bits, &self.security),
                ))
            }
        };
        let pairs = match &self.backend {
            Backend::Loopback => 1,
            Backend::Tap(t) => t.queues(),
            Backend::AfPacket(p) => p.queues(),
        };
        let cpu = self.tuning.cpu_of(qp.pair);
        let placement = match (self.tuning.workers, cpu) {
            (Workers::PerCpu, Some(cpu)) => Placement::Shared { cpu },
            _ => Placement::Own { cpu },
        };
        let job = Job {
            name: format!("{}-q{}", self.device, qp.pair),
            engine,
            kicks: [qp.rx.events.kick.clone(), qp.tx.events.kick.clone()],
            tuning: self.tuning.clone(),
            ended: qp.ended.clone(),
            rates: self.rates.clone().map(|r| (r, pairs as u16)),
        };
        let worker = Worker::start(job, placement).map_err(|source| {
            self.detach_backend_queue(qp.pair);
            DatapathError::Spawn {
                pair: qp.pair,
                source,
            }
        })?;
        self.workers.insert(qp.pair, worker);
        Ok(())
    }

    /// Sends a RARP announcing `mac` on the backend (SEND_RARP after a migration):
    /// on an attached tap queue, behind the vnet header the tap was last set to, or
    /// on a packet socket (10-byte header). Nothing for loopback: the only one to
    /// tell is the guest itself.
    fn send_rarp(&mut self, mac: [u8; 6]) -> bool {
        let frame = announce::rarp_frame(mac);
        let sent = match &self.backend {
            Backend::Tap(tap) => match tap.attached_queue() {
                Some(q) => announce::send_with_vnet_hdr(q, self.tap_hdr_len, &frame),
                None => Err(std::io::Error::other("no tap queue is attached")),
            },
            Backend::AfPacket(p) => match p.any_socket() {
                Some(s) => announce::send_with_vnet_hdr(s, LEGACY_NET_HDR_LEN, &frame),
                None => Err(std::io::Error::other("no packet socket is open")),
            },
            Backend::Loopback => return false,
        };
        match sent {
            Ok(()) => {
                info!(device = %self.device, mac = ?mac, "guest announced with a RARP (SEND_RARP)");
                true
            }
            Err(e) => {
                warn!(device = %self.device, error = %e, "cannot send the RARP announcing the guest");
                false
            }
        }
    }

    /// Takes the backend queue of `pair` out of the kernel's flow spreading (a tap
    /// queue is detached, a packet socket leaves the fanout group), so that frames go
    /// to queues whose pairs run.
    fn detach_backend_queue(&mut self, pair: u16) {
        let i = usize::from(pair);
        match &mut self.backend {
            Backend::Tap(tap) if i < tap.queues() => {
                if let Err(e) = tap.detach_queue(i) {
                    warn!(device = %self.device, pair, error = %e,
                          "cannot detach tap queue; flows steered to it are lost");
                }
            }
            Backend::AfPacket(p) if i < p.queues() => p.detach_queue(i),
            _ => {}
        }
    }
}

fn check_queue(pair: u16, queues: usize, what: &str) -> Result<(), DatapathError> {
    if usize::from(pair) < queues {
        Ok(())
    } else {
        Err(DatapathError::Pair {
            pair,
            why: format!("{what} has {queues} queues"),
        })
    }
}
