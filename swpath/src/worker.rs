//! Worker threads. A thread serves one queue pair ([`Placement::Own`], the default)
//! or every pair pinned to its CPU ([`Placement::Shared`], `workers = "per-cpu"`: one
//! thread per CPU, as a DPDK lcore visits its ports in turn). Either way it runs each
//! pair's [`PairLoop`]: passes in bursts with notifications off, polls while the
//! pair's budget says so, re-arms notifications and re-checks before sleeping on
//! every pair's kicks and backend at once. The knobs of [`Tuning`] (burst, polling,
//! RX interrupt coalescing, CPU pinning) act per pair.
//!
//! A busy worker never calls `sched_yield`: under EEVDF (Linux 6.6 and later) each
//! yield pushes the thread's virtual deadline a whole slice out, and a worker that
//! yielded every 256 frames got about 1 % of a CPU it shared with one busy process
//! (0.18 Mpps instead of its fair half). The kernel preempts a running worker when
//! its slice is spent; that is all the sharing a core needs.
//!
//! A pair only ever costs itself, also on a shared thread: it stops on its own when
//! its guest memory faults (the frontend truncated it, see `vdpa::fault`), a panic in
//! one of its steps is caught and ends that pair alone, and a kick descriptor that
//! hangs up or cannot be waited on is dropped from the wait set instead of waking the
//! thread forever. Each is counted ([`QueueFault`](vdpa::stats::QueueFault), on the
//! pair's RX ring) and logged once; the datapath reports such a pair as lost
//! ([`Worker::finished`]).
//!
//! A device with a rate limit ([`crate::ratelimit`]) has its passes go through a
//! `Limiter`: a direction out of tokens is not served, and the pair waits on a
//! timerfd (in the thread's poll set with the kicks) until the bucket refills.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{error, warn};
use vdpa::memory::MemoryFault;
use vdpa::QueueCounters;
use vmm_sys_util::eventfd::EventFd;

use crate::engine::Engine;
use crate::pair_loop::{PairLoop, Pass};
use crate::ratelimit::RateControl;
use crate::ring::UsedIndex;
use crate::tuning::Tuning;

/// How a pair ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop; the rings stopped at (rx, tx).
    Stopped(u16, u16),
    /// Its guest memory faulted; the rings stopped at (rx, tx). The memory is gone: the
    /// pair must not run on this memory table again.
    MemoryFault(u16, u16, MemoryFault),
    /// A step of the pair panicked. The rings resume where the guest saw completions
    /// stop (their used indexes, rx and tx); buffers taken but not completed are lost.
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

/// Which thread runs a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A thread of its own, pinned to `cpu` if one is given.
    Own {
        /// The CPU to pin the thread to.
        cpu: Option<usize>,
    },
    /// The one thread of the process that serves every shared pair on `cpu`, of
    /// whichever device.
    Shared {
        /// The CPU the thread is pinned to.
        cpu: usize,
    },
}

/// A pair running on a worker thread, and the means to stop it.
pub struct Worker {
    thread: Arc<Thread>,
    id: u64,
    /// Set by the thread when the pair ended on its own.
    done: Arc<AtomicBool>,
    stopped: bool,
}

impl Worker {
    /// Starts running `engine` on a thread of its own (pinned to `cpu` if given),
    /// woken by `rx_kick` and `tx_kick`; `ended` is signalled if the pair ends without
    /// being asked to.
    pub fn spawn(
        name: String,
        engine: Box<dyn Engine>,
        rx_kick: Arc<EventFd>,
        tx_kick: Arc<EventFd>,
        tuning: Tuning,
        cpu: Option<usize>,
        ended: Arc<EventFd>,
    ) -> io::Result<Self> {
        let job = Job {
            name,
            engine,
            kicks: [rx_kick, tx_kick],
            tuning,
            ended,
            rates: None,
        };
        Self::start(job, Placement::Own { cpu })
    }

