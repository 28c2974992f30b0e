//! The kick relay: one thread per offloaded device that waits (epoll) on the guest's
//! kick eventfds and, for each kick, writes the queue index to that queue's doorbell
//! on the NIC — the userspace hop DPDK's ifcvf driver also makes when host notifiers
//! (doorbell pages mapped into the guest) are not in use.
//!
//! One thread serves a device from its first pair start to its reset. The rings it
//! serves change in place ([`KickRelay::serve`]): the thread takes the new set
//! between two waits and acknowledges it, so once `serve` returns no doorbell of a
//! ring that left the set is written (an empty set pauses the relay while the NIC
//! is reprogrammed).
//!
//! The same thread samples the rings' used indices in guest memory (every
//! [`SAMPLE_INTERVAL`](crate::used_tally::SAMPLE_INTERVAL) and once more when it
//! stops), which gives offloaded rings their packet and byte counts
//! ([`crate::used_tally`]).
//!
//! It also watches the guest memory the rings live in: when an access to it faulted
//! (the frontend truncated its memory; `vdpa::fault` contained the SIGBUS), the relay
//! counts `QueueFault::GuestMemory` on each pair's receive ring, stops relaying and
//! signals the device's attention eventfd, so that the device closes that frontend's
//! connection (or leaves its VDUSE device stopped) as the software datapath does.
//! Only that device is affected.
//!
//! Kick descriptors come from the frontend and are read without ever blocking
//! (`vdpa::notify`). One that hangs up, fails, reaches end of file, or cannot be
//! waited on at all (a regular file) is taken out of the wait set, counted
//! (`QueueFault::KickFd`) and logged once, instead of waking the relay forever.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use vdpa::memory::GuestMemory;
use vdpa::notify::{self, Kicks};
use vdpa::stats::QueueFault;
use vdpa::{stats::BurstCounts, QueueCounters};
use vmm_sys_util::eventfd::EventFd;

use crate::pci::PciFunction;
use crate::used_tally::{UsedTally, SAMPLE_INTERVAL};
use crate::virtio_pci::Doorbell;

/// Bound on one wait: the used-index sampling period (which also keeps a lost stop
/// signal from hanging a join).
const WAIT_MS: i32 = SAMPLE_INTERVAL.as_millis() as i32;
const CONTROL_TOKEN: u64 = u64::MAX;
/// Bound on the wait for the thread to take a new ring set (it takes it between two
/// waits, each at most `WAIT_MS`).
const ORDER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

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

/// The guest memory a relay watches for faults, and where it reports one.
pub struct MemoryWatch {
    /// The rings' guest memory.
    pub mem: Arc<GuestMemory>,
    /// The device's attention eventfd (`QueuePairConfig::ended`).
    pub ended: Arc<EventFd>,
}

/// The rings a relay serves: their kicks and doorbells, their used-index tallies (one
/// per target, in the same order, `None` where a ring cannot be tallied) and the
/// guest memory to watch for faults.
#[derive(Default)]
pub(crate) struct RingSet {
    pub targets: Vec<KickTarget>,
    pub tallies: Vec<Option<UsedTally>>,
    pub watch: Option<MemoryWatch>,
}

/// What the owner asks of the thread.
enum Order {
    /// Serve this set from now on (replacing the current one).
    Serve(RingSet),
    /// Count what is left and end.
    Stop,
}

/// The owner's side of the thread's mailbox.
struct Mailbox {
    order: std::sync::Mutex<Option<Order>>,
    wake: EventFd,
}

