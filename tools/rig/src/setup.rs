//! Step-by-step vhost-user setup, as QEMU/DPDK drive it, so that a test can stop after any
//! step (and drop the connection: "disconnect mid-setup").
//!
//! Order: connect, SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES (then every setter
//! carries NEED_REPLY if REPLY_ACK was acked), SET_FEATURES, GET_QUEUE_NUM (with MQ),
//! SET_MEM_TABLE (or ADD_MEM_REG per region), then per ring (RX of pair i = 2i,
//! TX = 2i+1): SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK,
//! SET_VRING_CALL, SET_VRING_ENABLE(1) (only with PROTOCOL_FEATURES).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::VhostBackend;

use crate::connection::{accept_one, connect_with_retry, FrontendConnection};
use crate::driver_ring::{DriverRing, RingLayout};
use crate::error::RigError;
use crate::host_notifier::BackendRequests;
use crate::kick_call::KickCall;
use crate::memory::{MemoryLayout, RigMemory};
use crate::migration::{set_vring_addr, share_dirty_log};
use crate::options::RigOptions;
use crate::rig::{Negotiation, PairAreas, PreparedRing, Rig, RigParts, Scratch, Transport};
use vdpa::features::feature_names;
use vdpa::virtio::features::{
    VHOST_F_LOG_ALL, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX,
};

/// One step of the setup sequence. Ring steps carry the vhost-user ring index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SetupStep {
    /// Connect to the socket.
    Connect,
    /// SET_OWNER.
    SetOwner,
    /// GET_FEATURES.
    GetFeatures,
    /// GET_PROTOCOL_FEATURES + SET_PROTOCOL_FEATURES (skipped if not offered).
    ProtocolFeatures,
    /// SET_FEATURES.
    SetFeatures,
    /// GET_QUEUE_NUM (only with the MQ protocol feature).
    GetQueueNum,
    /// SET_MEM_TABLE, or ADD_MEM_REG per region.
    MemTable,
    /// SET_VRING_NUM.
    VringNum(usize),
    /// SET_VRING_BASE.
    VringBase(usize),
    /// SET_VRING_ADDR.
    VringAddr(usize),
    /// SET_VRING_KICK.
    VringKick(usize),
    /// SET_VRING_CALL.
    VringCall(usize),
    /// SET_VRING_ENABLE(1) (only with PROTOCOL_FEATURES).
    VringEnable(usize),
}

impl fmt::Display for SetupStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect => write!(f, "connect"),
            Self::SetOwner => write!(f, "SET_OWNER"),
            Self::GetFeatures => write!(f, "GET_FEATURES"),
            Self::ProtocolFeatures => write!(f, "GET/SET_PROTOCOL_FEATURES"),
            Self::SetFeatures => write!(f, "SET_FEATURES"),
            Self::GetQueueNum => write!(f, "GET_QUEUE_NUM"),
            Self::MemTable => write!(f, "SET_MEM_TABLE"),
            Self::VringNum(r) => write!(f, "SET_VRING_NUM (ring {r})"),
            Self::VringBase(r) => write!(f, "SET_VRING_BASE (ring {r})"),
            Self::VringAddr(r) => write!(f, "SET_VRING_ADDR (ring {r})"),
            Self::VringKick(r) => write!(f, "SET_VRING_KICK (ring {r})"),
            Self::VringCall(r) => write!(f, "SET_VRING_CALL (ring {r})"),
            Self::VringEnable(r) => write!(f, "SET_VRING_ENABLE (ring {r})"),
        }
    }
}

/// The setup sequence in progress.
#[derive(Debug)]
pub struct RigSetup {
    opts: RigOptions,
    mem: Arc<RigMemory>,
    conn: Option<FrontendConnection>,
    plan: VecDeque<SetupStep>,
    done: Vec<SetupStep>,
    neg: Negotiation,
    rings: Vec<PreparedRing>,
    areas: Vec<PairAreas>,
    scratch: Scratch,
    backend: Option<BackendRequests>,
}

/// How long the end of setup waits for the backend's host notifiers.
const NOTIFIER_WAIT: Duration = Duration::from_secs(2);

impl Rig {
    /// Connects and runs the whole setup.
    pub fn connect(opts: RigOptions) -> Result<Self, RigError> {
        RigSetup::new(opts)?.finish()
    }
}

