//! The control protocol, version 1: JSON lines over a Unix stream socket.
//!
//! A client writes one request object per line and reads one response object per line;
//! it may send several requests on one connection, one at a time. Every request names
//! the protocol version it speaks and a command:
//!
//! ```text
//! {"version":1,"command":"list"}
//! {"version":1,"command":"stats","device":"vm1-net0","queue":0}
//! {"version":1,"command":"add","config":"[[device]]\nname = \"vm2-net0\"\n","origin":"vm2.toml"}
//! {"version":1,"command":"remove","device":"vm2-net0"}
//! {"version":1,"command":"log-level","level":"debug"}
//! {"version":1,"command":"rate","device":"vm1-net0","tx_pps":100000}
//! {"version":1,"command":"version"}
//! ```
//!
//! Every response has `"ok"`; a refused request has `"ok":false`, an `"error"` message
//! for people and a stable `"code"` for scripts:
//!
//! ```text
//! {"ok":true,"devices":[...]}
//! {"ok":false,"code":"not_found","error":"no device named \"vm9\""}
//! ```
//!
//! Compatibility: a later version may add commands, request fields and response
//! fields; clients must ignore response fields they do not know. Anything that would
//! change the meaning of an existing field gets a new version number.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this daemon and this client speak.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line accepted, newline included. `add` snippets are the largest
/// requests; a configuration snippet of a few devices is a few KiB.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Every command, in the order `docs/operations.md` describes them.
pub const COMMANDS: [&str; 7] = [
    "list",
    "stats",
    "add",
    "remove",
    "log-level",
    "rate",
    "version",
];

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Every device with its mode, datapath, connection state and features.
    List,
    /// Per-queue counters of every device, or of one device (and one queue).
    Stats {
        /// Only this device.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// Only this queue (vhost-user ring index: RX of pair i is 2i, TX is 2i+1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue: Option<u16>,
    },
    /// Adds the devices of a configuration snippet (`[[device]]` tables).
    Add {
        /// The snippet's TOML text.
        config: String,
        /// What to call the snippet in error messages (usually its file name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<String>,
        /// Also write each new device to a drop-in file, `<include_dir>/<name>.toml`,
        /// so that it survives a SIGHUP reload and a restart.
        #[serde(default, skip_serializing_if = "is_false")]
        persist: bool,
    },
    /// Stops and removes a device; a connected frontend is disconnected.
    Remove {
        /// The device's name.
        device: String,
        /// Also delete the device's drop-in file, `<include_dir>/<name>.toml`.
        #[serde(default, skip_serializing_if = "is_false")]
        persist: bool,
    },
    /// Replaces the daemon's log filter.
    LogLevel {
        /// A level (`error` ... `trace`) or a `tracing` filter directive.
        level: String,
    },
    /// Changes a device's rate limits while it runs (fields left out keep their
    /// value; 0 is unlimited) and answers with the limits now in effect. Not kept
    /// across a restart or reload: the configuration file's values apply then.
    Rate {
        /// The device's name.
        device: String,
        /// Guest-to-host packets per second.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tx_pps: Option<u64>,
        /// Guest-to-host bits per second.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tx_bps: Option<u64>,
        /// Host-to-guest packets per second.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rx_pps: Option<u64>,
        /// Host-to-guest bits per second.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rx_bps: Option<u64>,
        /// Bucket depth in microseconds at the limit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        burst_us: Option<u64>,
    },
    /// The daemon's version and protocol version.
    Version,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Command {
    /// The command's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Command::List => "list",
            Command::Stats { .. } => "stats",
            Command::Add { .. } => "add",
            Command::Remove { .. } => "remove",
            Command::LogLevel { .. } => "log-level",
            Command::Rate { .. } => "rate",
            Command::Version => "version",
        }
    }

    /// Whether the command changes the daemon (logged at `info`, not `debug`).
    pub fn changes_state(&self) -> bool {
        matches!(
            self,
            Command::Add { .. }
                | Command::Remove { .. }
                | Command::LogLevel { .. }
                | Command::Rate { .. }
        )
    }
}

