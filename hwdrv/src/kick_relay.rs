//! The kick relay: one thread per offloaded device that waits (epoll) on the guest's
//! kick eventfds and, for each kick, writes the queue index to that queue's doorbell
//! on the NIC — the userspace hop DPDK's ifcvf driver also makes when host notifiers
//! (doorbell pages mapped into the guest) are not in use.
//!
//! The set of rings is fixed for the life of a relay; changing it means stopping the
//! relay (which joins the thread, so no doorbell is written afterwards) and starting
//! a new one.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use vdpa::{stats::BurstCounts, QueueCounters};
use vmm_sys_util::eventfd::EventFd;

use crate::pci::PciFunction;
use crate::virtio_pci::Doorbell;

/// Bound on one wait, so a lost stop signal cannot hang a join forever.
const WAIT_MS: i32 = 500;
const STOP_TOKEN: u64 = u64::MAX;

/// One ring the relay serves.
#[derive(Clone, Debug)]
pub struct KickTarget {
    /// vhost-user ring index (for logs).
    pub ring: u16,
    /// The guest's kick eventfd.
    pub kick: Arc<EventFd>,
    /// Where to ring.
    pub doorbell: Doorbell,
    /// Counts kicks relayed.
    pub counters: Arc<QueueCounters>,
}

/// A running relay thread.
pub struct KickRelay {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl KickRelay {
    /// Starts relaying kicks of `targets` to doorbells of `pci`.
    pub(crate) fn start(
        name: &str,
        pci: Arc<dyn PciFunction>,
        targets: Vec<KickTarget>,
    ) -> io::Result<Self> {
        // SAFETY: epoll_create1 has no memory preconditions; the result is checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `ep` is a fresh descriptor that nothing else owns.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let add = |fd: i32, token: u64| -> io::Result<()> {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: token,
            };
            // SAFETY: valid epoll fd, a valid fd to watch and a valid event struct.
            let rc = unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        add(stop.as_raw_fd(), STOP_TOKEN)?;
        for (i, t) in targets.iter().enumerate() {
            add(t.kick.as_raw_fd(), i as u64)?;
        }
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-kick"))
            .spawn(move || relay(ep, stop2, pci, targets))?;
        Ok(KickRelay {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it: afterwards no doorbell is written.
    pub(crate) fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for KickRelay {
    fn drop(&mut self) {
        self.halt();
    }
}

fn relay(ep: OwnedFd, stop: Arc<EventFd>, pci: Arc<dyn PciFunction>, targets: Vec<KickTarget>) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; targets.len() + 1];
    let mut failed = vec![false; targets.len()];
    loop {
        // SAFETY: `events` has room for `events.len()` entries; `ep` is valid.
        let n = unsafe {
            libc::epoll_wait(
                ep.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                WAIT_MS,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "kick relay: epoll_wait failed, relay stops");
            return;
        }
        for ev in &events[..n as usize] {
            let token = ev.u64;
            if token == STOP_TOKEN {
                let _ = stop.read();
                return;
            }
            let Some(t) = targets.get(token as usize) else {
                continue;
            };
            // Level-triggered and we are the only reader: the read cannot block.
            let _ = t.kick.read();
            match pci.bar_write16(t.doorbell.bar, t.doorbell.offset, t.doorbell.queue) {
                Ok(()) => {
                    let mut b = BurstCounts {
                        kicks: 1,
                        ..Default::default()
                    };
                    t.counters.flush(&mut b);
                }
                Err(e) if !failed[token as usize] => {
                    failed[token as usize] = true;
                    tracing::error!(ring = t.ring, error = %e, "kick relay: doorbell write failed");
                }
                Err(_) => {}
            }
        }
    }
}
