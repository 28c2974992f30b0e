//! Per-queue counters, shared lock-free between a datapath worker (which adds to them
//! once per burst) and whoever reads them (logs, `vdpactl`, tests).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Why a frame was dropped. Every drop path has its own reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The guest's RX buffer chain is too small for the frame (mergeable buffers off).
    RxBufferTooSmall = 0,
    /// The frame is larger than the device accepts.
    Oversized = 1,
    /// The host backend refused the frame.
    Backend = 2,
    /// The host backend's receive queue overflowed before the frame could be taken
    /// (the kernel's count for our socket).
    BackendQueue = 3,
    /// The frame's buffers are split into more pieces than one system call can take
    /// (the kernel's IOV_MAX, 1024): for RX, the guest's buffer chain is returned empty.
    TooManySegments = 4,
    /// The guest sent a frame whose source MAC is not the device's (port security).
    SpoofedMac = 5,
    /// The guest sent an IPv4/IPv6 packet whose source address is not in the device's
    /// `allowed_ips` (port security).
    SpoofedIp = 6,
    /// The guest sent an ARP packet whose sender address (IP, or MAC) is not the
    /// device's (port security).
    SpoofedArp = 7,
    /// The guest sent a frame on a VLAN it is not on: tagged on an access port, with
    /// a VLAN not in its trunk list, or untagged on a trunk without a native VLAN.
    Vlan = 8,
}

impl DropReason {
    /// All reasons, in counter order.
    pub const ALL: [DropReason; 9] = [
        DropReason::RxBufferTooSmall,
        DropReason::Oversized,
        DropReason::Backend,
        DropReason::BackendQueue,
        DropReason::TooManySegments,
        DropReason::SpoofedMac,
        DropReason::SpoofedIp,
        DropReason::SpoofedArp,
        DropReason::Vlan,
    ];

    /// Stable name used in logs, JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::RxBufferTooSmall => "rx_buffer_too_small",
            DropReason::Oversized => "oversized",
            DropReason::Backend => "backend",
            DropReason::BackendQueue => "backend_queue",
            DropReason::TooManySegments => "too_many_segments",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::Vlan => "vlan",
        }
    }
}

/// What was wrong with a descriptor chain the guest posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadDescriptor {
    /// A head index read from the avail ring is not below the queue size.
    HeadOutOfRange = 0,
    /// A `next` index is not below the queue size.
    NextOutOfRange = 1,
    /// A buffer address/length is not entirely inside guest memory.
    Address = 2,
    /// The chain is longer than the queue (a loop, or simply too long).
    ChainTooLong = 3,
    /// A descriptor of length zero.
    ZeroLength = 4,
    /// A device-writable buffer where the device must read (TX), or the reverse (RX).
    WrongDirection = 5,
    /// An indirect descriptor, which was not negotiated.
    Indirect = 6,
    /// The chain is too short to hold a virtio-net header, or its total is too large.
    BadLength = 7,
    /// The avail index moved further than the queue size: the ring is corrupt and the
    /// queue stops until the frontend resets it.
    AvailIndexJump = 8,
}

impl BadDescriptor {
    /// All kinds, in counter order.
    pub const ALL: [BadDescriptor; 9] = [
        BadDescriptor::HeadOutOfRange,
        BadDescriptor::NextOutOfRange,
        BadDescriptor::Address,
        BadDescriptor::ChainTooLong,
        BadDescriptor::ZeroLength,
        BadDescriptor::WrongDirection,
        BadDescriptor::Indirect,
        BadDescriptor::BadLength,
        BadDescriptor::AvailIndexJump,
    ];

    /// Stable name used in logs, JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            BadDescriptor::HeadOutOfRange => "head_out_of_range",
            BadDescriptor::NextOutOfRange => "next_out_of_range",
            BadDescriptor::Address => "address",
            BadDescriptor::ChainTooLong => "chain_too_long",
            BadDescriptor::ZeroLength => "zero_length",
            BadDescriptor::WrongDirection => "wrong_direction",
            BadDescriptor::Indirect => "indirect",
            BadDescriptor::BadLength => "bad_length",
            BadDescriptor::AvailIndexJump => "avail_index_jump",
        }
    }
}

/// Something that stopped or degraded a queue pair: counted when it happens, logged
/// once. Events of a whole pair are counted on its RX ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueFault {
    /// The ring's kick descriptor hung up, failed, reached end of file or cannot be
    /// waited on (a regular file): it is no longer watched.
    KickFd = 0,
    /// Guest memory faulted (the frontend truncated it): the pair stopped and stays
    /// stopped until a new memory table.
    GuestMemory = 1,
    /// The pair's worker thread panicked: the pair stopped and is restarted.
    WorkerPanic = 2,
}

impl QueueFault {
    /// All kinds, in counter order.
    pub const ALL: [QueueFault; 3] = [
        QueueFault::KickFd,
        QueueFault::GuestMemory,
        QueueFault::WorkerPanic,
    ];