/// One request line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Request {
    /// Protocol version; must be [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The command and its arguments.
    #[serde(flatten)]
    pub command: Command,
}

impl Request {
    /// A request of the current protocol version.
    pub fn new(command: Command) -> Request {
        Request {
            version: PROTOCOL_VERSION,
            command,
        }
    }

    /// The request as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("a request always serializes");
        s.push('\n');
        s
    }

    /// Parses one request line. The version is checked before anything else, so a
    /// client speaking a later version learns that first.
    pub fn parse(line: &str) -> Result<Request, ProtocolError> {
        let value: Value = serde_json::from_str(line).map_err(|e| {
            ProtocolError::new(
                ErrorCode::BadJson,
                format!("the request is not valid JSON ({e}); send one JSON object per line"),
            )
        })?;
        let Value::Object(mut obj) = value else {
            return Err(ProtocolError::new(
                ErrorCode::BadRequest,
                "the request must be a JSON object, e.g. {\"version\":1,\"command\":\"list\"}",
            ));
        };
        let version = match obj.remove("version") {
            None => {
                return Err(ProtocolError::new(
                    ErrorCode::UnsupportedVersion,
                    format!("the request has no \"version\"; add \"version\":{PROTOCOL_VERSION}"),
                ))
            }
            Some(v) => v,
        };
        if version.as_u64() != Some(u64::from(PROTOCOL_VERSION)) {
            return Err(ProtocolError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {version} is not supported; this daemon speaks version {PROTOCOL_VERSION}"
                ),
            ));
        }
        match obj.get("command") {
            None => {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownCommand,
                    format!(
                        "the request has no \"command\"; known commands: {}",
                        COMMANDS.join(", ")
                    ),
                ))
            }
            Some(Value::String(c)) if COMMANDS.contains(&c.as_str()) => {}
            Some(other) => {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownCommand,
                    format!(
                        "unknown command {other}; known commands: {}",
                        COMMANDS.join(", ")
                    ),
                ))
            }
        }
        let name = obj["command"].as_str().unwrap_or_default().to_owned();
        // serde's `deny_unknown_fields` does not cover variants without fields.
        if matches!(name.as_str(), "list" | "version") {
            if let Some(extra) = obj.keys().find(|k| *k != "command") {
                return Err(ProtocolError::new(
                    ErrorCode::BadRequest,
                    format!("command \"{name}\": unknown field `{extra}`, it takes no arguments"),
                ));
            }
        }
        let command: Command = serde_json::from_value(Value::Object(obj)).map_err(|e| {
            ProtocolError::new(ErrorCode::BadRequest, format!("command \"{name}\": {e}"))
        })?;
        Ok(Request {
            version: PROTOCOL_VERSION,
            command,
        })
    }
}

/// Why a request was refused, for scripts. Serialized in snake case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not JSON.
    BadJson,
    /// Valid JSON, but not a valid request (wrong fields or types).
    BadRequest,
    /// The request is longer than [`MAX_REQUEST_BYTES`].
    TooLarge,
    /// The version is missing or not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// The command is missing or unknown.
    UnknownCommand,
    /// The named device (or queue) does not exist.
    NotFound,
    /// A configuration snippet or log filter is invalid; nothing changed.
    Invalid,
    /// The daemon tried and failed (e.g. a socket could not be created); nothing
    /// changed.
    Failed,
    /// The daemon is busy with too many clients; try again.
    Busy,
}

/// A refused request: a code and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    /// For scripts.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
}

impl ProtocolError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProtocolError {}

/// One response line. Which optional fields are present depends on the command.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not (when `ok` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why not, for scripts (when `ok` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// `list`, `add`: the devices (for `add`, the new ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceView>>,
    /// `stats`: counters per device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Vec<DeviceStats>>,
    /// `stats`: when the counters were read, in seconds on the daemon's monotonic
    /// clock (since it started); rates come from two samples' differences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_at: Option<f64>,
    /// `add`: the names of the devices added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<Vec<String>>,
    /// `remove`: the name of the device removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<String>,
    /// `add --persist`: the drop-in files written; `remove --persist`: the one deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persisted: Option<Vec<String>>,
    /// `log-level`: the filter now in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// `rate`: the device's limits now in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rates: Option<RateView>,
    /// `version`: the daemon's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_version: Option<String>,
    /// `version`: the protocol version the daemon speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
}

