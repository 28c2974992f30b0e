//! Packet and byte counts of offloaded rings, read from guest memory without touching
//! the datapath.
//!
//! The NIC moves a ring's used index with every buffer it completes, and writes each
//! completion (`{id, len}`) into the used ring before it moves the index. A
//! [`UsedTally`] samples that index (the kick relay does it every
//! [`SAMPLE_INTERVAL`] and when it stops) and counts what moved since the last sample:
//!
//! * **packets**: the difference of the two indices (a `u16`; exact as long as fewer
//!   than 65536 buffers complete between two samples);
//! * **bytes**, receive ring: each new used element's `len` (what the NIC wrote,
//!   virtio-net header included) minus the header. Only the elements still in the
//!   ring can be read: if more than the ring size completed between two samples, the
//!   bytes of the overwritten ones are estimated from the average of the ones read;
//! * **bytes**, transmit ring, where the NIC writes `len = 0`: the readable length of
//!   each descriptor chain the driver makes available, minus the header, read from the
//!   avail ring when the guest kicks (before the relay rings the NIC's doorbell, so
//!   those descriptors are still the driver's frames) and at each sample (buffers
//!   added without a kick; one that the NIC already completed and the driver reused
//!   is counted with its new length). A chain counts at most 64 KiB.
//!
//! Everything is read-only and volatile (the guest and the NIC own that memory); a
//! descriptor the guest recycled before it was read gives the size of its next frame
//! instead, which is a statistics error, never a fault.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vdpa::memory::GuestMemory;
use vdpa::stats::BurstCounts;
use vdpa::virtio::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF};
use vdpa::virtio::ring::{
    desc_offset, AVAIL_IDX_OFFSET, DESC_SIZE, USED_ELEM_SIZE, USED_IDX_OFFSET,
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vdpa::{QueueCounters, RingConfig};

/// How often the kick relay samples the used indices.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

/// Offset of the first element of the used and of the avail ring.
const RING_OFFSET: u64 = 4;
/// Most bytes one transmitted chain counts for (a stale or looping chain cannot
/// inflate the count beyond one large frame).
const MAX_CHAIN_BYTES: u64 = 64 << 10;

/// The virtio-net header length for the negotiated `features`.
pub fn net_header_len(features: u64) -> u64 {
    if features & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) != 0 {
        12
    } else {
        10
    }
}

/// Reads a little-endian integer of `N` bytes at `gpa`, volatile.
fn read_le<const N: usize>(mem: &GuestMemory, gpa: u64) -> Option<u64> {
    let p = mem.translate(gpa, N as u64)?;
    let mut bytes = [0u8; 8];
    for (i, b) in bytes.iter_mut().take(N).enumerate() {
        // SAFETY: translate returned N mapped bytes at `p`; guest memory is shared with
        // the guest and the NIC, so it is read volatile, byte by byte, no reference.
        *b = unsafe { std::ptr::read_volatile(p.add(i)) };
    }
    Some(u64::from_le_bytes(bytes))
}

/// One ring's tally.
pub struct UsedTally {
    mem: Arc<GuestMemory>,
    ring: RingConfig,
    header: u64,
    /// The used index at the last sample.
    last: u16,
    /// Transmit ring: the avail index up to which chains were counted.
    avail: u16,
}

impl UsedTally {
    /// Starts counting `ring` (of `mem`, with negotiated `features`) from its current
    /// used index; `None` if the used index is not in guest memory.
    pub fn new(mem: Arc<GuestMemory>, ring: &RingConfig, features: u64) -> Option<UsedTally> {
        let last = read_le::<2>(&mem, ring.addrs.used + USED_IDX_OFFSET as u64)? as u16;
        let avail = read_le::<2>(&mem, ring.addrs.avail + AVAIL_IDX_OFFSET as u64)? as u16;
        Some(UsedTally {
            mem,
            ring: ring.clone(),
            header: net_header_len(features),
            last,
            avail,
        })
    }

