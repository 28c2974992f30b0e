//! The Prometheus endpoint: `GET /metrics` on `metrics_listen`, in the text exposition
//! format 0.0.4, served by a small HTTP/1.1 responder on a plain `TcpListener`.
//!
//! Every metric is described in `docs/metrics.md`. Names follow Prometheus'
//! conventions: a `vdpad_` prefix, base units, `_total` for counters, labels for the
//! dimensions (`device`, `queue`, `direction`, `reason`, `kind`, `state`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, error, info, warn};
use vdpa::server::Shutdown;

use crate::control::handlers::all_views;
use crate::control::protocol::{DeviceStats, DeviceView};
use crate::daemon::Daemon;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Longest request head (request line and headers) accepted.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A client must send its request head within this long.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A client must take the answer within this long.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most scrapes served at once; more are answered 503 at once.
pub const MAX_CLIENTS: usize = 4;

mod exposition;

pub use exposition::{escape_label, render, ProcessInfo};

/// The metrics endpoint, served by its own thread until stopped.
pub struct MetricsServer {
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `addr` and serves the metrics of `daemon`.
    pub fn start(addr: SocketAddr, daemon: Arc<Mutex<Daemon>>) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("metrics endpoint {addr}: {e}")))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shutdown = Shutdown::new()?;
        let stop = shutdown.clone();
        let process = ProcessInfo {
            start_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        };
        let thread = std::thread::Builder::new()
            .name("vdpad-metrics".into())
            .spawn(move || accept_loop(listener, daemon, process, stop))?;
        info!(listen = %addr, "metrics endpoint listening (GET /metrics)");
        Ok(MetricsServer {
            shutdown,
            thread: Some(thread),
        })
    }

    /// Stops listening and waits for scrapes in progress (bounded by the timeouts).
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(t) = self.thread.take() {
            self.shutdown.raise();
            if t.join().is_err() {
                error!("metrics thread panicked");
            }
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

fn accept_loop(
    listener: TcpListener,
    daemon: Arc<Mutex<Daemon>>,
    process: ProcessInfo,
    stop: Shutdown,
) {
    let mut clients: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs that outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            error!(error = %e, "metrics endpoint: poll failed; the endpoint stops");
            break;
        }
        if fds[1].revents != 0 {
            break;
        }
        clients.retain(|c| !c.is_finished());
        if fds[0].revents == 0 {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                warn!(error = %e, "metrics endpoint: accept failed");
                continue;
            }
        };
        if clients.len() >= MAX_CLIENTS {
            let mut stream = stream;
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = respond(
                &mut stream,
                503,
                "Service Unavailable",
                "text/plain",
                b"busy\n",
                false,
            );
            continue;
        }
        let daemon = daemon.clone();
        match std::thread::Builder::new()
            .name("vdpad-scrape".into())
            .spawn(move || serve(stream, peer, &daemon, process))
        {
            Ok(t) => clients.push(t),
            Err(e) => warn!(error = %e, "metrics endpoint: cannot start a thread"),
        }
    }
    for c in clients {
        let _ = c.join();
    }
}

/// An error answer to a request: status line, and a short plain-text body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status code.
    pub status: u16,
    /// Reason phrase of the status line.
    pub reason: &'static str,
    /// The plain-text body.
    pub body: &'static str,
    /// Whether to send the head only (the request was `HEAD`).
    pub head_only: bool,
}

impl Rejection {
    const fn new(status: u16, reason: &'static str, body: &'static str) -> Rejection {
        Rejection {
            status,
            reason,
            body,
            head_only: false,
        }
    }
}

/// What the bytes a client has sent so far ask for (see [`parse_head`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadParse {
    /// The request head is not complete yet: read more.
    Incomplete,
    /// A good request for the metrics; `head_only` for `HEAD`.
    Metrics {
        /// The request was `HEAD`: answer without a body.
        head_only: bool,
    },
    /// A request to refuse with this answer.
    Reject(Rejection),
}

const BAD_REQUEST: Rejection = Rejection::new(400, "Bad Request", "Bad Request\n");