impl Response {
    /// A successful response with no data; fill in the fields of the command.
    pub fn ok() -> Response {
        Response {
            ok: true,
            ..Response::default()
        }
    }

    /// A refusal.
    pub fn refused(e: ProtocolError) -> Response {
        Response {
            ok: false,
            error: Some(e.message),
            code: Some(e.code),
            ..Response::default()
        }
    }

    /// The response as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("a response always serializes");
        s.push('\n');
        s
    }
}

/// A PCI function with its vendor and device names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciView {
    /// `DDDD:BB:DD.F`.
    pub address: String,
    /// Vendor and device name from the PCI ID database, when the function could be
    /// read.
    #[serde(default)]
    pub name: Option<String>,
}

/// One device as `list` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    /// Device name.
    pub name: String,
    /// `offload` or `software`; `none` for a device that has not started.
    pub mode: String,
    /// Why that mode was chosen.
    pub mode_reason: String,
    /// What serves the device now, e.g. `software/loopback` (after a fallback, the
    /// fallback).
    pub datapath: String,
    /// The software backend: `loopback`, `tap`, `tap:NAME`, `af_packet`,
    /// `af_packet:NETDEV`.
    pub backend: String,
    /// The device's PCI function, if it has one.
    pub pci: Option<PciView>,
    /// The vhost-user socket.
    pub socket: String,
    /// `server` (vdpad listens on `socket`) or `client` (the frontend listens, vdpad
    /// connects); `server` from daemons that predate client mode.
    #[serde(default = "server_role")]
    pub socket_role: String,
    /// `waiting` (no frontend), `connected` or `running` (a queue pair runs); `failed`
    /// for a device that could not start and is retried (see `start_failure`).
    pub state: String,
    /// Client role: the connection to the frontend's socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerView>,
    /// Frontend connections accepted since the device started.
    pub connections: u64,
    /// Queue pairs offered.
    pub queue_pairs: u16,
    /// Queue pairs running now.
    pub running_pairs: Vec<u16>,
    /// Virtio features the frontend acked, as a hexadecimal string (`0x...`).
    pub acked_features: String,
    /// Names of the acked features.
    pub features: Vec<String>,
    /// MAC address offered, if configured.
    pub mac: Option<String>,
    /// MTU offered, if configured.
    pub mtu: Option<u16>,
    /// Why the device left offload for software, if it did.
    pub fallback_reason: Option<String>,
    /// The offload NIC under the device reports its link down (absent when up).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link_down: bool,
    /// The last error a frontend caused, if any.
    pub last_error: Option<String>,
    /// Start attempts that failed: for a `failed` device, the reason and when it is
    /// tried again; for a running one, how many attempts failed before it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_failure: Option<StartFailureView>,
    /// A VDUSE device: its vDPA bus driver and what that made of it
    /// (`vhost_vdpa: /dev/vhost-vdpa-0`, `virtio_vdpa: network interface eth1`), or why
    /// it is not attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vdpa_attach: Option<String>,
    /// The dirty log of a live migration, once the frontend shared one on the current
    /// connection (absent before and from daemons that predate migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationView>,
}

/// A device's part in a live migration: whether it logs the guest pages it writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationView {
    /// The frontend acked VHOST_F_LOG_ALL: a migration runs and every write into
    /// guest memory is marked in the log.
    pub logging: bool,
    /// Size of the shared log in bytes (one bit per 4 KiB guest page).
    pub log_bytes: u64,
    /// Pages this device marked dirty that were not marked yet.
    pub pages_marked: u64,
    /// Pages beyond the end of the log that could not be marked (should stay 0).
    pub outside_log: u64,
    /// An offload device with a software fallback: the migrations its software
    /// datapath relayed (`None` for a device that never relays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayView>,
}

