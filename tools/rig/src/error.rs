//! The rig's top-level error.

use std::io;
use std::path::PathBuf;

use crate::driver_ring::DriverRingError;
use crate::memory::RigMemoryError;
use crate::txq::QueueError;

/// Everything that can go wrong in a rig session.
#[derive(Debug, thiserror::Error)]
pub enum RigError {
    /// A vhost-vdpa request failed.
    #[error("vhost-vdpa: {step}")]
    Vdpa {
        /// The request.
        step: String,
        /// The error.
        #[source]
        source: vhost::Error,
    },
    /// A vhost-net request failed.
    #[error("vhost-net: {step}")]
    VhostNet {
        /// The request.
        step: String,
        /// The error.
        #[source]
        source: vhost::Error,
    },
    /// The tap for vhost-net could not be set up.
    #[error("tap: {0}")]
    Tap(String),
    /// The options are inconsistent.
    #[error("invalid options: {0}")]
    Options(String),
    /// Guest memory could not be created or laid out.
    #[error("guest memory")]
    Memory(#[from] RigMemoryError),
    /// A ring could not be laid out.
    #[error("ring layout")]
    Ring(#[from] DriverRingError),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    Eventfd(#[source] io::Error),
    /// Connecting to the backend socket failed (after retrying while it was missing).
    #[error("cannot connect to vhost-user socket {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The last OS error.
        #[source]
        source: io::Error,
    },
    /// A vhost-user request failed or got no (timely) reply.
    #[error("vhost-user {request} failed")]
    Request {
        /// The setup step or request.
        request: String,
        /// The frontend library's error.
        #[source]
        source: vhost::Error,
    },
    /// A request the rig sends by hand failed.
    #[error("vhost-user {request} failed")]
    RawRequest {
        /// The request name.
        request: &'static str,
        /// The socket error, or a malformed reply.
        #[source]
        source: io::Error,
    },
    /// The backend lacks something the session needs.
    #[error("backend does not support {0}")]
    Unsupported(String),
    /// A setup step was requested that is not valid now.
    #[error("setup: {0}")]
    SetupOrder(String),
    /// A queue reported a device protocol violation or a rig bug.
    #[error("queue")]
    Queue(#[from] QueueError),
    /// Waiting on call eventfds failed.
    #[error("poll on call eventfds")]
    Poll(#[source] io::Error),
    /// A bounded wait ran out.
    #[error("timed out: {0}")]
    Timeout(String),
}
