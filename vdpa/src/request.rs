//! vhost-user request decoding: a framed [`Message`] and its file descriptors become a
//! [`Request`] whose fields are already checked — ring indices exist, queue sizes are
//! powers of two within the device's maximum, memory regions do not overflow or
//! overlap and come with exactly one fd each, kick and call fds are eventfds.
//!
//! Decoding looks only at the message and the device's fixed [`Limits`]; it changes
//! nothing. Applying a request is the session's job ([`crate::session`]). Keeping the
//! two apart lets the decoder be tested, and fuzzed, on its own.

use std::fs::File;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};

use thiserror::Error;
use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserLog, VhostUserMemory, VhostUserMemoryRegion,
    VhostUserSingleMemoryRegion, VhostUserU64, VhostUserVringAddr, VhostUserVringAddrFlags,
    VhostUserVringState,
};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;

use crate::datapath::RingAddrs;
use crate::memory::MAX_REGIONS;
use crate::virtio::net_config::NET_CONFIG_LEN;
use crate::vring::{AddrSpace, RingLocation};
use crate::wire::Message;

/// Bits 0..7 of a SET_VRING_KICK/CALL/ERR payload: the ring index.
const VRING_IDX_MASK: u64 = 0xff;
/// Bit 8: no file descriptor follows (the frontend polls).
const VRING_NOFD_MASK: u64 = 0x100;
/// Bits of a SET_VRING_KICK/CALL/ERR payload that mean something.
const VRING_FD_KNOWN_BITS: u64 = VRING_IDX_MASK | VRING_NOFD_MASK;
/// The smallest MTU NET_SET_MTU may set (IPv4's minimum).
const MIN_MTU: u64 = 68;

/// What the decoder needs to know about the device: its fixed dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Rings the device has (two per queue pair).
    pub rings: u16,
    /// The largest queue size a ring may have.
    pub max_queue_size: u16,
    /// The largest MTU NET_SET_MTU may set.
    pub max_mtu: u16,
}

/// A ring index that exists on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ring(u16);

impl Ring {
    /// The index (RX of pair i is 2i, TX is 2i+1).
    pub fn index(self) -> u16 {
        self.0
    }

    /// The index, for indexing per-ring tables.
    pub fn as_usize(self) -> usize {
        usize::from(self.0)
    }
}

/// One memory region of SET_MEM_TABLE or ADD_MEM_REG, checked but not yet mapped.
#[derive(Debug)]
pub struct RegionSpec {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes (nonzero; no end overflows).
    pub size: u64,
    /// The frontend's virtual address of `gpa`.
    pub user_addr: u64,
    /// Offset of the region in `file`.
    pub mmap_offset: u64,
    /// The file that backs it.
    pub file: File,
}

/// A region REM_MEM_REG names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionId {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
    /// The frontend's virtual address of `gpa`.
    pub user_addr: u64,
}

/// A config-space read (GET_CONFIG) within the virtio-net config space.
#[derive(Clone, Copy)]
pub struct ConfigRead {
    /// The request's own header, echoed in the reply.
    pub header: VhostUserConfig,
    /// First byte.
    pub offset: usize,
    /// Bytes to read (nonzero, within the space).
    pub size: usize,
}

/// A dirty log the frontend shares (SET_LOG_BASE with LOG_SHMFD), not yet mapped.
#[derive(Debug)]
pub struct LogSpec {
    /// Bytes of log (nonzero; offset + size does not overflow).
    pub size: u64,
    /// Offset of the log in `file`.
    pub offset: u64,
    /// The file that holds it.
    pub file: File,
}

