//! The tap backend: a Linux tap device opened with `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR | IFF_MULTI_QUEUE`, one file descriptor per queue pair, with the guest's
//! virtio-net header passed through as the tap's vnet header so checksum and
//! segmentation offloads cross without being undone in the guest.
//!
//! TX writes each frame with `writev` straight from the guest's buffers; RX reads each
//! frame with `readv` straight into the guest's buffers (no bounce copy).

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vdpa::virtio::features::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
};
use vdpa::DropReason;

use crate::engine::{RxState, TxState};
use crate::port::{FirstError, Port, IOV_MAX};
use crate::portsec::{PortSecurity, TxGuard};
use crate::rxq::{Reserve, RxQueue};
use crate::syscall_vec::SyscallVec;
use crate::txq::{TxNext, TxQueue};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;
const TUNSETTXFILTER: libc::c_ulong = 0x4004_54d1;
const TUN_FLT_ALLMULTI: u16 = 0x0001;
/// Addresses the tun driver matches exactly; further multicast ones are hashed.
const TUN_FLT_EXACT: usize = 8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_ATTACH_QUEUE: libc::c_short = 0x0200;
const IFF_DETACH_QUEUE: libc::c_short = 0x0400;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;

/// The offload features a tap can serve: the guest may send partially checksummed
/// and TSO frames (HOST_*), and receive them (GUEST_*, enabled with TUNSETOFFLOAD).
pub const TAP_OFFLOADS: u64 = VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_HOST_ECN;