    /// Starts running `job`'s pair on the thread `placement` says.
    pub fn start(job: Job, placement: Placement) -> io::Result<Self> {
        let thread = match placement {
            Placement::Own { cpu } => Arc::new(Thread::start(job.name.clone(), cpu)?),
            Placement::Shared { cpu } => shared_thread(cpu)?,
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let done = Arc::new(AtomicBool::new(false));
        let pair = PairLoop::new(job.name, job.engine, job.kicks, job.tuning, job.rates);
        let (used, counters) = pair.wreckage();
        thread.send(Command::Add(Box::new(Slot {
            id,
            pair,
            used,
            counters,
            done: done.clone(),
            ended: job.ended,
        })));
        Ok(Worker {
            thread,
            id,
            done,
            stopped: false,
        })
    }

    /// Stops the pair (if it still runs) and says how it ended; `None` only if its
    /// thread could not even report that.
    pub fn stop(mut self) -> Option<Exit> {
        self.remove()
    }

    fn remove(&mut self) -> Option<Exit> {
        self.stopped = true;
        let (reply, answer) = mpsc::channel();
        self.thread.send(Command::Remove(self.id, reply));
        // A thread that died (outside a pair's steps) answers nobody: look at it
        // between waits rather than wait for it forever.
        loop {
            match answer.recv_timeout(Duration::from_millis(100)) {
                Ok(Some(exit)) => return Some(exit),
                Err(mpsc::RecvTimeoutError::Timeout) if !self.thread.finished() => {}
                _ => {
                    error!("datapath worker died; its ring positions are lost");
                    return None;
                }
            }
        }
    }

    /// Whether the pair ended on its own (memory fault, panic): then
    /// [`stop`](Self::stop) returns at once.
    pub fn finished(&self) -> bool {
        self.done.load(Ordering::Acquire) || self.thread.finished()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.remove();
        }
    }
}

/// What a worker needs to run one pair.
pub struct Job {
    /// The pair's name in logs and thread names (`device-qN`).
    pub name: String,
    /// What moves the pair's frames.
    pub engine: Box<dyn Engine>,
    /// The RX and TX kick eventfds.
    pub kicks: [Arc<EventFd>; 2],
    /// The pair's knobs.
    pub tuning: Tuning,
    /// Signalled if the pair ends without being asked to.
    pub ended: Arc<EventFd>,
    /// The device's rate limits and the number of pairs they are split over.
    pub rates: Option<(Arc<RateControl>, u16)>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Bursts a pair with frames left may move in a row before its thread turns to the
/// next pair (a thread of its own goes on as long as there are frames).
const BURSTS_PER_VISIT: usize = 8;

/// The shared threads, by CPU; a thread ends when its last pair's worker is gone.
static SHARED: Mutex<BTreeMap<usize, Weak<Thread>>> = Mutex::new(BTreeMap::new());

/// The shared thread of `cpu`, started if there is none.
fn shared_thread(cpu: usize) -> io::Result<Arc<Thread>> {
    let mut threads = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = threads.get(&cpu).and_then(Weak::upgrade) {
        if !t.finished() {
            return Ok(t);
        }
    }
    let t = Arc::new(Thread::start(format!("vdpad-cpu{cpu}"), Some(cpu))?);
    threads.insert(cpu, Arc::downgrade(&t));
    Ok(t)
}

/// A request to a worker thread.
enum Command {
    /// Run this pair too.
    Add(Box<Slot>),
    /// Stop pair `id` and send how it ended (`None`: the thread does not know it).
    Remove(u64, mpsc::Sender<Option<Exit>>),
}

/// Where a worker thread takes its requests from.
struct Mailbox {
    commands: Mutex<Vec<Command>>,
    /// Commands wait: the thread looks at this once per round.
    pending: AtomicBool,
    /// The last handle is gone: end the thread.
    shutdown: AtomicBool,
    wake: EventFd,
}

/// A worker thread and its mailbox.
struct Thread {
    mailbox: Arc<Mailbox>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Thread {
    fn start(name: String, cpu: Option<usize>) -> io::Result<Thread> {
        let mailbox = Arc::new(Mailbox {
            commands: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        });
        let m = mailbox.clone();
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || serve(&m, cpu))?;
        Ok(Thread {
            mailbox,
            handle: Mutex::new(Some(handle)),
        })
    }

    fn send(&self, command: Command) {
        let m = &self.mailbox;
        m.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(command);
        m.pending.store(true, Ordering::Release);
        let _ = m.wake.write(1);
    }

