//! Choosing a datapath for a device. Every decision about which datapath serves a
//! device, and why, is made here.

use thiserror::Error;
use vdpa::Datapath;
use vdpad_config::{Backend, DeviceConfig, Mode};

/// A device configuration this build cannot serve.
#[derive(Debug, Error)]
#[error("device {device}: {what}")]
pub struct WiringError {
    /// Device name.
    pub device: String,
    /// What is missing.
    pub what: String,
}

/// The datapath chosen for a device and the reason, for logs and `vdpactl`.
pub struct Choice {
    /// The datapath.
    pub datapath: Box<dyn Datapath>,
    /// Why it was chosen.
    pub reason: String,
}

/// Picks and builds the datapath for `dev`.
pub fn choose(dev: &DeviceConfig) -> Result<Choice, WiringError> {
    let unsupported = |what: &str| WiringError {
        device: dev.name.clone(),
        what: what.to_owned(),
    };
    match dev.mode {
        Mode::Software => {}
        Mode::Offload | Mode::Auto => {
            return Err(unsupported(
                "the offload datapath is not available in this build; use mode = \"software\"",
            ))
        }
    }
    match &dev.backend {
        Backend::Loopback => Ok(Choice {
            datapath: Box::new(swpath::SoftwareDatapath::loopback(&dev.name)),
            reason: "mode = \"software\", backend = \"loopback\"".to_owned(),
        }),
        Backend::Tap { .. } | Backend::AfPacket { .. } => Err(unsupported(
            "this build's software datapath has only the loopback backend; use backend = \"loopback\"",
        )),
    }
}
