//! The ready rig: guest memory, the connection and the queue pairs, plus the operations
//! tests need around them (send one frame and wait, stop a ring, wait for interrupts).

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vdpa::VhostVdpa;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

use serde::Serialize;
use vdpa::virtio::features::{
    VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX,
};
use vhost::vhost_user::VhostUserProtocolFeatures;

use crate::connection::FrontendConnection;
use crate::driver_ring::DriverRing;
use crate::error::RigError;
use crate::host_notifier::BackendRequests;
use crate::kick_call::KickCall;
use crate::kick_call::{raw, wait_readable};
use crate::memory::RigMemory;
use crate::options::RigOptions;
use crate::rxq::DriverRxQueue;
use crate::stats::RigStats;
use crate::txq::{DriverTxQueue, SlotPool};
use vdpa::virtio::net_config::{STATUS_OFFSET, VIRTIO_NET_S_LINK_UP};
use vdpa::virtio::net_hdr::VirtioNetHdr;

/// RX and TX queue of one queue pair.
#[derive(Debug)]
pub struct QueuePair {
    /// Ring 2i: device → driver.
    pub rx: DriverRxQueue,
    /// Ring 2i+1: driver → device.
    pub tx: DriverTxQueue,
}

/// A frame that came back, from [`Rig::send_and_wait`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Its virtio-net header.
    pub hdr: VirtioNetHdr,
    /// Frame bytes.
    pub data: Vec<u8>,
    /// RX buffers (used elements) it took.
    pub buffers: u16,
    /// Other frames received on the pair while waiting.
    pub others: usize,
}

/// What was negotiated with the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Negotiation {
    /// Features the backend offered (GET_FEATURES).
    pub offered_features: u64,
    /// Features the rig acked (SET_FEATURES).
    pub acked_features: u64,
    /// Protocol features the backend offered.
    pub offered_protocol: u64,
    /// Protocol features the rig acked.
    pub acked_protocol: u64,
    /// GET_QUEUE_NUM reply, if it was sent.
    pub queue_num: Option<u64>,
}

impl Negotiation {
    /// EVENT_IDX is in use.
    pub fn event_idx(&self) -> bool {
        self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0
    }
    /// MRG_RXBUF is in use.
    pub fn mrg_rxbuf(&self) -> bool {
        self.acked_features & VIRTIO_NET_F_MRG_RXBUF != 0
    }
    /// PROTOCOL_FEATURES is in use (rings start disabled; SET_VRING_ENABLE needed).
    pub fn protocol_features(&self) -> bool {
        self.acked_features & VHOST_USER_F_PROTOCOL_FEATURES != 0
    }
    /// REPLY_ACK is in use (setters are acknowledged).
    pub fn reply_ack(&self) -> bool {
        self.acked_protocol & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0
    }
}

/// A ring laid out and initialised in guest memory, with its eventfds.
#[derive(Debug)]
pub(crate) struct PreparedRing {
    pub(crate) ring: DriverRing,
    pub(crate) kick_call: KickCall,
}

/// Guest memory set aside for the queues of one pair and for hostile chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PairAreas {
    pub(crate) tx_pool: u64,
    pub(crate) rx_area: u64,
}

/// A spare guest memory area (hostile descriptors point into it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scratch {
    /// GPA of the area.
    pub gpa: u64,
    /// Its length.
    pub len: u64,
}

/// How the rig reaches the device.
pub enum Transport {
    /// A vhost-user socket (the usual way).
    VhostUser(FrontendConnection),
    /// A vhost-vdpa character device (`/dev/vhost-vdpa-N`).
    VhostVdpa(Box<crate::vhost_vdpa::VdpaHandle>),
    /// The kernel's vhost-net, with the tap it forwards to.
    VhostNet(Box<(crate::vhost_net::NetHandle, std::fs::File)>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::VhostUser(c) => f.debug_tuple("VhostUser").field(c).finish(),
            Transport::VhostVdpa(_) => f.write_str("VhostVdpa"),
            Transport::VhostNet(_) => f.write_str("VhostNet"),
        }
    }
}

/// What [`RigSetup::finish`](crate::RigSetup::finish) hands over.
#[derive(Debug)]
pub(crate) struct RigParts {
    pub(crate) opts: RigOptions,
    pub(crate) mem: Arc<RigMemory>,
    pub(crate) conn: Transport,
    pub(crate) neg: Negotiation,
    pub(crate) rings: Vec<PreparedRing>,
    pub(crate) areas: Vec<PairAreas>,
    pub(crate) scratch: Scratch,
    /// The backend channel, with host notifiers.
    pub(crate) backend: Option<BackendRequests>,
}

