//! Test support: a loopback virtio-net device (device side of the rings) and an
//! in-process vhost-user backend around it.
#![allow(dead_code)]

pub mod backend;
pub mod device;