/// The guest features that make the device deliver 64 KiB GSO frames.
pub(crate) const GUEST_GSO: u64 = VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?}"),
            ));
        }
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        for (d, s) in r.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        Ok(r)
    }

    fn name(&self) -> String {
        // SAFETY: the kernel NUL-terminates the name it writes back (IFNAMSIZ - 1 max),
        // and our own names are shorter than IFNAMSIZ with zero padding.
        unsafe { CStr::from_ptr(self.name.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }
}

/// An open multi-queue tap device.
///
/// The kernel spreads the frames it sends into the tap over the *attached* queues by
/// flow. A queue whose pair does not run must therefore be detached
/// (`Tap::detach_queue`), or the flows hashed to it are never read and silently lost.
#[derive(Debug)]
pub struct Tap {
    name: String,
    queues: Vec<File>,
    attached: Vec<bool>,
}

fn ioctl_ptr<T>(fd: RawFd, req: libc::c_ulong, arg: *mut T) -> io::Result<()> {
    // SAFETY: callers pass tun ioctls together with a pointer to the argument type the
    // kernel expects for that request, valid for the duration of the call.
    let rc = unsafe { libc::ioctl(fd, req, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Tap {
    /// Creates (or attaches to) tap `name` — `None` lets the kernel pick `vdpadN` —
    /// with one queue per queue pair, and brings it up.
    pub fn open(name: Option<&str>, queue_pairs: u16) -> io::Result<Tap> {
        let mut actual = name.unwrap_or("vdpad%d").to_owned();
        let mut queues = Vec::with_capacity(usize::from(queue_pairs));
        for _ in 0..queue_pairs {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/net/tun: {e}")))?;
            let mut req = IfReq::new(&actual)?;
            req.flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
            ioctl_ptr(file.as_raw_fd(), TUNSETIFF, &mut req).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "TUNSETIFF {actual}: {e} (needs CAP_NET_ADMIN; an existing tap must \
                         have been created with multi_queue and vnet_hdr)"
                    ),
                )
            })?;
            actual = req.name();
            queues.push(file);
        }
        let tap = Tap {
            name: actual,
            attached: vec![true; queues.len()],
            queues,
        };
        tap.set_up()?;
        Ok(tap)
    }

    /// The interface name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Number of queues.
    pub(crate) fn queues(&self) -> usize {
        self.queues.len()
    }

    fn set_up(&self) -> io::Result<()> {
        // SAFETY: plain socket(2) call; the result is checked and owned at once.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `s` is a fresh descriptor we own.
        let sock = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(s) };
        let mut req = IfReq::new(&self.name)?;
        ioctl_ptr(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req)?;
        req.flags |= libc::IFF_UP as libc::c_short;
        ioctl_ptr(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req)
            .map_err(|e| io::Error::new(e.kind(), format!("bringing {} up: {e}", self.name)))
    }

    /// Makes every queue exchange a `len`-byte vnet header (10, or 12 with
    /// `num_buffers`), matching what the guest uses.
    pub(crate) fn set_vnet_hdr_len(&self, len: usize) -> io::Result<()> {
        for q in &self.queues {
            let mut v = len as libc::c_int;
            ioctl_ptr(q.as_raw_fd(), TUNSETVNETHDRSZ, &mut v)?;
        }
        Ok(())
    }

    /// Tells the tap which offloaded frames the guest accepts (from its acked GUEST_*
    /// features); the kernel segments or checksums anything else before delivery.
    pub(crate) fn set_offload(&self, guest_features: u64) -> io::Result<()> {
        let mut f: libc::c_uint = 0;
        if guest_features & VIRTIO_NET_F_GUEST_CSUM != 0 {
            f |= TUN_F_CSUM;
            if guest_features & VIRTIO_NET_F_GUEST_TSO4 != 0 {
                f |= TUN_F_TSO4;
            }
            if guest_features & VIRTIO_NET_F_GUEST_TSO6 != 0 {
                f |= TUN_F_TSO6;
            }
            if guest_features & VIRTIO_NET_F_GUEST_ECN != 0 && f & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
                f |= TUN_F_TSO_ECN;
            }
        }
        // TUNSETOFFLOAD takes the flags by value.
        // SAFETY: a tun ioctl with an integer argument.
        let rc = unsafe {
            libc::ioctl(
                self.queues[0].as_raw_fd(),
                TUNSETOFFLOAD,
                f as libc::c_ulong,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes the kernel drop, before they are queued, frames the host sends into the
    /// tap that are not for `security`'s MAC, broadcast or its multicast groups
    /// (`TUNSETTXFILTER`). Nothing is filtered without a MAC or when promiscuous.
    pub fn set_rx_filter(&self, security: &PortSecurity) -> io::Result<()> {
        let mut addrs: Vec<[u8; 6]> = Vec::new();
        let mut flags = 0u16;
        if let (Some(mac), false) = (security.mac, security.promiscuous) {
            addrs.push(mac);
            addrs.push([0xff; 6]);
            match &security.multicast {
                None => flags |= TUN_FLT_ALLMULTI,
                Some(groups) => addrs.extend(groups),
            }
        }
        // struct tun_filter { u16 flags; u16 count; u8 addr[count][6]; }
        let mut buf = Vec::with_capacity(4 + 6 * addrs.len());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&(addrs.len() as u16).to_ne_bytes());
        for a in &addrs {
            buf.extend_from_slice(a);
        }
        debug_assert!(
            addrs.len() <= TUN_FLT_EXACT || addrs[TUN_FLT_EXACT..].iter().all(|a| a[0] & 1 == 1)
        );
        ioctl_ptr(self.queues[0].as_raw_fd(), TUNSETTXFILTER, buf.as_mut_ptr())
            .map_err(|e| io::Error::new(e.kind(), format!("TUNSETTXFILTER on {}: {e}", self.name)))
    }

    /// Whether the tap accepts every offload flag (probed once at start).
    pub(crate) fn supports_offloads(&self) -> bool {
        let all = TAP_OFFLOADS;
        let ok = self.set_offload(all).is_ok();
        let _ = self.set_offload(0);
        ok
    }

    /// Attaches queue `i` (`TUNSETQUEUE` with `IFF_ATTACH_QUEUE`): the kernel steers
    /// flows to it again. Nothing happens if it is attached.
    pub(crate) fn attach_queue(&mut self, i: usize) -> io::Result<()> {
        self.set_queue(i, true)
    }

    /// Detaches queue `i` (`IFF_DETACH_QUEUE`): the kernel sends it no more frames
    /// (and drops what it held) until it is attached again; the descriptor stays
    /// open, and the tap exists as long as one is. Nothing happens if it is detached.
    pub(crate) fn detach_queue(&mut self, i: usize) -> io::Result<()> {
        self.set_queue(i, false)
    }

    fn set_queue(&mut self, i: usize, attach: bool) -> io::Result<()> {
        if self.attached[i] == attach {
            return Ok(());
        }
        let mut req = IfReq::new(&self.name)?;
        req.flags = if attach {
            IFF_ATTACH_QUEUE
        } else {
            IFF_DETACH_QUEUE
        };
        ioctl_ptr(self.queues[i].as_raw_fd(), TUNSETQUEUE, &mut req).map_err(|e| {
            let what = if attach { "attaching" } else { "detaching" };
            io::Error::new(
                e.kind(),
                format!("{what} queue {i} of tap {}: {e}", self.name),
            )
        })?;
        self.attached[i] = attach;
        Ok(())
    }

    /// An attached queue, to write a frame of the device's own on (a detached one
    /// refuses writes); `None` while no pair runs.
    pub(crate) fn attached_queue(&self) -> Option<&File> {
        self.queues
            .iter()
            .zip(&self.attached)
            .find(|(_, &a)| a)
            .map(|(q, _)| q)
    }

    /// A duplicate of queue `i`'s descriptor, for a worker.
    pub(crate) fn queue(&self, i: usize) -> io::Result<File> {
        self.queues[i].try_clone()
    }
}