    /// Stable name used in logs, JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            QueueFault::KickFd => "kick_fd",
            QueueFault::GuestMemory => "guest_memory",
            QueueFault::WorkerPanic => "worker_panic",
        }
    }
}

/// Live counters of one virtqueue.
#[derive(Debug, Default)]
pub struct QueueCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    kicks: AtomicU64,
    interrupts: AtomicU64,
    interrupts_suppressed: AtomicU64,
    bursts: AtomicU64,
    rx_no_buffer: AtomicU64,
    sleeps: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    bad: [AtomicU64; BadDescriptor::ALL.len()],
    faults: [AtomicU64; QueueFault::ALL.len()],
    throttled_ns: AtomicU64,
    throttled: AtomicU64,
    interrupt_probe: Mutex<Option<CountProbe>>,
}

/// Reads a count that is kept outside the datapath's own code — a NIC raising its
/// MSI-X vector straight into the call eventfd counts interrupts nobody else sees.
#[derive(Clone)]
pub struct CountProbe(Arc<dyn Fn() -> Option<u64> + Send + Sync>);

impl CountProbe {
    /// A probe that calls `read`.
    pub fn new(read: impl Fn() -> Option<u64> + Send + Sync + 'static) -> Self {
        CountProbe(Arc::new(read))
    }
}

impl std::fmt::Debug for CountProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CountProbe")
    }
}

/// Counts gathered locally during one burst, added to [`QueueCounters`] in one go.
#[derive(Clone, Copy, Debug, Default)]
pub struct BurstCounts {
    /// Frames completed.
    pub packets: u64,
    /// Frame bytes completed (without the virtio-net header).
    pub bytes: u64,
    /// Notifications received from the guest.
    pub kicks: u64,
    /// Interrupts (call eventfd writes) sent.
    pub interrupts: u64,
    /// Interrupts the guest asked us not to send (EVENT_IDX or NO_INTERRUPT).
    pub interrupts_suppressed: u64,
    /// Bursts processed (used index publications).
    pub bursts: u64,
    /// Times the queue had no buffer when a frame was waiting.
    pub rx_no_buffer: u64,
    /// Drops by reason, indexed by `DropReason as usize`. Count through
    /// [`drop`](Self::drop) or [`drop_n`](Self::drop_n), which keep `exceptions`.
    pub drops: [u64; DropReason::ALL.len()],
    /// Bad chains by kind, indexed by `BadDescriptor as usize`. Count through
    /// [`bad`](Self::bad).
    pub bad: [u64; BadDescriptor::ALL.len()],
    /// Sum of `drops` and `bad`: the common burst has none, and then neither
    /// [`is_empty`](Self::is_empty) nor [`QueueCounters::flush`] walks the arrays.
    pub exceptions: u64,
}

impl BurstCounts {
    /// Counts one drop.
    pub fn drop(&mut self, reason: DropReason) {
        self.drop_n(reason, 1);
    }

    /// Counts `n` drops for one reason.
    pub fn drop_n(&mut self, reason: DropReason, n: u64) {
        self.drops[reason as usize] += n;
        self.exceptions += n;
    }

    /// Counts one bad chain.
    pub fn bad(&mut self, kind: BadDescriptor) {
        self.bad[kind as usize] += 1;
        self.exceptions += 1;
    }

    /// Whether nothing was counted.
    #[inline]
    pub fn is_empty(&self) -> bool {
        // One OR over every field, no early exits: this runs on every pass of a
        // busy-polling worker.
        self.packets
            | self.bytes
            | self.kicks
            | self.interrupts
            | self.interrupts_suppressed
            | self.bursts
            | self.rx_no_buffer
            | self.exceptions
            == 0
    }
}

fn add(c: &AtomicU64, v: u64) {
    if v != 0 {
        c.fetch_add(v, Ordering::Relaxed);
    }
}

