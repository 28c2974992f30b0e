//! One queue pair's share of a worker thread: the disable → drain → enable → re-check
//! loop of a pair, cut into steps so that one thread can run it for one pair or for
//! many ([`crate::worker`]).
//!
//! A thread drives a [`PairLoop`] like this: [`pass`](PairLoop::pass) until it
//! [settles](Pass::Settled) (idle, its polling budget spent), then
//! [`arm`](PairLoop::arm) its notifications and re-check; if nothing came in the
//! meantime, [`sleep_on`](PairLoop::sleep_on) says what to wait for, and
//! [`woke`](PairLoop::woke) takes what the wait returned. A thread with many pairs
//! sleeps only when every pair has settled and armed; while it is awake every pair
//! gets a pass per round, so a pair whose own budget is spent is still served for free.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, warn};
use vdpa::memory::MemoryFault;
use vdpa::notify::{self, Kicks};
use vdpa::stats::QueueFault;
use vdpa::{GuestMemory, QueueCounters};
use vmm_sys_util::eventfd::EventFd;

use crate::engine::{Engine, Progress, RxState, TxState};
use crate::polling::PollBudget;
use crate::ratelimit::{Limiter, RateControl, Timer};
use crate::ring::UsedIndex;
use crate::tuning::Tuning;
use crate::worker::Exit;

/// Empty passes of a polling pair between two looks at the clock.
const IDLE_CHECK: u32 = 64;

/// Descriptors a pair waits on while its thread sleeps: RX kick, TX kick, backend,
/// limiter timer (a negative fd or no events: not waited on).
pub(crate) type SleepFds = [(RawFd, i16); 4];

/// What one pass over a pair's rings found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// The burst was full: frames are left, go again.
    Busy,
    /// Idle, but the pair is still polling: go again.
    Polling,
    /// Idle and done polling: ready to arm notifications.
    Settled,
    /// The pair's guest memory faulted: it must stop.
    Faulted,
}

/// A queue pair run by a worker thread, with its polling, rate-limit and kick state.
pub(crate) struct PairLoop {
    name: String,
    engine: Box<dyn Engine>,
    tuning: Tuning,
    mem: Arc<GuestMemory>,
    backend: Option<RawFd>,
    // Held so that the descriptors the watches wait on stay open.
    _kicks: [Arc<EventFd>; 2],
    rx_watch: KickWatch,
    tx_watch: KickWatch,
    poll: PollBudget,
    limiter: Option<Limiter>,
    timer: Option<Timer>,
    /// RX notifications are on (a frame waited for buffers).
    rx_armed: bool,
    idle_passes: u32,
    /// The last pass's outcome, which [`arm`](Self::arm) acts on.
    last: Progress,
    /// What to wait for on the backend while asleep.
    backend_events: i16,
    faulted: Option<MemoryFault>,
    /// Where the guest saw completions stop, for a pass that panicked.
    used: [UsedIndex; 2],
    counters: Arc<QueueCounters>,
}

impl PairLoop {
    /// A pair named `name` (its log and test name) running `engine`, woken by the
    /// `kicks` (rx, tx), with its share of `rates` if the device is limited.
    pub(crate) fn new(
        name: String,
        mut engine: Box<dyn Engine>,
        kicks: [Arc<EventFd>; 2],
        tuning: Tuning,
        rates: Option<(Arc<RateControl>, u16)>,
    ) -> Self {
        let backend = engine.backend_fd();
        let (mem, used, counters, rx_watch, tx_watch) = {
            let (rx, tx) = engine.queues();
            (
                rx.q.ring.memory().clone(),
                [rx.q.ring.used_index(), tx.q.ring.used_index()],
                rx.q.counters.clone(),
                KickWatch::new(&kicks[0], "rx", &rx.q.counters),
                KickWatch::new(&kicks[1], "tx", &tx.q.counters),
            )
        };
        // RX kicks are only wanted while a frame waits for buffers; TX kicks are off
        // while the thread is awake. Kicks sent before the pair started are found by
        // its first pass.
        {
            let (rx, tx) = engine.queues();
            rx.q.ring.disable_notification();
            tx.q.ring.disable_notification();
        }
        PairLoop {
            name,
            engine,
            poll: PollBudget::new(tuning.polling),
            tuning,
            mem,
            backend,
            _kicks: kicks,
            rx_watch,
            tx_watch,
            limiter: rates.map(|(c, pairs)| Limiter::new(c, pairs)),
            timer: None,
            rx_armed: false,
            idle_passes: 0,
            last: Progress::IDLE,
            backend_events: 0,
            faulted: None,
            used,
            counters,
        }
    }

