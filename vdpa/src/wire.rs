//! vhost-user framing: reading requests (header, body, passed file descriptors) from a
//! frontend and writing replies. Knows nothing of what messages mean.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use thiserror::Error;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Size of the fixed message header.
pub const HEADER_LEN: usize = 12;
/// Largest body accepted; the protocol's variable-size messages fit in 4 KiB.
pub const MAX_BODY: usize = 0x1000;
/// Most file descriptors accepted with one message.
pub const MAX_FDS: usize = 32;

/// Header flag bits.
pub const FLAG_VERSION_MASK: u32 = 0x3;
/// The protocol version this implementation speaks.
pub const VERSION_1: u32 = 0x1;
/// Set in replies.
pub const FLAG_REPLY: u32 = 0x4;
/// Set by the frontend when it wants a reply to a message that normally has none.
pub const FLAG_NEED_REPLY: u32 = 0x8;

/// How long the rest of a message may take to arrive once its first byte has: one
/// deadline for the whole message, not per read (a frontend sending one byte every
/// few seconds would otherwise hold the device's thread for as long as it likes).
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a reply may take to be written.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The 12-byte header that starts every vhost-user message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Request code (`FrontendReq`).
    pub request: u32,
    /// Version and flag bits.
    pub flags: u32,
    /// Body length in bytes.
    pub size: u32,
}

impl Header {
    pub(crate) fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            request: word(0),
            flags: word(4),
            size: word(8),
        }
    }

    pub(crate) fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.request.to_ne_bytes());
        b[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        b[8..12].copy_from_slice(&self.size.to_ne_bytes());
        b
    }

    /// Whether the frontend asked for an acknowledgement.
    pub fn need_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }
}

/// One request as received.
#[derive(Debug)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// Exactly `header.size` bytes.
    pub body: Vec<u8>,
    /// File descriptors that came with the message, owned.
    pub fds: Vec<File>,
}

impl Message {
    /// Takes the first file descriptor, if any; the rest are closed when the message
    /// is dropped.
    pub fn take_fd(&mut self) -> Option<File> {
        if self.fds.is_empty() {
            None
        } else {
            Some(self.fds.remove(0))
        }
    }
}

/// Framing errors. Each one ends the connection: after it the byte stream can no
/// longer be trusted to be at a message boundary.
#[derive(Debug, Error)]
pub enum WireError {
    /// The frontend closed the connection.
    #[error("frontend disconnected")]
    Disconnected,
    /// The frontend closed the connection in the middle of a message.
    #[error("frontend disconnected in the middle of a message")]
    Truncated,
    /// The header is not version 1 or announces an oversized body.
    #[error("malformed header: request {request} flags {flags:#x} size {size}")]
    BadHeader {
        /// Request code.
        request: u32,
        /// Flags.
        flags: u32,
        /// Announced size.
        size: u32,
    },
    /// The rest of the message did not arrive before the message's deadline.
    #[error("incomplete message: the rest did not arrive within {0:?}")]
    Timeout(Duration),
    /// Reading was abandoned because the abort descriptor became readable (the daemon
    /// is shutting down or the device is being removed).
    #[error("reading abandoned: shutting down")]
    Aborted,
    /// A socket error.
    #[error("socket I/O")]
    Io(#[source] io::Error),
}

/// One vhost-user connection, backend side.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    message_timeout: Duration,
}

