//! The listening side: one Unix socket per device, one thread per device that accepts
//! a frontend, serves its requests until it goes away, cleans up, and accepts the next.
//! (A device with `socket_role = "client"` connects instead: see [`crate::client`].)

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use thiserror::Error;
use tracing::{debug, error, info, warn};
use vdpad_config::{Frontend, SocketPerms, SocketRole};
use vhost::vhost_user::message::FrontendReq;
use vmm_sys_util::eventfd::EventFd;

use crate::device::{Device, DeviceHandle};
use crate::session::{Reply, Session};
use crate::wire::{Connection, WireError};

/// Why a device socket could not be set up.
#[derive(Debug, Error)]
pub enum ServerError {
    /// Another process is accepting connections on the socket path.
    #[error("socket {0} is in use by another process")]
    InUse(PathBuf),
    /// Creating, binding or securing the socket failed.
    #[error("socket {path}: {what}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The device thread could not be started.
    #[error("starting the thread for device {0}")]
    Thread(String, #[source] io::Error),
    /// The VDUSE device could not be created.
    #[error("VDUSE device {0}")]
    Vduse(String, #[source] crate::vduse::control::VduseError),
}

/// A process-wide stop signal: once raised, every device thread finishes its current
/// request, stops its datapath, removes its socket and exits.
#[derive(Clone, Debug)]
pub struct Shutdown(Arc<EventFd>);

impl Shutdown {
    /// A signal that is not raised.
    pub fn new() -> io::Result<Self> {
        Ok(Shutdown(Arc::new(EventFd::new(libc::EFD_NONBLOCK)?)))
    }

    /// Raises the signal. Safe to call from any thread, any number of times.
    pub fn raise(&self) {
        // The counter saturating is harmless: we only ever test readability.
        let _ = self.0.write(1);
    }

    /// The eventfd to poll; readable once raised.
    pub fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Whether the signal was raised.
    pub fn is_raised(&self) -> bool {
        poll_readable(&[self.as_raw_fd()], 0)
            .map(|r| r[0])
            .unwrap_or(false)
    }
}

/// Polls `fds` for readability (or hang-up) for up to `timeout_ms` (-1 = forever).
pub(crate) fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs for the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if n >= 0 {
            return Ok(pfds.iter().map(|p| p.revents != 0).collect());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Binds a Unix socket at `path` with `perms`, replacing a stale socket file left by a
/// previous run but refusing to steal one that a live process still accepts on.
///
/// The permission change happens right after bind; the daemon runs with umask 077 so
/// the socket is never reachable by others in between.
pub fn bind_socket(path: &Path, perms: &SocketPerms) -> Result<UnixListener, ServerError> {
    let err = |what, source| ServerError::Socket {
        path: path.to_owned(),
        what,
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err("creating its directory", e))?;
    }
    // lstat, not stat: a symbolic link is never followed, and only a socket is ever
    // replaced (a regular file, directory or link in its place is an error).
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(|e| err("removing the stale socket", e))?;
        }
        Ok(_) => {
            return Err(err(
                "something that is not a socket is in the way (a file, directory or symbolic link); not replacing it",
                io::Error::from(io::ErrorKind::AlreadyExists),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("checking the path", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| err("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(perms.mode))
        .map_err(|e| err("setting its mode", e))?;
    if perms.owner.is_some() || perms.group.is_some() {
        std::os::unix::fs::chown(path, perms.owner, perms.group)
            .map_err(|e| err("changing its owner", e))?;
    }
    Ok(listener)
}

/// A device being served on its socket by its own thread.
pub struct DeviceServer {
    handle: DeviceHandle,
    socket: PathBuf,
    thread: Option<JoinHandle<()>>,
    /// Disconnected (the sender dropped) when the device thread ends, however it ends.
    finished: mpsc::Receiver<()>,
}

impl DeviceServer {
    /// Starts serving the device on its frontend: binds its vhost-user socket (server
    /// role), starts connecting to the frontend's socket (client role), or creates
    /// its VDUSE device.
    pub fn start(device: Device, shutdown: Shutdown) -> Result<Self, ServerError> {
        if let Frontend::Vduse { .. } = device.config().frontend {
            return Self::start_vduse(device, shutdown);
        }
        let socket = device.config().socket.clone();
        let name = device.name().to_owned();
        let path = socket.clone();
        if device.config().socket_role == SocketRole::Client {
            info!(device = %name, socket = %socket.display(), role = "client",
                  "connecting to the frontend's socket; retrying with backoff until it listens");
            return Self::spawn(device.handle(), format!("vdpa-{name}"), socket, move || {
                crate::client::serve(device, &path, shutdown)
            });
        }
        let listener = bind_socket(&socket, &device.config().socket_perms)?;
        info!(device = %name, socket = %socket.display(), "listening for a vhost-user frontend");
        Self::spawn(device.handle(), format!("vdpa-{name}"), socket, move || {
            serve(device, listener, &path, shutdown)
        })
    }

    fn start_vduse(device: Device, shutdown: Shutdown) -> Result<Self, ServerError> {
        let name = device.name().to_owned();
        let vduse =
            crate::vduse::create(&device).map_err(|e| ServerError::Vduse(name.clone(), e))?;
        let node = PathBuf::from(format!("/dev/vduse/{name}"));
        Self::spawn(device.handle(), format!("vduse-{name}"), node, move || {
            crate::vduse::serve(device, vduse, shutdown)
        })
    }

    /// Runs `body` (which owns the device of `handle`) on a thread of its own called
    /// `thread_name`.
    fn spawn(
        handle: DeviceHandle,
        thread_name: String,
        socket: PathBuf,
        body: impl FnOnce() + Send + 'static,
    ) -> Result<Self, ServerError> {
        let name = handle.name().to_owned();
        let (done, finished) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let _done = done;
                body()
            })
            .map_err(|e| ServerError::Thread(name, e))?;
        Ok(DeviceServer {
            handle,
            socket,
            thread: Some(thread),
            finished,
        })
    }

    /// A view of the device for observers.
    pub fn handle(&self) -> &DeviceHandle {
        &self.handle
    }

    /// The socket it listens on (for VDUSE, the device node).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Waits for the device thread to finish (after the shutdown signal was raised).
    pub fn join(self) {
        self.join_by(None);
    }

    /// Waits for the device thread to finish, but not past `deadline`: a thread that
    /// is stuck (a datapath wedged on a frontend's fd) is left behind, logged, and
    /// ends with the process. Returns whether the thread finished.
    pub fn join_by(mut self, deadline: Option<Instant>) -> bool {
        let ended = match deadline {
            None => true,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                matches!(
                    self.finished.recv_timeout(left),
                    Err(mpsc::RecvTimeoutError::Disconnected) | Ok(())
                )
            }
        };
        if !ended {
            error!(device = self.handle.name(), socket = %self.socket.display(),
                   "device thread did not stop in time; leaving it behind");
            return false;
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                error!(device = self.handle.name(), "device thread panicked");
            }
        }
        true
    }
}

fn serve(mut device: Device, listener: UnixListener, path: &Path, shutdown: Shutdown) {
    loop {
        match poll_readable(&[listener.as_raw_fd(), shutdown.as_raw_fd()], -1) {
            Ok(r) if r[1] => break,
            Ok(r) if r[0] => {}
            Ok(_) => continue,
            Err(e) => {
                error!(device = device.name(), error = %e, "poll failed; device stops");
                break;
            }
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(device = device.name(), error = %e, "accept failed");
                continue;
            }
        };
        info!(device = device.name(), "frontend connected");
        let reason = serve_stream(&mut device, stream, &shutdown, None).reason;
        info!(device = device.name(), %reason, "frontend disconnected; datapath stopped, memory released");
        if shutdown.is_raised() {
            break;
        }
    }
    // Only remove the socket if it is still ours (a later daemon may have replaced it).
    let _ = std::fs::remove_file(path);
    info!(device = device.name(), "device stopped");
}

/// How a connection to a frontend ended.
#[derive(Debug)]
pub(crate) struct Ended {
    /// Why, for the log.
    pub reason: String,
    /// Requests the frontend sent before it ended.
    pub requests: u64,
}

/// Serves one frontend on `stream` until it disconnects, breaks the protocol, or
/// shutdown. With `first_request`, a frontend that sends nothing for that long after
/// the connection is made is given up on (a client's peer that never accepted it).
pub(crate) fn serve_stream(
    device: &mut Device,
    stream: UnixStream,
    shutdown: &Shutdown,
    first_request: Option<std::time::Duration>,
) -> Ended {
    let conn = match Connection::new(stream) {
        Ok(conn) => conn,
        Err(e) => {
            return Ended {
                reason: format!("socket setup failed: {e}"),
                requests: 0,
            }
        }
    };
    // A panic while serving (a bug of ours or of a datapath, triggered by what this
    // frontend sent) costs this connection, not the device: the device is reset as
    // after a disconnect and waits for the next frontend; its status says why.
    let served = catch_unwind(AssertUnwindSafe(|| {
        serve_connection(device, conn, shutdown, first_request)
    }));
    served.unwrap_or_else(|panic| {
        let what = panic_text(panic.as_ref());
        error!(device = device.name(), panic = %what,
               "device thread panicked serving a frontend; the connection is closed and the device reset");
        device.record_error(format!(
            "the device thread panicked serving a frontend ({what}); the connection was closed"
        ));
        if catch_unwind(AssertUnwindSafe(|| device.disconnected())).is_err() {
            error!(
                device = device.name(),
                "resetting the device after a panic panicked too"
            );
        }
        Ended {
            reason: format!("device thread panicked: {what}"),
            requests: 0,
        }
    })
}

/// The message of a panic payload (`&str` or `String`), or a placeholder.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_owned())
}