impl RigSetup {
    /// Creates guest memory and lays out and initialises every ring; connects nothing yet.
    pub fn new(opts: RigOptions) -> Result<Self, RigError> {
        opts.validate().map_err(RigError::Options)?;
        let mem = Arc::new(RigMemory::new(&MemoryLayout {
            base_gpa: opts.mem_base,
            size: opts.memory_bytes(),
            regions: opts.mem_regions,
            gap: 1 << 20,
        })?);
        let qs = u64::from(opts.queue_size);
        let mut alloc = mem.allocator();
        let mut rings = Vec::with_capacity(2 * opts.queue_pairs);
        let mut areas = Vec::with_capacity(opts.queue_pairs);
        for _ in 0..opts.queue_pairs {
            for _ in 0..2 {
                let layout = RingLayout::allocate(&mut alloc, opts.queue_size)?;
                rings.push(PreparedRing {
                    ring: DriverRing::new(mem.clone(), layout, opts.initial_index)?,
                    kick_call: KickCall::new().map_err(RigError::Eventfd)?,
                });
            }
            areas.push(PairAreas {
                tx_pool: alloc.alloc(qs * opts.tx_slot_bytes(), 4096)?,
                rx_area: alloc.alloc(qs * u64::from(opts.rx_buf_size), 4096)?,
            });
        }
        let scratch_len = 64 << 10;
        let scratch = Scratch {
            gpa: alloc.alloc(scratch_len, 4096)?,
            len: scratch_len,
        };
        let mut plan = VecDeque::from([
            SetupStep::Connect,
            SetupStep::SetOwner,
            SetupStep::GetFeatures,
            SetupStep::ProtocolFeatures,
            SetupStep::SetFeatures,
            SetupStep::GetQueueNum,
            SetupStep::MemTable,
        ]);
        for r in 0..2 * opts.queue_pairs {
            plan.extend([
                SetupStep::VringNum(r),
                SetupStep::VringBase(r),
                SetupStep::VringAddr(r),
                SetupStep::VringKick(r),
                SetupStep::VringCall(r),
                SetupStep::VringEnable(r),
            ]);
        }
        Ok(Self {
            opts,
            mem,
            conn: None,
            plan,
            done: Vec::new(),
            neg: Negotiation::default(),
            rings,
            areas,
            scratch,
            backend: None,
        })
    }

    /// The options of this session.
    pub fn options(&self) -> &RigOptions {
        &self.opts
    }
    /// Guest memory.
    pub fn memory(&self) -> &Arc<RigMemory> {
        &self.mem
    }
    /// What has been negotiated so far.
    pub fn negotiated(&self) -> &Negotiation {
        &self.neg
    }
    /// Steps performed so far (skipped ones are not listed).
    pub fn done(&self) -> &[SetupStep] {
        &self.done
    }
    /// Steps still to handle (some may be skipped when their turn comes).
    pub fn remaining(&self) -> impl Iterator<Item = &SetupStep> {
        self.plan.iter()
    }
    /// The connection, once the Connect step ran (for requests of the test's own).
    pub fn connection(&mut self) -> Option<&mut FrontendConnection> {
        self.conn.as_mut()
    }
    /// The driver ring of vhost-user ring `index` (e.g. to inspect its layout).
    pub fn ring(&self, index: usize) -> Option<&DriverRing> {
        self.rings.get(index).map(|r| &r.ring)
    }

    fn applicable(&self, step: SetupStep) -> bool {
        match step {
            SetupStep::ProtocolFeatures => {
                self.neg.offered_features & VHOST_USER_F_PROTOCOL_FEATURES != 0
            }
            SetupStep::GetQueueNum => {
                self.neg.acked_protocol & VhostUserProtocolFeatures::MQ.bits() != 0
            }
            SetupStep::VringEnable(_) => self.neg.protocol_features(),
            _ => true,
        }
    }

    /// Handles the next step: performs it, or skips it when it does not apply (e.g.
    /// GET_QUEUE_NUM without MQ). Returns the step handled, `None` when all are done.
    pub fn step(&mut self) -> Result<Option<SetupStep>, RigError> {
        let Some(step) = self.plan.pop_front() else {
            return Ok(None);
        };
        if self.applicable(step) {
            self.perform(step)?;
            self.done.push(step);
        }
        Ok(Some(step))
    }

    /// Handles steps up to and including `stop`.
    pub fn run_until(&mut self, stop: SetupStep) -> Result<(), RigError> {
        if !self.plan.contains(&stop) {
            return Err(RigError::SetupOrder(format!(
                "step {stop} is not ahead in the plan"
            )));
        }
        while let Some(s) = self.step()? {
            if s == stop {
                break;
            }
        }
        Ok(())
    }

    /// Runs every remaining step and returns the ready rig.
    pub fn finish(mut self) -> Result<Rig, RigError> {
        while self.step()?.is_some() {}
        self.take_notifiers()?;
        let conn = self
            .conn
            .take()
            .ok_or_else(|| RigError::SetupOrder("finished without a connection".to_string()))?;
        Ok(Rig::from_parts(RigParts {
            opts: self.opts,
            mem: self.mem,
            conn: Transport::VhostUser(conn),
            neg: self.neg,
            rings: self.rings,
            areas: self.areas,
            scratch: self.scratch,
            backend: self.backend,
        }))
    }

