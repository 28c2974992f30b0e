//! The worker thread of one queue pair: sleeps on the kick eventfds and the backend,
//! processes in bursts with notifications off, re-arms notifications before sleeping
//! again (the disable → drain → enable → re-check loop), and stops on request. The
//! knobs of [`Tuning`] (burst, polling, RX interrupt coalescing, CPU pinning) act
//! here.
//!
//! A busy worker never calls `sched_yield`: under EEVDF (Linux 6.6 and later) each
//! yield pushes the thread's virtual deadline a whole slice out, and a worker that
//! yielded every 256 frames got about 1 % of a CPU it shared with one busy process
//! (0.18 Mpps instead of its fair half). The kernel preempts a running worker when
//! its slice is spent; that is all the sharing a core needs.
//!
//! A worker only ever costs its own pair: it stops on its own when its guest memory
//! faults (the frontend truncated it, see `vdpa::fault`), a panic is caught at the
//! thread boundary, and a kick descriptor that hangs up or cannot be waited on is
//! dropped from the wait set instead of waking the thread forever. Each is counted
//! ([`QueueFault`], on the pair's RX ring) and logged once; the datapath reports such
//! a pair as lost ([`Worker::finished`]).
//!
//! A device with a rate limit ([`crate::ratelimit`]) has its passes go through a
//! [`Limiter`]: a direction out of tokens is not served, and the worker sleeps on a
//! timerfd (in its poll set with the kicks) until the bucket refills.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
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

/// Empty passes of a polling worker between two looks at the clock.
const IDLE_CHECK: u32 = 64;

/// How a worker thread ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop; the rings stopped at (rx, tx).
    Stopped(u16, u16),
    /// Its guest memory faulted; the rings stopped at (rx, tx). The memory is gone: the
    /// pair must not run on this memory table again.
    MemoryFault(u16, u16, MemoryFault),
    /// The thread panicked. The rings resume where the guest saw completions stop
    /// (their used indexes, rx and tx); buffers taken but not completed are lost.
    Panicked(u16, u16),
}

impl Exit {
    /// Where the rings stopped (rx, tx).
    pub fn bases(&self) -> (u16, u16) {
        match *self {
            Exit::Stopped(rx, tx) | Exit::MemoryFault(rx, tx, _) | Exit::Panicked(rx, tx) => {
                (rx, tx)
            }
        }
    }
}

/// A running worker thread and the means to stop it.
pub struct Worker {
    stop: Arc<AtomicBool>,
    wake: EventFd,
    thread: Option<JoinHandle<Exit>>,
}

impl Worker {
    /// Starts a thread running `engine`, woken by `rx_kick` and `tx_kick`; `ended` is
    /// signalled if the thread ends without being asked to.
    pub fn spawn(
        name: String,
        engine: Box<dyn Engine>,
        rx_kick: Arc<EventFd>,
        tx_kick: Arc<EventFd>,
        tuning: Tuning,
        cpu: Option<usize>,
        ended: Arc<EventFd>,
    ) -> io::Result<Self> {
        Self::spawn_limited(name, engine, [rx_kick, tx_kick], tuning, cpu, ended, None)
    }

    /// [`spawn`](Self::spawn) with the pair's share of a rate limit: `rates` and the
    /// number of pairs it is split over.
    pub fn spawn_limited(
        name: String,
        engine: Box<dyn Engine>,
        [rx_kick, tx_kick]: [Arc<EventFd>; 2],
        tuning: Tuning,
        cpu: Option<usize>,
        ended: Arc<EventFd>,
        rates: Option<(Arc<RateControl>, u16)>,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        let ctx = Context {
            stop: stop.clone(),
            wake: wake.try_clone()?,
            rx_kick,
            tx_kick,
            tuning,
            cpu,
            rates,
        };
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let exit = guarded(engine, ctx);
            if !matches!(exit, Exit::Stopped(..)) {
                // Ended on its own: tell the control plane to reap and restart it.
                let _ = ended.write(1);
            }
            exit
        })?;
        Ok(Worker {
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// Stops the thread (if it still runs) and says how it ended; `None` only if the
    /// thread could not even report that.
    pub fn stop(mut self) -> Option<Exit> {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.write(1);
        let t = self.thread.take()?;
        match t.join() {
            Ok(exit) => Some(exit),
            Err(_) => {
                error!("datapath worker died; its ring positions are lost");
                None
            }
        }
    }

    /// Whether the thread ended on its own (memory fault, panic) or was stopped: then
    /// [`stop`](Self::stop) returns at once.
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::Release);
            let _ = self.wake.write(1);
            let _ = t.join();
        }
    }
}

struct Context {
    stop: Arc<AtomicBool>,
    wake: EventFd,
    rx_kick: Arc<EventFd>,
    tx_kick: Arc<EventFd>,
    tuning: Tuning,
    cpu: Option<usize>,
    rates: Option<(Arc<RateControl>, u16)>,
}