/// Decides what a request asks for from the bytes received so far: a pure function of
/// `buf`, so that it can be tested (and fuzzed) without a socket. The head ends at the
/// first empty line (CRLF or bare LF); a head longer than [`MAX_REQUEST_BYTES`] is
/// refused with 431, one that is not UTF-8 or has no method, target and version with
/// 400, a version other than HTTP/1.x with 505, a method other than GET or HEAD with
/// 405, and a path other than `/metrics` with 404.
pub fn parse_head(buf: &[u8]) -> HeadParse {
    let Some(end) = find_head_end(buf) else {
        if buf.len() > MAX_REQUEST_BYTES {
            return HeadParse::Reject(Rejection::new(
                431,
                "Request Header Fields Too Large",
                "Request Header Fields Too Large\n",
            ));
        }
        return HeadParse::Incomplete;
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return HeadParse::Reject(BAD_REQUEST);
    };
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return HeadParse::Reject(BAD_REQUEST);
    };
    if !version.starts_with("HTTP/1.") {
        return HeadParse::Reject(Rejection::new(
            505,
            "HTTP Version Not Supported",
            "HTTP/1.x only\n",
        ));
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return HeadParse::Reject(Rejection::new(
            405,
            "Method Not Allowed",
            "GET or HEAD only\n",
        ));
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path != "/metrics" {
        return HeadParse::Reject(Rejection {
            head_only,
            ..Rejection::new(404, "Not Found", "Not Found: the metrics are at /metrics\n")
        });
    }
    HeadParse::Metrics { head_only }
}

/// Reads the request head, bounded in size and time, and decides what it asks for:
/// `Ok(head_only)` for a good request, `Err` with the answer for a bad one.
fn read_head(stream: &mut TcpStream) -> Result<bool, Rejection> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let timeout = Rejection::new(408, "Request Timeout", "Request Timeout\n");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match parse_head(&buf) {
            HeadParse::Incomplete => {}
            HeadParse::Metrics { head_only } => return Ok(head_only),
            HeadParse::Reject(r) => return Err(r),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout);
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => return Err(BAD_REQUEST),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timeout)
            }
            Err(_) => return Err(BAD_REQUEST),
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

fn serve(mut stream: TcpStream, peer: SocketAddr, daemon: &Mutex<Daemon>, process: ProcessInfo) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let head_only = match read_head(&mut stream) {
        Ok(head_only) => head_only,
        Err(r) => {
            debug!(%peer, status = r.status, "metrics endpoint: bad request");
            let _ = respond(
                &mut stream,
                r.status,
                r.reason,
                "text/plain",
                r.body.as_bytes(),
                r.head_only,
            );
            return;
        }
    };
    let (views, stats): (Vec<DeviceView>, Vec<DeviceStats>) = all_views(daemon).into_iter().unzip();
    let body = render(process, &views, &stats);
    if let Err(e) = respond(
        &mut stream,
        200,
        "OK",
        CONTENT_TYPE,
        body.as_bytes(),
        head_only,
    ) {
        debug!(%peer, error = %e, "metrics endpoint: client did not take the answer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_classified() {
        let get = |h: &[u8]| parse_head(h);
        assert_eq!(
            get(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            HeadParse::Metrics { head_only: false }
        );
        assert_eq!(
            get(b"HEAD /metrics?x=1 HTTP/1.0\n\n"),
            HeadParse::Metrics { head_only: true }
        );
        assert_eq!(get(b"GET /metrics HTTP/1.1\r\n"), HeadParse::Incomplete);
        let status = |h: &[u8]| match parse_head(h) {
            HeadParse::Reject(r) => r.status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status(b"GET /\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status(b"POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status(b"GET /metrics HTTP/2\r\n\r\n"), 505);
        assert_eq!(status(b"GET /\xff HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(&[b'a'; MAX_REQUEST_BYTES + 1]), 431);
    }

    #[test]
    fn head_end_is_found_with_crlf_or_lf() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.0\n\n"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