/// A running relay thread.
pub struct KickRelay {
    mailbox: Arc<Mailbox>,
    taken: std::sync::mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl KickRelay {
    /// Starts relaying the kicks of `set` to doorbells of `pci`.
    pub(crate) fn start(name: &str, pci: Arc<dyn PciFunction>, set: RingSet) -> io::Result<Self> {
        // SAFETY: epoll_create1 has no memory preconditions; the result is checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `ep` is a fresh descriptor that nothing else owns.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        let mailbox = Arc::new(Mailbox {
            order: std::sync::Mutex::new(None),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        });
        watch_fd(
            &ep,
            libc::EPOLL_CTL_ADD,
            mailbox.wake.as_raw_fd(),
            CONTROL_TOKEN,
        )?;
        watch_kicks(&ep, &set.targets, libc::EPOLL_CTL_ADD)?;
        let (taken_tx, taken) = std::sync::mpsc::channel();
        let mb = mailbox.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-kick"))
            .spawn(move || relay(ep, mb, taken_tx, pci, set))?;
        Ok(KickRelay {
            mailbox,
            taken,
            thread: Some(thread),
        })
    }

    /// Serves `set` from now on, in place of the rings served so far. Returns once the
    /// thread took it: afterwards no doorbell of a ring left out is written. An error
    /// (the thread is gone or did not answer within 2 s) leaves the relay unusable:
    /// stop it and start another.
    pub(crate) fn serve(&mut self, set: RingSet) -> io::Result<()> {
        self.order(Order::Serve(set))
    }

    fn order(&mut self, order: Order) -> io::Result<()> {
        *self.mailbox.order.lock().unwrap_or_else(|e| e.into_inner()) = Some(order);
        self.mailbox.wake.write(1)?;
        self.taken.recv_timeout(ORDER_TIMEOUT).map_err(|e| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("kick relay did not take its new rings: {e}"),
            )
        })
    }

    /// Stops the thread and waits for it: afterwards no doorbell is written.
    pub(crate) fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let Some(t) = self.thread.take() else {
            return;
        };
        let _ = self.order(Order::Stop);
        let _ = t.join();
    }
}