fn serve_connection(
    device: &mut Device,
    mut conn: Connection,
    shutdown: &Shutdown,
    first_request: Option<std::time::Duration>,
) -> Ended {
    let attention = device.attention_fd();
    let mut session = Session::new(device);
    let mut requests = 0u64;
    let first_ms = first_request.map_or(-1, |d| i32::try_from(d.as_millis()).unwrap_or(i32::MAX));
    let reason = loop {
        let mut fds = vec![conn.stream().as_raw_fd(), shutdown.as_raw_fd(), attention];
        let backend_at = session.backend_fd().map(|fd| {
            fds.push(fd);
            fds.len() - 1
        });
        let link_at = session.device().link_event_fd().map(|fd| {
            fds.push(fd);
            fds.len() - 1
        });
        let ready = |r: &[bool], at: Option<usize>| at.is_some_and(|i| r[i]);
        let timeout = if requests == 0 { first_ms } else { -1 };
        match poll_readable(&fds, timeout) {
            Ok(r) if r[1] => break "daemon shutting down".to_owned(),
            Ok(r) if r[2] => match session.device_mut().attend() {
                // vhost-user has no "needs reset" for a frontend without STATUS: the
                // connection closes, and the frontend reconnects with new memory.
                Some(why) => break why,
                None => {
                    session.sync_host_notifiers();
                    continue;
                }
            },
            Ok(r) if ready(&r, backend_at) => {
                session.read_backend_answers();
                continue;
            }
            Ok(r) if ready(&r, link_at) => {
                // QEMU keeps a vhost-user net device's config space itself and has no
                // way to hear a change: logged and shown in the status only.
                if session.device_mut().poll_link().is_some() {
                    debug!(
                        device = session.device().name(),
                        "link change not passed on: vhost-user net has no config-change path"
                    );
                }
                continue;
            }
            Ok(r) if r[0] => {}
            Ok(_) if requests == 0 && timeout >= 0 => {
                break format!("the frontend sent no request within {timeout} ms of connecting")
            }
            Ok(_) => continue,
            Err(e) => break format!("poll failed: {e}"),
        }
        let msg = match conn.recv_or_abort(shutdown.as_raw_fd()) {
            Ok(m) => {
                requests += 1;
                m
            }
            Err(WireError::Disconnected) => break "closed by the frontend".to_owned(),
            Err(e) => break error_chain(&e),
        };
        let header = msg.header;
        let wants_ack = session.wants_ack(&msg);
        let sent = match session.handle(msg) {
            Ok(Reply::Payload(p)) => conn.reply(&header, &p),
            Ok(Reply::Ack) if wants_ack => conn.reply(&header, &0u64.to_ne_bytes()),
            Ok(Reply::Ack) => Ok(()),
            Err(e) => {
                let text = error_chain(&e);
                warn!(device = session.device().name(), error = %text, "request refused");
                session.device().record_error(text);
                if wants_ack {
                    conn.reply(&header, &1u64.to_ne_bytes())
                } else if header.request == FrontendReq::SET_LOG_BASE as u32 {
                    // QEMU waits for this reply whatever happened: an empty one. The
                    // SET_FEATURES with LOG_ALL that follows is refused without a log,
                    // which fails the migration.
                    conn.reply(&header, &[])
                } else {
                    Ok(())
                }
            }
        };
        if let Err(e) = sent {
            break format!("sending a reply failed: {}", error_chain(&e));
        }
        // Only now, with the reply out: the frontend may be waiting for it.
        session.sync_host_notifiers();
    };
    session.close();
    Ended { reason, requests }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
