//! Kick and call eventfds of one ring, with counters, and waiting on many call fds.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::host_notifier::NotifierPage;

/// The kick (driver → device) and call (device → driver) eventfds of one ring.
#[derive(Debug)]
pub struct KickCall {
    kick: EventFd,
    call: EventFd,
    /// A mapped doorbell page (host notifier) and the queue index to store into it.
    notifier: Option<(Arc<NotifierPage>, u16)>,
    kicks: u64,
    page_kicks: u64,
    interrupts: u64,
    interrupt_sum: u64,
}

impl KickCall {
    /// Creates both eventfds non-blocking.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            kick: EventFd::new(libc::EFD_NONBLOCK)?,
            call: EventFd::new(libc::EFD_NONBLOCK)?,
            notifier: None,
            kicks: 0,
            page_kicks: 0,
            interrupts: 0,
            interrupt_sum: 0,
        })
    }
    /// The kick eventfd (sent with SET_VRING_KICK).
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }
    /// The call eventfd (sent with SET_VRING_CALL).
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }
    /// Kicks ring `queue` through `page` from now on (`None`: through the eventfd).
    pub fn set_notifier(&mut self, page: Option<Arc<NotifierPage>>, queue: u16) {
        self.notifier = page.map(|p| (p, queue));
    }

    /// Kicks the device (a store into its doorbell page when the backend gave one,
    /// else one eventfd write) and counts it.
    pub fn kick(&mut self) -> io::Result<()> {
        match &self.notifier {
            Some((page, queue)) => {
                page.ring(*queue);
                self.page_kicks += 1;
            }
            None => self.kick.write(1)?,
        }
        self.kicks += 1;
        Ok(())
    }

    /// Kicks that went through a doorbell page (included in [`kicks`](Self::kicks)).
    pub fn page_kicks(&self) -> u64 {
        self.page_kicks
    }
    /// Reads the call eventfd if signalled. One successful read counts as one interrupt;
    /// the counter value (how many times the device signalled) is added to the sum.
    /// Returns the value read, 0 if there was nothing.
    pub fn drain_call(&mut self) -> io::Result<u64> {
        match self.call.read() {
            Ok(v) => {
                self.interrupts += 1;
                self.interrupt_sum += v;
                Ok(v)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }
    /// Kicks sent so far.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }
    /// Interrupts (successful call eventfd reads) so far.
    pub fn interrupts(&self) -> u64 {
        self.interrupts
    }
    /// Sum of the call eventfd counter values read so far.
    pub(crate) fn interrupt_sum(&self) -> u64 {
        self.interrupt_sum
    }
}

/// Blocks until one of `fds` is readable or `timeout` passes (poll(2)). Returns the number
/// of readable fds (0 on timeout). EINTR counts as a timeout.
pub fn wait_readable(fds: &[RawFd], timeout: Duration) -> io::Result<usize> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as i32;
    // A sub-millisecond timeout still sleeps for one tick rather than spinning.
    let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
    // SAFETY: `pfds` is a valid, exclusively borrowed array of `pfds.len()` pollfd structs
    // that lives across the call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(n as usize)
}

/// Raw fd of an eventfd, for [`wait_readable`].
pub fn raw(e: &EventFd) -> RawFd {
    e.as_raw_fd()
}