/// A decoded, checked vhost-user request.
pub enum Request {
    /// GET_FEATURES.
    GetFeatures,
    /// SET_FEATURES with the acked virtio feature bits.
    SetFeatures(u64),
    /// SET_OWNER.
    SetOwner,
    /// RESET_OWNER or RESET_DEVICE: forget what the frontend configured.
    Reset,
    /// GET_PROTOCOL_FEATURES.
    GetProtocolFeatures,
    /// SET_PROTOCOL_FEATURES with the acked protocol feature bits.
    SetProtocolFeatures(u64),
    /// GET_QUEUE_NUM.
    GetQueueNum,
    /// GET_MAX_MEM_SLOTS.
    GetMaxMemSlots,
    /// SET_MEM_TABLE: a whole new table (1..=MAX_REGIONS regions, none overlapping).
    SetMemTable(Vec<RegionSpec>),
    /// ADD_MEM_REG.
    AddMemReg(RegionSpec),
    /// REM_MEM_REG.
    RemMemReg(RegionId),
    /// SET_VRING_NUM: a power of two within the device's maximum.
    SetVringNum {
        /// The ring.
        ring: Ring,
        /// Its size.
        size: u16,
    },
    /// SET_VRING_ADDR, in the frontend's virtual addresses, correctly aligned.
    SetVringAddr {
        /// The ring.
        ring: Ring,
        /// Where its parts are.
        location: RingLocation,
    },
    /// SET_VRING_BASE.
    SetVringBase {
        /// The ring.
        ring: Ring,
        /// The avail index to start from.
        base: u16,
    },
    /// GET_VRING_BASE: stop the ring and say where it stopped.
    GetVringBase {
        /// The ring.
        ring: Ring,
    },
    /// SET_VRING_KICK with an eventfd (polling without one is not supported).
    SetVringKick {
        /// The ring.
        ring: Ring,
        /// The kick eventfd.
        fd: EventFd,
    },
    /// SET_VRING_CALL: an eventfd, or `None` when the frontend polls.
    SetVringCall {
        /// The ring.
        ring: Ring,
        /// The call eventfd.
        fd: Option<EventFd>,
    },
    /// SET_VRING_ERR: any fd (kept, never signalled), or `None`.
    SetVringErr {
        /// The ring.
        ring: Ring,
        /// The error fd.
        fd: Option<File>,
    },
    /// SET_VRING_ENABLE.
    SetVringEnable {
        /// The ring.
        ring: Ring,
        /// Enable (true) or disable.
        enable: bool,
    },
    /// GET_CONFIG.
    GetConfig(ConfigRead),
    /// NET_SET_MTU, within 68..=the configured maximum.
    NetSetMtu(u16),
    /// SET_STATUS with the virtio device status byte.
    SetStatus(u8),
    /// GET_STATUS.
    GetStatus,
    /// SET_LOG_BASE: the dirty log to mark while VHOST_F_LOG_ALL is acked.
    SetLogBase(LogSpec),
    /// SET_LOG_FD: an eventfd to signal log changes on (never used by QEMU; closed).
    SetLogFd,
    /// SEND_RARP: announce the guest with this MAC address after a migration.
    SendRarp([u8; 6]),
    /// SET_BACKEND_REQ_FD: the socket the device sends its own requests on (host
    /// notifiers), checked to be a socket.
    SetBackendReqFd(std::os::unix::net::UnixStream),
}

impl std::fmt::Debug for ConfigRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigRead")
            .field("offset", &self.offset)
            .field("size", &self.size)
            .finish()
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::GetConfig(r) => write!(f, "GetConfig({r:?})"),
            Request::SetMemTable(r) => write!(f, "SetMemTable({} regions)", r.len()),
            other => f.write_str(other.name()),
        }
    }
}