    fn finished(&self) -> bool {
        let h = self.handle.lock().unwrap_or_else(|e| e.into_inner());
        h.as_ref().is_none_or(|h| h.is_finished())
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        self.mailbox.shutdown.store(true, Ordering::Release);
        self.mailbox.pending.store(true, Ordering::Release);
        let _ = self.mailbox.wake.write(1);
        let handle = self.handle.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = handle.take() {
            let _ = h.join();
        }
    }
}

/// A pair on a thread, with what is needed to report it when it ends on its own.
struct Slot {
    id: u64,
    pair: PairLoop,
    used: [UsedIndex; 2],
    counters: Arc<QueueCounters>,
    done: Arc<AtomicBool>,
    ended: Arc<EventFd>,
}

impl Slot {
    /// Stops the pair; a panic on the way is the pair's own (its rings resume where
    /// the guest saw completions stop), not the thread's.
    fn finish(self) -> Exit {
        let (used, counters, name) = (self.used, self.counters, self.pair.name().to_owned());
        let pair = self.pair;
        std::panic::catch_unwind(AssertUnwindSafe(move || pair.finish())).unwrap_or_else(|_| {
            error!(worker = %name, "datapath worker panicked while stopping");
            PairLoop::panicked(&used, &counters)
        })
    }
}

/// A worker thread's pairs, and the exits of those that ended on their own and were
/// not yet removed.
#[derive(Default)]
struct Pairs {
    slots: Vec<Slot>,
    ended: BTreeMap<u64, Exit>,
}

impl Pairs {
    /// Runs `step` on pair `i`, catching a panic; a panicking pair is ended.
    fn guarded<T>(&mut self, i: usize, step: impl FnOnce(&mut PairLoop) -> T) -> Option<T> {
        let slot = &mut self.slots[i];
        match std::panic::catch_unwind(AssertUnwindSafe(|| step(&mut slot.pair))) {
            Ok(v) => Some(v),
            Err(payload) => {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let slot = self.slots.remove(i);
                let exit = PairLoop::panicked(&slot.used, &slot.counters);
                let (rx, tx) = exit.bases();
                error!(worker = %slot.pair.name(), panic = %what, rx, tx,
                       "datapath worker panicked; the pair stops and resumes where the guest saw it stop");
                self.ended_alone(slot.id, &slot.done, &slot.ended, exit);
                None
            }
        }
    }

    /// Pair `i` stops on its own (its memory faulted).
    fn end(&mut self, i: usize) {
        let slot = self.slots.remove(i);
        let (id, done, ended) = (slot.id, slot.done.clone(), slot.ended.clone());
        let exit = slot.finish();
        self.ended_alone(id, &done, &ended, exit);
    }

    fn ended_alone(&mut self, id: u64, done: &AtomicBool, ended: &EventFd, exit: Exit) {
        self.ended.insert(id, exit);
        done.store(true, Ordering::Release);
        // Tell the control plane to reap and restart it.
        let _ = ended.write(1);
    }

    /// Stops pair `id` at a request, or gives the exit it already had.
    fn remove(&mut self, id: u64) -> Option<Exit> {
        match self.slots.iter().position(|s| s.id == id) {
            Some(i) => Some(self.slots.remove(i).finish()),
            None => self.ended.remove(&id),
        }
    }

    /// Passes over every pair until all have settled and armed their notifications
    /// (true: the thread may sleep) or commands wait (false).
    fn run_until_idle(&mut self, mailbox: &Mailbox) -> bool {
        loop {
            if mailbox.pending.load(Ordering::Relaxed) {
                return false;
            }
            let mut again = false;
            let mut i = 0;
            'pairs: while i < self.slots.len() {
                // A pair with frames left keeps the thread for a few bursts: the next
                // pair's ring has more time to fill, and each visit moves more.
                for _ in 0..BURSTS_PER_VISIT {
                    match self.guarded(i, PairLoop::pass) {
                        Some(Pass::Busy) => again = true,
                        Some(Pass::Polling) => {
                            again = true;
                            break;
                        }
                        Some(Pass::Settled) => break,
                        Some(Pass::Faulted) => {
                            self.end(i);
                            continue 'pairs;
                        }
                        None => continue 'pairs,
                    }
                }
                i += 1;
            }
            if again {
                continue;
            }
            let mut i = 0;
            while i < self.slots.len() {
                match self.guarded(i, PairLoop::arm) {
                    Some(woken) => again |= woken,
                    None => continue,
                }
                i += 1;
            }
            if !again {
                return true;
            }
        }
    }
}

