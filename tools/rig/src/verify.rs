//! `verify`: send N numbered frames through a loopback device and check that every one
//! comes back once, intact and in order, per queue pair.
//!
//! TX and RX are pipelined: the rig keeps posting frames while earlier ones are still in
//! flight, but never more than the posted RX buffers can hold, so a device that forwards
//! into the rig's RX ring (testpmd io forwarding, our loopback backend) never has to drop.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::RigError;
use crate::frame::{frame_len, write_frame, FrameChecker, MAX_FRAME, MIN_FRAME};
use crate::rig::Rig;
use crate::rxq::RxFrame;

/// Parameters of a verify run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Frames to send in total (spread round-robin over the queue pairs).
    pub packets: u64,
    /// Frame size in bytes (L2, without header).
    pub size: usize,
    /// If larger than `size`, frame sizes vary in `size..=size_max` (deterministically).
    pub size_max: usize,
    /// Bound on the whole run.
    pub timeout: Duration,
    /// Give up when nothing moves for this long.
    pub stall_timeout: Duration,
    /// Busy-poll instead of sleeping on call eventfds.
    pub poll: bool,
    /// Play a live migration during the run: start dirty logging once this many frames
    /// were sent, stop it once the second number were (QEMU's messages, while the rings
    /// run: see [`crate::migration`]).
    pub migrate: Option<(u64, u64)>,
    /// Send every frame on this pair; the other pairs only keep RX buffers posted. A
    /// device whose far end picks the receive queue by flow (a multiqueue tap behind a
    /// NIC) returns a pair's frames on the queue that sent them only when one pair
    /// sends.
    pub only_pair: Option<usize>,
}

impl VerifyOptions {
    /// `packets` frames of `size` bytes, 30 s timeout, 3 s stall timeout, interrupts.
    pub fn new(packets: u64, size: usize) -> Self {
        Self {
            packets,
            size,
            size_max: size,
            timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(3),
            poll: false,
            migrate: None,
            only_pair: None,
        }
    }
}

/// Per-pair results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PairVerify {
    /// Queue pair.
    pub pair: usize,
    /// Frames sent.
    pub sent: u64,
    /// Distinct good frames received.
    pub received: u64,
    /// Frames sent but never received intact.
    pub lost: u64,
    /// Frames that failed a check (length, checksum, pattern, wrong pair, bad sequence).
    pub corrupt: u64,
    /// Good frames that arrived after a frame with a higher sequence number.
    pub reordered: u64,
    /// Good frames received more than once (extra copies).
    pub dup: u64,
    /// The first missing sequence numbers (at most 10).
    pub first_missing: Vec<u64>,
}

/// Results of a verify run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VerifyReport {
    /// Frames sent.
    pub sent: u64,
    /// Distinct good frames received.
    pub received: u64,
    /// Frames never received intact.
    pub lost: u64,
    /// Frames that failed a check.
    pub corrupt: u64,
    /// Frames received out of order.
    pub reordered: u64,
    /// Duplicate frames.
    pub dup: u64,
    /// Smallest frame size.
    pub size_min: usize,
    /// Largest frame size.
    pub size_max: usize,
    /// Wall time of the run in seconds.
    pub seconds: f64,
    /// Kicks the rig sent on TX rings.
    pub tx_kicks: u64,
    /// Kicks the rig sent on RX rings (buffer refills).
    pub rx_kicks: u64,
    /// Of all kicks, those stored into a doorbell page (host notifiers).
    pub page_kicks: u64,
    /// Interrupts received (call eventfd reads), all rings.
    pub interrupts: u64,
    /// Sum of call eventfd counter values, all rings.
    pub interrupt_sum: u64,
    /// RX used elements with an impossible length.
    pub bad_len: u64,
    /// RX frames with an impossible `num_buffers`.
    pub bad_num_buffers: u64,
    /// RX frames with offload fields set in the header.
    pub bad_hdr: u64,
    /// Most RX buffers one frame took (MRG_RXBUF merging).
    pub max_buffers: u16,
    /// Why the run ended early, if it did.
    pub aborted: Option<String>,
    /// With [`VerifyOptions::migrate`]: the frames sent when logging started and when
    /// it stopped.
    pub logged: Option<(u64, u64)>,
    /// A few descriptions of corrupt frames.
    pub corrupt_examples: Vec<String>,
    /// Per-pair results.
    pub pairs: Vec<PairVerify>,
}

