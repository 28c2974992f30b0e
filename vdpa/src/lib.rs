//! The vdpad control plane: vhost-user request handling for virtio-net devices, the
//! device model and its lifecycle, guest memory, per-queue statistics — and the
//! vocabulary the two datapaths share ([`datapath`]).
//!
//! Layering: `vdpa` depends only on `vdpad-config`; the datapaths (`swpath`, `hwdrv`)
//! depend on `vdpa`; the daemon (`tools`) wires them together.

pub mod backend_channel;
pub mod client;
pub mod datapath;
pub mod device;
pub mod dirty_log;
pub mod fallback;
pub mod fault;
pub mod features;
pub mod memory;
pub mod net_config;
pub mod notify;
pub mod request;
pub mod server;
pub mod session;
pub mod stats;
pub mod vduse;
pub mod virtio;
pub mod vring;
pub mod wire;

pub use datapath::{
    Datapath, DatapathError, NotifyArea, PairPosition, QueuePairConfig, RelayTime, RingAddrs,
    RingConfig, RingEvents, StartFailure,
};
pub use device::{ConnectionState, Device, DeviceHandle, DeviceStatus, PeerStatus};
pub use dirty_log::{DirtyLog, LogWriter};
pub use fallback::{FallbackDatapath, FallbackFactory};
pub use memory::{GuestMemory, MemoryError, MemoryRegion, Translator};
pub use stats::{BadDescriptor, BurstCounts, CountProbe, DropReason, QueueCounters, QueueStats};
