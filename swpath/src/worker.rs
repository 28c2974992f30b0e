//! The worker thread of one queue pair: sleeps on the kick eventfds and the backend,
//! processes in bursts with notifications off, re-arms notifications before sleeping
//! again (the disable → drain → enable → re-check loop), and stops on request. The
//! knobs of [`Tuning`] (burst, weight, busy polling, RX interrupt coalescing, CPU
//! pinning) act here.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::engine::{Engine, Progress, RxState, TxState};
use crate::tuning::Tuning;

/// Empty passes of a busy-polling worker between two looks at the clock.
const IDLE_CHECK: u32 = 64;

/// A running worker thread and the means to stop it.
pub struct Worker {
    stop: Arc<AtomicBool>,
    wake: EventFd,
    thread: Option<JoinHandle<(u16, u16)>>,
}

impl Worker {
    /// Starts a thread running `engine`, woken by `rx_kick` and `tx_kick`.
    pub fn spawn(
        name: String,
        engine: Box<dyn Engine>,
        rx_kick: Arc<EventFd>,
        tx_kick: Arc<EventFd>,
        tuning: Tuning,
        cpu: Option<usize>,
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
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(engine, ctx))?;
        Ok(Worker {
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// Stops the thread and returns where the rings stopped (rx, tx), or `None` if
    /// the thread died.
    pub fn stop(mut self) -> Option<(u16, u16)> {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.write(1);
        let t = self.thread.take()?;
        match t.join() {
            Ok(bases) => Some(bases),
            Err(_) => {
                error!("datapath worker panicked; its ring positions are lost");
                None
            }
        }
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

/// The worker loop: process in bursts with notifications off until idle (or the
/// per-wakeup weight is spent), optionally busy-poll a while, re-arm notifications
/// and re-check, then sleep until a kick, the backend, a held interrupt's deadline or
/// a stop request.
fn run(mut engine: Box<dyn Engine>, ctx: Context) -> (u16, u16) {
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
    // RX kicks are only wanted while a frame waits for buffers.
    engine.queues().0.q.ring.disable_notification();
    let mut rx_armed = false;
    // Kicks may have been sent before we started: look at the rings first.
    'outer: while !ctx.stopping() {
        engine.queues().1.q.ring.disable_notification();
        let mut backend_events: i16;
        let mut moved_since_yield = 0;
        let mut idle_since: Option<Instant> = None;
        let mut idle_passes: u32 = 0;
        loop {
            let progress = engine.process(t.burst);
            // A pass can end idle having moved frames (the ring ran dry): that is
            // work too, and restarts the busy-poll budget.
            let moved = engine.flush();
            if ctx.stopping() {
                break 'outer;
            }
            if moved || progress != Progress::IDLE {
                idle_since = None;
                idle_passes = 0;
            }
            if progress.busy() {
                moved_since_yield += t.burst;
                if moved_since_yield >= t.weight {
                    moved_since_yield = 0;
                    std::thread::yield_now();
                }
                continue;
            }
            if !t.busy_poll.is_zero() && progress == Progress::IDLE {
                // The clock is read once every IDLE_CHECK empty passes, and there is no
                // PAUSE: a busy-polling worker is there for latency, and each pass is
                // a round trip the frontend waits on.
                idle_passes += 1;
                if !idle_passes.is_multiple_of(IDLE_CHECK) {
                    continue;
                }
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() < t.busy_poll {
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
            }
            if !again {
                break;
            }
        }
        let timeout = engine
            .queues()
            .0
            .q
            .interrupt_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        let fds = [
            (ctx.rx_kick.as_raw_fd(), libc::POLLIN),
            (ctx.tx_kick.as_raw_fd(), libc::POLLIN),
            (ctx.wake.as_raw_fd(), libc::POLLIN),
            (backend.unwrap_or(-1), backend_events),
        ];
        match wait(&fds, timeout) {
            Ok(ready) => {
                if ready[0] {
                    engine.queues().0.q.counts.kicks += drain(&ctx.rx_kick);
                }
                if ready[1] {
                    engine.queues().1.q.counts.kicks += drain(&ctx.tx_kick);
                }
                if ready[2] {
                    let _ = ctx.wake.read();
                }
            }
            Err(e) => {
                warn!(error = %e, "worker poll failed; stopping");
                break;
            }
        }
    }
    engine.finish()
}

/// Reads an eventfd's counter: the number of signals since the last read.
fn drain(fd: &EventFd) -> u64 {
    fd.read().unwrap_or(0)
}

/// Blocks until one of `fds` is ready for its events (a negative fd or no events is
/// ignored) or `timeout` passes.
fn wait(fds: &[(RawFd, i16); 4], timeout: Option<Duration>) -> io::Result<[bool; 4]> {
    let mut p = fds.map(|(fd, events)| libc::pollfd {
        fd: if events == 0 { -1 } else { fd },
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
        // SAFETY: `p` is a valid array of 4 pollfd structs and `ts_ptr` is null or
        // points at a timespec, both alive for the duration of the call; a null
        // signal mask leaves the mask unchanged.
        let n = unsafe { libc::ppoll(p.as_mut_ptr(), 4, ts_ptr, std::ptr::null()) };
        if n >= 0 {
            return Ok(p.map(|x| x.revents != 0));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