impl Request {
    /// The request's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::GetFeatures => "GET_FEATURES",
            Request::SetFeatures(_) => "SET_FEATURES",
            Request::SetOwner => "SET_OWNER",
            Request::Reset => "RESET_DEVICE",
            Request::GetProtocolFeatures => "GET_PROTOCOL_FEATURES",
            Request::SetProtocolFeatures(_) => "SET_PROTOCOL_FEATURES",
            Request::GetQueueNum => "GET_QUEUE_NUM",
            Request::GetMaxMemSlots => "GET_MAX_MEM_SLOTS",
            Request::SetMemTable(_) => "SET_MEM_TABLE",
            Request::AddMemReg(_) => "ADD_MEM_REG",
            Request::RemMemReg(_) => "REM_MEM_REG",
            Request::SetVringNum { .. } => "SET_VRING_NUM",
            Request::SetVringAddr { .. } => "SET_VRING_ADDR",
            Request::SetVringBase { .. } => "SET_VRING_BASE",
            Request::GetVringBase { .. } => "GET_VRING_BASE",
            Request::SetVringKick { .. } => "SET_VRING_KICK",
            Request::SetVringCall { .. } => "SET_VRING_CALL",
            Request::SetVringErr { .. } => "SET_VRING_ERR",
            Request::SetVringEnable { .. } => "SET_VRING_ENABLE",
            Request::GetConfig(_) => "GET_CONFIG",
            Request::NetSetMtu(_) => "NET_SET_MTU",
            Request::SetStatus(_) => "SET_STATUS",
            Request::GetStatus => "GET_STATUS",
            Request::SetLogBase(_) => "SET_LOG_BASE",
            Request::SetLogFd => "SET_LOG_FD",
            Request::SendRarp(_) => "SEND_RARP",
            Request::SetBackendReqFd(_) => "SET_BACKEND_REQ_FD",
        }
    }

    /// Whether the request reads state and leaves the device as it is.
    pub fn is_query(&self) -> bool {
        matches!(
            self,
            Request::GetFeatures
                | Request::GetProtocolFeatures
                | Request::GetQueueNum
                | Request::GetMaxMemSlots
                | Request::GetConfig(_)
                | Request::GetStatus
        )
    }
}

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
        count: u16,
    },
    /// A file descriptor that is missing, or of the wrong kind.
    #[error("{req:?}: {why}")]
    BadFd {
        /// Request.
        req: FrontendReq,
        /// What is wrong with it.
        why: String,
    },
    /// A value that breaks the protocol's rules.
    #[error("{req:?}: {why}")]
    Invalid {
        /// Request.
        req: FrontendReq,
        /// What is wrong.
        why: String,
    },
}

fn invalid(req: FrontendReq, why: impl Into<String>) -> RequestError {
    RequestError::Invalid {
        req,
        why: why.into(),
    }
}

/// A `T` copied out of `bytes`, or `None` if the length is not `size_of::<T>()`.
///
/// Unlike `ByteValued::from_slice` this does not need `bytes` to be aligned for `T`:
/// a message body is a `Vec<u8>`, whose alignment is whatever the allocator gave
/// (Miri found `from_slice` refusing, and `body` then panicking, on a body that was
/// not 8-byte aligned).
pub(crate) fn read_obj<T: ByteValued + Default>(bytes: &[u8]) -> Option<T> {
    let mut v = T::default();
    if bytes.len() != size_of::<T>() {
        return None;
    }
    v.as_mut_slice().copy_from_slice(bytes);
    Some(v)
}