/// A vhost-user frontend playing the VM, fully set up.
#[derive(Debug)]
pub struct Rig {
    opts: RigOptions,
    mem: Arc<RigMemory>,
    conn: Transport,
    neg: Negotiation,
    pairs: Vec<QueuePair>,
    scratch: Scratch,
    backend: Option<BackendRequests>,
}

impl Rig {
    pub(crate) fn from_parts(p: RigParts) -> Self {
        let mrg = p.neg.mrg_rxbuf();
        let qs = u64::from(p.opts.queue_size);
        let k = p.opts.rx_descs_per_chain(mrg);
        let buf = u64::from(p.opts.rx_buf_size);
        let mut rings = p.rings.into_iter();
        let mut pairs = Vec::with_capacity(p.areas.len());
        for (i, a) in p.areas.iter().enumerate() {
            let rx = rings.next().expect("two rings per pair");
            let tx = rings.next().expect("two rings per pair");
            let rx_pool = SlotPool {
                gpa: a.rx_area,
                stride: buf * k as u64,
                count: (qs / k as u64) as u16,
            };
            let tx_pool = SlotPool {
                gpa: a.tx_pool,
                stride: p.opts.tx_slot_bytes(),
                count: qs as u16,
            };
            pairs.push(QueuePair {
                rx: DriverRxQueue::new(
                    rx.ring,
                    rx.kick_call,
                    2 * i,
                    rx_pool,
                    p.opts.rx_buf_size,
                    k,
                    mrg,
                ),
                tx: DriverTxQueue::new(
                    tx.ring,
                    tx.kick_call,
                    2 * i + 1,
                    tx_pool,
                    p.opts.tx_two_desc,
                ),
            });
        }
        Self {
            opts: p.opts,
            mem: p.mem,
            conn: p.conn,
            neg: p.neg,
            pairs,
            scratch: p.scratch,
            backend: p.backend,
        }
    }

    /// Rings that kick through a doorbell page the backend gave (host notifiers).
    pub fn notifier_rings(&self) -> Vec<u16> {
        self.backend
            .as_ref()
            .map_or_else(Vec::new, BackendRequests::rings)
    }

    /// The session options.
    pub fn options(&self) -> &RigOptions {
        &self.opts
    }
    pub(crate) fn set_acked_features(&mut self, features: u64) {
        self.neg.acked_features = features;
    }

    /// What was negotiated.
    pub fn negotiated(&self) -> &Negotiation {
        &self.neg
    }
    /// Guest memory.
    pub fn memory(&self) -> &Arc<RigMemory> {
        &self.mem
    }
    /// Spare guest memory (hostile chains point into it).
    pub fn scratch(&self) -> Scratch {
        self.scratch
    }
    /// All queue pairs.
    pub fn pairs(&self) -> &[QueuePair] {
        &self.pairs
    }
    /// All queue pairs, mutable.
    pub fn pairs_mut(&mut self) -> &mut [QueuePair] {
        &mut self.pairs
    }
    /// Queue pair `i`.
    pub fn pair_mut(&mut self, i: usize) -> &mut QueuePair {
        &mut self.pairs[i]
    }
    /// The `vhost` crate frontend, for requests of the test's own.
    ///
    /// # Panics
    /// On a rig connected through vhost-vdpa.
    pub fn frontend(&mut self) -> &mut Frontend {
        self.connection().frontend()
    }
    /// The vhost-user connection.
    ///
    /// # Panics
    /// On a rig connected through vhost-vdpa or vhost-net.
    pub fn connection(&mut self) -> &mut FrontendConnection {
        match &mut self.conn {
            Transport::VhostUser(c) => c,
            Transport::VhostVdpa(_) => panic!("this rig is connected through vhost-vdpa"),
            Transport::VhostNet(_) => panic!("this rig is connected through vhost-net"),
        }
    }

    /// Counters summed over all pairs.
    pub fn stats(&self) -> RigStats {
        let mut s = RigStats::default();
        for p in &self.pairs {
            s.tx.add(&p.tx.stats());
            s.rx.add(&p.rx.stats());
        }
        s
    }

    /// The call eventfds of every ring (RX and TX of each pair).
    pub fn call_fds(&self) -> Vec<RawFd> {
        self.pairs
            .iter()
            .flat_map(|p| {
                [
                    raw(p.rx.kick_call().call_fd()),
                    raw(p.tx.kick_call().call_fd()),
                ]
            })
            .collect()
    }

