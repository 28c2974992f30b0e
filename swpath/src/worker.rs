//! The worker thread of one queue pair: sleeps on the kick eventfds, processes in
//! bursts with notifications off, re-arms notifications before sleeping again (the
//! disable → drain → enable → re-check loop), and stops on request.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tracing::{error, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::engine::{Engine, RxState, TxState};

/// Most chains handled per pass before used entries are published and the stop flag
/// is checked (the burst size).
pub const BURST: usize = 64;

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
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        let ctx = Context {
            stop: stop.clone(),
            wake: wake.try_clone()?,
            rx_kick,
            tx_kick,
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
}

impl Context {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

fn run(mut engine: Box<dyn Engine>, ctx: Context) -> (u16, u16) {
    let backend = engine.backend_fd();
    // RX kicks are only wanted while a frame waits for buffers.
    engine.queues().0.q.ring.disable_notification();
    let mut rx_armed = false;
    // Kicks may have been sent before we started: look at the rings first.
    'outer: while !ctx.stopping() {
        engine.queues().1.q.ring.disable_notification();
        let mut backend_events: i16;
        loop {
            let progress = engine.process(BURST);
            engine.flush();
            if ctx.stopping() {
                break 'outer;
            }
            if progress.busy() {
                continue;
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
        let fds = [
            (ctx.rx_kick.as_raw_fd(), libc::POLLIN),
            (ctx.tx_kick.as_raw_fd(), libc::POLLIN),
            (ctx.wake.as_raw_fd(), libc::POLLIN),
            (backend.unwrap_or(-1), backend_events),
        ];
        match wait(&fds) {
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

/// Blocks until one of `fds` is ready for its events (a negative fd is ignored).
fn wait(fds: &[(RawFd, i16); 4]) -> io::Result<[bool; 4]> {
    let mut p = fds.map(|(fd, events)| libc::pollfd {
        fd: if events == 0 { -1 } else { fd },
        events,
        revents: 0,
    });
    loop {
        // SAFETY: `p` is a valid array of 4 pollfd structs for the duration of the call.
        let n = unsafe { libc::poll(p.as_mut_ptr(), 4, -1) };
        if n >= 0 {
            return Ok(p.map(|x| x.revents != 0));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
