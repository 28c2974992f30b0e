//! One virtqueue as a worker sees it: the ring, its interrupt line, its counters, and
//! the counts of the burst in progress.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vdpa::{BadDescriptor, BurstCounts, QueueCounters};

use crate::interrupt::Interrupt;
use crate::ring::DeviceRing;

/// A ring with its interrupt line and counters.
pub struct Queue {
    /// The ring.
    pub ring: DeviceRing,
    /// Where interrupts go.
    pub interrupt: Arc<Interrupt>,
    /// Shared counters.
    pub counters: Arc<QueueCounters>,
    /// Counts of the current burst.
    pub counts: BurstCounts,
    coalesce: Option<Coalesce>,
}

/// Interrupt coalescing state of a queue.
#[derive(Debug)]
struct Coalesce {
    max_frames: u32,
    max_wait: Duration,
    held_frames: u32,
    since: Option<Instant>,
}

impl Queue {
    /// A queue over `ring`.
    pub fn new(ring: DeviceRing, interrupt: Arc<Interrupt>, counters: Arc<QueueCounters>) -> Self {
        Queue {
            ring,
            interrupt,
            counters,
            counts: BurstCounts::default(),
            coalesce: None,
        }
    }

    /// Holds interrupts until `max_frames` completions (0: no frame limit) or
    /// `max_wait` after the first held one (zero: no time limit).
    pub(crate) fn set_coalescing(&mut self, max_frames: u32, max_wait: Duration) {
        self.coalesce = Some(Coalesce {
            max_frames,
            max_wait,
            held_frames: 0,
            since: None,
        });
    }

    /// When a held interrupt is due, if one is held.
    pub(crate) fn interrupt_deadline(&self) -> Option<Instant> {
        let c = self.coalesce.as_ref()?;
        let since = c.since?;
        (!c.max_wait.is_zero()).then(|| since + c.max_wait)
    }

    /// Publishes used entries, interrupts the guest if it asked for it (or holds the
    /// interrupt while coalescing), and adds the burst's counts to the shared counters.
    /// Returns whether there was anything to publish (the queue moved buffers).
    #[inline]
    pub fn flush(&mut self) -> bool {
        let moved = self.ring.has_unpublished();
        if moved {
            // Counted before the guest can see the completions, so an observer that
            // saw a frame come back also sees it counted.
            let frames = self.counts.packets;
            self.counters.flush(&mut self.counts);
            self.ring.publish_used();
            self.counts.bursts += 1;
            if !self.hold_interrupt(frames) {
                self.decide_interrupt();
            }
        } else if self.coalesce.is_some() && self.held_interrupt_due() {
            self.decide_interrupt();
        }
        // A pass that moved nothing (a busy-polling worker makes many) costs one check.
        if !self.counts.is_empty() {
            self.counters.flush(&mut self.counts);
        }
        moved
    }

    /// Whether to keep holding the interrupt for what was just published.
    fn hold_interrupt(&mut self, frames: u64) -> bool {
        let Some(c) = self.coalesce.as_mut() else {
            return false;
        };
        c.held_frames = c.held_frames.saturating_add(frames as u32);
        let now = Instant::now();
        let since = *c.since.get_or_insert(now);
        let enough = c.max_frames > 0 && c.held_frames >= c.max_frames;
        let late = !c.max_wait.is_zero() && now.duration_since(since) >= c.max_wait;
        !(enough || late)
    }

    /// Sends a held interrupt now (the pair is stopping).
    pub(crate) fn release_held_interrupt(&mut self) {
        if self.coalesce.as_ref().is_some_and(|c| c.since.is_some()) {
            self.decide_interrupt();
            self.counters.flush(&mut self.counts);
        }
    }

    fn held_interrupt_due(&self) -> bool {
        self.interrupt_deadline()
            .is_some_and(|d| Instant::now() >= d)
    }

    /// Asks the ring whether the guest wants an interrupt for everything published
    /// since the last decision, and sends it.
    fn decide_interrupt(&mut self) {
        if let Some(c) = self.coalesce.as_mut() {
            c.held_frames = 0;
            c.since = None;
        }
        if self.ring.needs_interrupt() {
            self.interrupt.signal();
            self.counts.interrupts += 1;
        } else {
            self.counts.interrupts_suppressed += 1;
        }
    }

    /// Counts a bad chain and, if its head is a real descriptor, returns it to the
    /// guest unused so the ring keeps moving.
    pub(crate) fn reject(&mut self, head: u16, kind: BadDescriptor) {
        self.counts.bad(kind);
        if kind != BadDescriptor::HeadOutOfRange {
            self.ring.push_used(head, 0);
        }
    }

    /// Number of chains available, counting a corrupt avail index once.
    pub(crate) fn available(&mut self) -> u16 {
        match self.ring.available() {
            Ok(n) => n,
            Err(kind) => {
                self.counts.bad(kind);
                0
            }
        }
    }
}
