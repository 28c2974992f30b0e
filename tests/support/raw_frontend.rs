//! A raw vhost-user frontend: writes exactly the bytes and descriptors a test asks
//! for, so that a test can play a frontend that breaks the rules on purpose (a pipe
//! as a kick fd, a 64 GiB memory table, a message that arrives a byte at a time).
//!
//! This is an adapted copy of the `Frontend` in `vdpa/tests/message_sequences.rs`
//! (which drives the control plane in-process): `vdpa`'s integration tests cannot
//! depend on this package, so the two cannot share one file. This one talks to the
//! daemon binary, returns errors instead of panicking (the peer may close the
//! connection at any moment), and bounds every read.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::FrontendReq;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

pub use vhost::vhost_user::message::FrontendReq as Req;

/// Header flag: version 1.
const VERSION_1: u32 = 0x1;
/// Header flag: the frontend wants an acknowledgement.
pub const NEED_REPLY: u32 = 0x8;
/// Header flag set in replies.
const REPLY: u32 = 0x4;
/// Protocol feature REPLY_ACK.
pub const REPLY_ACK: u64 = 0x8;
/// Virtio feature VERSION_1.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// vhost-user feature PROTOCOL_FEATURES.
pub const PROTOCOL_FEATURES: u64 = 1 << 30;
/// Where the frontend pretends guest memory is mapped in its own address space.
pub const USER_ADDR: u64 = 0x7f00_0000_0000;

/// One vhost-user connection, driven by hand.
pub struct RawFrontend {
    s: UnixStream,
}