impl Context {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it for
    // cpu < CPU_SETSIZE (checked), and sched_setaffinity reads exactly its size.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets the calling thread's timer slack to 1 ns, so that sleeps with a deadline end
/// on time.
fn tighten_timer_slack() -> io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs the worker loop, catching a panic at the thread boundary: the panic is counted
/// and logged, and the rings resume where the guest last saw completions.
fn guarded(mut engine: Box<dyn Engine>, ctx: Context) -> Exit {
    let (counters, used) = {
        let (rx, tx) = engine.queues();
        (
            rx.q.counters.clone(),
            [rx.q.ring.used_index(), tx.q.ring.used_index()],
        )
    };
    let name = std::thread::current().name().unwrap_or("worker").to_owned();
    match std::panic::catch_unwind(AssertUnwindSafe(move || run(engine, ctx))) {
        Ok(exit) => exit,
        Err(payload) => {
            counters.fault(QueueFault::WorkerPanic);
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let resume = resume_from(&used);
            error!(worker = %name, panic = %what, rx = resume.0, tx = resume.1,
                   "datapath worker panicked; the pair stops and resumes where the guest saw it stop");
            Exit::Panicked(resume.0, resume.1)
        }
    }
}

fn resume_from(used: &[UsedIndex; 2]) -> (u16, u16) {
    (used[0].load(), used[1].load())
}

/// Fault injection for tests: a worker whose thread name is listed here panics on its
/// next pass.
#[cfg(test)]
pub(crate) static PANIC_IN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[cfg(test)]
fn inject_faults() {
    let me = std::thread::current().name().unwrap_or_default().to_owned();
    let mut list = PANIC_IN.lock().unwrap();
    if let Some(i) = list.iter().position(|n| *n == me) {
        list.remove(i);
        drop(list);
        panic!("injected fault in {me}");
    }
}

/// Wakeups per worker thread name, for tests that check a worker does not spin.
#[cfg(test)]
static WAKEUPS: std::sync::Mutex<std::collections::BTreeMap<String, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// How many times the workers of device `device` returned from their wait.
#[cfg(test)]
pub(crate) fn wakeups(device: &str) -> u64 {
    let prefix = format!("{device}-q");
    WAKEUPS
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| n.starts_with(&prefix))
        .map(|(_, v)| v)
        .sum()
}