impl Connection {
    /// Wraps an accepted stream.
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        // Reads never block (each waits in poll, against the message's deadline);
        // this only bounds a read that races with the peer.
        stream.set_read_timeout(Some(MESSAGE_TIMEOUT))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(Connection {
            stream,
            message_timeout: MESSAGE_TIMEOUT,
        })
    }

    /// Changes how long a message may take from its first byte to its last
    /// (default [`MESSAGE_TIMEOUT`]).
    pub fn set_message_timeout(&mut self, timeout: Duration) {
        self.message_timeout = timeout;
    }

    /// The underlying stream, for polling.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Reads one complete message. Call when the socket is readable. The message
    /// must be complete within the message timeout of its first byte.
    pub fn recv(&mut self) -> Result<Message, WireError> {
        self.recv_inner(None)
    }

    /// [`recv`](Self::recv) that also gives up, with [`WireError::Aborted`], as soon
    /// as `abort` (an eventfd such as the shutdown signal) becomes readable.
    pub fn recv_or_abort(&mut self, abort: RawFd) -> Result<Message, WireError> {
        self.recv_inner(Some(abort))
    }

    fn recv_inner(&mut self, abort: Option<RawFd>) -> Result<Message, WireError> {
        let mut hdr = [0u8; HEADER_LEN];
        let mut raw_fds = [-1 as RawFd; MAX_FDS];
        let mut iov = [libc::iovec {
            iov_base: hdr.as_mut_ptr().cast(),
            iov_len: HEADER_LEN,
        }];
        // SAFETY: the iovec points at `hdr`, which is valid for HEADER_LEN bytes and
        // lives across the call; any bytes may be written into it.
        let (n, nfds) = unsafe { self.stream.recv_with_fds(&mut iov, &mut raw_fds) }
            .map_err(|e| WireError::Io(io::Error::from_raw_os_error(e.errno())))?;
        let fds: Vec<File> = raw_fds[..nfds]
            .iter()
            // SAFETY: recv_with_fds hands us ownership of the first `nfds` descriptors.
            .map(|&fd| unsafe { File::from_raw_fd(fd) })
            .collect();
        if n == 0 {
            return Err(WireError::Disconnected);
        }
        let mut rest = Rest {
            stream: &self.stream,
            deadline: Instant::now() + self.message_timeout,
            timeout: self.message_timeout,
            abort,
        };
        if n < HEADER_LEN {
            rest.read_full(&mut hdr[n..])?;
        }
        let header = Header::from_bytes(&hdr);
        if header.flags & FLAG_VERSION_MASK != VERSION_1 || header.size as usize > MAX_BODY {
            return Err(WireError::BadHeader {
                request: header.request,
                flags: header.flags,
                size: header.size,
            });
        }
        let mut body = vec![0u8; header.size as usize];
        rest.read_full(&mut body)?;
        Ok(Message { header, body, fds })
    }

    /// Sends the reply to `request` with `body`.
    pub fn reply(&mut self, request: &Header, body: &[u8]) -> Result<(), WireError> {
        let header = Header {
            request: request.request,
            flags: VERSION_1 | FLAG_REPLY,
            size: body.len() as u32,
        };
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(body);
        self.stream.write_all(&out).map_err(WireError::Io)
    }
}

/// The rest of a message being read: one deadline for all of it, and a descriptor
/// that abandons it.
struct Rest<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
    timeout: Duration,
    abort: Option<RawFd>,
}

