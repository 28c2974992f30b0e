//! What the control plane knows about one ring: the frontend's settings, kept until
//! the ring can run, and the rules that decide when it can.

use std::fs::File;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::datapath::{RingAddrs, RingEvents};
use crate::memory::GuestMemory;
use crate::virtio::ring;

/// Ring addresses as SET_VRING_ADDR gives them: frontend virtual addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VringAddrVa {
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

/// A call eventfd setting: not yet given, given as "poll, do not signal", or an fd.
#[derive(Clone, Debug, Default)]
pub enum CallSetting {
    /// SET_VRING_CALL has not arrived.
    #[default]
    Unset,
    /// The frontend sent the no-fd flag: it polls the used ring.
    Polling,
    /// Signal this eventfd.
    Fd(Arc<EventFd>),
}

/// Control-plane state of one ring.
#[derive(Debug, Default)]
pub struct VringState {
    /// SET_VRING_NUM.
    pub num: Option<u16>,
    /// SET_VRING_ADDR.
    pub addr: Option<VringAddrVa>,
    /// SET_VRING_BASE, or where the ring last stopped.
    pub base: u16,
    /// SET_VRING_KICK; taken away again by GET_VRING_BASE (the ring is stopped until the
    /// next kick fd, as the vhost-user spec says).
    pub kick: Option<Arc<EventFd>>,
    /// SET_VRING_CALL.
    pub call: CallSetting,
    /// SET_VRING_ERR (kept open, never signalled yet).
    pub err: Option<File>,
    /// SET_VRING_ENABLE; survives SET_FEATURES because QEMU enables before it.
    pub enabled: bool,
}

/// Byte sizes of the three parts of a split ring of `n` descriptors, with the event
/// index fields included (harmless when EVENT_IDX is off): [`ring::area_sizes`].
pub fn split_ring_sizes(n: u16) -> (u64, u64, u64) {
    ring::area_sizes(n)
}

impl VringState {
    /// The pieces a datapath needs if this ring can run, or what is missing.
    ///
    /// `protocol_features` is whether VHOST_USER_F_PROTOCOL_FEATURES was acked: then a
    /// ring runs only once SET_VRING_ENABLE(1) said so; otherwise it is enabled as
    /// soon as it has a kick fd.
    pub fn ready(
        &self,
        mem: &GuestMemory,
        protocol_features: bool,
    ) -> Result<(u16, RingAddrs, RingEvents), &'static str> {
        let num = self.num.ok_or("no size (SET_VRING_NUM)")?;
        let va = self.addr.ok_or("no addresses (SET_VRING_ADDR)")?;
        let kick = self
            .kick
            .clone()
            .ok_or("no kick eventfd (SET_VRING_KICK)")?;
        let call = match &self.call {
            CallSetting::Unset => return Err("no call eventfd (SET_VRING_CALL)"),
            CallSetting::Polling => None,
            CallSetting::Fd(fd) => Some(fd.clone()),
        };
        if protocol_features && !self.enabled {
            return Err("not enabled (SET_VRING_ENABLE)");
        }
        if mem.is_empty() {
            return Err("no guest memory yet");
        }
        let (dlen, alen, ulen) = split_ring_sizes(num);
        let addrs = RingAddrs {
            desc: mem
                .va_to_gpa(va.desc, dlen)
                .ok_or("descriptor table outside guest memory")?,
            avail: mem
                .va_to_gpa(va.avail, alen)
                .ok_or("avail ring outside guest memory")?,
            used: mem
                .va_to_gpa(va.used, ulen)
                .ok_or("used ring outside guest memory")?,
        };
        Ok((num, addrs, RingEvents { kick, call }))
    }
}