/// Decodes `msg` for a device with `limits`. Takes the message's fds: those the request
/// keeps move into it, the rest are closed.
pub fn decode(mut msg: Message, limits: &Limits) -> Result<Request, RequestError> {
    let code = msg.header.request;
    let req = FrontendReq::try_from(code).map_err(|_| RequestError::Unsupported(code))?;
    let d = Decoder { req, limits };
    // Requests without a payload ignore whatever body came with them: frontends differ
    // (some send a u64 of zero), and nothing in it is used.
    Ok(match req {
        FrontendReq::GET_FEATURES => Request::GetFeatures,
        FrontendReq::SET_FEATURES => Request::SetFeatures(d.u64(&msg)?),
        FrontendReq::SET_OWNER => Request::SetOwner,
        FrontendReq::RESET_OWNER | FrontendReq::RESET_DEVICE => Request::Reset,
        FrontendReq::GET_PROTOCOL_FEATURES => Request::GetProtocolFeatures,
        FrontendReq::SET_PROTOCOL_FEATURES => Request::SetProtocolFeatures(d.u64(&msg)?),
        FrontendReq::GET_QUEUE_NUM => Request::GetQueueNum,
        FrontendReq::GET_MAX_MEM_SLOTS => Request::GetMaxMemSlots,
        FrontendReq::GET_STATUS => Request::GetStatus,
        FrontendReq::SET_MEM_TABLE | FrontendReq::ADD_MEM_REG | FrontendReq::REM_MEM_REG => {
            d.memory(&mut msg)?
        }
        FrontendReq::SET_VRING_NUM
        | FrontendReq::SET_VRING_ADDR
        | FrontendReq::SET_VRING_BASE
        | FrontendReq::GET_VRING_BASE
        | FrontendReq::SET_VRING_ENABLE => d.vring_state(&msg)?,
        FrontendReq::SET_VRING_KICK | FrontendReq::SET_VRING_CALL | FrontendReq::SET_VRING_ERR => {
            d.vring_fd_request(&mut msg)?
        }
        FrontendReq::GET_CONFIG
        | FrontendReq::SET_CONFIG
        | FrontendReq::NET_SET_MTU
        | FrontendReq::SET_STATUS => d.device_request(&msg)?,
        FrontendReq::SET_LOG_BASE | FrontendReq::SET_LOG_FD | FrontendReq::SEND_RARP => {
            d.migration_request(&mut msg)?
        }
        FrontendReq::SET_BACKEND_REQ_FD => d.backend_channel(&mut msg)?,
        other => return Err(invalid(other, "not supported by this device")),
    })
}

struct Decoder<'a> {
    req: FrontendReq,
    limits: &'a Limits,
}

