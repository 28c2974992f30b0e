//! The control socket: a Unix socket on which `vdpactl` (or any script) asks a running
//! daemon what it serves and tells it what to change.
//!
//! The protocol is JSON lines, versioned: one request object per line, one response
//! object per line (see `docs/operations.md` for every command with examples).
//!
//! - [`protocol`]: the request and response types, shared by the daemon and clients;
//! - [`server`]: the listening thread, client threads, request size and time limits;
//! - [`handlers`]: what each command does to the daemon;
//! - [`persist`]: drop-in files for `add --persist` and `remove --persist`;
//! - [`client`]: the client side, used by `vdpactl`;
//! - [`rates`]: rates derived from two `stats` samples (pps, bps);
//! - [`render`]: the human tables `vdpactl` prints.

pub mod client;
pub mod handlers;
pub mod persist;
pub mod protocol;
pub mod rates;
pub mod render;
pub mod server;

pub use client::{Client, ClientError};
pub use protocol::{Request, Response, PROTOCOL_VERSION};
pub use server::ControlServer;