impl Rest<'_> {
    fn read_full(&mut self, buf: &mut [u8]) -> Result<(), WireError> {
        let mut done = 0;
        while done < buf.len() {
            self.wait()?;
            // SAFETY: reads at most `buf.len() - done` bytes into the unfilled tail of
            // `buf`, which lives across the call.
            let n = unsafe {
                libc::recv(
                    self.stream.as_raw_fd(),
                    buf[done..].as_mut_ptr().cast(),
                    buf.len() - done,
                    libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => return Err(WireError::Truncated),
                n if n > 0 => done += n as usize,
                _ => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => {}
                        _ => return Err(WireError::Io(e)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits until the stream is readable, the deadline passes or `abort` fires.
    fn wait(&self) -> Result<(), WireError> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WireError::Timeout(self.timeout));
            }
            let mut fds = [
                libc::pollfd {
                    fd: self.stream.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.abort.unwrap_or(-1),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: two valid pollfd structs (a negative fd is ignored by poll).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(WireError::Io(e));
            }
            if fds[1].revents != 0 {
                return Err(WireError::Aborted);
            }
            if fds[0].revents != 0 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Connection::new(a).unwrap(), b)
    }

    fn frame(request: u32, flags: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Header {
            request,
            flags,
            size: body.len() as u32,
        }
        .to_bytes()
        .to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn reads_header_body_and_fd() {
        let (mut c, peer) = pair();
        let efd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        use std::os::fd::AsRawFd;
        peer.send_with_fd(
            &frame(12, 1 | FLAG_NEED_REPLY, &5u64.to_ne_bytes())[..],
            efd.as_raw_fd(),
        )
        .unwrap();
        let m = c.recv().unwrap();
        assert_eq!(m.header.request, 12);
        assert!(m.header.need_reply());
        assert_eq!(m.body, 5u64.to_ne_bytes());
        assert_eq!(m.fds.len(), 1);
    }

    #[test]
    fn split_writes_are_reassembled() {
        let (mut c, mut peer) = pair();
        let f = frame(1, 1, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let t = std::thread::spawn(move || {
            peer.write_all(&f[..5]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            peer.write_all(&f[5..]).unwrap();
            peer
        });
        let m = c.recv().unwrap();
        assert_eq!(m.body, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        drop(t.join());
    }

    #[test]
    fn bad_version_oversize_and_eof() {
        let (mut c, mut peer) = pair();
        peer.write_all(&frame(1, 2, &[])).unwrap();
        assert!(matches!(c.recv(), Err(WireError::BadHeader { .. })));
        let (mut c, mut peer) = pair();
        let mut h = frame(1, 1, &[]);
        h[8..12].copy_from_slice(&(MAX_BODY as u32 + 1).to_ne_bytes());
        peer.write_all(&h).unwrap();
        assert!(matches!(c.recv(), Err(WireError::BadHeader { .. })));
        let (mut c, mut peer) = pair();
        peer.write_all(&frame(1, 1, &[0; 8])[..14]).unwrap();
        drop(peer);
        assert!(matches!(c.recv(), Err(WireError::Truncated)));
        let (mut c, peer) = pair();
        drop(peer);
        assert!(matches!(c.recv(), Err(WireError::Disconnected)));
    }

    #[test]
    fn reply_sets_reply_flag() {
        let (mut c, mut peer) = pair();
        c.reply(
            &Header {
                request: 1,
                flags: 1,
                size: 0,
            },
            &7u64.to_ne_bytes(),
        )
        .unwrap();
        let mut b = [0u8; 20];
        peer.read_exact(&mut b).unwrap();
        let h = Header::from_bytes(b[..12].try_into().unwrap());
        assert_eq!(h.flags, VERSION_1 | FLAG_REPLY);
        assert_eq!(h.size, 8);
    }

    /// A frontend that sends a header promising a body, then one byte at a time.
    fn trickle(mut peer: UnixStream, every: Duration, bytes: usize) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let _ = peer.write_all(&frame(1, 1, &[0; 4096])[..HEADER_LEN]);
            for _ in 0..bytes {
                std::thread::sleep(every);
                if peer.write_all(&[0]).is_err() {
                    return;
                }
            }
        })
    }

    #[test]
    fn one_deadline_for_the_whole_message() {
        let (mut c, peer) = pair();
        c.set_message_timeout(Duration::from_millis(300));
        // Each byte arrives well within the timeout, the message never does: a
        // per-read timeout would wait for all 60 bytes and then see the peer leave.
        let t = trickle(peer, Duration::from_millis(50), 60);
        assert!(matches!(c.recv(), Err(WireError::Timeout(_))));
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn reading_is_abandoned_when_asked() {
        let (mut c, peer) = pair();
        let abort = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        use std::os::fd::AsRawFd;
        let t = trickle(peer, Duration::from_millis(50), 60);
        let raise = abort.try_clone().unwrap();
        let r = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            raise.write(1).unwrap();
        });
        assert!(matches!(
            c.recv_or_abort(abort.as_raw_fd()),
            Err(WireError::Aborted)
        ));
        drop(c);
        r.join().unwrap();
        t.join().unwrap();
    }
}
