//! Rate limiting: per device and direction, a packets/s and a bits/s token bucket,
//! enforced by the worker. A direction out of tokens is simply not served: its frames
//! wait on the guest's TX ring (or in the backend's receive queue) and the worker
//! sleeps on a timerfd until the bucket holds a burst again, so the guest sees
//! back-pressure, nothing is dropped by the limiter, and nobody spins.
//!
//! Buckets may go into debt by the frames of one pass (a frame's size is only known
//! once it is taken), which later waits pay back: the long-run rate is exact.
//!
//! The limits live in a [`RateControl`] shared with the control plane
//! (`vdpactl rate`); workers pick a change up on their next pass. A device's limit is
//! split evenly over its queue pairs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vdpa::QueueCounters;

use crate::engine::{Engine, Progress, RxState, TxState};

const NS: i128 = 1_000_000_000;
/// Default bucket depth, as time at the limit.
pub const DEFAULT_BURST: Duration = Duration::from_millis(5);
/// A bucket always holds at least one largest frame.
const MIN_BYTE_BURST: u64 = 65_536;
/// While frames wait for tokens, a late wakeup (the worker was not scheduled on time)
/// is credited beyond the bucket's depth, up to this much time at the limit: the
/// guest waited, so the lateness is not taken from its rate.
const LATE_CREDIT_NS: i128 = 100_000_000;

/// The limits of one direction; 0 is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    /// Packets per second.
    pub pps: u64,
    /// Bits per second (frame bytes, without the virtio-net header, times 8).
    pub bps: u64,
}

impl Rate {
    /// Whether anything is limited.
    pub fn limited(&self) -> bool {
        self.pps > 0 || self.bps > 0
    }
}

/// A device's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rates {
    /// Guest to host.
    pub tx: Rate,
    /// Host to guest.
    pub rx: Rate,
    /// Bucket depth, as time at the limit.
    pub burst: Duration,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            tx: Rate::default(),
            rx: Rate::default(),
            burst: DEFAULT_BURST,
        }
    }
}

/// A device's limits, changeable while its workers run.
#[derive(Debug, Default)]
pub struct RateControl {
    rates: Mutex<Rates>,
    generation: AtomicU64,
}

impl RateControl {
    /// Limits `rates`.
    pub fn new(rates: Rates) -> Arc<RateControl> {
        Arc::new(RateControl {
            rates: Mutex::new(rates),
            generation: AtomicU64::new(0),
        })
    }

