//! Client mode (`socket_role = "client"`): the frontend owns the socket — QEMU with
//! `-chardev socket,...,server=on`, DPDK virtio-user with `server=1` — and the
//! device's thread connects to it.
//!
//! A connection is served exactly like an accepted one (the same session code, so
//! the same resume guarantees: the frontend replays its setup with the ring positions
//! it kept). When it ends, or while the peer is not there, the thread tries again
//! with bounded exponential backoff ([`Backoff`]: 100 ms doubling to 5 s). Only the
//! device's own thread waits: a connect attempt never blocks (a Unix socket connect
//! either completes or fails at once; one that would wait is bounded by
//! [`CONNECT_TIMEOUT`]), and a peer that accepts but never speaks is given up on
//! after [`FIRST_REQUEST_TIMEOUT`].
//!
//! The socket is the frontend's: vdpad never creates, removes or changes it. What is
//! at the path is opened without following a symbolic link, checked to be a socket,
//! and connected to through that descriptor (`/proc/self/fd/N`), so the file checked
//! is the file connected to.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::device::Device;
use crate::server::{poll_readable, serve_stream, Shutdown};

/// Wait after the first failed attempt.
pub const RECONNECT_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Longest a connect attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a peer that accepted the connection may take to send its first request.
/// QEMU and DPDK send theirs at once; a listener that does not accept (it already
/// serves another backend) leaves the connection in its queue, silent.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection shorter than this (or without a request) counts as a failed attempt,
/// so a peer that accepts and drops at once is retried with backoff, not in a loop.
pub const STABLE_SESSION: Duration = Duration::from_secs(1);

/// Bounded exponential backoff: `first` after the first failure, doubled after each
/// further one, never more than `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// No failures yet.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            failures: 0,
        }
    }

    /// Failures since the last [`reset`](Self::reset).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The wait before the next attempt: zero before any failure.
    pub fn delay(&self) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let doublings = (self.failures - 1).min(31);
        self.first
            .checked_mul(1u32 << doublings)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// Counts a failure and returns the wait before the next attempt.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delay()
    }

    /// Forgets the failures (after a connection that worked).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Why a connect attempt failed.
#[derive(Debug)]
pub enum ConnectFailure {
    /// Nothing at the path: the peer has not created its socket (yet).
    Missing,
    /// A socket that nobody listens on: the peer is gone and left its file behind.
    Refused,
    /// Something that is not a socket is at the path (its type named).
    NotASocket(&'static str),
    /// The peer's listen queue is full, or the connection did not complete in time.
    NotAccepted,
    /// Anything else (permission denied, ...): the step and the error.
    Other(&'static str, io::Error),
}

impl ConnectFailure {
    /// Whether this is the ordinary "the peer is not there (yet)", as opposed to a
    /// problem an operator has to fix.
    pub fn peer_absent(&self) -> bool {
        matches!(self, ConnectFailure::Missing | ConnectFailure::Refused)
    }

    /// Identifies the kind of failure, to log a change of reason but not a repeat.
    fn key(&self) -> String {
        match self {
            ConnectFailure::Other(step, e) => format!("{step}: {:?}", e.kind()),
            other => format!("{:?}", std::mem::discriminant(other)),
        }
    }
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectFailure::Missing => {
                f.write_str("no socket at the path yet (the frontend has not created it)")
            }
            ConnectFailure::Refused => {
                f.write_str("nobody listens on the socket (connection refused)")
            }
            ConnectFailure::NotASocket(kind) => write!(
                f,
                "a {kind} is at the path, not a socket; vdpad connects only to a socket \
                 and leaves the path alone"
            ),
            ConnectFailure::NotAccepted => {
                f.write_str("the frontend is not accepting connections (its queue is full)")
            }
            ConnectFailure::Other(step, e) => write!(f, "{step}: {e}"),
        }
    }
}