/// How an offload device served its migrations: the software fallback takes the
/// rings while a migration logs (the NIC cannot log what it writes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayView {
    /// A relay runs now.
    pub relaying: bool,
    /// Migrations relayed since the device started.
    pub relays: u64,
    /// Time spent relaying, in milliseconds, the running relay included.
    pub relay_ms: u64,
}

fn server_role() -> String {
    "server".to_owned()
}

/// A client-mode device's connection to the socket its frontend listens on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    /// `connected`, or `waiting` (for the peer: the next attempt is due in
    /// `retry_in_seconds`).
    pub state: String,
    /// Connection attempts since the device started.
    pub attempts: u64,
    /// Attempts that failed since the last good connection.
    pub failed_attempts: u64,
    /// Why the last attempt failed, or why the last connection ended.
    pub last_error: Option<String>,
    /// Seconds until the next attempt, while waiting.
    pub retry_in_seconds: Option<f64>,
}

/// Why a device could not start, and its retries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartFailureView {
    /// The last attempt's error (`null` once the device runs).
    pub error: Option<String>,
    /// Attempts that failed.
    pub attempts: u32,
    /// Seconds until the next attempt (`null` once the device runs).
    pub retry_in_seconds: Option<f64>,
}

/// The counters of one device (`stats`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceStats {
    /// Device name.
    pub name: String,
    /// Connection state, as in [`DeviceView::state`].
    pub state: String,
    /// What serves the device now.
    pub datapath: String,
    /// Frontend connections accepted since the device started.
    pub connections: u64,
    /// Client role: the connection to the frontend's socket, as in
    /// [`DeviceView::peer`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerView>,
    /// Per-queue counters, by ring index.
    pub queues: Vec<QueueView>,
}

/// The counters of one virtqueue. Counters only grow while the device exists; a
/// datapath change (fallback) starts them again from zero.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueView {
    /// vhost-user ring index (RX of pair i is 2i, TX is 2i+1).
    pub queue: u16,
    /// Queue pair.
    pub pair: u16,
    /// `rx` (device to guest) or `tx` (guest to device).
    pub direction: String,
    /// Frames completed.
    pub packets: u64,
    /// Frame bytes completed (without the virtio-net header).
    pub bytes: u64,
    /// Guest notifications received.
    pub kicks: u64,
    /// Interrupts sent to the guest.
    pub interrupts: u64,
    /// Interrupts the guest asked not to get.
    pub interrupts_suppressed: u64,
    /// Used-index publications.
    pub bursts: u64,
    /// Times a frame waited because the guest had posted no RX buffer.
    pub rx_no_buffer: u64,
    /// Times the pair's worker slept waiting for a kick or the backend (RX ring only).
    #[serde(default)]
    pub sleeps: u64,
    /// Drops by reason (every reason listed, zero or not).
    pub drops: BTreeMap<String, u64>,
    /// Sum of `drops`.
    pub drops_total: u64,
    /// Bad descriptor chains by kind (every kind listed).
    pub bad_descriptors: BTreeMap<String, u64>,
    /// Sum of `bad_descriptors`.
    pub bad_descriptors_total: u64,
    /// Events that stopped or degraded the queue, by kind (every kind listed:
    /// `kick_fd`, `guest_memory`, `worker_panic`; see `vdpa::QueueFault`). Events of a
    /// whole pair count on its RX queue. Absent (empty) from daemons that predate it.
    #[serde(default)]
    pub faults: BTreeMap<String, u64>,
    /// Periods the queue waited for its rate limit (absent from older daemons).
    #[serde(default)]
    pub throttled: u64,
    /// Seconds the queue waited for its rate limit.
    #[serde(default)]
    pub throttled_seconds: f64,
    /// Packets per guest notification, once there was one.
    pub packets_per_kick: Option<f64>,
    /// Packets per interrupt, once there was one.
    pub packets_per_interrupt: Option<f64>,
}

