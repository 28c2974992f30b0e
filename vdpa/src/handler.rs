//! vhost-user request dispatch: decode each request, check it, apply it to the
//! [`Session`], and say what to answer.
//!
//! Replies: requests that return data (GET_*) always get a reply; any other request
//! gets an acknowledgement (0 = success, nonzero = failure) when the frontend set
//! NEED_REPLY and REPLY_ACK was negotiated. A request we cannot apply is refused with
//! an error code and a log line; the connection stays up.

use std::mem::size_of;
use std::sync::Arc;

use thiserror::Error;
use tracing::{debug, warn};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserMemory, VhostUserMemoryRegion,
    VhostUserProtocolFeatures, VhostUserSingleMemoryRegion, VhostUserU64, VhostUserVringAddr,
    VhostUserVringState,
};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;

use crate::features::offered_protocol_features;
use crate::memory::{GuestMemory, MemoryError, MemoryRegion, MAX_REGIONS};
use crate::net_config::net_config_bytes;
use crate::session::Session;
use crate::vring::{CallSetting, VringAddrVa};
use crate::wire::Message;

/// Bits 0..7 of a SET_VRING_KICK/CALL/ERR payload: the ring index.
const VRING_IDX_MASK: u64 = 0xff;
/// Bit 8: no file descriptor follows (the frontend polls).
const VRING_NOFD_MASK: u64 = 0x100;

/// Why a request was refused.
#[derive(Debug, Error)]
pub enum RequestError {
    /// The request code is unknown or not supported.
    #[error("unsupported request {0}")]
    Unsupported(u32),
    /// The body does not have the size the request needs.
    #[error("{req:?}: body of {got} bytes, expected {want}")]
    BodySize {
        /// Request.
        req: FrontendReq,
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// A ring index beyond the device's rings.
    #[error("{req:?}: ring {ring} does not exist (device has {count} rings)")]
    NoSuchRing {
        /// Request.
        req: FrontendReq,
        /// Index given.
        ring: u64,
        /// Rings the device has.
        count: usize,
    },
    /// A value that breaks the protocol's rules.
    #[error("{req:?}: {why}")]
    Invalid {
        /// Request.
        req: FrontendReq,
        /// What is wrong.
        why: String,
    },
    /// A memory region could not be used.
    #[error("{req:?}: memory region refused")]
    Memory {
        /// Request.
        req: FrontendReq,
        /// Why.
        #[source]
        source: MemoryError,
    },
}

/// What to send back for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Nothing, unless the frontend asked for an acknowledgement.
    Ack,
    /// This payload, always.
    Payload(Vec<u8>),
}

fn body<T: ByteValued>(req: FrontendReq, msg: &Message) -> Result<T, RequestError> {
    let want = size_of::<T>();
    if msg.body.len() != want {
        return Err(RequestError::BodySize {
            req,
            got: msg.body.len(),
            want,
        });
    }
    Ok(*T::from_slice(&msg.body).expect("length checked"))
}

fn payload<T: ByteValued>(v: T) -> Reply {
    Reply::Payload(v.as_slice().to_vec())
}

fn invalid(req: FrontendReq, why: impl Into<String>) -> RequestError {
    RequestError::Invalid {
        req,
        why: why.into(),
    }
}

