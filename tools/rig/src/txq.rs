//! The TX queue of a pair: frames go out as `virtio_net_hdr_v1` + frame, in one or two
//! descriptors, from a pool of per-chain slots in guest memory.
//!
//! A slot is `[12-byte header][frame]`; with two descriptors the first covers the header
//! and the second the frame, as Linux posts them.

use std::io;

use crate::driver_ring::{DriverRing, DriverRingError, DriverSegment, UsedKind};
use crate::kick_call::KickCall;
use crate::stats::DriverQueueStats;
use vdpa::virtio::net_hdr::{VirtioNetHdr, NET_HDR_LEN};

/// Errors of the TX and RX queues.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The ring reported a protocol violation by the device or a rig bug.
    #[error("ring {ring}")]
    Ring {
        /// vhost-user ring index.
        ring: usize,
        /// What went wrong.
        #[source]
        source: DriverRingError,
    },
    /// Kick or call eventfd failure.
    #[error("eventfd of ring {ring}")]
    Event {
        /// vhost-user ring index.
        ring: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A frame larger than the slots.
    #[error("frame of {len} bytes exceeds the {max}-byte TX slot of ring {ring}")]
    FrameTooLarge {
        /// vhost-user ring index.
        ring: usize,
        /// Frame length.
        len: usize,
        /// Largest frame a slot holds.
        max: usize,
    },
}

/// Where a queue's buffer slots live: `count` slots of `stride` bytes from `gpa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPool {
    /// GPA of slot 0.
    pub gpa: u64,
    /// Bytes per slot.
    pub stride: u64,
    /// Number of slots.
    pub count: u16,
}

impl SlotPool {
    /// GPA of slot `i`.
    pub fn slot(&self, i: u16) -> u64 {
        self.gpa + u64::from(i) * self.stride
    }
}

/// Driver side of one TX ring.
#[derive(Debug)]
pub struct DriverTxQueue {
    ring: DriverRing,
    kick_call: KickCall,
    index: usize,
    pool: SlotPool,
    free_slots: Vec<u16>,
    slot_of_head: Vec<u16>,
    two_desc: bool,
    stats: DriverQueueStats,
}

impl DriverTxQueue {
    /// A TX queue over `ring` (vhost-user ring `index`) using `pool` for frame slots.
    pub fn new(
        ring: DriverRing,
        kick_call: KickCall,
        index: usize,
        pool: SlotPool,
        two_desc: bool,
    ) -> Self {
        let size = usize::from(ring.size());
        Self {
            ring,
            kick_call,
            index,
            pool,
            free_slots: (0..pool.count).rev().collect(),
            slot_of_head: vec![0; size],
            two_desc,
            stats: DriverQueueStats::default(),
        }
    }

    /// vhost-user ring index.
    pub fn index(&self) -> usize {
        self.index
    }
    /// The driver ring.
    pub fn ring(&self) -> &DriverRing {
        &self.ring
    }
    /// The driver ring, mutable (hostile tests).
    pub fn ring_mut(&mut self) -> &mut DriverRing {
        &mut self.ring
    }
    /// The kick/call eventfds.
    pub fn kick_call(&self) -> &KickCall {
        &self.kick_call
    }
    /// The kick/call eventfds, mutable.
    pub fn kick_call_mut(&mut self) -> &mut KickCall {
        &mut self.kick_call
    }
    /// Largest frame one slot holds.
    pub fn max_frame(&self) -> usize {
        self.pool.stride as usize - NET_HDR_LEN
    }
    /// Frames posted and not yet completed by the device.
    pub fn in_flight(&self) -> usize {
        self.ring.in_flight()
    }
    fn descs_per_frame(&self) -> usize {
        if self.two_desc {
            2
        } else {
            1
        }
    }
    /// True when one more frame can be posted.
    pub fn can_send(&self) -> bool {
        !self.free_slots.is_empty() && self.ring.can_add(self.descs_per_frame())
    }

    fn ring_err(&self, source: DriverRingError) -> QueueError {
        QueueError::Ring {
            ring: self.index,
            source,
        }
    }

    fn check_len(&self, len: usize) -> Result<(), QueueError> {
        if len > self.max_frame() {
            return Err(QueueError::FrameTooLarge {
                ring: self.index,
                len,
                max: self.max_frame(),
            });
        }
        Ok(())
    }

