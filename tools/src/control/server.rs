//! The control socket's server: one thread accepts clients, each client gets a thread
//! of its own, and every client is bounded — in request size, in the time it may take
//! to send a request, in the time it may take to read the answer, and in how many may
//! be connected at once — so no client can stall the daemon or other clients.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};
use vdpa::server::{bind_socket, Shutdown};
use vdpad_config::SocketPerms;

use super::handlers::{handle, Context};
use super::protocol::{ErrorCode, ProtocolError, Request, Response, MAX_REQUEST_BYTES};

/// Most clients served at once; one more is told to try again and disconnected.
pub const MAX_CLIENTS: usize = 16;
/// A client must send a complete request within this long after connecting or after
/// its previous answer, or it is disconnected.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must take each answer within this long, or it is disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiting client thread looks at the shutdown signal.
const SLICE: Duration = Duration::from_millis(200);

/// Why the control server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be bound (in use by a live daemon, permissions, ...).
    #[error("control socket: {0}")]
    Socket(#[from] vdpa::server::ServerError),
    /// Anything else (eventfd, thread).
    #[error("control socket {path}: {what}: {source}")]
    Setup {
        /// Socket path.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// The running control server. Stopping it (or dropping it) closes the socket,
/// disconnects every client and removes the socket file.
pub struct ControlServer {
    path: PathBuf,
    identity: Option<(u64, u64)>,
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Binds the control socket at `path` with permission bits `mode` (a stale socket
    /// is replaced, one a live process accepts on is not stolen) and starts serving.
    ///
    /// Only the mode is applied, never `socket_owner`/`socket_group`: those hand
    /// device sockets to QEMU's user, who must not be able to control the daemon.
    pub fn start(path: &Path, mode: u32, ctx: Context) -> Result<ControlServer, ControlError> {
        let setup = |what, source| ControlError::Setup {
            path: path.to_owned(),
            what,
            source,
        };
        let perms = SocketPerms {
            mode,
            owner: None,
            group: None,
        };
        let listener = bind_socket(path, &perms)?;
        let identity = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        let shutdown = Shutdown::new().map_err(|e| setup("creating the shutdown eventfd", e))?;
        let stop = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("vdpad-control".into())
            .spawn(move || accept_loop(listener, ctx, stop))
            .map_err(|e| setup("starting its thread", e))?;
        info!(socket = %path.display(), mode = format_args!("{mode:04o}"), "control socket listening");
        Ok(ControlServer {
            path: path.to_owned(),
            identity,
            shutdown,
            thread: Some(thread),
        })
    }

    /// Stops accepting, waits for the client threads (each notices within a fraction
    /// of a second, or after the command it is carrying out) and removes the socket.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shutdown.raise();
        if thread.join().is_err() {
            error!("control server thread panicked");
        }
        // Only remove the socket if it is still the one we bound.
        let ours = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()))
            .is_some_and(|id| Some(id) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
        info!(socket = %self.path.display(), "control socket closed");
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Polls the listener and the shutdown eventfd; `timeout_ms` bounds the wait so
/// finished client threads are reaped.
fn wait_readable(
    listener: &UnixListener,
    shutdown: &Shutdown,
    timeout_ms: i32,
) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: shutdown.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a valid array of two pollfd structs that outlives the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok((false, false));
        }
        return Err(e);
    }
    Ok((fds[0].revents != 0, fds[1].revents != 0))
}

