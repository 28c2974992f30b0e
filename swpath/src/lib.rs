//! The software datapath: worker threads that move frames between a guest's
//! virtqueues and a host backend, driven by the kick eventfds and signalling the call
//! eventfds handed over by the control plane.
//!
//! - [`ring`]: the device side of a split virtqueue, with validation of every
//!   descriptor the guest posts.
//! - [`queue`], [`txq`], [`rxq`]: a ring with its interrupt and counters, and the TX
//!   and RX halves of a queue pair (frames out of, and into, guest buffers).
//! - [`engine`]: what moves frames for one pair, and what it waits for next.
//! - [`loopback`]: the loopback backend (TX ring → RX ring).
//! - [`interrupt`]: a ring's replaceable call eventfd.
//! - [`af_packet`]: the AF_PACKET backend (fanout, vnet header, mmsg batches).
//! - [`announce`]: the RARP frame that announces a migrated guest (SEND_RARP).
//! - [`csum`]: completing a partial checksum for a guest without GUEST_CSUM.
//! - [`port`]: what fd-backed backends share (the [`port::Port`] trait).
//! - [`portsec`]: port security (RX filter program, TX source and VLAN checks).
//! - [`ratelimit`]: per-direction token buckets, enforced by the worker on a timer.
//! - [`syscall_vec`]: reusable iovec and mmsghdr vectors the ports hand the kernel.
//! - [`tap`]: the tap backend (multi-queue, vnet header pass-through).
//! - [`tuning`]: the knobs (burst, polling, RX coalescing, pinning).
//! - [`polling`]: how long a worker polls before it sleeps (adaptive by default).
//! - [`worker`]: the per-queue-pair thread and its notification loop.
//! - [`datapath`]: [`SoftwareDatapath`], the [`vdpa::Datapath`] implementation.

pub mod af_packet;
pub mod announce;
pub mod csum;
pub mod datapath;
pub mod engine;
pub mod interrupt;
pub mod loopback;
mod pair_loop;
pub mod polling;
pub mod port;
pub mod portsec;
pub mod queue;
pub mod ratelimit;
pub mod ring;
pub mod rxq;
pub mod syscall_vec;
pub mod tap;
mod trunk;
pub mod tuning;
pub mod txq;
pub mod worker;

#[cfg(test)]
mod containment_tests;
#[cfg(test)]
mod test_driver;

pub use datapath::{Backend, SoftwareDatapath};
pub use polling::{PollCounts, Polling};
pub use tuning::{Tuning, Workers};