impl VerifyReport {
    /// True when nothing was lost, corrupted, duplicated or reordered and the device
    /// wrote sane headers.
    pub fn passed(&self) -> bool {
        self.aborted.is_none()
            && self.sent > 0
            && self.lost == 0
            && self.corrupt == 0
            && self.reordered == 0
            && self.dup == 0
            && self.bad_len == 0
            && self.bad_num_buffers == 0
            && self.bad_hdr == 0
    }

    /// The one-line summary.
    pub fn summary(&self) -> String {
        let size = if self.size_min == self.size_max {
            self.size_min.to_string()
        } else {
            format!("{}-{}", self.size_min, self.size_max)
        };
        let mut s = format!(
            "verify: sent {} received {} lost {} corrupt {} reordered {} dup {} size {} \
             time {:.2}s ({:.2} Mpps) kicks {} interrupts {}",
            self.sent,
            self.received,
            self.lost,
            self.corrupt,
            self.reordered,
            self.dup,
            size,
            self.seconds,
            if self.seconds > 0.0 {
                self.received as f64 / self.seconds / 1e6
            } else {
                0.0
            },
            self.tx_kicks + self.rx_kicks,
            self.interrupts
        );
        if let Some((from, to)) = self.logged {
            s += &format!(" dirty-logged from frame {from} to {to}");
        }
        if self.page_kicks > 0 {
            s += &format!(" ({} kicks through doorbell pages)", self.page_kicks);
        }
        if self.bad_len + self.bad_num_buffers + self.bad_hdr > 0 {
            s += &format!(
                " bad_len {} bad_num_buffers {} bad_hdr {}",
                self.bad_len, self.bad_num_buffers, self.bad_hdr
            );
        }
        s
    }

    /// Multi-line explanation of a failure (empty when passed).
    pub fn failure_details(&self) -> String {
        let mut s = String::new();
        if let Some(a) = &self.aborted {
            s += &format!("aborted: {a}\n");
        }
        for p in &self.pairs {
            if p.lost > 0 {
                s += &format!(
                    "pair {}: {} of {} frames missing; first missing seq {:?}\n",
                    p.pair, p.lost, p.sent, p.first_missing
                );
            }
            if p.corrupt + p.dup + p.reordered > 0 {
                s += &format!(
                    "pair {}: corrupt {} dup {} reordered {}\n",
                    p.pair, p.corrupt, p.dup, p.reordered
                );
            }
        }
        for e in &self.corrupt_examples {
            s += &format!("corrupt: {e}\n");
        }
        s
    }
}

/// Sequence bookkeeping of one pair.
#[derive(Debug)]
struct Tracker {
    pair: usize,
    quota: u64,
    next_seq: u64,
    returned: u64,
    seen: Vec<u64>,
    highest: Option<u64>,
    stats: PairVerify,
    window: usize,
}

impl Tracker {
    fn in_flight(&self) -> u64 {
        self.next_seq.saturating_sub(self.returned)
    }
    fn complete(&self) -> bool {
        self.stats.received == self.quota
    }
    fn seen(&self, seq: u64) -> bool {
        self.seen[(seq / 64) as usize] & (1 << (seq % 64)) != 0
    }
}

struct Checker {
    frames: FrameChecker,
    size_min: usize,
    size_max: usize,
    examples: Vec<String>,
    max_buffers: u16,
}

