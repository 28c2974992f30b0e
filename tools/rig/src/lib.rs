//! vdpa-rig: a vhost-user *frontend* that plays the VM, for testing and benchmarking
//! vhost-user virtio-net backends (vdpad, DPDK's vhost PMD, ...).
//!
//! * [`memory`]: memfd-backed guest memory at a configurable guest-physical base, one or
//!   two regions, sent with SET_MEM_TABLE.
//! * [`driver_ring`]: the driver side of a split ring (free list, chains, wrap-around,
//!   EVENT_IDX both ways, fences).
//! * [`setup`]: the vhost-user setup sequence, step by step ([`RigSetup`]).
//! * [`rig`]: the ready rig ([`Rig`]): queue pairs, send-and-wait, stop, interrupts.
//! * [`verify`](mod@verify), [`bench`](mod@bench), [`latency`](mod@latency),
//!   [`listen`](mod@listen): the workloads of the CLI.
//! * [`hostile`]: broken descriptor chains for robustness tests.
//! * [`migration`]: playing a migrating QEMU (a dirty log, LOG_ALL on and off).
//!
//! ```no_run
//! use std::time::Duration;
//! use vdpa_rig::{run_verify, Rig, RigOptions, VerifyOptions};
//!
//! let mut rig = Rig::connect(RigOptions::new("/run/vdpad/vm1-net0.sock"))?;
//! let report = run_verify(&mut rig, &VerifyOptions::new(10_000, 64))?;
//! println!("{}", report.summary());
//! assert!(report.passed());
//! # Ok::<(), vdpa_rig::RigError>(())
//! ```

pub mod bench;
pub mod connection;
pub mod driver_ring;
pub mod error;
pub mod frame;
pub mod host_notifier;
pub mod hostile;
pub mod kick_call;
pub mod latency;
pub mod link_watch;
pub mod listen;
pub mod memory;
pub mod migration;
pub mod options;
pub mod rig;
pub mod rxq;
pub mod setup;
pub mod stats;
pub mod txq;
pub mod verify;
pub mod vhost_net;
pub mod vhost_vdpa;

pub use bench::{run_bench, BenchOptions, BenchReport};
pub use driver_ring::{DriverRing, DriverSegment, RawDesc, RingLayout, UsedElem, UsedKind};
pub use error::RigError;
pub use hostile::{Hostile, Injected, PairRing};
pub use latency::{run_latency, LatencyOptions, LatencyReport};
pub use link_watch::{run_link_watch, LinkWatchOptions};
pub use listen::{run_listen, ListenOptions, ListenReport};
pub use memory::{MemoryLayout, RigMemory};
pub use options::RigOptions;
pub use rig::Negotiation;
pub use rig::{QueuePair, Received, Rig, Transport};
pub use setup::{RigSetup, SetupStep};
pub use verify::{run_verify, VerifyOptions, VerifyReport};