impl Decoder<'_> {
    /// SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG.
    fn memory(&self, msg: &mut Message) -> Result<Request, RequestError> {
        Ok(match self.req {
            FrontendReq::SET_MEM_TABLE => Request::SetMemTable(self.mem_table(msg)?),
            FrontendReq::ADD_MEM_REG => {
                let r = *self.body::<VhostUserSingleMemoryRegion>(msg)?;
                let file = self.take_fd(msg)?;
                Request::AddMemReg(self.region(&r, file)?)
            }
            _ => {
                let r = *self.body::<VhostUserSingleMemoryRegion>(msg)?;
                Request::RemMemReg(RegionId {
                    gpa: r.guest_phys_addr,
                    size: r.memory_size,
                    user_addr: r.user_addr,
                })
            }
        })
    }

    /// The requests that carry a ring index and a number (or addresses).
    fn vring_state(&self, msg: &Message) -> Result<Request, RequestError> {
        if self.req == FrontendReq::SET_VRING_ADDR {
            return self.vring_addr(msg);
        }
        let s = self.body::<VhostUserVringState>(msg)?;
        let ring = self.ring(s.index.into())?;
        let num = s.num;
        Ok(match self.req {
            FrontendReq::SET_VRING_NUM => {
                let max = u32::from(self.limits.max_queue_size);
                if num == 0 || !num.is_power_of_two() || num > max {
                    return Err(invalid(
                        self.req,
                        format!(
                            "ring {}: size {num} is not a power of two in 1..={max}",
                            ring.0
                        ),
                    ));
                }
                Request::SetVringNum {
                    ring,
                    size: num as u16,
                }
            }
            FrontendReq::SET_VRING_BASE => {
                let base = u16::try_from(num).map_err(|_| {
                    invalid(self.req, format!("ring {}: base {num} > 65535", ring.0))
                })?;
                Request::SetVringBase { ring, base }
            }
            FrontendReq::GET_VRING_BASE => Request::GetVringBase { ring },
            _ => {
                let enable = match num {
                    0 => false,
                    1 => true,
                    n => {
                        return Err(invalid(
                            self.req,
                            format!("ring {}: enable value {n}", ring.0),
                        ))
                    }
                };
                Request::SetVringEnable { ring, enable }
            }
        })
    }

    /// SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR.
    fn vring_fd_request(&self, msg: &mut Message) -> Result<Request, RequestError> {
        let (ring, file) = self.vring_fd(msg)?;
        Ok(match self.req {
            FrontendReq::SET_VRING_KICK => {
                let file = file.ok_or_else(|| RequestError::BadFd {
                    req: self.req,
                    why: format!(
                        "ring {}: polling mode (no kick fd) is not supported",
                        ring.0
                    ),
                })?;
                Request::SetVringKick {
                    ring,
                    fd: self.eventfd(ring, file)?,
                }
            }
            FrontendReq::SET_VRING_CALL => {
                let fd = file.map(|f| self.eventfd(ring, f)).transpose()?;
                Request::SetVringCall { ring, fd }
            }
            _ => Request::SetVringErr { ring, fd: file },
        })
    }

    /// GET_CONFIG, SET_CONFIG, NET_SET_MTU, SET_STATUS.
    fn device_request(&self, msg: &Message) -> Result<Request, RequestError> {
        Ok(match self.req {
            FrontendReq::GET_CONFIG => Request::GetConfig(self.config_read(msg)?),
            FrontendReq::NET_SET_MTU => {
                let mtu = self.u64(msg)?;
                let max = u64::from(self.limits.max_mtu);
                if !(MIN_MTU..=max).contains(&mtu) {
                    return Err(invalid(
                        self.req,
                        format!("MTU {mtu} outside {MIN_MTU}..={max}"),
                    ));
                }
                Request::NetSetMtu(mtu as u16)
            }
            FrontendReq::SET_STATUS => {
                let v = self.u64(msg)?;
                let status = u8::try_from(v)
                    .map_err(|_| invalid(self.req, format!("status {v:#x} does not fit a byte")))?;
                Request::SetStatus(status)
            }
            _ => {
                return Err(invalid(
                    self.req,
                    "the virtio-net config space is read-only here",
                ))
            }
        })
    }

    /// SET_LOG_BASE, SET_LOG_FD, SEND_RARP.
    fn migration_request(&self, msg: &mut Message) -> Result<Request, RequestError> {
        Ok(match self.req {
            FrontendReq::SET_LOG_BASE => {
                // Without LOG_SHMFD a frontend sends a u64 and no fd: a log in its own
                // memory, which this device cannot reach.
                let body = self.body::<VhostUserLog>(msg)?;
                if msg.fds.len() != 1 {
                    return Err(RequestError::BadFd {
                        req: self.req,
                        why: format!("{} file descriptors, expected the log's", msg.fds.len()),
                    });
                }
                let file = self.take_fd(msg)?;
                let (size, offset) = (body.mmap_size, body.mmap_offset);
                if size == 0 || offset.checked_add(size).is_none() {
                    return Err(invalid(
                        self.req,
                        format!("log of {size:#x} bytes at offset {offset:#x}"),
                    ));
                }
                Request::SetLogBase(LogSpec { size, offset, file })
            }
            FrontendReq::SET_LOG_FD => {
                // Whatever came (an eventfd, or nothing) is closed with the message.
                Request::SetLogFd
            }
            _ => {
                let v = self.u64(msg)?.to_le_bytes();
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&v[..6]);
                Request::SendRarp(mac)
            }
        })
    }

    /// SET_BACKEND_REQ_FD: one descriptor, which must be a socket (the device writes
    /// requests to it and never blocks on it).
    fn backend_channel(&self, msg: &mut Message) -> Result<Request, RequestError> {
        if msg.fds.len() != 1 {
            return Err(RequestError::BadFd {
                req: self.req,
                why: format!("{} file descriptors, expected one socket", msg.fds.len()),
            });
        }
        let file = self.take_fd(msg)?;
        let kind = fd_kind(&file);
        if !kind.starts_with("socket:") {
            return Err(RequestError::BadFd {
                req: self.req,
                why: format!("the fd is {kind}, not a socket"),
            });
        }
        Ok(Request::SetBackendReqFd(
            std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(file)),
        ))
    }

    fn body<T: ByteValued + Default>(&self, msg: &Message) -> Result<T, RequestError> {
        let want = size_of::<T>();
        if msg.body.len() != want {
            return Err(RequestError::BodySize {
                req: self.req,
                got: msg.body.len(),
                want,
            });
        }
        Ok(read_obj(&msg.body).expect("length checked"))
    }

    /// The fixed part that starts a variable-size body.
    fn head<T: ByteValued + Default>(&self, msg: &Message) -> Result<T, RequestError> {
        msg.body
            .get(..size_of::<T>())
            .and_then(read_obj::<T>)
            .ok_or(RequestError::BodySize {
                req: self.req,
                got: msg.body.len(),
                want: size_of::<T>(),
            })
    }

    fn u64(&self, msg: &Message) -> Result<u64, RequestError> {
        Ok(self.body::<VhostUserU64>(msg)?.value)
    }

    fn ring(&self, index: u64) -> Result<Ring, RequestError> {
        if index < u64::from(self.limits.rings) {
            Ok(Ring(index as u16))
        } else {
            Err(RequestError::NoSuchRing {
                req: self.req,
                ring: index,
                count: self.limits.rings,
            })
        }
    }

    fn take_fd(&self, msg: &mut Message) -> Result<File, RequestError> {
        msg.take_fd().ok_or_else(|| RequestError::BadFd {
            req: self.req,
            why: "no file descriptor".into(),
        })
    }

    /// The ring of a SET_VRING_KICK/CALL/ERR payload and its fd (`None` with the
    /// no-fd flag).
    fn vring_fd(&self, msg: &mut Message) -> Result<(Ring, Option<File>), RequestError> {
        let v = self.u64(msg)?;
        if v & !VRING_FD_KNOWN_BITS != 0 {
            return Err(invalid(self.req, format!("unknown flag bits in {v:#x}")));
        }
        let ring = self.ring(v & VRING_IDX_MASK)?;
        if v & VRING_NOFD_MASK != 0 {
            return Ok((ring, None));
        }
        Ok((ring, Some(self.take_fd(msg)?)))
    }

    /// `file` as an eventfd, or why it is not one.
    fn eventfd(&self, ring: Ring, file: File) -> Result<EventFd, RequestError> {
        let kind = fd_kind(&file);
        if kind != EVENTFD_KIND {
            return Err(RequestError::BadFd {
                req: self.req,
                why: format!("ring {}: the fd is {kind}, not an eventfd", ring.0),
            });
        }
        // SAFETY: `into_raw_fd` gives up ownership of an open eventfd, which EventFd
        // takes over; nothing else refers to that descriptor number afterwards.
        Ok(unsafe { EventFd::from_raw_fd(file.into_raw_fd()) })
    }

    fn region(&self, r: &VhostUserMemoryRegion, file: File) -> Result<RegionSpec, RequestError> {
        let (gpa, size, user_addr, off) =
            (r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset);
        if size == 0
            || gpa.checked_add(size).is_none()
            || user_addr.checked_add(size).is_none()
            || off.checked_add(size).is_none()
        {
            return Err(invalid(
                self.req,
                format!(
                    "region gpa {gpa:#x} size {size:#x} user_addr {user_addr:#x} offset \
                     {off:#x} is empty or wraps around"
                ),
            ));
        }
        Ok(RegionSpec {
            gpa,
            size,
            user_addr,
            mmap_offset: off,
            file,
        })
    }

    fn mem_table(&self, msg: &mut Message) -> Result<Vec<RegionSpec>, RequestError> {
        let head = size_of::<VhostUserMemory>();
        let each = size_of::<VhostUserMemoryRegion>();
        let hdr = self.head::<VhostUserMemory>(msg)?;
        let n = hdr.num_regions as usize;
        if n == 0 || n > MAX_REGIONS {
            return Err(invalid(
                self.req,
                format!("{n} regions (must be 1..={MAX_REGIONS})"),
            ));
        }
        if msg.body.len() != head + n * each {
            return Err(RequestError::BodySize {
                req: self.req,
                got: msg.body.len(),
                want: head + n * each,
            });
        }
        if msg.fds.len() != n {
            return Err(RequestError::BadFd {
                req: self.req,
                why: format!("{n} regions but {} file descriptors", msg.fds.len()),
            });
        }
        let mut regions: Vec<RegionSpec> = Vec::with_capacity(n);
        for (i, file) in msg.fds.drain(..).enumerate() {
            let off = head + i * each;
            let r: VhostUserMemoryRegion = read_obj(&msg.body[off..off + each]).expect("sized");
            let spec = self.region(&r, file)?;
            if let Some(other) = regions.iter().find(|o| overlaps(o, &spec)) {
                return Err(invalid(
                    self.req,
                    format!(
                        "region gpa {:#x} size {:#x} overlaps region gpa {:#x} size {:#x}",
                        spec.gpa, spec.size, other.gpa, other.size
                    ),
                ));
            }
            regions.push(spec);
        }
        Ok(regions)
    }

    fn vring_addr(&self, msg: &Message) -> Result<Request, RequestError> {
        let a = self.body::<VhostUserVringAddr>(msg)?;
        let ring = self.ring(a.index.into())?;
        let log_flag = VhostUserVringAddrFlags::VHOST_VRING_F_LOG.bits();
        if a.flags & !log_flag != 0 {
            let flags = a.flags;
            return Err(invalid(
                self.req,
                format!("ring {}: unknown flags {flags:#x}", ring.0),
            ));
        }
        if a.descriptor % 16 != 0 || a.available % 2 != 0 || a.used % 4 != 0 {
            return Err(invalid(
                self.req,
                format!("ring {}: misaligned ring address", ring.0),
            ));
        }
        Ok(Request::SetVringAddr {
            ring,
            location: RingLocation {
                addrs: RingAddrs {
                    desc: a.descriptor,
                    avail: a.available,
                    used: a.used,
                },
                space: AddrSpace::FrontendVirtual,
                // QEMU sends the used ring's guest-physical address here.
                log_used: (a.flags & log_flag != 0).then_some(a.log),
            },
        })
    }

    fn config_read(&self, msg: &Message) -> Result<ConfigRead, RequestError> {
        let head = size_of::<VhostUserConfig>();
        let header = self.head::<VhostUserConfig>(msg)?;
        let (offset, size) = (header.offset as usize, header.size as usize);
        if msg.body.len() != head + size {
            return Err(RequestError::BodySize {
                req: self.req,
                got: msg.body.len(),
                want: head + size,
            });
        }
        if size == 0 || offset.checked_add(size).is_none_or(|e| e > NET_CONFIG_LEN) {
            return Err(invalid(
                self.req,
                format!("range {offset}+{size} outside the {NET_CONFIG_LEN}-byte config space"),
            ));
        }
        Ok(ConfigRead {
            header,
            offset,
            size,
        })
    }
}

/// Whether two regions share guest-physical or frontend-virtual addresses.
fn overlaps(a: &RegionSpec, b: &RegionSpec) -> bool {
    let meet = |x: u64, y: u64, len_x: u64, len_y: u64| x < y + len_y && y < x + len_x;
    meet(a.gpa, b.gpa, a.size, b.size) || meet(a.user_addr, b.user_addr, a.size, b.size)
}

/// What `/proc/self/fd` calls an eventfd.
const EVENTFD_KIND: &str = "anon_inode:[eventfd]";

/// What kind of file `file` is, as the kernel names it: `anon_inode:[eventfd]` for an
/// eventfd, `pipe:[...]`, `socket:[...]` or a path otherwise.
pub fn fd_kind(file: &File) -> String {
    match std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(e) => format!("unknown ({e})"),
    }
}

#[cfg(test)]
mod tests;