impl Checker {
    fn corrupt(&mut self, t: &mut Tracker, what: String) {
        t.stats.corrupt += 1;
        if self.examples.len() < 5 {
            self.examples.push(format!("pair {}: {what}", t.pair));
        }
    }

    fn frame(&mut self, t: &mut Tracker, f: &RxFrame<'_>) {
        t.returned += 1;
        self.max_buffers = self.max_buffers.max(f.buffers);
        let id = match self.frames.check(f.data) {
            Ok(id) => id,
            Err(e) => {
                return self.corrupt(
                    t,
                    format!("{}-byte frame in {} buffers: {e}", f.len, f.buffers),
                )
            }
        };
        if usize::from(id.pair) != t.pair || id.seq >= t.quota {
            return self.corrupt(
                t,
                format!("frame of pair {} seq {} misplaced", id.pair, id.seq),
            );
        }
        let want = frame_len(id.pair, id.seq, self.size_min, self.size_max);
        if f.len != want {
            return self.corrupt(
                t,
                format!("seq {} has {} bytes, sent {want}", id.seq, f.len),
            );
        }
        if t.seen(id.seq) {
            t.stats.dup += 1;
            return;
        }
        t.seen[(id.seq / 64) as usize] |= 1 << (id.seq % 64);
        t.stats.received += 1;
        match t.highest {
            Some(h) if h > id.seq => t.stats.reordered += 1,
            _ => t.highest = Some(id.seq),
        }
    }
}