#[cfg(test)]
fn count_wakeup() {
    let me = std::thread::current().name().unwrap_or_default().to_owned();
    *WAKEUPS.lock().unwrap().entry(me).or_default() += 1;
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

/// The worker loop: process in bursts with notifications off until idle, poll a
/// while if the [`PollBudget`] says so, re-arm notifications and re-check, then sleep
/// until a kick, the backend, a held interrupt's deadline or a stop request.
fn run(mut engine: Box<dyn Engine>, ctx: Context) -> Exit {
    if let Some(cpu) = ctx.cpu {
        if let Err(e) = pin_to(cpu) {
            warn!(cpu, error = %e, "cannot pin worker; it runs unpinned");
        }
    }
    let t = &ctx.tuning;
    if t.coalescing() {
        // A held interrupt is due in microseconds: without this the kernel may fire the
        // ppoll deadline up to 50 µs late (the default timer slack).
        if let Err(e) = tighten_timer_slack() {
            warn!(error = %e, "cannot reduce the worker's timer slack; coalesced interrupts may be late");
        }
    }
    let backend = engine.backend_fd();
    let mem: Arc<GuestMemory> = engine.queues().0.q.ring.memory().clone();
    let (mut rx_watch, mut tx_watch) = {
        let (rx, tx) = engine.queues();
        (
            KickWatch::new(&ctx.rx_kick, "rx", &rx.q.counters),
            KickWatch::new(&ctx.tx_kick, "tx", &tx.q.counters),
        )
    };
    let mut poll = PollBudget::new(t.polling);
    let mut faulted = None;
    let mut limiter = ctx
        .rates
        .as_ref()
        .map(|(c, pairs)| Limiter::new(c.clone(), *pairs));
    let mut timer: Option<Timer> = None;
    // RX kicks are only wanted while a frame waits for buffers.
    engine.queues().0.q.ring.disable_notification();
    let mut rx_armed = false;
    // Kicks may have been sent before we started: look at the rings first.
    'outer: while !ctx.stopping() {
        engine.queues().1.q.ring.disable_notification();
        let mut backend_events: i16;
        let mut idle_passes: u32 = 0;
        loop {
            #[cfg(test)]
            inject_faults();
            let progress = match &mut limiter {
                None => engine.process(t.burst),
                Some(l) => l.process(&mut *engine, t.burst),
            };
            // A pass can end idle having moved frames (the ring ran dry): that is
            // work too, and ends an idle poll as a hit.
            let moved = engine.flush();
            if ctx.stopping() {
                break 'outer;
            }
            // Once per burst: did the frontend take our memory away (see vdpa::fault)?
            if let Some(f) = mem.fault() {
                faulted = Some(f);
                break 'outer;
            }
            if moved || progress != Progress::IDLE {
                poll.work();
                idle_passes = 0;
            }
            if progress.busy() {
                continue;
            }
            if progress == Progress::IDLE && !poll.budget().is_zero() {
                // The clock is read on the first empty pass and then once every
                // IDLE_CHECK, and there is no PAUSE: a polling worker is there for
                // latency, and each pass is a round trip the frontend waits on.
                let look = idle_passes.is_multiple_of(IDLE_CHECK);
                idle_passes = idle_passes.wrapping_add(1);
                if !look || poll.keep_polling(Instant::now()) {
                    continue;
                }
            }
            let (rx, tx) = engine.queues();
            let mut again = false;
            backend_events = 0;
            match progress.tx {
                TxState::Idle => {
                    if tx.q.ring.enable_notification() {
                        tx.q.ring.disable_notification();
                        again = true;
                    }
                }
                // Kicks stay off: the frames are there, the backend is not ready.
                TxState::Blocked => backend_events |= libc::POLLOUT,
                TxState::Busy => again = true,
                // Kicks stay off: the limiter's timer brings the worker back.
                TxState::Throttled => {}
            }
            match progress.rx {
                RxState::Starved => {
                    rx_armed = true;
                    if rx.q.ring.enable_notification() {
                        again = true;
                    }
                }
                RxState::Idle => {
                    if rx_armed {
                        rx.q.ring.disable_notification();
                        rx_armed = false;
                    }
                    backend_events |= libc::POLLIN;
                }
                RxState::Busy => again = true,
                // The backend is not polled: frames wait there until the timer.
                RxState::Throttled => {}
            }
            if !again {
                break;
            }
        }
        poll.sleeping(Instant::now());
        engine.queues().0.q.counters.slept();
        let timeout = engine
            .queues()
            .0
            .q
            .interrupt_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        let throttled = limiter.as_ref().and_then(Limiter::wait);
        let timer_fd = match throttled {
            Some(after) => arm(&mut timer, after),
            None => -1,
        };
        let fds = [
            (rx_watch.poll_fd(), libc::POLLIN),
            (tx_watch.poll_fd(), libc::POLLIN),
            (ctx.wake.as_raw_fd(), libc::POLLIN),
            (backend.unwrap_or(-1), backend_events),
            (timer_fd, libc::POLLIN),
        ];
        // Without a timer, ppoll's own timeout ends the throttled wait.
        let timeout = match (throttled, timer_fd) {
            (Some(after), -1) => Some(timeout.map_or(after, |t| t.min(after))),
            _ => timeout,
        };
        let woke = wait(&fds, timeout);
        #[cfg(test)]
        count_wakeup();
        match woke {
            Ok(ready) => {
                if ready[0] | ready[1] | ready[3] != 0 {
                    poll.woke(Instant::now());
                }
                if ready[0] != 0 {
                    let rx = &mut engine.queues().0.q;
                    rx.counts.kicks += rx_watch.take(ready[0], "rx", &rx.counters);
                }
                if ready[1] != 0 {
                    let tx = &mut engine.queues().1.q;
                    tx.counts.kicks += tx_watch.take(ready[1], "tx", &tx.counters);
                }
                if ready[2] != 0 {
                    let _ = ctx.wake.read();
                }
                if ready[4] != 0 {
                    if let Some(t) = &timer {
                        t.clear();
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "worker poll failed; stopping");
                break;
            }
        }
    }
    let c = poll.counts();
    debug!(
        worker = std::thread::current().name().unwrap_or_default(),
        polls_with_work = c.hits,
        polls_without_work = c.misses,
        sleeps = c.sleeps,
        budget_us = poll.budget().as_micros() as u64,
        "worker polling at stop"
    );
    let (rx, tx) = engine.finish();
    match faulted {
        None => Exit::Stopped(rx, tx),
        Some(f) => {
            engine.queues().0.q.counters.fault(QueueFault::GuestMemory);
            error!(worker = std::thread::current().name().unwrap_or_default(), fault = %f,
                   "guest memory faulted; the queue pair stops until the frontend sets a new memory table");
            Exit::MemoryFault(rx, tx, f)
        }
    }
}

/// Arms the worker's throttle timer (made on first use) to fire after `after`, and
/// returns its descriptor; without a timer (it could not be made) the worker polls
/// with a short sleep instead, via the returned -1 and ppoll's own timeout.
fn arm(timer: &mut Option<Timer>, after: Duration) -> RawFd {
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

/// Blocks until one of `fds` is ready for its events (a negative fd or no events is
/// ignored) or `timeout` passes. Returns each descriptor's reported events.
fn wait(fds: &[(RawFd, i16); 5], timeout: Option<Duration>) -> io::Result<[i16; 5]> {
    let mut p = fds.map(|(fd, events)| libc::pollfd {
        fd: if events == 0 || fd < 0 { -1 } else { fd },
        events,
        revents: 0,
    });
    // ppoll, not poll: a coalesced interrupt is due in microseconds, and poll's
    // millisecond timeout would hold it a thousand times too long.
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    loop {
        // SAFETY: `p` is a valid array of 5 pollfd structs and `ts_ptr` is null or
        // points at a timespec, both alive for the duration of the call; a null
        // signal mask leaves the mask unchanged.
        let n = unsafe { libc::ppoll(p.as_mut_ptr(), 5, ts_ptr, std::ptr::null()) };
        if n >= 0 {
            return Ok(p.map(|x| x.revents));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
