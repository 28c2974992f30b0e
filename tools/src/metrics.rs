//! The Prometheus endpoint: `GET /metrics` on `metrics_listen`, in the text exposition
//! format 0.0.4, served by a small HTTP/1.1 responder on a plain `TcpListener`.
//!
//! Every metric is described in `docs/metrics.md`. Names follow Prometheus'
//! conventions: a `vdpad_` prefix, base units, `_total` for counters, labels for the
//! dimensions (`device`, `queue`, `direction`, `reason`, `kind`, `state`).

use std::fmt::{Display, Write as _};
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

/// Connection states, in the order `vdpad_device_state` lists them.
const STATES: [&str; 4] = ["waiting", "connected", "running", "failed"];

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Writes metric families in the text format.
struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family: its HELP and TYPE lines.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// What the endpoint knows besides the devices.
#[derive(Clone, Copy, Debug)]
pub struct ProcessInfo {
    /// When the daemon started, in seconds since the Unix epoch.
    pub start_time: f64,
}

/// Renders every metric for `devices` (with their counters in `stats`, same order).
pub fn render(process: ProcessInfo, devices: &[DeviceView], stats: &[DeviceStats]) -> String {
    let mut e = Exposition { out: String::new() };
    e.family(
        "vdpad_build_info",
        "gauge",
        "vdpad build information; always 1.",
    );
    e.sample(
        "vdpad_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    e.family(
        "vdpad_start_time_seconds",
        "gauge",
        "Start time of the daemon since the Unix epoch, in seconds.",
    );
    e.sample(
        "vdpad_start_time_seconds",
        &[],
        format!("{:.3}", process.start_time),
    );
    e.family(
        "vdpad_devices",
        "gauge",
        "Devices configured: served, or failed to start and retried.",
    );
    e.sample("vdpad_devices", &[], devices.len());

    e.family(
        "vdpad_device_info",
        "gauge",
        "Device description; always 1. mode is offload or software, datapath what serves it now, socket_role server (vdpad listens) or client (vdpad connects).",
    );
    for d in devices {
        let pci = d.pci.as_ref().map(|p| p.address.as_str()).unwrap_or("");
        e.sample(
            "vdpad_device_info",
            &[
                ("device", &d.name),
                ("mode", &d.mode),
                ("datapath", &d.datapath),
                ("backend", &d.backend),
                ("pci", pci),
                ("socket", &d.socket),
                ("socket_role", &d.socket_role),
            ],
            1,
        );
    }
    e.family(
        "vdpad_device_state",
        "gauge",
        "Device state: 1 for the current state (waiting, connected, running; failed: could not start, retried), 0 for the others.",
    );
    for d in devices {
        for s in STATES {
            e.sample(
                "vdpad_device_state",
                &[("device", &d.name), ("state", s)],
                u8::from(d.state == s),
            );
        }
    }
    e.family(
        "vdpad_device_start_failures_total",
        "counter",
        "Attempts to start the device that failed (it is retried with backoff while failed).",
    );
    for d in devices {
        e.sample(
            "vdpad_device_start_failures_total",
            &[("device", &d.name)],
            d.start_failure.as_ref().map_or(0, |f| f.attempts),
        );
    }
    e.family(
        "vdpad_device_connections_total",
        "counter",
        "Frontend connections accepted since the device started.",
    );
    for d in devices {
        e.sample(
            "vdpad_device_connections_total",
            &[("device", &d.name)],
            d.connections,
        );
    }
    e.family(
        "vdpad_device_queue_pairs",
        "gauge",
        "Queue pairs offered to the guest.",
    );
    for d in devices {
        e.sample(
            "vdpad_device_queue_pairs",
            &[("device", &d.name)],
            d.queue_pairs,
        );
    }
    e.family(
        "vdpad_device_running_queue_pairs",
        "gauge",
        "Queue pairs running now.",
    );
    for d in devices {
        e.sample(
            "vdpad_device_running_queue_pairs",
            &[("device", &d.name)],
            d.running_pairs.len(),
        );
    }
    e.family(
        "vdpad_device_fallback",
        "gauge",
        "1 if the device left offload for the software datapath, else 0.",
    );
    for d in devices {
        e.sample(
            "vdpad_device_fallback",
            &[("device", &d.name)],
            u8::from(d.fallback_reason.is_some()),
        );
    }
    e.family(
        "vdpad_device_feature_acked",
        "gauge",
        "Virtio features the current frontend acked; one series per feature, always 1.",
    );
    for d in devices {
        for f in &d.features {
            e.sample(
                "vdpad_device_feature_acked",
                &[("device", &d.name), ("feature", f)],
                1,
            );
        }
    }

    type Counter = fn(&crate::control::protocol::QueueView) -> u64;
    let counters: [(&str, &str, Counter); 9] = [
        ("vdpad_queue_packets_total", "Frames completed on the queue.", |q| q.packets),
        (
            "vdpad_queue_bytes_total",
            "Frame bytes completed on the queue, without the virtio-net header.",
            |q| q.bytes,
        ),
        (
            "vdpad_queue_kicks_total",
            "Notifications (kicks) received from the guest.",
            |q| q.kicks,
        ),
        (
            "vdpad_queue_interrupts_total",
            "Interrupts (call eventfd signals) sent to the guest.",
            |q| q.interrupts,
        ),
        (
            "vdpad_queue_interrupts_suppressed_total",
            "Interrupts not sent because the guest asked not to get them (EVENT_IDX or NO_INTERRUPT).",
            |q| q.interrupts_suppressed,
        ),
        (
            "vdpad_queue_sleeps_total",
            "Times the queue pair's worker re-armed notifications and slept (RX ring only).",
            |q| q.sleeps,
        ),
        (
            "vdpad_queue_bursts_total",
            "Bursts processed (used index publications).",
            |q| q.bursts,
        ),
        (
            "vdpad_queue_rx_no_buffer_total",
            "Times a frame waited because the guest had posted no receive buffer.",
            |q| q.rx_no_buffer,
        ),
        (
            "vdpad_queue_throttled_total",
            "Times the queue waited for its rate limit's tokens.",
            |q| q.throttled,
        ),
    ];
    for (name, help, get) in counters {
        e.family(name, "counter", help);
        for s in stats {
            for q in &s.queues {
                let queue = q.queue.to_string();
                e.sample(
                    name,
                    &[
                        ("device", &s.name),
                        ("queue", &queue),
                        ("direction", &q.direction),
                    ],
                    get(q),
                );
            }
        }
    }
    e.family(
        "vdpad_queue_drops_total",
        "counter",
        "Frames dropped, by reason (rx_buffer_too_small, oversized, backend, backend_queue, too_many_segments, spoofed_mac, spoofed_ip, spoofed_arp, vlan).",
    );
    for s in stats {
        for q in &s.queues {
            let queue = q.queue.to_string();
            for (reason, v) in &q.drops {
                e.sample(
                    "vdpad_queue_drops_total",
                    &[
                        ("device", &s.name),
                        ("queue", &queue),
                        ("direction", &q.direction),
                        ("reason", reason),
                    ],
                    v,
                );
            }
        }
    }
    e.family(
        "vdpad_queue_bad_descriptors_total",
        "counter",
        "Descriptor chains the guest posted that were invalid, by kind; each was skipped.",
    );
    for s in stats {
        for q in &s.queues {
            let queue = q.queue.to_string();
            for (kind, v) in &q.bad_descriptors {
                e.sample(
                    "vdpad_queue_bad_descriptors_total",
                    &[
                        ("device", &s.name),
                        ("queue", &queue),
                        ("direction", &q.direction),
                        ("kind", kind),
                    ],
                    v,
                );
            }
        }
    }
    e.family(
        "vdpad_queue_throttled_seconds_total",
        "counter",
        "Time the queue waited for its rate limit's tokens (vdpactl rate, tx_pps/tx_bps/rx_pps/rx_bps).",
    );
    for s in stats {
        for q in &s.queues {
            let queue = q.queue.to_string();
            e.sample(
                "vdpad_queue_throttled_seconds_total",
                &[
                    ("device", &s.name),
                    ("queue", &queue),
                    ("direction", &q.direction),
                ],
                q.throttled_seconds,
            );
        }
    }
    e.family(
        "vdpad_queue_faults_total",
        "counter",
        "Events that stopped or degraded a queue, by kind (kick_fd, guest_memory, worker_panic); a pair's events count on its RX queue.",
    );
    for s in stats {
        for q in &s.queues {
            let queue = q.queue.to_string();
            for (kind, v) in &q.faults {
                e.sample(
                    "vdpad_queue_faults_total",
                    &[
                        ("device", &s.name),
                        ("queue", &queue),
                        ("direction", &q.direction),
                        ("kind", kind),
                    ],
                    v,
                );
            }
        }
    }
    e.out
}

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
    use crate::control::protocol::{PciView, QueueView};

    fn device() -> (DeviceView, DeviceStats) {
        let view = DeviceView {
            name: "vm\"1\\x\n".into(),
            mode: "software".into(),
            mode_reason: "r".into(),
            datapath: "software/loopback".into(),
            backend: "loopback".into(),
            pci: Some(PciView {
                address: "0000:00:03.0".into(),
                name: None,
            }),
            socket: "/run/vdpad/vm1.sock".into(),
            socket_role: "server".into(),
            state: "running".into(),
            peer: None,
            connections: 2,
            queue_pairs: 1,
            running_pairs: vec![0],
            acked_features: "0x1".into(),
            features: vec!["VERSION_1".into()],
            mac: None,
            mtu: None,
            fallback_reason: None,
            last_error: None,
            start_failure: None,
        };
        let q = QueueView {
            queue: 1,
            pair: 0,
            direction: "tx".into(),
            packets: 7,
            bytes: 448,
            kicks: 1,
            interrupts: 1,
            interrupts_suppressed: 0,
            bursts: 1,
            rx_no_buffer: 0,
            sleeps: 0,
            drops: [("oversized".to_string(), 3)].into_iter().collect(),
            drops_total: 3,
            bad_descriptors: [("address".to_string(), 0)].into_iter().collect(),
            bad_descriptors_total: 0,
            faults: [("guest_memory".to_string(), 1)].into_iter().collect(),
            throttled: 2,
            throttled_seconds: 0.5,
            packets_per_kick: Some(7.0),
            packets_per_interrupt: Some(7.0),
        };
        let stats = DeviceStats {
            name: view.name.clone(),
            state: "running".into(),
            datapath: view.datapath.clone(),
            connections: 2,
            peer: None,
            queues: vec![q],
        };
        (view, stats)
    }

    #[test]
    fn exposition_has_help_type_and_escaped_labels() {
        let (v, s) = device();
        let text = render(ProcessInfo { start_time: 1.5 }, &[v], &[s]);
        let esc = r#"device="vm\"1\\x\n""#;
        assert!(
            text.contains(&format!(
                "vdpad_queue_packets_total{{{esc},queue=\"1\",direction=\"tx\"}} 7\n"
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "vdpad_queue_drops_total{{{esc},queue=\"1\",direction=\"tx\",reason=\"oversized\"}} 3\n"
        )));
        assert!(text.contains(&format!(
            "vdpad_queue_faults_total{{{esc},queue=\"1\",direction=\"tx\",kind=\"guest_memory\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "vdpad_queue_throttled_seconds_total{{{esc},queue=\"1\",direction=\"tx\"}} 0.5\n"
        )));
        assert!(text.contains(&format!(
            "vdpad_queue_throttled_total{{{esc},queue=\"1\",direction=\"tx\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "vdpad_device_state{{{esc},state=\"running\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "vdpad_device_state{{{esc},state=\"waiting\"}} 0\n"
        )));
        assert!(text.contains("# TYPE vdpad_device_connections_total counter\n"));
        assert!(text.contains("vdpad_start_time_seconds 1.500\n"));
        // Every sample belongs to the family declared last before it.
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_owned();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, family, "{line}");
            }
        }
    }

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