fn accept_loop(listener: UnixListener, ctx: Context, shutdown: Shutdown) {
    let mut clients: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let (incoming, stop) = match wait_readable(&listener, &shutdown, 1000) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "control socket: poll failed; the control socket stops");
                break;
            }
        };
        if stop {
            break;
        }
        clients.retain(|c| !c.is_finished());
        if !incoming {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "control socket: accept failed");
                continue;
            }
        };
        let peer = peer_credentials(&stream);
        if clients.len() >= MAX_CLIENTS {
            warn!(peer = %peer, clients = clients.len(), "control socket: too many clients; refusing one");
            refuse_busy(stream);
            continue;
        }
        debug!(peer = %peer, "control client connected");
        let ctx = ctx.clone();
        let stop = shutdown.clone();
        match std::thread::Builder::new()
            .name("vdpad-ctl-client".into())
            .spawn(move || serve_client(stream, &ctx, &stop, &peer))
        {
            Ok(t) => clients.push(t),
            Err(e) => warn!(error = %e, "control socket: cannot start a client thread"),
        }
    }
    for c in clients {
        let _ = c.join();
    }
}

fn refuse_busy(mut stream: UnixStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let r = Response::refused(ProtocolError::new(
        ErrorCode::Busy,
        format!("the daemon is serving {MAX_CLIENTS} control clients already; try again"),
    ));
    let _ = stream.write_all(r.to_line().as_bytes());
}

/// Who is on the other end (`uid=0 pid=1234`), for the log.
fn peer_credentials(stream: &UnixStream) -> String {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`, a properly sized and
    // aligned ucred that lives across the call; the fd is a connected Unix socket.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        format!("uid={} pid={}", cred.uid, cred.pid)
    } else {
        "unknown".to_owned()
    }
}

/// Serves one client: requests one per line, answers one per line, until it closes
/// the connection, breaks a limit, or the daemon shuts down.
fn serve_client(mut stream: UnixStream, ctx: &Context, shutdown: &Shutdown, peer: &str) {
    if stream.set_read_timeout(Some(SLICE)).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut waiting_since = Instant::now();
    let mut eof = false;
    loop {
        // Every complete line in the buffer is one request.
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if !answer(&mut stream, ctx, &line[..pos], peer) {
                return;
            }
            waiting_since = Instant::now();
            continue;
        }
        if buf.len() > MAX_REQUEST_BYTES {
            let e = ProtocolError::new(
                ErrorCode::TooLarge,
                format!("the request is longer than {MAX_REQUEST_BYTES} bytes"),
            );
            warn!(
                peer,
                "control client sent an oversized request; disconnected"
            );
            let _ = stream.write_all(Response::refused(e).to_line().as_bytes());
            return;
        }
        if eof {
            // A last request without its newline is still a request.
            if !buf.iter().all(u8::is_ascii_whitespace) {
                answer(&mut stream, ctx, &buf, peer);
            }
            debug!(peer, "control client disconnected");
            return;
        }
        if shutdown.is_raised() {
            return;
        }
        if waiting_since.elapsed() > REQUEST_TIMEOUT {
            debug!(
                peer,
                "control client idle for {REQUEST_TIMEOUT:?}; disconnected"
            );
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => eof = true,
            Ok(n) => {
                // Keep at most one byte over the limit: enough to detect it.
                let room = (MAX_REQUEST_BYTES + 1).saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                debug!(peer, error = %e, "control client read failed; disconnected");
                return;
            }
        }
    }
}

/// Parses and carries out one request line and writes the answer. Returns whether
/// the connection can go on.
fn answer(stream: &mut UnixStream, ctx: &Context, line: &[u8], peer: &str) -> bool {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return true;
    }
    let response = match Request::parse(text) {
        Ok(req) => {
            let name = req.command.name();
            if req.command.changes_state() {
                info!(peer, command = name, "control request");
            } else {
                debug!(peer, command = name, "control request");
            }
            let r = handle(ctx, req.command);
            if let Some(e) = &r.error {
                info!(peer, command = name, error = %e, "control request refused");
            }
            r
        }
        Err(e) => {
            info!(peer, error = %e, "control request malformed");
            Response::refused(e)
        }
    };
    match stream.write_all(response.to_line().as_bytes()) {
        Ok(()) => true,
        Err(e) => {
            debug!(peer, error = %e, "control client did not take its answer; disconnected");
            false
        }
    }
}
