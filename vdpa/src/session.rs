//! One vhost-user connection: the protocol's own state (ownership, protocol features,
//! which requests get acknowledgements) and the translation of each decoded
//! [`Request`] into calls on the [`Device`] core.
//!
//! Replies: requests that return data (GET_*) always get a reply; any other request
//! gets an acknowledgement (0 = success, nonzero = failure) when the frontend set
//! NEED_REPLY and REPLY_ACK was negotiated. A request we cannot apply is refused with
//! an error code and a log line; the connection stays up.

use std::mem::size_of;
use std::os::fd::{AsRawFd, RawFd};

use thiserror::Error;
use tracing::{debug, info, warn};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserLog, VhostUserProtocolFeatures, VhostUserU64,
    VhostUserVringState,
};
use vm_memory::ByteValued;

use crate::backend_channel::BackendChannel;
use crate::device::{Device, DeviceError};
use crate::dirty_log::{DirtyLog, LogError};
use crate::features::offered_protocol_features;
use crate::memory::{GuestMemory, MemoryError, MemoryRegion, MAX_REGIONS};
use crate::request::{
    decode, read_obj, ConfigRead, Limits, LogSpec, RegionSpec, Request, RequestError, Ring,
};
use crate::virtio::features::{VHOST_F_LOG_ALL, VHOST_USER_F_PROTOCOL_FEATURES};
use crate::wire::Message;