    /// With host notifiers: waits (bounded) for the backend's doorbell pages, one per
    /// ring, and kicks through each ring's page from now on. A backend that sends none
    /// (a software datapath, a NIC whose doorbells share a page) leaves eventfd kicks.
    fn take_notifiers(&mut self) -> Result<(), RigError> {
        let Some(backend) = self.backend.as_mut() else {
            return Ok(());
        };
        let rings = self.rings.len();
        backend
            .serve(NOTIFIER_WAIT, |b| b.rings().len() >= rings)
            .map_err(|source| RigError::RawRequest {
                request: "backend channel (host notifiers)",
                source,
            })?;
        for (i, r) in self.rings.iter_mut().enumerate() {
            r.kick_call.set_notifier(backend.page(i as u16), i as u16);
        }
        Ok(())
    }

    /// The memory and rings laid out, for a transport other than vhost-user.
    #[allow(clippy::type_complexity)]
    pub(crate) fn into_parts(
        self,
    ) -> (
        RigOptions,
        Arc<RigMemory>,
        Vec<PreparedRing>,
        Vec<PairAreas>,
        Scratch,
    ) {
        (self.opts, self.mem, self.rings, self.areas, self.scratch)
    }

    /// Closes the connection now, whatever step was reached.
    pub fn disconnect(self) {
        if let Some(c) = &self.conn {
            c.shutdown();
        }
    }

    fn conn(&mut self) -> Result<&mut FrontendConnection, RigError> {
        self.conn
            .as_mut()
            .ok_or_else(|| RigError::SetupOrder("not connected".to_string()))
    }

    fn perform(&mut self, step: SetupStep) -> Result<(), RigError> {
        let req = |source| RigError::Request {
            request: step.to_string(),
            source,
        };
        match step {
            SetupStep::Connect => {
                let s = if self.opts.listen {
                    accept_one(&self.opts.socket, self.opts.connect_timeout)?
                } else {
                    connect_with_retry(&self.opts.socket, self.opts.connect_timeout)?
                };
                self.conn = Some(FrontendConnection::new(
                    s,
                    2 * self.opts.queue_pairs,
                    self.opts.reply_timeout,
                )?);
            }
            SetupStep::SetOwner => self.conn()?.frontend().set_owner().map_err(req)?,
            SetupStep::GetFeatures => {
                let f = self
                    .conn()?
                    .without_need_reply(|fe| fe.get_features())
                    .map_err(req)?;
                self.neg.offered_features = f;
                if f & VIRTIO_F_VERSION_1 == 0 {
                    return Err(RigError::Unsupported(format!(
                        "VIRTIO_F_VERSION_1 (offered {})",
                        describe_features(f)
                    )));
                }
            }
            SetupStep::ProtocolFeatures => self.negotiate_protocol(step)?,
            SetupStep::SetFeatures => {
                let offered = self.neg.offered_features;
                let mut ack = VIRTIO_F_VERSION_1 | (offered & VHOST_USER_F_PROTOCOL_FEATURES);
                if self.opts.event_idx {
                    ack |= offered & VIRTIO_RING_F_EVENT_IDX;
                }
                if self.opts.mrg_rxbuf {
                    ack |= offered & VIRTIO_NET_F_MRG_RXBUF;
                }
                if self.opts.queue_pairs > 1 {
                    ack |= offered & VIRTIO_NET_F_MQ;
                }
                if self.opts.dirty_log {
                    if offered & VHOST_F_LOG_ALL == 0 {
                        return Err(RigError::Unsupported(format!(
                            "dirty logging: VHOST_F_LOG_ALL not offered ({})",
                            describe_features(offered)
                        )));
                    }
                    let mem = self.mem.clone();
                    share_dirty_log(self.conn()?.frontend(), &mem).map_err(req)?;
                    ack |= VHOST_F_LOG_ALL;
                }
                self.conn()?.frontend().set_features(ack).map_err(req)?;
                self.neg.acked_features = ack;
                let event_idx = self.neg.event_idx();
                for r in &mut self.rings {
                    r.ring.set_event_idx(event_idx);
                }
            }
            SetupStep::GetQueueNum => {
                let n = self.conn()?.get_queue_num()?;
                self.neg.queue_num = Some(n);
                if n < self.opts.queue_pairs as u64 {
                    return Err(RigError::Unsupported(format!(
                        "{} queue pairs (GET_QUEUE_NUM says {n})",
                        self.opts.queue_pairs
                    )));
                }
            }
            SetupStep::MemTable => {
                let infos = self.mem.region_infos();
                let slots = self.opts.mem_slots
                    && self.neg.acked_protocol
                        & VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS.bits()
                        != 0;
                let fe = self.conn()?.frontend();
                if slots {
                    for info in &infos {
                        fe.add_mem_region(info).map_err(req)?;
                    }
                } else {
                    fe.set_mem_table(&infos).map_err(req)?;
                }
            }
            SetupStep::VringNum(r) => {
                let qs = self.opts.queue_size;
                self.conn()?.frontend().set_vring_num(r, qs).map_err(req)?;
            }
            SetupStep::VringBase(r) => {
                let base = self.opts.initial_index;
                self.conn()?
                    .frontend()
                    .set_vring_base(r, base)
                    .map_err(req)?;
            }
            SetupStep::VringAddr(r) => {
                let layout = *self.ring_at(r)?.ring.layout();
                // A migrating QEMU asks for the used ring to be logged at its GPA.
                let (log, mem) = (self.opts.dirty_log, self.mem.clone());
                set_vring_addr(self.conn()?.frontend(), &mem, r, &layout, log)?;
            }
            SetupStep::VringKick(r) => {
                let conn = self.conn.as_mut().ok_or_else(not_connected)?;
                let kick_call = &self.rings.get(r).ok_or_else(|| bad_ring(r))?.kick_call;
                conn.frontend()
                    .set_vring_kick(r, kick_call.kick_fd())
                    .map_err(req)?;
            }
            SetupStep::VringCall(r) => {
                let conn = self.conn.as_mut().ok_or_else(not_connected)?;
                let kick_call = &self.rings.get(r).ok_or_else(|| bad_ring(r))?.kick_call;
                conn.frontend()
                    .set_vring_call(r, kick_call.call_fd())
                    .map_err(req)?;
            }
            SetupStep::VringEnable(r) => {
                self.conn()?
                    .frontend()
                    .set_vring_enable(r, true)
                    .map_err(req)?;
            }
        }
        Ok(())
    }