impl Drop for KickRelay {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Adds (`EPOLL_CTL_ADD`) or removes (`EPOLL_CTL_DEL`) `fd` in `ep`'s set.
fn watch_fd(ep: &OwnedFd, op: i32, fd: i32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: valid epoll fd, a valid fd and a valid event struct (ignored for DEL).
    let rc = unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd, &mut ev) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Adds the kick descriptors of `targets` to `ep`'s set (token = index), or removes
/// them. One that cannot be waited on (a regular file) is counted and left out.
fn watch_kicks(ep: &OwnedFd, targets: &[KickTarget], op: i32) -> io::Result<()> {
    for (i, t) in targets.iter().enumerate() {
        if !notify::pollable(t.kick.as_raw_fd()) {
            if op == libc::EPOLL_CTL_ADD {
                t.counters.fault(QueueFault::KickFd);
                tracing::warn!(
                    ring = t.ring,
                    "kick relay: kick descriptor is a regular file; not relayed"
                );
            }
            continue;
        }
        match watch_fd(ep, op, t.kick.as_raw_fd(), i as u64) {
            Ok(()) => {}
            // Taken out already (it died), or the frontend closed it meanwhile.
            Err(_) if op == libc::EPOLL_CTL_DEL => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn relay(
    ep: OwnedFd,
    mailbox: Arc<Mailbox>,
    taken: std::sync::mpsc::Sender<()>,
    pci: Arc<dyn PciFunction>,
    set: RingSet,
) {
    let RingSet {
        mut targets,
        mut tallies,
        mut watch,
    } = set;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; targets.len() + 1];
    let mut failed = vec![false; targets.len()];
    let mut sampled = std::time::Instant::now();
    loop {
        if sampled.elapsed() >= SAMPLE_INTERVAL {
            tallies.iter_mut().flatten().for_each(UsedTally::sample);
            sampled = std::time::Instant::now();
            if let Some(w) = &watch {
                if memory_faulted(w, &targets) {
                    // Serve nothing more, but keep answering the owner.
                    let _ = watch_kicks(&ep, &targets, libc::EPOLL_CTL_DEL);
                    targets.clear();
                    tallies.clear();
                    watch = None;
                }
            }
        }
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
            if token == CONTROL_TOKEN {
                let _ = mailbox.wake.read();
                let order = mailbox
                    .order
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                // What completed since the last sample still counts.
                tallies.iter_mut().flatten().for_each(UsedTally::sample);
                match order {
                    Some(Order::Stop) => {
                        let _ = taken.send(());
                        return;
                    }
                    Some(Order::Serve(next)) => {
                        let _ = watch_kicks(&ep, &targets, libc::EPOLL_CTL_DEL);
                        if let Err(e) = watch_kicks(&ep, &next.targets, libc::EPOLL_CTL_ADD) {
                            tracing::error!(error = %e, "kick relay: cannot wait on the new kicks; relay stops");
                            return;
                        }
                        targets = next.targets;
                        tallies = next.tallies;
                        watch = next.watch;
                        failed = vec![false; targets.len()];
                        events.resize(targets.len() + 1, libc::epoll_event { events: 0, u64: 0 });
                        let _ = taken.send(());
                    }
                    None => {}
                }
                // Events of this round may name rings of the old set.
                break;
            }
            let Some(t) = targets.get(token as usize) else {
                continue;
            };
            let i = token as usize;
            match notify::drain(t.kick.as_raw_fd(), revents(ev.events)) {
                Kicks::Some(_) => {}
                // Someone else (the frontend) read the counter first.
                Kicks::None => continue,
                Kicks::Dead(e) => {
                    // SAFETY: valid epoll fd and a descriptor in its set; a null event
                    // is allowed for EPOLL_CTL_DEL.
                    unsafe {
                        libc::epoll_ctl(
                            ep.as_raw_fd(),
                            libc::EPOLL_CTL_DEL,
                            t.kick.as_raw_fd(),
                            std::ptr::null_mut(),
                        );
                    }
                    t.counters.fault(QueueFault::KickFd);
                    tracing::warn!(ring = t.ring, error = %e, "kick relay: kick descriptor is dead; no longer relayed");
                    continue;
                }
            }
            // The frames of this kick, while the NIC has not been told about them.
            if let Some(tally) = tallies.get_mut(i).and_then(Option::as_mut) {
                tally.count_avail();
            }
            match t.doorbell.ring(&*pci) {
                Ok(()) => {
                    let mut b = BurstCounts {
                        kicks: 1,
                        ..Default::default()
                    };
                    t.counters.flush(&mut b);
                }
                Err(e) if !failed[i] => {
                    failed[i] = true;
                    tracing::error!(ring = t.ring, error = %e, "kick relay: doorbell write failed");
                }
                Err(_) => {}
            }
        }
    }
}

/// Whether the guest memory of `w` faulted; if it did, counts it on the receive ring
/// of each pair, logs it and signals the device.
fn memory_faulted(w: &MemoryWatch, targets: &[KickTarget]) -> bool {
    let Some(fault) = w.mem.fault() else {
        return false;
    };
    for t in targets.iter().filter(|t| t.ring % 2 == 0) {
        t.counters.fault(QueueFault::GuestMemory);
    }
    tracing::error!(%fault, "offload: guest memory faulted; the kick relay stops and the device \
                    stops until the frontend sets a new memory table");
    if let Err(e) = w.ended.write(1) {
        tracing::error!(error = %e, "offload: cannot signal the device about the fault");
    }
    true
}

/// The poll(2) events matching epoll events `ev`.
fn revents(ev: u32) -> i16 {
    let mut r = 0;
    for (e, p) in [
        (libc::EPOLLIN, libc::POLLIN),
        (libc::EPOLLHUP, libc::POLLHUP),
        (libc::EPOLLERR, libc::POLLERR),
    ] {
        if ev & e as u32 != 0 {
            r |= p;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::ResetOutcome;
    use std::os::fd::FromRawFd;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};
    use vdpa::stats::QueueFault;

    /// Counts doorbell writes per queue.
    #[derive(Default)]
    struct Doorbells([AtomicU64; 3]);

    impl PciFunction for Doorbells {
        fn describe(&self) -> String {
            "doorbells".into()
        }
        fn config_read(&self, _: u16, _: &mut [u8]) -> io::Result<()> {
            Ok(())
        }
        fn config_write(&self, _: u16, _: &[u8]) -> io::Result<()> {
            Ok(())
        }
        fn bar_read(&self, _: u8, _: u64, _: &mut [u8]) -> io::Result<()> {
            Ok(())
        }
        fn bar_write(&self, _: u8, _: u64, data: &[u8]) -> io::Result<()> {
            let q = u16::from_le_bytes([data[0], data[1]]);
            self.0[usize::from(q)].fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn bar_mapped(&self, _: u8) -> bool {
            true
        }
        unsafe fn dma_map(&self, _: u64, _: u64, _: *mut u8) -> io::Result<()> {
            Ok(())
        }
        fn dma_unmap(&self, _: u64, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn msix_vectors(&self) -> u16 {
            0
        }
        fn set_msix(&self, _: &[&EventFd]) -> io::Result<()> {
            Ok(())
        }
        fn set_msix_vector(&self, _: u16, _: &EventFd) -> io::Result<()> {
            Ok(())
        }
        fn clear_msix(&self) -> io::Result<()> {
            Ok(())
        }
        fn reset(&self) -> io::Result<ResetOutcome> {
            Ok(ResetOutcome::Unsupported)
        }
    }

    fn target(ring: u16, kick: EventFd) -> KickTarget {
        KickTarget {
            ring,
            kick: Arc::new(kick),
            doorbell: Doorbell {
                queue: ring,
                bar: 0,
                offset: 0,
            },
            counters: Arc::new(QueueCounters::default()),
        }
    }

    fn eventually(cond: impl Fn() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end && !cond() {
            std::thread::sleep(Duration::from_millis(2));
        }
        cond()
    }

    #[test]
    fn dead_and_unpollable_kick_descriptors_are_dropped_not_spun_on() {
        let mut p = [0; 2];
        // SAFETY: pipe fills two descriptors we own; the write end is closed at once,
        // so the read end polls as hung up for ever.
        unsafe {
            assert_eq!(libc::pipe(p.as_mut_ptr()), 0);
            libc::close(p[1]);
        }
        let file = std::fs::File::open("/proc/self/status").unwrap();
        // SAFETY: the pipe's read end and a dup of the file are ours to own.
        let (hup, reg) = unsafe {
            (
                EventFd::from_raw_fd(p[0]),
                EventFd::from_raw_fd(libc::dup(file.as_raw_fd())),
            )
        };
        let good = EventFd::new(0).unwrap();
        let targets = vec![target(0, hup), target(1, reg), target(2, good)];
        let counters: Vec<_> = targets.iter().map(|t| t.counters.clone()).collect();
        let kick = targets[2].kick.clone();
        let pci = Arc::new(Doorbells::default());
        let set = RingSet {
            targets,
            ..Default::default()
        };
        let relay = KickRelay::start("test", pci.clone(), set).unwrap();
        let faults = |i: usize| counters[i].snapshot(i as u16).faulted(QueueFault::KickFd);
        assert!(eventually(|| faults(0) == 1 && faults(1) == 1));
        kick.write(1).unwrap();
        assert!(eventually(|| pci.0[2].load(Ordering::Relaxed) == 1));
        std::thread::sleep(Duration::from_millis(200));
        // A relay spinning on the hung-up pipe rings its doorbell over and over.
        assert_eq!(pci.0[0].load(Ordering::Relaxed), 0);
        assert_eq!(pci.0[1].load(Ordering::Relaxed), 0);
        assert_eq!(faults(0), 1);
        relay.stop();
    }

    #[test]
    fn the_rings_change_in_place_and_a_ring_left_out_is_not_relayed() {
        let pci = Arc::new(Doorbells::default());
        let first = target(0, EventFd::new(0).unwrap());
        let old_kick = first.kick.clone();
        let set = RingSet {
            targets: vec![first],
            ..Default::default()
        };
        let mut relay = KickRelay::start("test", pci.clone(), set).unwrap();
        old_kick.write(1).unwrap();
        assert!(eventually(|| pci.0[0].load(Ordering::Relaxed) == 1));
        let second = target(1, EventFd::new(0).unwrap());
        let new_kick = second.kick.clone();
        relay
            .serve(RingSet {
                targets: vec![second],
                ..Default::default()
            })
            .unwrap();
        old_kick.write(1).unwrap();
        new_kick.write(1).unwrap();
        assert!(eventually(|| pci.0[1].load(Ordering::Relaxed) == 1));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(pci.0[0].load(Ordering::Relaxed), 1, "ring 0 left the set");
        // Paused: nothing is relayed.
        relay.serve(RingSet::default()).unwrap();
        new_kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(pci.0[1].load(Ordering::Relaxed), 1);
        relay.stop();
    }
}
