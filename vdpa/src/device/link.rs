//! The link under a device: a datapath that knows it (an offload NIC's config
//! interrupt) signals a descriptor when it may have changed; the frontend polls that
//! descriptor and, when the link did change, tells the guest where it can — VDUSE by
//! updating the config space's `status` and injecting a config interrupt. A vhost-user
//! frontend has no way to hear it: QEMU keeps a vhost-user net device's config space
//! itself and ignores the backend's config-change message, so there the change is
//! logged and shown in the device's status only.

use std::os::fd::RawFd;

use tracing::{info, warn};

use super::Device;

impl Device {
    /// The descriptor to poll for link changes, while the datapath has one.
    pub fn link_event_fd(&self) -> Option<RawFd> {
        self.datapath.link_event()
    }

    /// Consumes a link event: the new state when the link changed (the config space
    /// already says so), `None` when it did not or the datapath cannot tell.
    pub fn poll_link(&mut self) -> Option<bool> {
        let up = self.datapath.link_up()?;
        if up == self.link_up {
            return None;
        }
        self.link_up = up;
        self.observed.update(|s| s.link_down = !up);
        if up {
            info!(device = self.name(), "link up (the datapath's NIC says so)");
        } else {
            warn!(
                device = self.name(),
                "link down (the datapath's NIC says so)"
            );
        }
        Some(up)
    }

    /// Whether the link is up, as last reported.
    pub fn link_up(&self) -> bool {
        self.link_up
    }
}