/// The tap queue of one queue pair.
pub struct TapPort {
    fd: File,
    /// Largest frame (header included) the tap may deliver.
    max_rx: u64,
    mrg: bool,
    errors: FirstError,
    iov: SyscallVec<libc::iovec>,
    guard: Option<TxGuard>,
}

impl TapPort {
    /// A port on tap queue `fd`; `max_rx` bounds one received frame (header included)
    /// and `mrg` says whether it may span several RX buffers.
    pub fn new(fd: File, max_rx: u64, mrg: bool) -> Self {
        Self::secured(
            fd,
            max_rx,
            mrg,
            &std::sync::Arc::new(PortSecurity::default()),
        )
    }

    /// A port as [`new`](Self::new) makes, checking (and on an access VLAN tagging)
    /// what the guest sends according to `security`.
    pub fn secured(
        fd: File,
        max_rx: u64,
        mrg: bool,
        security: &std::sync::Arc<PortSecurity>,
    ) -> Self {
        TapPort {
            guard: TxGuard::new(security, 1),
            fd,
            max_rx,
            mrg,
            errors: FirstError::new("tap"),
            iov: SyscallVec::with_capacity(16),
        }
    }
}

impl Port for TapPort {
    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn transmit(&mut self, tx: &mut TxQueue, budget: usize) -> TxState {
        for _ in 0..budget {
            match tx.take() {
                TxNext::Empty => return TxState::Idle,
                TxNext::Skipped | TxNext::Later => continue,
                TxNext::Frame => {}
            }
            self.iov.clear();
            // A chain's shape first: one writev cannot take it whatever it holds.
            if tx.frame().segs().len() > IOV_MAX {
                tx.drop_frame(DropReason::TooManySegments);
                continue;
            }
            let refused = match &mut self.guard {
                None => {
                    tx.append_iovecs(tx.frame(), false, &mut self.iov);
                    None
                }
                Some(g) => g.append(tx, tx.frame(), 0, false, &mut self.iov).err(),
            };
            if let Some(reason) = refused {
                tx.drop_frame(reason);
                continue;
            }
            if self.iov.len() > IOV_MAX {
                // writev would refuse it (EINVAL), every time.
                tx.drop_frame(DropReason::TooManySegments);
                continue;
            }
            // SAFETY: every iovec points at a guest buffer translated for its length.
            let n = unsafe {
                libc::writev(
                    self.fd.as_raw_fd(),
                    self.iov.as_ptr(),
                    self.iov.len() as i32,
                )
            };
            if n >= 0 {
                tx.complete();
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => {
                    tx.unpop();
                    return TxState::Blocked;
                }
                Some(libc::EINTR) => tx.unpop(),
                _ => {
                    self.errors.note("tap write", &e);
                    tx.drop_frame(DropReason::Backend);
                }
            }
        }
        TxState::Busy
    }

    fn receive(&mut self, rx: &mut RxQueue, budget: usize) -> RxState {
        for _ in 0..budget {
            // Without mergeable buffers a frame must fit the next chain, whatever it is.
            let want = if self.mrg { self.max_rx } else { 1 };
            let nbufs = match rx.reserve(want) {
                Reserve::Ready(n) => n,
                Reserve::TooSmall => 1,
                Reserve::Starved => return RxState::Starved,
            };
            let iov = rx.iovecs(nbufs, false);
            if iov.len() > IOV_MAX {
                // readv would refuse these buffers (EINVAL), every time: give the
                // oldest back unused and try with the next.
                rx.discard_front(DropReason::TooManySegments);
                continue;
            }
            let capacity: usize = iov.iter().map(|v| v.iov_len).sum();
            // SAFETY: every iovec points at a guest buffer translated for its length.
            let n = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
            if n >= 0 {
                let n = n as usize;
                if n > capacity {
                    // The tap reports the full length of a frame it had to truncate.
                    rx.drop_frame(DropReason::RxBufferTooSmall);
                } else {
                    rx.complete_read(n, false);
                }
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return RxState::Idle,
                Some(libc::EINTR) => {}
                _ => {
                    self.errors.note("tap read", &e);
                    rx.drop_frame(DropReason::Backend);
                }
            }
        }
        RxState::Busy
    }
}