/// A device's rate limits (0: unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateView {
    /// Guest-to-host packets per second.
    pub tx_pps: u64,
    /// Guest-to-host bits per second.
    pub tx_bps: u64,
    /// Host-to-guest packets per second.
    pub rx_pps: u64,
    /// Host-to-guest bits per second.
    pub rx_bps: u64,
    /// Bucket depth in microseconds at the limit.
    pub burst_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(line: &str) -> ProtocolError {
        Request::parse(line).unwrap_err()
    }

    #[test]
    fn requests_round_trip() {
        for c in [
            Command::List,
            Command::Stats {
                device: Some("a".into()),
                queue: Some(1),
            },
            Command::Stats {
                device: None,
                queue: None,
            },
            Command::Add {
                config: "[[device]]\nname = \"x\"\n".into(),
                origin: Some("x.toml".into()),
                persist: false,
            },
            Command::Add {
                config: "[[device]]\nname = \"x\"\n".into(),
                origin: None,
                persist: true,
            },
            Command::Remove {
                device: "x".into(),
                persist: false,
            },
            Command::Remove {
                device: "x".into(),
                persist: true,
            },
            Command::LogLevel {
                level: "debug".into(),
            },
            Command::Version,
        ] {
            let line = Request::new(c.clone()).to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(Request::parse(&line).unwrap().command, c, "{line}");
            assert!(COMMANDS.contains(&c.name()));
        }
        assert_eq!(
            Request::new(Command::List).to_line(),
            "{\"version\":1,\"command\":\"list\"}\n"
        );
    }

    #[test]
    fn version_is_checked_first() {
        let e = parse_err(r#"{"version":2,"command":"nonsense"}"#);
        assert_eq!(e.code, ErrorCode::UnsupportedVersion);
        assert!(e.message.contains("version 2 is not supported"), "{e}");
        let e = parse_err(r#"{"command":"list"}"#);
        assert_eq!(e.code, ErrorCode::UnsupportedVersion);
        assert!(e.message.contains("\"version\":1"), "{e}");
        assert_eq!(
            parse_err(r#"{"version":"1","command":"list"}"#).code,
            ErrorCode::UnsupportedVersion
        );
    }

    #[test]
    fn unknown_commands_and_fields_are_named() {
        let e = parse_err(r#"{"version":1,"command":"reboot"}"#);
        assert_eq!(e.code, ErrorCode::UnknownCommand);
        assert!(
            e.message.contains("\"reboot\"") && e.message.contains("list, stats"),
            "{e}"
        );
        assert_eq!(
            parse_err(r#"{"version":1}"#).code,
            ErrorCode::UnknownCommand
        );
        let e = parse_err(r#"{"version":1,"command":"stats","devcie":"a"}"#);
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("devcie"), "{e}");
        let e = parse_err(r#"{"version":1,"command":"list","extra":1}"#);
        assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
        let e = parse_err(r#"{"version":1,"command":"remove"}"#);
        assert!(e.message.contains("device"), "{e}");
        assert_eq!(parse_err("not json").code, ErrorCode::BadJson);
        assert_eq!(parse_err("[1]").code, ErrorCode::BadRequest);
    }

    #[test]
    fn responses_round_trip_and_skip_absent_fields() {
        let r = Response::refused(ProtocolError::new(ErrorCode::NotFound, "no device"));
        assert_eq!(
            r.to_line(),
            "{\"ok\":false,\"error\":\"no device\",\"code\":\"not_found\"}\n"
        );
        let back: Response = serde_json::from_str(&r.to_line()).unwrap();
        assert_eq!(back, r);
        let ok = Response {
            level: Some("debug".into()),
            ..Response::ok()
        };
        assert_eq!(ok.to_line(), "{\"ok\":true,\"level\":\"debug\"}\n");
        // Unknown fields from a later daemon are ignored.
        let later: Response = serde_json::from_str(r#"{"ok":true,"future":[1,2]}"#).unwrap();
        assert!(later.ok);
    }
}