/// Connects to the socket at `path` without creating, following or changing anything
/// there; the attempt takes at most `timeout`.
pub fn connect(path: &Path, timeout: Duration) -> Result<UnixStream, ConnectFailure> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| ConnectFailure::Other("the path", io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: `c_path` is a valid NUL-terminated string for the call.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.kind() {
            io::ErrorKind::NotFound => ConnectFailure::Missing,
            _ => ConnectFailure::Other("opening the path", e),
        });
    }
    // SAFETY: open returned a new descriptor that nothing else owns.
    let node = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `node` is open and `st` is a valid, writable stat struct.
    if unsafe { libc::fstat(node.as_raw_fd(), &mut st) } != 0 {
        return Err(ConnectFailure::Other(
            "checking the path",
            io::Error::last_os_error(),
        ));
    }
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFSOCK {
        return Err(ConnectFailure::NotASocket(file_type(kind)));
    }
    // Through the descriptor: the socket checked above is the one connected to, even
    // if the path is replaced meanwhile. Without /proc, the path itself.
    let via_fd = format!("/proc/self/fd/{}", node.as_raw_fd());
    let target: &[u8] = if Path::new("/proc/self/fd").is_dir() {
        via_fd.as_bytes()
    } else {
        path.as_os_str().as_bytes()
    };
    let stream = connect_unix(target, timeout)?;
    drop(node);
    Ok(stream)
}

fn file_type(kind: libc::mode_t) -> &'static str {
    match kind {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symbolic link",
        libc::S_IFIFO => "FIFO",
        libc::S_IFCHR | libc::S_IFBLK => "device node",
        _ => "file of unknown type",
    }
}

/// A non-blocking `connect` to the Unix socket address `addr`, bounded by `timeout`;
/// the stream it returns blocks as usual.
fn connect_unix(addr: &[u8], timeout: Duration) -> Result<UnixStream, ConnectFailure> {
    let other = |step| ConnectFailure::Other(step, io::Error::last_os_error());
    // SAFETY: socket() takes no pointers.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(other("creating a socket"));
    }
    // SAFETY: socket returned a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero sockaddr_un is valid (an empty path).
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if addr.len() >= sun.sun_path.len() {
        return Err(ConnectFailure::Other(
            "the path",
            io::Error::new(io::ErrorKind::InvalidInput, "too long for a Unix socket"),
        ));
    }
    for (dst, &src) in sun.sun_path.iter_mut().zip(addr) {
        *dst = src as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + addr.len() + 1;
    // SAFETY: `sun` is a valid sockaddr_un and `len` lies within it.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&sun as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINPROGRESS) => wait_connected(sock.as_raw_fd(), timeout)?,
            Some(libc::ECONNREFUSED) => return Err(ConnectFailure::Refused),
            // The socket went away between the check and the connect.
            Some(libc::ENOENT) => return Err(ConnectFailure::Missing),
            Some(libc::EAGAIN) => return Err(ConnectFailure::NotAccepted),
            _ => return Err(ConnectFailure::Other("connecting", e)),
        }
    }
    let stream = UnixStream::from(sock);
    stream
        .set_nonblocking(false)
        .map_err(|e| ConnectFailure::Other("making the socket blocking", e))?;
    Ok(stream)
}

/// Waits (at most `timeout`) for a connect in progress on `fd` to complete.
fn wait_connected(fd: RawFd, timeout: Duration) -> Result<(), ConnectFailure> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n == 0 {
        return Err(ConnectFailure::NotAccepted);
    }
    if n < 0 {
        return Err(ConnectFailure::Other(
            "waiting for the connection",
            io::Error::last_os_error(),
        ));
    }
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_ERROR writes one c_int into `err`, whose size `len` gives.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    match (rc, err) {
        (0, 0) => Ok(()),
        (0, libc::ECONNREFUSED) => Err(ConnectFailure::Refused),
        (0, e) => Err(ConnectFailure::Other(
            "connecting",
            io::Error::from_raw_os_error(e),
        )),
        _ => Err(ConnectFailure::Other(
            "connecting",
            io::Error::last_os_error(),
        )),
    }
}

/// The process on the other end of `stream`, for the log.
fn peer_pid(stream: &UnixStream) -> Option<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one ucred into `cred`, whose size `len` gives.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid)
}