/// Runs verify on `rig`: sends `o.packets` frames and checks what comes back.
pub fn run_verify(rig: &mut Rig, o: &VerifyOptions) -> Result<VerifyReport, RigError> {
    let size_max = o.size_max.max(o.size);
    if o.size < MIN_FRAME || size_max > MAX_FRAME {
        return Err(RigError::Options(format!(
            "frame sizes {}..={size_max} not within {MIN_FRAME}..={MAX_FRAME}",
            o.size
        )));
    }
    if size_max > rig.options().max_frame as usize {
        return Err(RigError::Options(format!(
            "frame size {size_max} exceeds the rig's max_frame {}",
            rig.options().max_frame
        )));
    }
    let n = rig.pairs().len() as u64;
    if let Some(p) = o.only_pair.filter(|&p| p as u64 >= n) {
        return Err(RigError::Options(format!(
            "pair {p} to send on, but the rig has {n} pair(s)"
        )));
    }
    let mut trackers: Vec<Tracker> = (0..rig.pairs().len())
        .map(|i| {
            let quota = match o.only_pair {
                Some(p) if p == i => o.packets,
                Some(_) => 0,
                None => o.packets / n + u64::from((i as u64) < o.packets % n),
            };
            let window = rig.pairs()[i].rx.frames_capacity(size_max);
            Tracker {
                pair: i,
                quota,
                next_seq: 0,
                returned: 0,
                seen: vec![0; quota.div_ceil(64) as usize],
                highest: None,
                stats: PairVerify {
                    pair: i,
                    ..Default::default()
                },
                window,
            }
        })
        .collect();
    if let Some(t) = trackers.iter().find(|t| t.window == 0) {
        return Err(RigError::Options(format!(
            "{size_max}-byte frames do not fit the RX chains of pair {} (raise --rx-buf-size)",
            t.pair
        )));
    }
    let mut checker = Checker {
        frames: FrameChecker::new(),
        size_min: o.size,
        size_max,
        examples: Vec::new(),
        max_buffers: 0,
    };
    let before = rig.stats();
    let mut buf = vec![0u8; size_max];
    rig.disable_interrupts();
    rig.refill_all()?;
    let start = Instant::now();
    let mut last_progress = start;
    let mut aborted = None;
    let mut migration = Migration::new(o.migrate);
    loop {
        let sent: u64 = trackers.iter().map(|t| t.next_seq).sum();
        migration.step(rig, sent)?;
        let mut progress = false;
        for (p, t) in rig.pairs_mut().iter_mut().zip(trackers.iter_mut()) {
            progress |= p.tx.reap()? > 0;
            progress |= p.rx.poll(256, |f| checker.frame(t, &f))? > 0;
            p.rx.refill()?;
            p.rx.flush()?;
            while t.next_seq < t.quota && t.in_flight() < t.window as u64 && p.tx.can_send() {
                let len = frame_len(t.pair as u16, t.next_seq, o.size, size_max);
                write_frame(t.pair as u16, t.next_seq, &mut buf[..len]);
                p.tx.send(&buf[..len])?;
                t.next_seq += 1;
                progress = true;
            }
            p.tx.flush()?;
        }
        let all_sent = trackers.iter().all(|t| t.next_seq == t.quota);
        if trackers.iter().all(Tracker::complete)
            || (all_sent && trackers.iter().all(|t| t.in_flight() == 0))
        {
            break;
        }
        let now = Instant::now();
        if progress {
            last_progress = now;
        } else if now - last_progress > o.stall_timeout {
            aborted = Some(format!(
                "no progress for {:?} ({} frames in flight)",
                o.stall_timeout,
                trackers.iter().map(Tracker::in_flight).sum::<u64>()
            ));
            break;
        }
        if now - start > o.timeout {
            aborted = Some(format!("overall timeout of {:?}", o.timeout));
            break;
        }
        if !progress && !o.poll {
            let want_tx = trackers.iter().any(|t| t.next_seq < t.quota);
            rig.sleep_for_work(want_tx, Duration::from_millis(20))?;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    rig.drain_calls()?;
    let d = rig.stats().since(&before);

    let mut r = VerifyReport {
        size_min: o.size,
        size_max,
        seconds,
        tx_kicks: d.tx.kicks,
        rx_kicks: d.rx.kicks,
        page_kicks: d.tx.page_kicks + d.rx.page_kicks,
        interrupts: d.tx.interrupts + d.rx.interrupts,
        interrupt_sum: d.tx.interrupt_sum + d.rx.interrupt_sum,
        bad_len: d.rx.bad_len,
        bad_num_buffers: d.rx.bad_num_buffers,
        bad_hdr: d.rx.bad_hdr,
        max_buffers: checker.max_buffers,
        aborted,
        corrupt_examples: checker.examples,
        logged: migration.logged(),
        ..Default::default()
    };
    for mut t in trackers {
        t.stats.sent = t.next_seq;
        t.stats.lost = t.quota - t.stats.received;
        if t.stats.lost > 0 {
            t.stats.first_missing = (0..t.quota).filter(|&s| !t.seen(s)).take(10).collect();
        }
        r.sent += t.stats.sent;
        r.received += t.stats.received;
        r.lost += t.stats.lost;
        r.corrupt += t.stats.corrupt;
        r.reordered += t.stats.reordered;
        r.dup += t.stats.dup;
        r.pairs.push(t.stats);
    }
    Ok(r)
}

/// Where a verify run is in the migration it plays.
struct Migration {
    window: Option<(u64, u64)>,
    started: Option<u64>,
    stopped: Option<u64>,
}

impl Migration {
    fn new(window: Option<(u64, u64)>) -> Self {
        Migration {
            window,
            started: None,
            stopped: None,
        }
    }

    /// Starts or stops logging when `sent` frames crossed the window's ends.
    fn step(&mut self, rig: &mut Rig, sent: u64) -> Result<(), RigError> {
        let Some((from, to)) = self.window else {
            return Ok(());
        };
        if self.started.is_none() && sent >= from {
            rig.start_dirty_log()?;
            self.started = Some(sent);
        }
        if self.started.is_some() && self.stopped.is_none() && sent >= to {
            rig.stop_dirty_log()?;
            self.stopped = Some(sent);
        }
        Ok(())
    }

    fn logged(&self) -> Option<(u64, u64)> {
        Some((self.started?, self.stopped?))
    }
}