/// The thread's loop: take requests, run the pairs until idle, sleep on all their
/// descriptors and the mailbox.
fn serve(mailbox: &Mailbox, cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        if let Err(e) = pin_to(cpu) {
            warn!(cpu, error = %e, "cannot pin worker; it runs unpinned");
        }
    }
    let mut pairs = Pairs::default();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut slack_tight = false;
    loop {
        if mailbox.pending.swap(false, Ordering::AcqRel) {
            let commands =
                std::mem::take(&mut *mailbox.commands.lock().unwrap_or_else(|e| e.into_inner()));
            for c in commands {
                match c {
                    Command::Add(slot) => {
                        if slot.pair.coalescing() && !slack_tight {
                            // A held interrupt is due in microseconds: without this
                            // the kernel may fire the wait's deadline up to 50 µs late
                            // (the default timer slack).
                            match tighten_timer_slack() {
                                Ok(()) => slack_tight = true,
                                Err(e) => warn!(error = %e,
                                    "cannot reduce the worker's timer slack; coalesced interrupts may be late"),
                            }
                        }
                        pairs.slots.push(*slot);
                    }
                    Command::Remove(id, reply) => {
                        let _ = reply.send(pairs.remove(id));
                    }
                }
            }
            if mailbox.shutdown.load(Ordering::Acquire) {
                for slot in std::mem::take(&mut pairs.slots) {
                    slot.finish();
                }
                return;
            }
        }
        if !pairs.run_until_idle(mailbox) {
            continue;
        }
        fds.clear();
        fds.push(pollfd(mailbox.wake.as_raw_fd(), libc::POLLIN));
        let mut timeout: Option<Duration> = None;
        let mut i = 0;
        while i < pairs.slots.len() {
            // A pair whose step panics is gone from the list: the next one is at `i`.
            let Some((pfds, t)) = pairs.guarded(i, PairLoop::sleep_on) else {
                continue;
            };
            fds.extend(pfds.iter().map(|&(fd, events)| pollfd(fd, events)));
            timeout = match (timeout, t) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            i += 1;
        }
        if let Err(e) = wait(&mut fds, timeout) {
            // Cannot happen with valid descriptors and memory; the pairs stop as if
            // their memory had gone, and the control plane restarts them.
            error!(error = %e, "worker poll failed; its pairs stop");
            while !pairs.slots.is_empty() {
                pairs.end(0);
            }
            continue;
        }
        if fds[0].revents != 0 {
            let _ = mailbox.wake.read();
        }
        let slept = pairs.slots.len();
        let mut i = 0;
        for k in 0..slept {
            #[cfg(test)]
            count_wakeup(pairs.slots[i].pair.name());
            let r = &fds[1 + 4 * k..1 + 4 * k + 4];
            let ready = [r[0].revents, r[1].revents, r[2].revents, r[3].revents];
            // The pair that slept k-th is at `i` (those before it that panicked are gone).
            if pairs.guarded(i, |p| p.woke(ready)).is_some() {
                i += 1;
            }
        }
    }
}

fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd: if events == 0 || fd < 0 { -1 } else { fd },
        events,
        revents: 0,
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

/// Blocks until one of `fds` is ready (a negative fd is ignored) or `timeout` passes;
/// each entry's `revents` says what it reported.
fn wait(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
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
        // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd structs of
        // the length passed, and `ts_ptr` is null or points at a timespec, both alive
        // for the duration of the call; a null signal mask leaves the mask unchanged.
        let n = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                ts_ptr,
                std::ptr::null(),
            )
        };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Fault injection for tests: a pair whose name is listed here panics on its next
/// pass (`NAME:finish`: when it is stopped).
#[cfg(test)]
pub(crate) static PANIC_IN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[cfg(test)]
pub(crate) fn inject_faults(pair: &str) {
    let mut list = PANIC_IN.lock().unwrap();
    if let Some(i) = list.iter().position(|n| n == pair) {
        list.remove(i);
        drop(list);
        panic!("injected fault in {pair}");
    }
}

/// Wakeups per pair name, for tests that check a worker does not spin.
#[cfg(test)]
static WAKEUPS: std::sync::Mutex<BTreeMap<String, u64>> = std::sync::Mutex::new(BTreeMap::new());

/// How many times the threads serving the pairs of device `device` returned from
/// their wait.
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
fn count_wakeup(pair: &str) {
    *WAKEUPS.lock().unwrap().entry(pair.to_owned()).or_default() += 1;
}