    /// The ring's counters.
    pub fn counters(&self) -> &Arc<QueueCounters> {
        &self.ring.counters
    }

    /// Whether this is a transmit ring (odd index).
    fn is_tx(&self) -> bool {
        self.ring.index % 2 == 1
    }

    /// Transmit ring: counts the bytes of the chains made available since the last
    /// call. The relay calls it for every kick, before the doorbell.
    pub fn count_avail(&mut self) {
        if !self.is_tx() {
            return;
        }
        let Some(now) = read_le::<2>(&self.mem, self.ring.addrs.avail + AVAIL_IDX_OFFSET as u64)
        else {
            return;
        };
        let now = now as u16;
        let new = now.wrapping_sub(self.avail).min(self.ring.size);
        fence(Ordering::Acquire);
        let size = u64::from(self.ring.size);
        let mut bytes = 0;
        for k in 0..new {
            let slot = u64::from(now.wrapping_sub(new - k)) % size;
            if let Some(head) =
                read_le::<2>(&self.mem, self.ring.addrs.avail + RING_OFFSET + 2 * slot)
            {
                bytes += self
                    .chain_bytes(head)
                    .min(MAX_CHAIN_BYTES)
                    .saturating_sub(self.header);
            }
        }
        self.avail = now;
        if bytes > 0 {
            self.ring.counters.flush(&mut BurstCounts {
                bytes,
                ..Default::default()
            });
        }
    }

    /// Counts what completed since the last sample into the ring's counters.
    pub fn sample(&mut self) {
        self.count_avail();
        let Some(now) = read_le::<2>(&self.mem, self.ring.addrs.used + USED_IDX_OFFSET as u64)
        else {
            return;
        };
        let now = now as u16;
        let moved = u64::from(now.wrapping_sub(self.last));
        if moved == 0 {
            return;
        }
        // The elements below `now` were written before the index moved.
        fence(Ordering::Acquire);
        let size = u64::from(self.ring.size);
        let mut bytes = 0;
        if !self.is_tx() {
            let visible = moved.min(size);
            for k in 0..visible {
                let idx = u64::from(now.wrapping_sub((visible - k) as u16));
                bytes += self.element_bytes(idx % size);
            }
            if moved > visible {
                bytes += bytes / visible * (moved - visible);
            }
        }
        self.ring.counters.flush(&mut BurstCounts {
            packets: moved,
            bytes,
            ..Default::default()
        });
        self.last = now;
    }

    /// Frame bytes of used element `slot` of the receive ring.
    fn element_bytes(&self, slot: u64) -> u64 {
        let at = self.ring.addrs.used + RING_OFFSET + slot * USED_ELEM_SIZE as u64;
        read_le::<4>(&self.mem, at + 4).map_or(0, |len| len.saturating_sub(self.header))
    }

    /// Bytes the driver made readable in the chain starting at descriptor `head`
    /// (following an indirect table if there is one), at most one lap of the table.
    fn chain_bytes(&self, head: u64) -> u64 {
        let size = u64::from(self.ring.size);
        let (mut table, mut entries, mut next) = (self.ring.addrs.desc, size, head);
        let mut total = 0;
        for _ in 0..size {
            if next >= entries {
                break;
            }
            let at = table + desc_offset(next as usize) as u64;
            let (Some(addr), Some(len), Some(flags), Some(n)) = (
                read_le::<8>(&self.mem, at),
                read_le::<4>(&self.mem, at + 8),
                read_le::<2>(&self.mem, at + 12),
                read_le::<2>(&self.mem, at + 14),
            ) else {
                break;
            };
            let flags = flags as u16;
            if flags & VRING_DESC_F_INDIRECT != 0 {
                (table, entries, next) = (addr, len / DESC_SIZE as u64, 0);
                continue;
            }
            if flags & VRING_DESC_F_WRITE == 0 {
                total += len;
            }
            if flags & VRING_DESC_F_NEXT == 0 {
                break;
            }
            next = n;
        }
        total
    }
}
