//! vhost-user framing: reading requests (header, body, passed file descriptors) from a
//! frontend and writing replies. Knows nothing of what messages mean.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

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

/// How long the rest of a message may take to arrive once its first byte has.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

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
    fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            request: word(0),
            flags: word(4),
            size: word(8),
        }
    }

    fn to_bytes(self) -> [u8; HEADER_LEN] {
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
    /// A socket error.
    #[error("socket I/O")]
    Io(#[source] io::Error),
}

/// One vhost-user connection, backend side.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
}

impl Connection {
    /// Wraps an accepted stream.
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_read_timeout(Some(BODY_TIMEOUT))?;
        stream.set_write_timeout(Some(BODY_TIMEOUT))?;
        Ok(Connection { stream })
    }

    /// The underlying stream, for polling.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Reads one complete message. Call when the socket is readable.
    pub fn recv(&mut self) -> Result<Message, WireError> {
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
        if n < HEADER_LEN {
            read_full(&mut self.stream, &mut hdr[n..])?;
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
        read_full(&mut self.stream, &mut body)?;
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

fn read_full(stream: &mut UnixStream, buf: &mut [u8]) -> Result<(), WireError> {
    let mut done = 0;
    while done < buf.len() {
        match stream.read(&mut buf[done..]) {
            Ok(0) => return Err(WireError::Truncated),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WireError::Io(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
