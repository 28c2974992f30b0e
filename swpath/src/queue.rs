//! One virtqueue as a worker sees it: the ring, its interrupt line, its counters, and
//! the counts of the burst in progress.

use std::sync::Arc;

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
}

impl Queue {
    /// A queue over `ring`.
    pub fn new(ring: DeviceRing, interrupt: Arc<Interrupt>, counters: Arc<QueueCounters>) -> Self {
        Queue {
            ring,
            interrupt,
            counters,
            counts: BurstCounts::default(),
        }
    }

    /// Publishes used entries, interrupts the guest if it asked for it, and adds the
    /// burst's counts to the shared counters.
    pub fn flush(&mut self) {
        // Counted before the guest can see the completions, so an observer that saw a
        // frame come back also sees it counted.
        self.counters.flush(&mut self.counts);
        if self.ring.has_unpublished() {
            self.ring.publish_used();
            self.counts.bursts += 1;
            if self.ring.needs_interrupt() {
                self.interrupt.signal();
                self.counts.interrupts += 1;
            } else {
                self.counts.interrupts_suppressed += 1;
            }
        }
        self.counters.flush(&mut self.counts);
    }

    /// Counts a bad chain and, if its head is a real descriptor, returns it to the
    /// guest unused so the ring keeps moving.
    pub fn reject(&mut self, head: u16, kind: BadDescriptor) {
        self.counts.bad(kind);
        if kind != BadDescriptor::HeadOutOfRange {
            self.ring.push_used(head, 0);
        }
    }

    /// Number of chains available, counting a corrupt avail index once.
    pub fn available(&mut self) -> u16 {
        match self.ring.available() {
            Ok(n) => n,
            Err(kind) => {
                self.counts.bad(kind);
                0
            }
        }
    }
}