impl Session<'_> {
    fn ring_index(&self, req: FrontendReq, index: u64) -> Result<usize, RequestError> {
        if (index as usize) < self.ring_count() && index <= u64::from(u16::MAX) {
            Ok(index as usize)
        } else {
            Err(RequestError::NoSuchRing {
                req,
                ring: index,
                count: self.ring_count(),
            })
        }
    }

    /// Whether an acknowledgement is owed for `msg`.
    pub fn wants_ack(&self, msg: &Message) -> bool {
        msg.header.need_reply()
            && self.protocol_features & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0
    }

    /// Handles one request. On error nothing changed except what the error says.
    pub fn handle(&mut self, mut msg: Message) -> Result<Reply, RequestError> {
        let code = msg.header.request;
        let req = FrontendReq::try_from(code).map_err(|_| RequestError::Unsupported(code))?;
        debug!(
            device = self.dev.name(),
            ?req,
            size = msg.header.size,
            fds = msg.fds.len(),
            need_reply = msg.header.need_reply(),
            "request"
        );
        let reply = match req {
            FrontendReq::GET_FEATURES => payload(VhostUserU64::new(self.dev.offered_features())),
            FrontendReq::SET_FEATURES => {
                let bits = body::<VhostUserU64>(req, &msg)?.value;
                let extra = bits & !self.dev.offered_features();
                if extra != 0 {
                    return Err(invalid(
                        req,
                        format!("acks features {extra:#x} that were not offered"),
                    ));
                }
                self.set_features(bits);
                Reply::Ack
            }
            FrontendReq::SET_OWNER => {
                self.owner = true;
                Reply::Ack
            }
            FrontendReq::RESET_OWNER | FrontendReq::RESET_DEVICE => {
                self.reset();
                Reply::Ack
            }
            FrontendReq::GET_PROTOCOL_FEATURES => {
                payload(VhostUserU64::new(offered_protocol_features().bits()))
            }
            FrontendReq::SET_PROTOCOL_FEATURES => {
                let bits = body::<VhostUserU64>(req, &msg)?.value;
                self.protocol_features = bits & offered_protocol_features().bits();
                Reply::Ack
            }
            FrontendReq::GET_QUEUE_NUM => {
                payload(VhostUserU64::new(u64::from(self.dev.config().queue_pairs)))
            }
            FrontendReq::GET_MAX_MEM_SLOTS => payload(VhostUserU64::new(MAX_REGIONS as u64)),
            FrontendReq::SET_MEM_TABLE => {
                let mem = self.parse_mem_table(req, &mut msg)?;
                self.set_memory(mem);
                Reply::Ack
            }
            FrontendReq::ADD_MEM_REG => {
                let r = body::<VhostUserSingleMemoryRegion>(req, &msg)?;
                let file = msg
                    .take_fd()
                    .ok_or_else(|| invalid(req, "no file descriptor"))?;
                let region = MemoryRegion::map(
                    r.guest_phys_addr,
                    r.memory_size,
                    r.user_addr,
                    r.mmap_offset,
                    file,
                )
                .map_err(|source| RequestError::Memory { req, source })?;
                let mem = self
                    .mem
                    .with_region(region)
                    .map_err(|source| RequestError::Memory { req, source })?;
                if mem.regions().len() != self.mem.regions().len() {
                    self.set_memory(mem);
                }
                Reply::Ack
            }
            FrontendReq::REM_MEM_REG => {
                let r = body::<VhostUserSingleMemoryRegion>(req, &msg)?;
                let mem = self
                    .mem
                    .without_region(r.guest_phys_addr, r.memory_size, r.user_addr)
                    .map_err(|source| RequestError::Memory { req, source })?;
                self.set_memory(mem);
                Reply::Ack
            }
            FrontendReq::SET_VRING_NUM => {
                let s = body::<VhostUserVringState>(req, &msg)?;
                let ring = self.ring_index(req, s.index.into())?;
                let max = u32::from(self.dev.config().queue_size);
                if s.num == 0 || !s.num.is_power_of_two() || s.num > max {
                    return Err(invalid(
                        req,
                        format!("ring {ring}: size {} is not a power of two in 1..={max}", {
                            s.num
                        }),
                    ));
                }
                if self.rings[ring].num != Some(s.num as u16) {
                    self.before_ring_change(ring);
                    self.rings[ring].num = Some(s.num as u16);
                }
                Reply::Ack
            }
            FrontendReq::SET_VRING_ADDR => {
                let a = body::<VhostUserVringAddr>(req, &msg)?;
                let ring = self.ring_index(req, a.index.into())?;
                if a.flags != 0 {
                    return Err(invalid(
                        req,
                        "dirty logging (VHOST_VRING_F_LOG) is not supported",
                    ));
                }
                if a.descriptor % 16 != 0 || a.available % 2 != 0 || a.used % 4 != 0 {
                    return Err(invalid(
                        req,
                        format!("ring {ring}: misaligned ring address"),
                    ));
                }
                let va = VringAddrVa {
                    desc: a.descriptor,
                    avail: a.available,
                    used: a.used,
                };
                if self.rings[ring].addr != Some(va) {
                    self.before_ring_change(ring);
                    self.rings[ring].addr = Some(va);
                }
                Reply::Ack
            }
            FrontendReq::SET_VRING_BASE => {
                let s = body::<VhostUserVringState>(req, &msg)?;
                let ring = self.ring_index(req, s.index.into())?;
                let base = u16::try_from(s.num).map_err(|_| {
                    invalid(req, format!("ring {ring}: base {} > 65535", { s.num }))
                })?;
                self.before_ring_change(ring);
                self.rings[ring].base = base;
                Reply::Ack
            }
            FrontendReq::GET_VRING_BASE => {
                let s = body::<VhostUserVringState>(req, &msg)?;
                let ring = self.ring_index(req, s.index.into())?;
                self.before_ring_change(ring);
                // The ring stays stopped until a new kick fd arrives.
                self.rings[ring].kick = None;
                let base = self.rings[ring].base;
                debug!(
                    device = self.dev.name(),
                    ring, base, "ring stopped by GET_VRING_BASE"
                );
                payload(VhostUserVringState::new(s.index, u32::from(base)))
            }
            FrontendReq::SET_VRING_KICK
            | FrontendReq::SET_VRING_CALL
            | FrontendReq::SET_VRING_ERR => {
                let v = body::<VhostUserU64>(req, &msg)?.value;
                let ring = self.ring_index(req, v & VRING_IDX_MASK)?;
                let file = if v & VRING_NOFD_MASK != 0 {
                    None
                } else {
                    Some(
                        msg.take_fd()
                            .ok_or_else(|| invalid(req, "no file descriptor"))?,
                    )
                };
                self.set_vring_fd(req, ring, file)?;
                Reply::Ack
            }
            FrontendReq::SET_VRING_ENABLE => {
                let s = body::<VhostUserVringState>(req, &msg)?;
                let ring = self.ring_index(req, s.index.into())?;
                let enable = match s.num {
                    0 => false,
                    1 => true,
                    n => return Err(invalid(req, format!("ring {ring}: enable value {n}"))),
                };
                if self.rings[ring].enabled != enable {
                    self.before_ring_change(ring);
                    self.rings[ring].enabled = enable;
                }
                Reply::Ack
            }
            FrontendReq::GET_CONFIG => match self.read_config(req, &msg) {
                Ok(bytes) => {
                    let mut out = msg.body[..size_of::<VhostUserConfig>()].to_vec();
                    out.extend_from_slice(&bytes);
                    Reply::Payload(out)
                }
                Err(e) => {
                    // A reply whose size field is 0 tells the frontend the read failed.
                    warn!(device = self.dev.name(), error = %e, "GET_CONFIG refused");
                    let mut hdr = msg
                        .body
                        .get(..size_of::<VhostUserConfig>())
                        .and_then(VhostUserConfig::from_slice)
                        .copied()
                        .unwrap_or_default();
                    hdr.size = 0;
                    payload(hdr)
                }
            },
            FrontendReq::SET_CONFIG => {
                return Err(invalid(
                    req,
                    "the virtio-net config space is read-only here",
                ));
            }
            FrontendReq::NET_SET_MTU => {
                let mtu = body::<VhostUserU64>(req, &msg)?.value;
                let max = u64::from(self.dev.config().mtu.unwrap_or(u16::MAX));
                if !(68..=max).contains(&mtu) {
                    return Err(invalid(req, format!("MTU {mtu} outside 68..={max}")));
                }
                self.mtu = Some(mtu as u16);
                Reply::Ack
            }
            FrontendReq::SET_STATUS => {
                let v = body::<VhostUserU64>(req, &msg)?.value;
                self.status = v as u8;
                Reply::Ack
            }
            FrontendReq::GET_STATUS => payload(VhostUserU64::new(u64::from(self.status))),
            other => return Err(invalid(other, "not supported by this device")),
        };
        if !matches!(
            req,
            FrontendReq::GET_FEATURES
                | FrontendReq::GET_PROTOCOL_FEATURES
                | FrontendReq::GET_QUEUE_NUM
                | FrontendReq::GET_MAX_MEM_SLOTS
                | FrontendReq::GET_CONFIG
                | FrontendReq::GET_STATUS
        ) {
            self.reconcile();
        }
        Ok(reply)
    }

    fn parse_mem_table(
        &self,
        req: FrontendReq,
        msg: &mut Message,
    ) -> Result<GuestMemory, RequestError> {
        let head = size_of::<VhostUserMemory>();
        let each = size_of::<VhostUserMemoryRegion>();
        let hdr = msg
            .body
            .get(..head)
            .and_then(VhostUserMemory::from_slice)
            .copied()
            .ok_or(RequestError::BodySize {
                req,
                got: msg.body.len(),
                want: head,
            })?;
        let n = hdr.num_regions as usize;
        if n == 0 || n > MAX_REGIONS {
            return Err(invalid(
                req,
                format!("{n} regions (must be 1..={MAX_REGIONS})"),
            ));
        }
        if msg.body.len() != head + n * each {
            return Err(RequestError::BodySize {
                req,
                got: msg.body.len(),
                want: head + n * each,
            });
        }
        if msg.fds.len() != n {
            return Err(invalid(
                req,
                format!("{n} regions but {} file descriptors", msg.fds.len()),
            ));
        }
        let mut regions = Vec::with_capacity(n);
        for (i, file) in msg.fds.drain(..).enumerate() {
            let off = head + i * each;
            let r = *VhostUserMemoryRegion::from_slice(&msg.body[off..off + each]).expect("sized");
            regions.push(
                MemoryRegion::map(
                    r.guest_phys_addr,
                    r.memory_size,
                    r.user_addr,
                    r.mmap_offset,
                    file,
                )
                .map_err(|source| RequestError::Memory { req, source })?,
            );
        }
        GuestMemory::from_regions(regions).map_err(|source| RequestError::Memory { req, source })
    }

    fn set_vring_fd(
        &mut self,
        req: FrontendReq,
        ring: usize,
        file: Option<std::fs::File>,
    ) -> Result<(), RequestError> {
        let as_eventfd = |f: std::fs::File| -> EventFd {
            use std::os::fd::{FromRawFd, IntoRawFd};
            // SAFETY: `into_raw_fd` gives up ownership, which EventFd takes over.
            unsafe { EventFd::from_raw_fd(f.into_raw_fd()) }
        };
        match req {
            FrontendReq::SET_VRING_KICK => {
                let Some(f) = file else {
                    return Err(invalid(
                        req,
                        format!("ring {ring}: polling mode (no kick fd) is not supported"),
                    ));
                };
                self.before_ring_change(ring);
                self.rings[ring].kick = Some(Arc::new(as_eventfd(f)));
            }
            FrontendReq::SET_VRING_CALL => {
                let call = match file {
                    None => CallSetting::Polling,
                    Some(f) => CallSetting::Fd(Arc::new(as_eventfd(f))),
                };
                self.change_call(ring, call);
            }
            _ => self.rings[ring].err = file,
        }
        Ok(())
    }

    fn read_config(&self, req: FrontendReq, msg: &Message) -> Result<Vec<u8>, RequestError> {
        let head = size_of::<VhostUserConfig>();
        let hdr = msg
            .body
            .get(..head)
            .and_then(VhostUserConfig::from_slice)
            .copied()
            .ok_or(RequestError::BodySize {
                req,
                got: msg.body.len(),
                want: head,
            })?;
        let (offset, size) = (hdr.offset as usize, hdr.size as usize);
        if msg.body.len() != head + size {
            return Err(RequestError::BodySize {
                req,
                got: msg.body.len(),
                want: head + size,
            });
        }
        let space = net_config_bytes(self.dev.config(), self.mtu);
        let end = offset
            .checked_add(size)
            .filter(|&e| e <= space.len() && size > 0)
            .ok_or_else(|| {
                invalid(
                    req,
                    format!(
                        "range {offset}+{size} outside the {}-byte config space",
                        space.len()
                    ),
                )
            })?;
        Ok(space[offset..end].to_vec())
    }
}