    /// Reads every signalled call eventfd; returns how many were signalled.
    pub fn drain_calls(&mut self) -> Result<usize, RigError> {
        let mut n = 0;
        for p in &mut self.pairs {
            for v in [
                p.rx.kick_call_mut().drain_call(),
                p.tx.kick_call_mut().drain_call(),
            ] {
                if v.map_err(RigError::Poll)? > 0 {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Interrupts off on every ring (the rig is polling).
    pub fn disable_interrupts(&mut self) {
        for p in &mut self.pairs {
            p.rx.ring_mut().disable_interrupts();
            p.tx.ring_mut().disable_interrupts();
        }
    }

    /// NAPI-style sleep: re-enables interrupts on every RX ring (and, with `want_tx`, on
    /// TX rings with frames in flight, delayed), re-checks for used entries that raced
    /// in, sleeps on the call eventfds for at most `timeout`, drains them and disables
    /// interrupts again. Returns the number of call eventfds that were signalled.
    pub fn sleep_for_work(&mut self, want_tx: bool, timeout: Duration) -> Result<usize, RigError> {
        let mut pending = false;
        for p in &mut self.pairs {
            pending |= p.rx.ring_mut().enable_interrupts();
            if want_tx && p.tx.in_flight() + p.tx.ring().raw_outstanding() > 0 {
                pending |= p.tx.ring_mut().enable_interrupts_delayed();
            }
        }
        if !pending {
            wait_readable(&self.call_fds(), timeout).map_err(RigError::Poll)?;
        }
        let n = self.drain_calls()?;
        self.disable_interrupts();
        Ok(n)
    }

    /// Posts RX buffers on every pair as far as they go, and publishes them.
    pub fn refill_all(&mut self) -> Result<(), RigError> {
        for p in &mut self.pairs {
            p.rx.refill()?;
            p.rx.flush()?;
        }
        Ok(())
    }

    /// Sends `frame` on pair `pair` and waits (at most `timeout`) until a byte-identical
    /// frame comes back on that pair's RX queue. Other frames are counted and dropped.
    pub fn send_and_wait(
        &mut self,
        pair: usize,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<Received, RigError> {
        if pair >= self.pairs.len() {
            return Err(RigError::Options(format!("no queue pair {pair}")));
        }
        let deadline = Instant::now() + timeout;
        self.refill_all()?;
        // Post the frame, waiting (bounded) for TX room if the ring is full.
        loop {
            let tx = &mut self.pairs[pair].tx;
            tx.reap()?;
            if tx.send(frame)? {
                tx.flush()?;
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RigError::Timeout(format!(
                    "TX ring {} stayed full ({} frames and {} hostile chains in flight)",
                    tx.index(),
                    tx.in_flight(),
                    tx.ring().raw_outstanding()
                )));
            }
            self.sleep_for_work(true, (deadline - now).min(Duration::from_millis(50)))?;
        }
        let mut others = 0;
        loop {
            let p = &mut self.pairs[pair];
            p.tx.reap()?;
            let mut got = None;
            p.rx.poll(usize::MAX, |f| {
                if got.is_none() && f.data == frame {
                    got = Some((f.hdr, f.buffers));
                } else {
                    others += 1;
                }
            })?;
            p.rx.refill()?;
            p.rx.flush()?;
            if let Some((hdr, buffers)) = got {
                return Ok(Received {
                    hdr,
                    data: frame.to_vec(),
                    buffers,
                    others,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RigError::Timeout(format!(
                    "frame of {} bytes sent on pair {pair} did not come back within {:?} \
                     ({others} other frames received)",
                    frame.len(),
                    timeout
                )));
            }
            self.sleep_for_work(true, (deadline - now).min(Duration::from_millis(50)))?;
        }
    }

    /// Sends GET_VRING_BASE for `ring` (which stops it in the backend) and returns the
    /// index the backend reports.
    pub fn get_vring_base(&mut self, ring: usize) -> Result<u32, RigError> {
        let conn = match &mut self.conn {
            Transport::VhostUser(c) => c,
            Transport::VhostVdpa(dev) => {
                return dev.get_vring_base(ring).map_err(|source| RigError::Vdpa {
                    step: format!("VHOST_GET_VRING_BASE (ring {ring})"),
                    source,
                })
            }
            Transport::VhostNet(net) => {
                return vhost::VhostBackend::get_vring_base(&net.0, ring).map_err(|source| {
                    RigError::VhostNet {
                        step: format!("VHOST_GET_VRING_BASE (ring {ring})"),
                        source,
                    }
                })
            }
        };
        conn.without_need_reply(|fe| fe.get_vring_base(ring))
            .map_err(|source| RigError::Request {
                request: format!("GET_VRING_BASE (ring {ring})"),
                source,
            })
    }

    /// Has the device signal `call` when its config space changes (vhost-vdpa only:
    /// VHOST_VDPA_SET_CONFIG_CALL).
    pub fn watch_config(&self, call: &vmm_sys_util::eventfd::EventFd) -> Result<(), RigError> {
        let Transport::VhostVdpa(dev) = &self.conn else {
            return Err(RigError::Unsupported(
                "watching the link over vhost-user (QEMU keeps that config space)".into(),
            ));
        };
        dev.set_config_call(call).map_err(|source| RigError::Vdpa {
            step: "VHOST_VDPA_SET_CONFIG_CALL".into(),
            source,
        })
    }

    /// Whether the device's config space says the link is up (vhost-vdpa only).
    pub fn link_up(&self) -> Result<bool, RigError> {
        let Transport::VhostVdpa(dev) = &self.conn else {
            return Err(RigError::Unsupported(
                "reading the config space over vhost-user".into(),
            ));
        };
        let mut status = [0u8; 2];
        dev.get_config(STATUS_OFFSET as u32, &mut status)
            .map_err(|source| RigError::Vdpa {
                step: "VHOST_VDPA_GET_CONFIG (status)".into(),
                source,
            })?;
        Ok(u16::from_le_bytes(status) & VIRTIO_NET_S_LINK_UP != 0)
    }

    /// SET_VRING_ENABLE for `ring`.
    pub fn set_vring_enable(&mut self, ring: usize, enable: bool) -> Result<(), RigError> {
        if let Transport::VhostNet(_) = &self.conn {
            return Err(RigError::Unsupported(
                "enabling rings of vhost-net (it has no SET_VRING_ENABLE)".into(),
            ));
        }
        if let Transport::VhostVdpa(dev) = &self.conn {
            return dev
                .set_vring_enable(ring, enable)
                .map_err(|source| RigError::Vdpa {
                    step: format!("VHOST_VDPA_SET_VRING_ENABLE (ring {ring})"),
                    source,
                });
        }
        self.connection()
            .frontend()
            .set_vring_enable(ring, enable)
            .map_err(|source| RigError::Request {
                request: format!("SET_VRING_ENABLE({}) (ring {ring})", u8::from(enable)),
                source,
            })
    }

    /// Stops every ring as DPDK's virtio-user does (SET_VRING_ENABLE 0 when protocol
    /// features are in use, then GET_VRING_BASE); returns the bases, by ring index.
    pub fn stop(&mut self) -> Result<Vec<u32>, RigError> {
        let rings = 2 * self.pairs.len();
        if self.neg.protocol_features() {
            for r in 0..rings {
                self.set_vring_enable(r, false)?;
            }
        }
        (0..rings).map(|r| self.get_vring_base(r)).collect()
    }

    /// Closes the connection now.
    pub fn disconnect(self) {
        match self.conn {
            Transport::VhostUser(c) => c.shutdown(),
            Transport::VhostVdpa(dev) => {
                // The kernel resets the device when its fd closes; say so first.
                let _ = vhost::vdpa::VhostVdpa::set_status(&*dev, 0);
            }
            // Closing the vhost-net fd stops its worker and releases the tap.
            Transport::VhostNet(_) => {}
        }
    }
}

/// Programs `ring` (index `i`) into a kernel vhost device (vhost-vdpa or vhost-net)
/// the way QEMU does: size, base, addresses, kick and call. The addresses go through
/// `set_addr`: vhost-vdpa takes them as IOVAs (its own `set_vring_addr`), vhost-net as
/// our virtual addresses (the trait's, which translates). On failure, the request
/// that failed (`VHOST_SET_VRING_NUM (ring 1)`) and the error.
pub(crate) fn program_kernel_ring(
    dev: &impl vhost::VhostBackend,
    set_addr: impl Fn(usize, &vhost::VringConfigData) -> Result<(), vhost::Error>,
    i: usize,
    r: &mut PreparedRing,
    opts: &RigOptions,
    event_idx: bool,
) -> Result<(), (String, vhost::Error)> {
    r.ring.set_event_idx(event_idx);
    let layout = r.ring.layout();
    let step = |name: &'static str| move |e| (format!("{name} (ring {i})"), e);
    dev.set_vring_num(i, opts.queue_size)
        .map_err(step("VHOST_SET_VRING_NUM"))?;
    dev.set_vring_base(i, opts.initial_index)
        .map_err(step("VHOST_SET_VRING_BASE"))?;
    let config = vhost::VringConfigData {
        queue_max_size: opts.queue_size,
        queue_size: opts.queue_size,
        flags: 0,
        desc_table_addr: layout.desc,
        used_ring_addr: layout.used,
        avail_ring_addr: layout.avail,
        log_addr: None,
    };
    set_addr(i, &config).map_err(step("VHOST_SET_VRING_ADDR"))?;
    dev.set_vring_kick(i, r.kick_call.kick_fd())
        .map_err(step("VHOST_SET_VRING_KICK"))?;
    dev.set_vring_call(i, r.kick_call.call_fd())
        .map_err(step("VHOST_SET_VRING_CALL"))
}