impl QueueCounters {
    /// Counts one sleep of the worker serving this ring (once per wait: not batched).
    pub fn slept(&self) {
        self.sleeps.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one period in which the ring was held back by its rate limit, `ns`
    /// nanoseconds long (rare: once per timer wakeup, not batched).
    pub fn throttle(&self, ns: u64) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        self.throttled_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Counts one fault event (rare: not batched).
    pub fn fault(&self, kind: QueueFault) {
        self.faults[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds a burst's counts and clears them.
    #[inline]
    pub fn flush(&self, b: &mut BurstCounts) {
        if b.is_empty() {
            return;
        }
        add(&self.packets, b.packets);
        add(&self.bytes, b.bytes);
        add(&self.kicks, b.kicks);
        add(&self.interrupts, b.interrupts);
        add(&self.interrupts_suppressed, b.interrupts_suppressed);
        add(&self.bursts, b.bursts);
        add(&self.rx_no_buffer, b.rx_no_buffer);
        if b.exceptions != 0 {
            for (c, v) in self.drops.iter().zip(b.drops) {
                add(c, v);
            }
            for (c, v) in self.bad.iter().zip(b.bad) {
                add(c, v);
            }
        }
        *b = BurstCounts::default();
    }

    /// Counts interrupts with `probe` instead of the datapath's own count (`None`
    /// returns to the datapath's count).
    pub fn set_interrupt_probe(&self, probe: Option<CountProbe>) {
        *self
            .interrupt_probe
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = probe;
    }

    /// A consistent-enough copy of the counters of ring `ring`.
    pub fn snapshot(&self, ring: u16) -> QueueStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let probed = self
            .interrupt_probe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|p| (p.0)());
        QueueStats {
            ring,
            direction: if ring.is_multiple_of(2) { "rx" } else { "tx" },
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            kicks: get(&self.kicks),
            interrupts: probed.unwrap_or_else(|| get(&self.interrupts)),
            interrupts_suppressed: get(&self.interrupts_suppressed),
            bursts: get(&self.bursts),
            rx_no_buffer: get(&self.rx_no_buffer),
            sleeps: get(&self.sleeps),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name(), get(&self.drops[*r as usize])))
                .collect(),
            bad_descriptors: BadDescriptor::ALL
                .iter()
                .map(|k| (k.name(), get(&self.bad[*k as usize])))
                .collect(),
            faults: QueueFault::ALL
                .iter()
                .map(|k| (k.name(), get(&self.faults[*k as usize])))
                .collect(),
            throttled: get(&self.throttled),
            throttled_ns: get(&self.throttled_ns),
        }
    }
}

/// A snapshot of one queue's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// vhost-user ring index (RX of pair i is 2i, TX is 2i+1).
    pub ring: u16,
    /// "rx" (device to guest) or "tx" (guest to device).
    pub direction: &'static str,
    /// Frames completed.
    pub packets: u64,
    /// Frame bytes completed.
    pub bytes: u64,
    /// Guest notifications received on this queue.
    pub kicks: u64,
    /// Interrupts sent to the guest for this queue.
    pub interrupts: u64,
    /// Interrupts the guest suppressed.
    pub interrupts_suppressed: u64,
    /// Used-index publications.
    pub bursts: u64,
    /// Times a frame waited because the guest had posted no RX buffer.
    pub rx_no_buffer: u64,
    /// Times the worker of this ring's pair re-armed notifications and slept (counted
    /// on the pair's RX ring; 0 on TX rings and for offloaded devices). Frames per
    /// sleep shows how much a polling worker saves in kicks and wake-ups.
    pub sleeps: u64,
    /// Drops by reason.
    pub drops: Vec<(&'static str, u64)>,
    /// Bad descriptor chains by kind.
    pub bad_descriptors: Vec<(&'static str, u64)>,
    /// Events that stopped or degraded the queue, by kind ([`QueueFault`]).
    pub faults: Vec<(&'static str, u64)>,
    /// Periods the ring waited for its rate limit's tokens.
    pub throttled: u64,
    /// Time the ring waited for its rate limit's tokens, in nanoseconds.
    pub throttled_ns: u64,
}

impl QueueStats {
    /// Total drops over all reasons.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|(_, v)| v).sum()
    }

    /// Total bad chains over all kinds.
    pub fn total_bad_descriptors(&self) -> u64 {
        self.bad_descriptors.iter().map(|(_, v)| v).sum()
    }

    /// Count for one bad-descriptor kind.
    pub fn bad(&self, kind: BadDescriptor) -> u64 {
        self.bad_descriptors[kind as usize].1
    }

    /// Count for one fault kind (0 in a snapshot without fault counts).
    pub fn faulted(&self, kind: QueueFault) -> u64 {
        self.faults.get(kind as usize).map_or(0, |f| f.1)
    }

    /// Count for one drop reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].1
    }

    /// Packets per guest notification ("what is N?" for kicks); `None` before any kick.
    pub fn packets_per_kick(&self) -> Option<f64> {
        (self.kicks > 0).then(|| self.packets as f64 / self.kicks as f64)
    }

    /// Packets per interrupt sent; `None` before any interrupt.
    pub fn packets_per_interrupt(&self) -> Option<f64> {
        (self.interrupts > 0).then(|| self.packets as f64 / self.interrupts as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_adds_and_clears() {
        let c = QueueCounters::default();
        let mut b = BurstCounts {
            packets: 3,
            kicks: 1,
            ..Default::default()
        };
        b.bad(BadDescriptor::Address);
        b.drop(DropReason::Oversized);
        c.flush(&mut b);
        assert!(b.is_empty());
        let s = c.snapshot(1);
        assert_eq!(s.direction, "tx");
        assert_eq!(s.packets, 3);
        assert_eq!(s.bad(BadDescriptor::Address), 1);
        assert_eq!(s.dropped(DropReason::Oversized), 1);
        assert_eq!(s.packets_per_kick(), Some(3.0));
        assert_eq!(s.packets_per_interrupt(), None);
    }
}