    /// The limits in effect.
    pub fn get(&self) -> Rates {
        *self.rates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New limits; running workers take them on their next pass.
    pub fn set(&self, rates: Rates) {
        *self.rates.lock().unwrap_or_else(|e| e.into_inner()) = rates;
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A token bucket in units × 10⁹ (units per second × nanoseconds).
#[derive(Debug)]
struct Bucket {
    rate: i128,
    cap: i128,
    tokens: i128,
}

impl Bucket {
    fn new(per_second: u64, cap_units: u64) -> Bucket {
        let cap = i128::from(cap_units.max(1)) * NS;
        Bucket {
            rate: i128::from(per_second),
            cap,
            tokens: cap,
        }
    }

    /// Adds `ns` worth of tokens, up to the depth; with `waiting` (frames waited for
    /// tokens all along) up to [`LATE_CREDIT_NS`] worth beyond it. Tokens above the
    /// depth are never taken away, only not added to.
    fn refill(&mut self, ns: i128, waiting: bool) {
        let ceiling = if waiting {
            self.cap.max(LATE_CREDIT_NS * self.rate)
        } else {
            self.cap
        };
        if self.tokens < ceiling {
            self.tokens = (self.tokens + ns * self.rate).min(ceiling);
        }
    }

    fn units(&self) -> i128 {
        self.tokens.div_euclid(NS)
    }

    fn charge(&mut self, units: u64) {
        self.tokens -= i128::from(units) * NS;
    }

    /// Nanoseconds until the bucket holds `units` (capped at its depth).
    fn wait_for(&self, units: u64) -> i128 {
        let want = (i128::from(units) * NS).min(self.cap);
        let missing = want - self.tokens;
        if missing <= 0 {
            0
        } else {
            (missing + self.rate - 1) / self.rate
        }
    }
}

/// One direction of one pair.
#[derive(Debug, Default)]
struct Direction {
    packets: Option<Bucket>,
    bytes: Option<Bucket>,
    throttled_since: Option<Instant>,
}

impl Direction {
    fn new(rate: Rate, share: u64, burst: Duration) -> Direction {
        let depth = |per_s: u64| (u128::from(per_s) * burst.as_nanos() / 1_000_000_000) as u64;
        let pps = rate.pps.div_ceil(share);
        let bytes_s = (rate.bps / 8).div_ceil(share);
        Direction {
            packets: (pps > 0).then(|| Bucket::new(pps, depth(pps))),
            bytes: (bytes_s > 0).then(|| Bucket::new(bytes_s, depth(bytes_s).max(MIN_BYTE_BURST))),
            throttled_since: None,
        }
    }

    fn refill(&mut self, ns: i128) {
        let waiting = self.throttled_since.is_some();
        for b in [&mut self.packets, &mut self.bytes].into_iter().flatten() {
            b.refill(ns, waiting);
        }
    }

    /// Frames this pass may move (0: throttled).
    fn budget(&self, burst: usize) -> usize {
        let by_packets = self
            .packets
            .as_ref()
            .map_or(burst, |b| b.units().clamp(0, burst as i128) as usize);
        match &self.bytes {
            Some(b) if b.units() <= 0 => 0,
            _ => by_packets,
        }
    }

    fn charge(&mut self, packets: u64, bytes: u64) {
        if let Some(b) = &mut self.packets {
            b.charge(packets);
        }
        if let Some(b) = &mut self.bytes {
            b.charge(bytes);
        }
    }

    /// Nanoseconds until a whole burst may go.
    fn wait(&self, burst: usize) -> i128 {
        let p = self
            .packets
            .as_ref()
            .map_or(0, |b| b.wait_for(burst as u64));
        let b = self
            .bytes
            .as_ref()
            .map_or(0, |b| b.wait_for(MIN_BYTE_BURST));
        p.max(b).max(1)
    }

    /// Notes whether the direction is held back now; a hold that ends is counted.
    fn note(&mut self, throttled: bool, now: Instant, counters: &QueueCounters) {
        match (throttled, self.throttled_since) {
            (true, None) => self.throttled_since = Some(now),
            (false, Some(since)) => {
                counters.throttle(now.duration_since(since).as_nanos() as u64);
                self.throttled_since = None;
            }
            _ => {}
        }
    }
}

/// The limiter of one pair's worker.
#[derive(Debug)]
pub struct Limiter {
    control: Arc<RateControl>,
    generation: u64,
    share: u64,
    active: bool,
    tx: Direction,
    rx: Direction,
    last: Instant,
    /// When the throttled directions may go again.
    wait: Option<Duration>,
}

impl Limiter {
    /// A limiter following `control`, for one of `pairs` queue pairs.
    pub fn new(control: Arc<RateControl>, pairs: u16) -> Limiter {
        let mut l = Limiter {
            generation: u64::MAX,
            control,
            share: u64::from(pairs.max(1)),
            active: false,
            tx: Direction::default(),
            rx: Direction::default(),
            last: Instant::now(),
            wait: None,
        };
        l.reload();
        l
    }

    fn reload(&mut self) {
        self.generation = self.control.generation.load(Ordering::Acquire);
        let r = self.control.get();
        self.active = r.tx.limited() || r.rx.limited();
        self.tx = Direction::new(r.tx, self.share, r.burst);
        self.rx = Direction::new(r.rx, self.share, r.burst);
        self.last = Instant::now();
    }

    /// One pass of `engine` within the limits: a direction out of tokens is reported
    /// [`TxState::Throttled`]/[`RxState::Throttled`] and not served.
    #[inline]
    pub fn process(&mut self, engine: &mut dyn Engine, burst: usize) -> Progress {
        if self.control.generation.load(Ordering::Relaxed) != self.generation {
            self.reload();
        }
        if !self.active {
            self.wait = None;
            return engine.process(burst);
        }
        self.limited_pass(engine, burst)
    }

    fn limited_pass(&mut self, engine: &mut dyn Engine, burst: usize) -> Progress {
        let now = Instant::now();
        let ns = now.duration_since(self.last).as_nanos() as i128;
        self.last = now;
        self.tx.refill(ns);
        self.rx.refill(ns);
        let (txb, rxb) = (self.tx.budget(burst), self.rx.budget(burst));
        let before = counts(engine);
        let mut p = if txb == 0 && rxb == 0 {
            Progress {
                tx: TxState::Throttled,
                rx: RxState::Throttled,
            }
        } else {
            engine.process_each(txb, rxb)
        };
        let after = counts(engine);
        self.tx.charge(after.0 - before.0, after.1 - before.1);
        self.rx.charge(after.2 - before.2, after.3 - before.3);
        if txb == 0 {
            p.tx = TxState::Throttled;
        }
        if rxb == 0 {
            p.rx = RxState::Throttled;
        }
        let (rx, tx) = engine.queues();
        self.tx.note(txb == 0, now, &tx.q.counters);
        self.rx.note(rxb == 0, now, &rx.q.counters);
        let mut wait = None;
        if p.tx == TxState::Throttled {
            wait = Some(self.tx.wait(burst));
        }
        if p.rx == RxState::Throttled {
            let w = self.rx.wait(burst);
            wait = Some(wait.map_or(w, |t: i128| t.min(w)));
        }
        self.wait = wait.map(|ns| Duration::from_nanos(ns as u64));
        p
    }

    /// After a throttled pass: how long until a throttled direction may go again.
    pub fn wait(&self) -> Option<Duration> {
        self.wait
    }
}

/// (tx packets, tx bytes, rx packets, rx bytes) of the pass in progress.
fn counts(engine: &mut dyn Engine) -> (u64, u64, u64, u64) {
    let (rx, tx) = engine.queues();
    (
        tx.q.counts.packets,
        tx.q.counts.bytes,
        rx.q.counts.packets,
        rx.q.counts.bytes,
    )
}

/// A one-shot monotonic timer the worker waits on while throttled.
#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
}

impl Timer {
    /// A disarmed timer.
    pub fn new() -> io::Result<Timer> {
        // SAFETY: timerfd_create with constant flags; the result is checked and owned.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Timer { fd })
    }

    /// Fires once after `after` (at least 1 ns).
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not wanted.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes an expiry (after the timer was reported readable).
    pub fn clear(&self) {
        let mut n = 0u64;
        // SAFETY: reads the 8-byte expiry count into `n`; EAGAIN leaves it alone.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_the_rate_and_allow_debt() {
        let mut d = Direction::new(Rate { pps: 1000, bps: 0 }, 1, Duration::from_millis(10));
        // Starts full: 10 packets.
        assert_eq!(d.budget(16), 10);
        d.charge(10, 0);
        assert_eq!(d.budget(16), 0);
        // 16 packets at 1000/s need 10 ms (the depth caps the wait).
        assert_eq!(d.wait(16), 10_000_000);
        d.refill(5_000_000);
        assert_eq!(d.budget(16), 5);
        // Idle: the depth caps what is saved up.
        d.refill(1_000_000_000);
        assert_eq!(d.budget(64), 10);
        // Waiting for tokens and woken late: the lateness is credited.
        d.charge(10, 0);
        d.throttled_since = Some(Instant::now());
        d.refill(30_000_000);
        assert_eq!(d.budget(64), 30);
        d.throttled_since = None;
        d.refill(1_000_000);
        assert_eq!(d.budget(64), 30, "not added to, not taken away");
        // Bytes: one pass may overdraw; the debt is waited for.
        let mut b = Direction::new(
            Rate {
                pps: 0,
                bps: 8_000_000,
            },
            1,
            Duration::from_millis(1),
        );
        assert_eq!(b.budget(16), 16);
        b.charge(16, 200_000);
        assert_eq!(b.budget(16), 0);
        // 200000 - 65536 (the minimum depth) bytes of debt plus 65536 to refill, at
        // 1 MB/s.
        assert_eq!(b.wait(16), 200_000_000);
    }

    #[test]
    fn the_limit_is_shared_by_the_pairs() {
        let d = Direction::new(Rate { pps: 1000, bps: 0 }, 4, Duration::from_secs(1));
        assert_eq!(d.packets.as_ref().unwrap().rate, 250);
    }

    #[test]
    fn changes_reach_the_limiter() {
        let c = RateControl::new(Rates::default());
        let l = Limiter::new(c.clone(), 1);
        assert!(!l.active);
        c.set(Rates {
            tx: Rate { pps: 10, bps: 0 },
            ..Rates::default()
        });
        assert_ne!(c.generation.load(Ordering::Relaxed), l.generation);
    }

    #[test]
    fn the_timer_fires() {
        let t = Timer::new().unwrap();
        t.arm(Duration::from_millis(2)).unwrap();
        let mut p = libc::pollfd {
            fd: t.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 1000) };
        assert_eq!(n, 1);
        t.clear();
    }
}
