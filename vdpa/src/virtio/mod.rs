//! The virtio vocabulary every part of vdpad speaks, defined once: feature bits
//! ([`features`]), the split-ring layout and its notification rule ([`ring`]), the
//! virtio-net header ([`net_hdr`]) and the virtio-net config space ([`net_config`]). Section numbers refer to virtio 1.3.
//!
//! Numbers come from the `virtio-bindings` crate (Linux's uapi headers) where it has
//! them; what this module adds is their use: masks instead of bit numbers, byte sizes
//! and offsets, and the few rules (`need_event`, alignment, the header's two forms)
//! that the control plane, both datapaths, the simulated NIC and the test rig share.
//!
//! Device policy (which features a device offers, what was negotiated) is not here:
//! see [`crate::features`].

pub mod features;
pub mod net_config;
pub mod net_hdr;
pub mod ring;