    /// The pair's name (`device-qN`).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the pair holds RX interrupts back (its thread then wants a tight
    /// timer slack).
    pub(crate) fn coalescing(&self) -> bool {
        self.tuning.coalescing()
    }

    /// One burst in each direction, published; then whether to go again.
    pub(crate) fn pass(&mut self) -> Pass {
        #[cfg(test)]
        crate::worker::inject_faults(&self.name);
        let t = &self.tuning;
        let progress = match &mut self.limiter {
            None => self.engine.process(t.burst),
            Some(l) => l.process(&mut *self.engine, t.burst),
        };
        // A pass can end idle having moved frames (the ring ran dry): that is work
        // too, and ends an idle poll as a hit.
        let moved = self.engine.flush();
        // Once per burst: did the frontend take our memory away (see vdpa::fault)?
        if let Some(f) = self.mem.fault() {
            self.faulted = Some(f);
            return Pass::Faulted;
        }
        if moved || progress != Progress::IDLE {
            self.poll.work();
            self.idle_passes = 0;
        }
        if progress.busy() {
            return Pass::Busy;
        }
        if progress == Progress::IDLE && !self.poll.budget().is_zero() {
            // The clock is read on the first empty pass and then once every
            // IDLE_CHECK, and there is no PAUSE: a polling worker is there for
            // latency, and each pass is a round trip the frontend waits on.
            let look = self.idle_passes.is_multiple_of(IDLE_CHECK);
            self.idle_passes = self.idle_passes.wrapping_add(1);
            if !look || self.poll.keep_polling(Instant::now()) {
                return Pass::Polling;
            }
        }
        self.last = progress;
        Pass::Settled
    }

    /// Turns on the notifications the last pass's state calls for and re-checks the
    /// rings; true if work came in meanwhile (the pair must be passed again).
    pub(crate) fn arm(&mut self) -> bool {
        let (rx, tx) = self.engine.queues();
        let mut again = false;
        self.backend_events = 0;
        match self.last.tx {
            TxState::Idle => {
                if tx.q.ring.enable_notification() {
                    tx.q.ring.disable_notification();
                    again = true;
                }
            }
            // Kicks stay off: the frames are there, the backend is not ready.
            TxState::Blocked => self.backend_events |= libc::POLLOUT,
            TxState::Busy => again = true,
            // Kicks stay off: the limiter's timer brings the worker back.
            TxState::Throttled => {}
        }
        match self.last.rx {
            RxState::Starved => {
                self.rx_armed = true;
                if rx.q.ring.enable_notification() {
                    again = true;
                }
            }
            RxState::Idle => {
                if self.rx_armed {
                    rx.q.ring.disable_notification();
                    self.rx_armed = false;
                }
                self.backend_events |= libc::POLLIN;
            }
            RxState::Busy => again = true,
            // The backend is not polled: frames wait there until the timer.
            RxState::Throttled => {}
        }
        again
    }

    /// The thread is about to sleep: what this pair waits on, and until when at the
    /// latest (a held interrupt's deadline, the limiter's refill).
    pub(crate) fn sleep_on(&mut self) -> (SleepFds, Option<Duration>) {
        let now = Instant::now();
        self.poll.sleeping(now);
        self.counters.slept();
        let mut timeout = self
            .engine
            .queues()
            .0
            .q
            .interrupt_deadline()
            .map(|d| d.saturating_duration_since(now));
        let throttled = self.limiter.as_ref().and_then(Limiter::wait);
        let timer_fd = match throttled {
            Some(after) => arm_timer(&mut self.timer, after),
            None => -1,
        };
        // Without a timer, the wait's own timeout ends the throttled wait.
        if let (Some(after), -1) = (throttled, timer_fd) {
            timeout = Some(timeout.map_or(after, |t| t.min(after)));
        }
        let fds = [
            (self.rx_watch.poll_fd(), libc::POLLIN),
            (self.tx_watch.poll_fd(), libc::POLLIN),
            (self.backend.unwrap_or(-1), self.backend_events),
            (timer_fd, libc::POLLIN),
        ];
        (fds, timeout)
    }