impl RawFrontend {
    /// Connects to `path`; every read and write of a reply waits at most 5 s.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(RawFrontend { s })
    }

    /// The socket, for raw writes.
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.s
    }

    /// Sends one message: header (`req`, version 1 plus `flags`, the body's length),
    /// `body`, and `fds` as SCM_RIGHTS with the first byte.
    pub fn send(&mut self, req: Req, flags: u32, body: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let mut m = Vec::with_capacity(12 + body.len());
        m.extend_from_slice(&(req as u32).to_ne_bytes());
        m.extend_from_slice(&(VERSION_1 | flags).to_ne_bytes());
        m.extend_from_slice(&(body.len() as u32).to_ne_bytes());
        m.extend_from_slice(body);
        if fds.is_empty() {
            self.s.write_all(&m)
        } else {
            let n = self
                .s
                .send_with_fds(&[&m[..]], fds)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
            self.s.write_all(&m[n..])
        }
    }

    /// Reads the reply to `req` (within the read timeout) and returns its body.
    pub fn reply(&mut self, req: Req) -> io::Result<Vec<u8>> {
        let mut h = [0u8; 12];
        self.s.read_exact(&mut h)?;
        let word = |i: usize| u32::from_ne_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let (code, flags, size) = (word(0), word(4), word(8));
        if code != req as u32 || flags & REPLY == 0 {
            return Err(io::Error::other(format!(
                "expected a reply to {req:?}, got request {code} flags {flags:#x}"
            )));
        }
        let mut b = vec![0u8; size as usize];
        self.s.read_exact(&mut b)?;
        Ok(b)
    }

    /// Sends `req` with NEED_REPLY and returns the acknowledgement (0 = accepted).
    pub fn acked(&mut self, req: Req, body: &[u8], fds: &[RawFd]) -> io::Result<u64> {
        self.send(req, NEED_REPLY, body, fds)?;
        let b = self.reply(req)?;
        let v = b
            .get(..8)
            .ok_or_else(|| io::Error::other(format!("{}-byte acknowledgement", b.len())))?;
        Ok(u64::from_ne_bytes(v.try_into().expect("8 bytes")))
    }

    /// A GET_* request whose answer is one u64.
    pub fn get_u64(&mut self, req: Req) -> io::Result<u64> {
        self.send(req, 0, &[], &[])?;
        let b = self.reply(req)?;
        Ok(u64::from_ne_bytes(
            b.get(..8)
                .ok_or_else(|| io::Error::other("short reply"))?
                .try_into()
                .expect("8 bytes"),
        ))
    }

    /// The opening every frontend sends: features, protocol features with
    /// REPLY_ACK (so that every later request can be acknowledged), owner, and
    /// VERSION_1 | PROTOCOL_FEATURES acked. Fails unless the daemon offers REPLY_ACK.
    pub fn handshake(&mut self) -> io::Result<()> {
        let offered = self.get_u64(Req::GET_FEATURES)?;
        let proto = self.get_u64(Req::GET_PROTOCOL_FEATURES)?;
        if proto & REPLY_ACK == 0 {
            return Err(io::Error::other("REPLY_ACK not offered"));
        }
        self.send(Req::SET_PROTOCOL_FEATURES, 0, &REPLY_ACK.to_ne_bytes(), &[])?;
        self.send(Req::SET_OWNER, 0, &[], &[])?;
        let want = (VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES) & offered;
        match self.acked(Req::SET_FEATURES, &want.to_ne_bytes(), &[])? {
            0 => Ok(()),
            code => Err(io::Error::other(format!("SET_FEATURES refused ({code})"))),
        }
    }

    /// SET_MEM_TABLE with one region: `size` bytes of `fd` from offset 0, at guest
    /// address `gpa`. Returns the acknowledgement.
    pub fn set_mem_table(&mut self, fd: RawFd, gpa: u64, size: u64) -> io::Result<u64> {
        let mut b = 1u32.to_ne_bytes().to_vec(); // one region
        b.extend(0u32.to_ne_bytes()); // padding
        for v in [gpa, size, USER_ADDR + gpa, 0] {
            b.extend(v.to_ne_bytes());
        }
        self.acked(Req::SET_MEM_TABLE, &b, &[fd])
    }

    /// SET_VRING_KICK / SET_VRING_CALL / SET_VRING_ERR for `ring` with `fd`. Returns
    /// the acknowledgement.
    pub fn vring_fd(&mut self, req: FrontendReq, ring: u32, fd: RawFd) -> io::Result<u64> {
        self.acked(req, &u64::from(ring).to_ne_bytes(), &[fd])
    }

    /// Sets up ring `ring` of `size` descriptors whose split-ring parts live at the
    /// guest addresses `desc`, `avail` and `used` (given to the daemon as addresses in
    /// this frontend's space, `USER_ADDR + gpa`), with `kick` and `call` eventfds,
    /// and enables it. Every request must be acknowledged with 0.
    pub fn ring_setup(
        &mut self,
        ring: u32,
        size: u32,
        [desc, avail, used]: [u64; 3],
        kick: RawFd,
        call: RawFd,
    ) -> io::Result<()> {
        let state = |num: u32| -> Vec<u8> {
            let mut b = ring.to_ne_bytes().to_vec();
            b.extend(num.to_ne_bytes());
            b
        };
        let mut addr = ring.to_ne_bytes().to_vec();
        addr.extend(0u32.to_ne_bytes()); // flags: no logging
        for gpa in [desc, used, avail] {
            addr.extend((USER_ADDR + gpa).to_ne_bytes());
        }
        addr.extend(0u64.to_ne_bytes()); // log address
        let steps: [(Req, Vec<u8>, Option<RawFd>); 6] = [
            (Req::SET_VRING_NUM, state(size), None),
            (Req::SET_VRING_BASE, state(0), None),
            (Req::SET_VRING_ADDR, addr, None),
            (
                Req::SET_VRING_KICK,
                u64::from(ring).to_ne_bytes().to_vec(),
                Some(kick),
            ),
            (
                Req::SET_VRING_CALL,
                u64::from(ring).to_ne_bytes().to_vec(),
                Some(call),
            ),
            (Req::SET_VRING_ENABLE, state(1), None),
        ];
        for (req, body, fd) in steps {
            let fds: Vec<RawFd> = fd.into_iter().collect();
            match self.acked(req, &body, &fds)? {
                0 => {}
                code => {
                    return Err(io::Error::other(format!(
                        "{req:?} on ring {ring} refused ({code})"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for the daemon to close the connection (end of file or
    /// a reset); data that arrives meanwhile is read and discarded. Returns whether it
    /// closed.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 256];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self
                .s
                .set_read_timeout(Some(left.min(Duration::from_millis(200))));
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}

/// A memfd of `size` bytes, created without `MFD_ALLOW_SEALING` (so the daemon cannot
/// seal it and its owner may shrink it at any time) and never touched: a large size
/// costs nothing until pages are written.
pub fn memfd(name: &str, size: u64) -> File {
    let name = std::ffi::CString::new(name).expect("no NUL in the name");
    // SAFETY: a valid NUL-terminated name; the result is checked before use.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).expect("size the memfd");
    f
}

/// A pipe: (read end, write end).
pub fn pipe() -> (File, File) {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes; checked below.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// Shrinks `file` to nothing (`ftruncate(fd, 0)`), as a hostile frontend would with
/// the memfd behind its guest memory.
pub fn truncate(file: &File) {
    // SAFETY: ftruncate on a descriptor we own; the result is checked.
    let rc = unsafe { libc::ftruncate(file.as_raw_fd(), 0) };
    assert_eq!(rc, 0, "ftruncate: {}", io::Error::last_os_error());
}