/// Why a request was not applied.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The request itself is malformed or not supported.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A memory region could not be used.
    #[error("memory region refused")]
    Memory(#[from] MemoryError),
    /// The device refused the change.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The dirty log could not be used.
    #[error(transparent)]
    Log(#[from] LogError),
    /// VHOST_F_LOG_ALL acked without a log to mark: without LOG_SHMFD the log would be
    /// in the frontend's own memory, out of the device's reach; without SET_LOG_BASE
    /// (or after it failed) there is none. Either way the migration would copy none
    /// of the pages the device writes, so it must fail instead.
    #[error("VHOST_F_LOG_ALL acked {0}")]
    NoLog(&'static str),
    /// The backend channel could not be set up.
    #[error("setting up the backend channel")]
    BackendChannel(#[source] std::io::Error),
}

/// What to send back for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Nothing, unless the frontend asked for an acknowledgement.
    Ack,
    /// This payload, always.
    Payload(Vec<u8>),
}

fn payload<T: ByteValued>(v: T) -> Reply {
    Reply::Payload(v.as_slice().to_vec())
}

/// State of one vhost-user connection to a device.
pub struct Session<'d> {
    dev: &'d mut Device,
    limits: Limits,
    owner: bool,
    protocol_features: u64,
    /// The channel for the device's own requests (SET_BACKEND_REQ_FD), if any.
    backend: Option<BackendChannel>,
}

impl<'d> Session<'d> {
    /// A fresh session for a new connection to `dev`.
    pub fn new(dev: &'d mut Device) -> Self {
        let limits = Limits {
            rings: dev.ring_count(),
            max_queue_size: dev.config().queue_size,
            max_mtu: dev.config().mtu.unwrap_or(u16::MAX),
        };
        dev.connected();
        Session {
            dev,
            limits,
            owner: false,
            protocol_features: 0,
            backend: None,
        }
    }

    /// The device this session drives.
    pub fn device(&self) -> &Device {
        self.dev
    }

    /// The device, to act on it between requests.
    pub fn device_mut(&mut self) -> &mut Device {
        self.dev
    }

    /// Whether an acknowledgement is owed for `msg`.
    pub fn wants_ack(&self, msg: &Message) -> bool {
        msg.header.need_reply()
            && self.protocol_features & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0
    }

    /// Decodes and applies one request. On error nothing changed except what the
    /// error says.
    pub fn handle(&mut self, msg: Message) -> Result<Reply, SessionError> {
        debug!(
            device = self.dev.name(),
            request = msg.header.request,
            size = msg.header.size,
            fds = msg.fds.len(),
            need_reply = msg.header.need_reply(),
            "request"
        );
        let config_header = config_request_header(&msg);
        let request = match decode(msg, &self.limits) {
            Ok(r) => r,
            Err(e) => {
                if let Some(mut hdr) = config_header {
                    // GET_CONFIG is always answered: a reply whose size field is 0
                    // tells the frontend the read failed.
                    warn!(device = self.dev.name(), error = %e, "GET_CONFIG refused");
                    hdr.size = 0;
                    return Ok(payload(hdr));
                }
                return Err(e.into());
            }
        };
        let query = request.is_query();
        let reply = self.apply(request)?;
        if !query {
            self.dev.reconcile();
        }
        Ok(reply)
    }

    fn apply(&mut self, request: Request) -> Result<Reply, SessionError> {
        let dev = &mut *self.dev;
        match request {
            Request::GetFeatures => return Ok(payload(VhostUserU64::new(dev.offered_features()))),
            Request::SetFeatures(bits) => self.set_features(bits)?,
            Request::SetOwner => self.owner = true,
            Request::Reset => dev.reset(),
            Request::GetProtocolFeatures => {
                return Ok(payload(VhostUserU64::new(
                    offered_protocol_features(dev.offers_dirty_log(), dev.offers_host_notifiers())
                        .bits(),
                )))
            }
            Request::SetProtocolFeatures(bits) => {
                self.protocol_features = bits
                    & offered_protocol_features(
                        dev.offers_dirty_log(),
                        dev.offers_host_notifiers(),
                    )
                    .bits();
            }
            Request::GetQueueNum => {
                return Ok(payload(VhostUserU64::new(u64::from(
                    dev.config().queue_pairs,
                ))))
            }
            Request::GetMaxMemSlots => return Ok(payload(VhostUserU64::new(MAX_REGIONS as u64))),
            Request::SetMemTable(specs) => {
                let regions = specs
                    .into_iter()
                    .map(map_region)
                    .collect::<Result<_, _>>()?;
                let limit = dev.config().max_guest_memory;
                dev.set_memory(GuestMemory::from_regions_with_limit(regions, limit)?);
            }
            Request::AddMemReg(spec) => {
                let mem = dev.memory().with_region(map_region(spec)?)?;
                if mem.regions().len() != dev.memory().regions().len() {
                    dev.set_memory(mem);
                }
            }
            Request::RemMemReg(r) => {
                let mem = dev.memory().without_region(r.gpa, r.size, r.user_addr)?;
                dev.set_memory(mem);
            }
            Request::SetVringNum { ring, size } => dev.set_ring_size(ring.as_usize(), size),
            Request::SetVringAddr { ring, location } => {
                dev.set_ring_location(ring.as_usize(), location)
            }
            Request::SetVringBase { ring, base } => dev.set_ring_base(ring.as_usize(), base),
            Request::GetVringBase { ring } => {
                // QEMU drops the ring's host notifier with every GET_VRING_BASE.
                if let Some(ch) = self.backend.as_mut() {
                    ch.forget(ring.index());
                }
                return Ok(get_vring_base(dev, ring));
            }
            Request::SetVringKick { ring, fd } => dev.set_kick(ring.as_usize(), fd),
            Request::SetVringCall { ring, fd } => dev.set_call(ring.as_usize(), fd),
            Request::SetVringErr { ring, fd } => dev.set_err(ring.as_usize(), fd),
            Request::SetVringEnable { ring, enable } => dev.enable_ring(ring.as_usize(), enable),
            Request::GetConfig(read) => return Ok(config_reply(dev, &read)),
            Request::NetSetMtu(mtu) => dev.set_mtu(mtu),
            Request::SetStatus(status) => dev.set_status_byte(status),
            Request::GetStatus => {
                return Ok(payload(VhostUserU64::new(u64::from(dev.status_byte()))))
            }
            Request::SetLogBase(spec) => return set_log_base(dev, spec),
            // The "log changed" eventfd is closed with the request: nothing signals it.
            Request::SetLogFd => {}
            Request::SendRarp(mac) => {
                let sent = dev.announce(mac);
                debug!(device = dev.name(), mac = ?mac, sent, "SEND_RARP");
            }
            Request::SetBackendReqFd(stream) => {
                self.backend =
                    Some(BackendChannel::new(stream).map_err(SessionError::BackendChannel)?);
                debug!(device = dev.name(), "backend channel set up");
            }
        }
        Ok(Reply::Ack)
    }

    /// SET_FEATURES: LOG_ALL only with LOG_SHMFD and after a log was shared.
    fn set_features(&mut self, bits: u64) -> Result<(), SessionError> {
        let shmfd = VhostUserProtocolFeatures::LOG_SHMFD.bits();
        if bits & VHOST_F_LOG_ALL != 0 {
            if self.protocol_features & shmfd == 0 {
                return Err(SessionError::NoLog(
                    "without the LOG_SHMFD protocol feature",
                ));
            }
            if !self.dev.has_log() {
                return Err(SessionError::NoLog(
                    "before a dirty log was shared (SET_LOG_BASE)",
                ));
            }
        }
        self.dev.set_features(bits)?;
        self.dev
            .set_rings_need_enable(bits & VHOST_USER_F_PROTOCOL_FEATURES != 0);
        Ok(())
    }

    /// Whether the frontend acked a protocol feature.
    fn acked(&self, f: VhostUserProtocolFeatures) -> bool {
        self.protocol_features & f.bits() == f.bits()
    }

    /// The backend channel's descriptor, to poll for the frontend's answers.
    pub fn backend_fd(&self) -> Option<RawFd> {
        self.backend.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Gives the frontend each ring's doorbell page that it should map into the guest
    /// (or takes back one it should no longer use: the device fell back to software,
    /// or was reset). Called after the reply to every request and whenever the
    /// datapath changed on its own, never before a reply: QEMU may be waiting for it.
    pub fn sync_host_notifiers(&mut self) {
        let hn = VhostUserProtocolFeatures::BACKEND_REQ | VhostUserProtocolFeatures::HOST_NOTIFIER;
        if !self.acked(hn) {
            return;
        }
        let Some(ch) = self.backend.as_mut() else {
            return;
        };
        for ring in 0..self.dev.ring_count() {
            let want = self.dev.notify_area(ring);
            match ch.sync(ring, want.as_ref()) {
                Ok(false) => {}
                Ok(true) => match &want {
                    Some(a) => info!(
                        device = self.dev.name(),
                        ring,
                        offset = format_args!("{:#x}", a.offset),
                        "host notifier: the frontend was given the NIC's doorbell page"
                    ),
                    None => info!(
                        device = self.dev.name(),
                        ring, "host notifier: removed; kicks go through the kick eventfd"
                    ),
                },
                Err(e) => {
                    warn!(device = self.dev.name(), error = %e,
                          "host notifiers: the backend channel failed; kicks go through the kick eventfds");
                    self.backend = None;
                    return;
                }
            }
        }
    }

    /// Reads what the frontend answered on the backend channel; a refused notifier is
    /// logged with the usual cause, and the ring keeps its kick relay.
    pub fn read_backend_answers(&mut self) {
        let Some(ch) = self.backend.as_mut() else {
            return;
        };
        match ch.read_answers() {
            Ok(answers) => {
                for a in answers.into_iter().filter(|a| a.install) {
                    if a.done {
                        debug!(
                            device = self.dev.name(),
                            ring = a.ring,
                            "host notifier mapped by the frontend"
                        );
                    } else {
                        warn!(
                            device = self.dev.name(),
                            ring = a.ring,
                            "host notifier refused by the frontend (QEMU's virtio-net-pci needs \
                               page-per-vq=on); this ring's kicks go through the kick relay"
                        );
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                info!(
                    device = self.dev.name(),
                    "the frontend closed the backend channel"
                );
                self.backend = None;
            }
            Err(e) => {
                warn!(device = self.dev.name(), error = %e,
                      "host notifiers: the backend channel failed; kicks go through the kick eventfds");
                self.backend = None;
            }
        }
    }

    /// Ends the session: the device stops and forgets this frontend.
    pub fn close(self) {
        self.dev.disconnected();
    }
}

/// The header of a GET_CONFIG request, if `msg` is one.
fn config_request_header(msg: &Message) -> Option<VhostUserConfig> {
    if msg.header.request != FrontendReq::GET_CONFIG as u32 {
        return None;
    }
    Some(
        msg.body
            .get(..size_of::<VhostUserConfig>())
            .and_then(read_obj::<VhostUserConfig>)
            .unwrap_or_default(),
    )
}

fn map_region(r: RegionSpec) -> Result<MemoryRegion, MemoryError> {
    MemoryRegion::map(r.gpa, r.size, r.user_addr, r.mmap_offset, r.file)
}

/// GET_CONFIG's reply: the request's own header followed by the bytes asked for.
fn config_reply(dev: &Device, read: &ConfigRead) -> Reply {
    let space = dev.config_space();
    let mut out = read.header.as_slice().to_vec();
    debug_assert_eq!(out.len(), size_of::<VhostUserConfig>());
    out.extend_from_slice(&space[read.offset..read.offset + read.size]);
    Reply::Payload(out)
}

/// GET_VRING_BASE: the ring stops; the reply says where it resumes.
fn get_vring_base(dev: &mut Device, ring: Ring) -> Reply {
    let base = dev.stop_ring(ring.as_usize());
    debug!(
        device = dev.name(),
        ring = ring.index(),
        base,
        "ring stopped by GET_VRING_BASE"
    );
    payload(VhostUserVringState::new(
        u32::from(ring.index()),
        u32::from(base),
    ))
}

/// SET_LOG_BASE: maps the frontend's dirty log, always answered (QEMU waits for the
/// reply with LOG_SHMFD), with the body echoed as rust-vmm's frontend expects.
fn set_log_base(dev: &mut Device, spec: LogSpec) -> Result<Reply, SessionError> {
    if !dev.offers_dirty_log() {
        return Err(LogError::NotOffered.into());
    }
    let (size, offset) = (spec.size, spec.offset);
    let log = DirtyLog::map(spec.file, size, offset, dev.memory())?;
    dev.set_log(log);
    Ok(payload(VhostUserLog::new(size, offset)))
}