    fn ring_at(&self, r: usize) -> Result<&PreparedRing, RigError> {
        self.rings.get(r).ok_or_else(|| bad_ring(r))
    }

    fn negotiate_protocol(&mut self, step: SetupStep) -> Result<(), RigError> {
        let req = |source| RigError::Request {
            request: step.to_string(),
            source,
        };
        let pairs = self.opts.queue_pairs;
        let want_slots = self.opts.mem_slots;
        let want_log = self.opts.dirty_log;
        let want_notifiers = self.opts.host_notifiers;
        let conn = self.conn.as_mut().ok_or_else(not_connected)?;
        let offered = conn
            .without_need_reply(|fe| fe.get_protocol_features())
            .map_err(req)?;
        let mut ack =
            offered & (VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ);
        if want_slots {
            ack |= offered & VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        }
        if want_log && !offered.contains(VhostUserProtocolFeatures::LOG_SHMFD) {
            return Err(RigError::Unsupported(format!(
                "a dirty log: protocol feature LOG_SHMFD not offered ({:#x})",
                offered.bits()
            )));
        }
        // As QEMU: LOG_SHMFD whenever offered, so that a migration can start later on.
        ack |= offered & VhostUserProtocolFeatures::LOG_SHMFD;
        if pairs > 1 && !ack.contains(VhostUserProtocolFeatures::MQ) {
            return Err(RigError::Unsupported(format!(
                "{pairs} queue pairs: protocol feature MQ not offered ({:#x})",
                offered.bits()
            )));
        }
        let notifiers = VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::BACKEND_SEND_FD
            | VhostUserProtocolFeatures::HOST_NOTIFIER;
        if want_notifiers {
            if !offered.contains(notifiers) {
                return Err(RigError::Unsupported(format!(
                    "host notifiers: protocol features BACKEND_REQ, BACKEND_SEND_FD and \
                     HOST_NOTIFIER not all offered ({:#x})",
                    offered.bits()
                )));
            }
            ack |= notifiers;
        }
        conn.frontend().set_protocol_features(ack).map_err(req)?;
        if ack.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // From now on every setter waits for the backend's acknowledgement, so setup
            // is synchronous and a failure is reported at the step that caused it.
            conn.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if want_notifiers {
            // As QEMU: the backend channel right after the protocol features.
            let (ours, theirs) = BackendRequests::new().map_err(|source| RigError::RawRequest {
                request: "socketpair for the backend channel",
                source,
            })?;
            conn.frontend()
                .set_backend_request_fd(&theirs)
                .map_err(req)?;
            self.backend = Some(ours);
        }
        self.neg.offered_protocol = offered.bits();
        self.neg.acked_protocol = ack.bits();
        Ok(())
    }
}

fn not_connected() -> RigError {
    RigError::SetupOrder("not connected".to_string())
}

fn bad_ring(r: usize) -> RigError {
    RigError::SetupOrder(format!("no ring {r}"))
}

/// Feature bits in hex with their names, for messages.
fn describe_features(bits: u64) -> String {
    format!("{bits:#x} [{}]", feature_names(bits).join("|"))
}