/// The device thread of a client-mode device: connects to the frontend's socket at
/// `path`, serves each connection, and reconnects with backoff, until `shutdown`.
pub(crate) fn serve(mut device: Device, path: &Path, shutdown: Shutdown) {
    let name = device.name().to_owned();
    let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
    // The kind of failure last logged: a peer that stays away is logged once, and
    // again only when the reason changes or after it was connected.
    let mut logged: Option<String> = None;
    device.observe_peer(|_| {});
    while !shutdown.is_raised() {
        device.observe_peer(|p| {
            p.attempts += 1;
            p.next_attempt = None;
        });
        let failure = match connect(path, CONNECT_TIMEOUT) {
            Ok(stream) => {
                logged = None;
                match session(&mut device, stream, &shutdown, &backoff) {
                    None => {
                        backoff.reset();
                        continue;
                    }
                    Some(why) => why,
                }
            }
            Err(e) => {
                log_failure(&name, path, &e, &backoff, &mut logged);
                e.to_string()
            }
        };
        if shutdown.is_raised() {
            break;
        }
        let delay = backoff.fail();
        let failures = u64::from(backoff.failures());
        device.observe_peer(|p| {
            p.failed_attempts = failures;
            p.last_error = Some(failure);
            p.next_attempt = Some(Instant::now() + delay);
        });
        let ms = i32::try_from(delay.as_millis()).unwrap_or(i32::MAX);
        let _ = poll_readable(&[shutdown.as_raw_fd()], ms);
    }
    device.observe_peer(|p| p.next_attempt = None);
    info!(device = %name, socket = %path.display(),
          "device stopped (the frontend's socket is left in place)");
}

/// Serves one connection. Returns `None` if it was a good one (requests served for
/// at least [`STABLE_SESSION`]), otherwise why it counts as a failed attempt.
fn session(
    device: &mut Device,
    stream: UnixStream,
    shutdown: &Shutdown,
    backoff: &Backoff,
) -> Option<String> {
    let peer = peer_pid(&stream).map_or_else(|| "?".to_owned(), |p| p.to_string());
    info!(device = device.name(), socket = %device.config().socket.display(),
          peer_pid = %peer, failed_attempts = backoff.failures(),
          "connected to the frontend's socket");
    device.observe_peer(|p| {
        p.connected = true;
        p.failed_attempts = 0;
        p.next_attempt = None;
    });
    let started = Instant::now();
    let ended = serve_stream(device, stream, shutdown, Some(FIRST_REQUEST_TIMEOUT));
    let lasted = started.elapsed();
    let reconnect = !shutdown.is_raised();
    info!(device = device.name(), reason = %ended.reason, requests = ended.requests,
          reconnect, "frontend disconnected; datapath stopped, memory released");
    device.observe_peer(|p| {
        p.connected = false;
        p.last_error = Some(format!("connection ended: {}", ended.reason));
    });
    if ended.requests > 0 && lasted >= STABLE_SESSION {
        return None;
    }
    Some(format!(
        "the connection ended after {} request(s) in {} ms: {}",
        ended.requests,
        lasted.as_millis(),
        ended.reason
    ))
}

/// Logs a failed attempt: the first one of a series and a change of reason at
/// `info` (a peer not there yet is ordinary) or `warn` (anything else needs the
/// operator), the repeats at `debug`.
fn log_failure(
    name: &str,
    path: &Path,
    e: &ConnectFailure,
    backoff: &Backoff,
    logged: &mut Option<String>,
) {
    let key = e.key();
    let attempt = backoff.failures() + 1;
    if logged.as_ref() == Some(&key) {
        debug!(device = name, socket = %path.display(), error = %e, attempt,
               "cannot connect to the frontend's socket; still retrying");
        return;
    }
    let first = logged.is_none();
    *logged = Some(key);
    let message = if first {
        "cannot connect to the frontend's socket; retrying with backoff (100 ms to 5 s), \
         logged again when the reason changes"
    } else {
        "cannot connect to the frontend's socket, for another reason now; still retrying"
    };
    if e.peer_absent() {
        info!(device = name, socket = %path.display(), error = %e, attempt, "{message}");
    } else {
        warn!(device = name, socket = %path.display(), error = %e, attempt, "{message}");
    }
}

#[cfg(test)]
mod tests;