    /// The thread woke with `ready` (the events of [`sleep_on`](Self::sleep_on)'s
    /// descriptors): kicks are read and counted, and TX kicks go off again while the
    /// thread is awake.
    pub(crate) fn woke(&mut self, ready: [i16; 4]) {
        if ready[0] | ready[1] | ready[2] != 0 {
            self.poll.woke(Instant::now());
        }
        if ready[0] != 0 {
            let rx = &mut self.engine.queues().0.q;
            rx.counts.kicks += self.rx_watch.take(ready[0], "rx", &rx.counters);
        }
        if ready[1] != 0 {
            let tx = &mut self.engine.queues().1.q;
            tx.counts.kicks += self.tx_watch.take(ready[1], "tx", &tx.counters);
        }
        if ready[3] != 0 {
            if let Some(t) = &self.timer {
                t.clear();
            }
        }
        self.idle_passes = 0;
        self.engine.queues().1.q.ring.disable_notification();
    }

    /// Stops the pair: pending RX buffers go back, the rings are published, and the
    /// exit says where they stopped.
    pub(crate) fn finish(mut self) -> Exit {
        #[cfg(test)]
        crate::worker::inject_faults(&format!("{}:finish", self.name));
        let c = self.poll.counts();
        debug!(
            worker = %self.name,
            polls_with_work = c.hits,
            polls_without_work = c.misses,
            sleeps = c.sleeps,
            budget_us = self.poll.budget().as_micros() as u64,
            "worker polling at stop"
        );
        let (rx, tx) = self.engine.finish();
        match self.faulted {
            None => Exit::Stopped(rx, tx),
            Some(f) => {
                self.counters.fault(QueueFault::GuestMemory);
                error!(worker = %self.name, fault = %f,
                       "guest memory faulted; the queue pair stops until the frontend sets a new memory table");
                Exit::MemoryFault(rx, tx, f)
            }
        }
    }

    /// What is left of a pair one of whose steps panicked: nothing of its engine is
    /// trusted, the rings resume where the guest saw completions stop.
    pub(crate) fn panicked(used: &[UsedIndex; 2], counters: &QueueCounters) -> Exit {
        counters.fault(QueueFault::WorkerPanic);
        Exit::Panicked(used[0].load(), used[1].load())
    }

    /// The used indexes and counters [`panicked`](Self::panicked) needs, taken before a
    /// step that may panic.
    pub(crate) fn wreckage(&self) -> ([UsedIndex; 2], Arc<QueueCounters>) {
        (self.used.clone(), self.counters.clone())
    }
}

/// Arms the pair's throttle timer (made on first use) to fire after `after`, and
/// returns its descriptor; without a timer (it could not be made) the thread polls
/// with a short sleep instead, via the returned -1 and the wait's own timeout.
fn arm_timer(timer: &mut Option<Timer>, after: Duration) -> RawFd {
    if timer.is_none() {
        match Timer::new() {
            Ok(t) => *timer = Some(t),
            Err(e) => {
                warn!(error = %e, "cannot create the rate limiter's timer");
                return -1;
            }
        }
    }
    match timer.as_ref().map(|t| (t.arm(after), t.fd())) {
        Some((Ok(()), fd)) => fd,
        _ => -1,
    }
}

/// A kick descriptor the worker waits on, until it turns out it cannot.
struct KickWatch {
    fd: RawFd,
    live: bool,
}

impl KickWatch {
    fn new(fd: &EventFd, ring: &'static str, counters: &QueueCounters) -> Self {
        let fd = fd.as_raw_fd();
        let live = notify::pollable(fd);
        if !live {
            counters.fault(QueueFault::KickFd);
            warn!(ring, "kick descriptor is a regular file: not watched, the ring is served only when the worker wakes for other reasons");
        }
        KickWatch { fd, live }
    }

    fn poll_fd(&self) -> RawFd {
        if self.live {
            self.fd
        } else {
            -1
        }
    }

    /// Reads the kicks behind `revents`; a dead descriptor is dropped from the wait
    /// set, counted and logged.
    fn take(&mut self, revents: i16, ring: &'static str, counters: &QueueCounters) -> u64 {
        match notify::drain(self.fd, revents) {
            Kicks::Some(n) => n,
            Kicks::None => 0,
            Kicks::Dead(e) => {
                self.live = false;
                counters.fault(QueueFault::KickFd);
                warn!(ring, error = %e, "kick descriptor is dead: no longer watched");
                0
            }
        }
    }
}
