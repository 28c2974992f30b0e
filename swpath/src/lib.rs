//! The software datapath: worker threads that move frames between a guest's
//! virtqueues and a host backend, driven by the kick eventfds and signalling the call
//! eventfds handed over by the control plane.
//!
//! - [`ring`]: the device side of a split virtqueue, with validation of every
//!   descriptor the guest posts.
//! - [`loopback`]: the loopback backend's frame mover (TX ring → RX ring).
//! - [`interrupt`]: a ring's replaceable call eventfd.
//! - [`worker`]: the per-queue-pair thread and its notification loop.
//! - [`datapath`]: [`SoftwareDatapath`], the [`vdpa::Datapath`] implementation.

pub mod datapath;
pub mod interrupt;
pub mod loopback;
pub mod ring;
pub mod worker;

pub use datapath::SoftwareDatapath;
