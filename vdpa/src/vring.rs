//! What the device knows about one ring: the frontend's settings, kept until the ring
//! can run, and the rules that decide when it can. Frontend-neutral: addresses come in
//! the frontend's address space (vhost-user: its virtual addresses; VDUSE: IOVAs,
//! which are what the memory table is keyed by) and are translated once, here.

use std::fs::File;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::datapath::{RingAddrs, RingEvents};
use crate::memory::GuestMemory;
use crate::virtio::ring;

/// Which address space a frontend gives ring addresses in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrSpace {
    /// The frontend's own virtual addresses (vhost-user SET_VRING_ADDR): translated
    /// with each memory region's `user_addr`.
    FrontendVirtual,
    /// The addresses the memory table is keyed by (guest-physical, or IOVA).
    Guest,
}

/// Where a frontend says a ring lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLocation {
    /// The three parts' addresses, in `space`.
    pub addrs: RingAddrs,
    /// The address space they are in.
    pub space: AddrSpace,
    /// The guest-physical address at which writes to the used ring are logged while a
    /// migration runs (vhost-user SET_VRING_ADDR with VHOST_VRING_F_LOG: QEMU gives
    /// the used ring's own address); `None` when the frontend did not ask for it.
    pub log_used: Option<u64>,
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

/// Device state of one ring.
#[derive(Debug, Default)]
pub struct RingState {
    /// Its size (SET_VRING_NUM).
    pub num: Option<u16>,
    /// Where it lives (SET_VRING_ADDR).
    pub addr: Option<RingLocation>,
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

impl RingState {
    /// The pieces a datapath needs if this ring can run, or what is missing.
    ///
    /// `needs_enable`: the ring runs only once it was enabled (vhost-user with
    /// VHOST_USER_F_PROTOCOL_FEATURES acked); otherwise as soon as it has a kick fd.
    pub fn ready(
        &self,
        mem: &GuestMemory,
        needs_enable: bool,
    ) -> Result<(u16, RingAddrs, RingEvents), &'static str> {
        let num = self.num.ok_or("no size (SET_VRING_NUM)")?;
        let loc = self.addr.ok_or("no addresses (SET_VRING_ADDR)")?;
        let kick = self
            .kick
            .clone()
            .ok_or("no kick eventfd (SET_VRING_KICK)")?;
        let call = match &self.call {
            CallSetting::Unset => return Err("no call eventfd (SET_VRING_CALL)"),
            CallSetting::Polling => None,
            CallSetting::Fd(fd) => Some(fd.clone()),
        };
        if needs_enable && !self.enabled {
            return Err("not enabled (SET_VRING_ENABLE)");
        }
        if mem.is_empty() {
            return Err("no guest memory yet");
        }
        let (dlen, alen, ulen) = split_ring_sizes(num);
        let to_guest = |addr: u64, len: u64| match loc.space {
            AddrSpace::FrontendVirtual => mem.va_to_gpa(addr, len),
            AddrSpace::Guest => mem.translate(addr, len).map(|_| addr),
        };
        let a = loc.addrs;
        let addrs = RingAddrs {
            desc: to_guest(a.desc, dlen).ok_or("descriptor table outside guest memory")?,
            avail: to_guest(a.avail, alen).ok_or("avail ring outside guest memory")?,
            used: to_guest(a.used, ulen).ok_or("used ring outside guest memory")?,
        };
        Ok((num, addrs, RingEvents { kick, call }))
    }
}