    /// Writes the header and `frame` into every slot, for [`DriverTxQueue::send_prefilled`].
    pub fn prefill(&mut self, frame: &[u8]) -> Result<(), QueueError> {
        self.check_len(frame.len())?;
        let hdr = VirtioNetHdr::default().to_bytes();
        for i in 0..self.pool.count {
            let gpa = self.pool.slot(i);
            let mem = self.ring.memory();
            mem.write(gpa, &hdr)
                .and_then(|_| mem.write(gpa + NET_HDR_LEN as u64, frame))
                .map_err(|e| self.ring_err(DriverRingError::Memory(e)))?;
        }
        Ok(())
    }

    /// Posts `frame` (copied behind a zero header). Returns false when the ring is full.
    /// The device sees it after [`DriverTxQueue::flush`].
    pub fn send(&mut self, frame: &[u8]) -> Result<bool, QueueError> {
        self.check_len(frame.len())?;
        if !self.can_send() {
            return Ok(false);
        }
        let slot = *self
            .free_slots
            .last()
            .expect("can_send checked a free slot");
        let gpa = self.pool.slot(slot);
        let mem = self.ring.memory();
        mem.write(gpa, &VirtioNetHdr::default().to_bytes())
            .and_then(|_| mem.write(gpa + NET_HDR_LEN as u64, frame))
            .map_err(|e| self.ring_err(DriverRingError::Memory(e)))?;
        self.post_slot(frame.len())
    }

    /// Posts the next slot as a `len`-byte frame without writing it (after
    /// [`DriverTxQueue::prefill`]). Returns false when the ring is full.
    pub fn send_prefilled(&mut self, len: usize) -> Result<bool, QueueError> {
        self.check_len(len)?;
        if !self.can_send() {
            return Ok(false);
        }
        self.post_slot(len)
    }

    fn post_slot(&mut self, len: usize) -> Result<bool, QueueError> {
        let slot = self.free_slots.pop().expect("caller checked can_send");
        let gpa = self.pool.slot(slot);
        let hdr = NET_HDR_LEN as u32;
        let res = if self.two_desc {
            self.ring.add_chain(&[
                DriverSegment {
                    gpa,
                    len: hdr,
                    writable: false,
                },
                DriverSegment {
                    gpa: gpa + u64::from(hdr),
                    len: len as u32,
                    writable: false,
                },
            ])
        } else {
            self.ring.add_chain(&[DriverSegment {
                gpa,
                len: hdr + len as u32,
                writable: false,
            }])
        };
        match res {
            Ok(head) => {
                self.slot_of_head[usize::from(head)] = slot;
                self.stats.frames += 1;
                self.stats.bytes += len as u64;
                Ok(true)
            }
            Err(e) => {
                self.free_slots.push(slot);
                Err(self.ring_err(e))
            }
        }
    }

    /// Publishes posted frames and kicks the device if it asked for it. Returns whether
    /// a kick was sent.
    pub fn flush(&mut self) -> Result<bool, QueueError> {
        self.ring.publish();
        if self.ring.kick_needed() {
            self.kick()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Kicks unconditionally.
    pub fn kick(&mut self) -> Result<(), QueueError> {
        self.kick_call.kick().map_err(|source| QueueError::Event {
            ring: self.index,
            source,
        })
    }

    /// Takes every completed frame off the used ring; returns how many.
    pub fn reap(&mut self) -> Result<usize, QueueError> {
        let mut n = 0;
        while let Some(u) = self.ring.pop_used().map_err(|e| self.ring_err(e))? {
            match u.kind {
                UsedKind::Chain(_) => {
                    self.free_slots.push(self.slot_of_head[usize::from(u.head)]);
                    self.stats.completions += 1;
                    n += 1;
                }
                UsedKind::Raw => self.stats.raw_completions += 1,
            }
        }
        Ok(n)
    }

    /// Counters, including the eventfd ones.
    pub fn stats(&self) -> DriverQueueStats {
        DriverQueueStats {
            kicks: self.kick_call.kicks(),
            page_kicks: self.kick_call.page_kicks(),
            interrupts: self.kick_call.interrupts(),
            interrupt_sum: self.kick_call.interrupt_sum(),
            ..self.stats
        }
    }
}
