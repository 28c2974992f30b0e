//! The vhost-user connection: connecting with bounded retries, the `vhost` crate's
//! `Frontend` on it, and the few requests the rig sends by hand.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::Frontend;

use crate::error::RigError;

/// vhost-user request code of GET_QUEUE_NUM.
const GET_QUEUE_NUM: u32 = 17;
/// Header flag bits: protocol version 1 and "this is a reply".
const VERSION_1: u32 = 0x1;
const REPLY: u32 = 0x4;

/// Connects to `path`, retrying while the socket does not exist yet (ENOENT) or nobody
/// listens (ECONNREFUSED), for at most `timeout`.
pub(crate) fn connect_with_retry(path: &Path, timeout: Duration) -> Result<UnixStream, RigError> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(RigError::Connect {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
}

/// Creates a socket at `path` (replacing a stale socket, as QEMU does with
/// `server=on`), listens, and accepts one connection within `timeout`; the socket
/// file stays (the backend reconnects to it), the listener goes.
pub(crate) fn accept_one(path: &Path, timeout: Duration) -> Result<UnixStream, RigError> {
    let fail = |source| RigError::Connect {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path).map_err(fail)?;
        }
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(fail)?;
    listener.set_nonblocking(true).map_err(fail)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(fail)?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(fail(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no backend connected within {timeout:?}"),
                )))
            }
            Err(e) => return Err(fail(e)),
        }
    }
}

/// A live vhost-user connection.
pub struct FrontendConnection {
    frontend: Frontend,
    stream: UnixStream,
    /// Header flag bits applied to every request.
    flags: u32,
}

impl std::fmt::Debug for FrontendConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontendConnection")
            .field("stream", &self.stream)
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

impl FrontendConnection {
    /// Wraps a connected socket. `max_rings` bounds the ring indices the frontend library
    /// accepts; `reply_timeout` bounds every wait for a reply.
    pub fn new(
        stream: UnixStream,
        max_rings: usize,
        reply_timeout: Duration,
    ) -> Result<Self, RigError> {
        let raw_err = |source| RigError::RawRequest {
            request: "socket setup",
            source,
        };
        stream
            .set_read_timeout(Some(reply_timeout))
            .map_err(raw_err)?;
        stream
            .set_write_timeout(Some(reply_timeout))
            .map_err(raw_err)?;
        let dup = stream.try_clone().map_err(raw_err)?;
        Ok(Self {
            frontend: Frontend::from_stream(dup, max_rings as u64),
            stream,
            flags: 0,
        })
    }

    /// The `vhost` crate frontend, for any request.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// Sets the header flags of all following requests (NEED_REPLY makes setters
    /// synchronous once REPLY_ACK is negotiated).
    pub(crate) fn set_hdr_flags(&mut self, flags: VhostUserHeaderFlag) {
        self.flags = flags.bits();
        self.frontend.set_hdr_flags(flags);
    }

    /// Runs a request that has its own reply (GET_*) without NEED_REPLY, as QEMU does.
    pub(crate) fn without_need_reply<T>(&mut self, f: impl FnOnce(&mut Frontend) -> T) -> T {
        let saved = self.flags;
        self.frontend
            .set_hdr_flags(VhostUserHeaderFlag::from_bits_retain(
                saved & !VhostUserHeaderFlag::NEED_REPLY.bits(),
            ));
        let r = f(&mut self.frontend);
        self.frontend
            .set_hdr_flags(VhostUserHeaderFlag::from_bits_retain(saved));
        r
    }

    /// GET_QUEUE_NUM, sent by hand: the crate's version lowers its ring-index limit to
    /// the reply, which backends interpret differently (queue pairs or rings).
    pub(crate) fn get_queue_num(&mut self) -> Result<u64, RigError> {
        let err = |source| RigError::RawRequest {
            request: "GET_QUEUE_NUM",
            source,
        };
        let mut req = [0u8; 12];
        req[0..4].copy_from_slice(&GET_QUEUE_NUM.to_le_bytes());
        req[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
        self.stream.write_all(&req).map_err(err)?;
        let mut reply = [0u8; 20];
        self.stream.read_exact(&mut reply).map_err(err)?;
        let word = |i: usize| u32::from_le_bytes(reply[i..i + 4].try_into().expect("4 bytes"));
        if word(0) != GET_QUEUE_NUM || word(4) & REPLY == 0 || word(8) != 8 {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "malformed reply: request {} flags {:#x} size {}",
                    word(0),
                    word(4),
                    word(8)
                ),
            )));
        }
        Ok(u64::from_le_bytes(
            reply[12..20].try_into().expect("8 bytes"),
        ))
    }

    /// Closes the connection (both directions) at once.
    pub(crate) fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}
