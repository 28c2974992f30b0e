//! The frontend's side of vhost-user host notifiers, as QEMU does it: the rig hands the
//! backend one end of a socket pair (SET_BACKEND_REQ_FD), the backend sends
//! VRING_HOST_NOTIFIER_MSG with a page of its NIC's doorbell area, and the rig maps
//! that page and kicks the ring by storing the queue index into it — the NIC sees the
//! kick with no eventfd and no daemon thread in between.
//!
//! The rig serves the channel at the end of setup (the backend sends its notifiers
//! after replying to the request that started each pair) and whenever a workload asks
//! ([`BackendRequests::serve`]); a notifier the backend removes goes back to eventfd
//! kicks on the next serve.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::kick_call::wait_readable;

/// Backend request code of VRING_HOST_NOTIFIER_MSG.
const VRING_HOST_NOTIFIER_MSG: u32 = 3;
const HEADER_LEN: usize = 12;
const AREA_LEN: usize = 24;
const NEED_REPLY: u32 = 0x8;
const REPLY: u32 = 0x4;
const VERSION_1: u32 = 0x1;
const NOFD: u64 = 0x100;
const PAGE: u64 = 4096;

/// One mapped doorbell page.
#[derive(Debug)]
pub struct NotifierPage {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value for its whole life and only written with
// volatile 16-bit stores, which any thread may issue.
unsafe impl Send for NotifierPage {}
// SAFETY: as above.
unsafe impl Sync for NotifierPage {}

impl NotifierPage {
    fn map(fd: &OwnedFd, offset: u64, len: u64) -> io::Result<Self> {
        if len != PAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a notifier of {len} bytes (a page is {PAGE})"),
            ));
        }
        // SAFETY: a fresh shared mapping of the descriptor the backend sent, at the
        // offset it named; the kernel checks both, and the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(NotifierPage {
            ptr: p as *mut u8,
            len: PAGE as usize,
        })
    }

    /// Rings the doorbell: a 16-bit store of the queue index, as a virtio-pci driver does.
    pub fn ring(&self, queue: u16) {
        // SAFETY: `ptr` is the start of a live, page-aligned mapping of `len` >= 2 bytes
        // owned by `self`; a device register is written volatile, never referenced.
        unsafe { std::ptr::write_volatile(self.ptr as *mut u16, queue.to_le()) };
    }
}

impl Drop for NotifierPage {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`; nothing uses it after drop.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// The rig's end of the backend channel and the pages it mapped, by ring.
#[derive(Debug)]
pub struct BackendRequests {
    socket: UnixStream,
    pages: BTreeMap<u16, Arc<NotifierPage>>,
    /// Notifier messages the backend sent.
    pub received: u64,
    /// Notifiers the rig could not map (and answered with a failure).
    pub refused: u64,
}

impl BackendRequests {
    /// A socket pair: ours, and the end to send with SET_BACKEND_REQ_FD.
    pub fn new() -> io::Result<(Self, UnixStream)> {
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_read_timeout(Some(Duration::from_secs(1)))?;
        ours.set_write_timeout(Some(Duration::from_secs(1)))?;
        Ok((
            BackendRequests {
                socket: ours,
                pages: BTreeMap::new(),
                received: 0,
                refused: 0,
            },
            theirs,
        ))
    }

    /// The page mapped for ring `ring`, if any.
    pub fn page(&self, ring: u16) -> Option<Arc<NotifierPage>> {
        self.pages.get(&ring).cloned()
    }

    /// Rings that have a page.
    pub fn rings(&self) -> Vec<u16> {
        self.pages.keys().copied().collect()
    }

    /// Handles the backend's messages until `done` holds or `wait` passed; returns
    /// how many were handled.
    pub fn serve(&mut self, wait: Duration, done: impl Fn(&Self) -> bool) -> io::Result<usize> {
        let deadline = Instant::now() + wait;
        let mut handled = 0;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if wait_readable(&[self.socket.as_raw_fd()], left)? == 0 {
                break;
            }
            self.handle_one()?;
            handled += 1;
        }
        Ok(handled)
    }

    fn handle_one(&mut self) -> io::Result<()> {
        let mut head = [0u8; HEADER_LEN];
        let mut fds: [RawFd; 4] = [-1; 4];
        let mut iov = [libc::iovec {
            iov_base: head.as_mut_ptr() as *mut libc::c_void,
            iov_len: head.len(),
        }];
        // SAFETY: the iovec points at `head`, alive and exclusively borrowed for the call.
        let (n, nfds) = unsafe { self.socket.recv_with_fds(&mut iov, &mut fds) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        // SAFETY: descriptors just received, owned by nobody else.
        let fds: Vec<OwnedFd> = fds[..nfds]
            .iter()
            .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backend closed its channel",
            ));
        }
        if n < HEADER_LEN {
            self.socket.read_exact(&mut head[n..])?;
        }
        let word = |i: usize| u32::from_ne_bytes(head[i..i + 4].try_into().expect("4 bytes"));
        let (request, flags, size) = (word(0), word(4), word(8) as usize);
        if request != VRING_HOST_NOTIFIER_MSG || size != AREA_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("backend request {request} of {size} bytes is not a host notifier"),
            ));
        }
        let mut body = [0u8; AREA_LEN];
        self.socket.read_exact(&mut body)?;
        let q = |i: usize| u64::from_ne_bytes(body[i..i + 8].try_into().expect("8 bytes"));
        let (word, len, offset) = (q(0), q(8), q(16));
        let ring = (word & 0xff) as u16;
        self.received += 1;
        let result = if word & NOFD != 0 {
            self.pages.remove(&ring);
            Ok(())
        } else {
            match fds.first() {
                Some(fd) => NotifierPage::map(fd, offset, len).map(|p| {
                    self.pages.insert(ring, Arc::new(p));
                }),
                None => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a notifier without a descriptor",
                )),
            }
        };
        if let Err(e) = &result {
            self.refused += 1;
            eprintln!("vdpa-rig: host notifier for ring {ring} not mapped: {e}");
        }
        if flags & NEED_REPLY != 0 {
            let mut out = Vec::with_capacity(HEADER_LEN + 8);
            for w in [VRING_HOST_NOTIFIER_MSG, VERSION_1 | REPLY, 8] {
                out.extend_from_slice(&w.to_ne_bytes());
            }
            out.extend_from_slice(&u64::from(result.is_err()).to_ne_bytes());
            self.socket.write_all(&out)?;
        }
        Ok(())
    }
}
