//! The device side of a split virtqueue as the simulated NIC runs it: every access to
//! the rings and buffers goes through the [`Dma`] engine (IOVA = guest-physical
//! address), so a ring or buffer outside the DMA-mapped memory faults instead of
//! being touched.

use std::sync::atomic::{fence, Ordering};

use super::dma::{Dma, DmaFault};
use vdpa::virtio::ring::{
    self, need_event, DESC_SIZE, VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

/// One buffer of a chain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seg {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// Why a chain could not be walked: the device treats it as fatal for the queue
/// (DEVICE_NEEDS_RESET), as a hardware device would.
#[derive(Debug)]
pub(crate) enum SimRingError {
    /// The ring structures themselves are not reachable.
    Dma(DmaFault),
    /// A malformed chain (index out of range, loop, indirect without the feature).
    Malformed(&'static str),
}

impl From<DmaFault> for SimRingError {
    fn from(f: DmaFault) -> Self {
        SimRingError::Dma(f)
    }
}

/// Programmed ring geometry and the device's private indices.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SplitRing {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub event_idx: bool,
    /// Next avail entry the device will take.
    pub last_avail: u16,
    /// Next used entry the device will fill (published or not).
    pub used_idx: u16,
    /// `used->idx` value at the last interrupt decision.
    pub signalled: u16,
}

impl SplitRing {
    fn mask(&self, i: u16) -> usize {
        usize::from(i & (self.size - 1))
    }

    /// The guest address `off` bytes into the area at `area`.
    fn at(area: u64, off: usize) -> u64 {
        area + off as u64
    }

    /// The driver's `avail->idx` (with Acquire semantics for what it published).
    pub(crate) fn avail_idx(&self, dma: &Dma) -> Result<u16, DmaFault> {
        let v = dma.read_u16(Self::at(self.avail, ring::AVAIL_IDX_OFFSET))?;
        fence(Ordering::Acquire);
        Ok(v)
    }

    /// Number of chains the driver made available and the device did not take yet.
    /// An index that moved by more than the ring size is a malformed ring.
    pub(crate) fn pending(&self, dma: &Dma) -> Result<u16, SimRingError> {
        let n = self.avail_idx(dma)?.wrapping_sub(self.last_avail);
        if n > self.size {
            return Err(SimRingError::Malformed(
                "avail index moved by more than the ring size",
            ));
        }
        Ok(n)
    }

    /// Takes the next available head and walks its chain.
    pub(crate) fn pop(&mut self, dma: &Dma, segs: &mut Vec<Seg>) -> Result<u16, SimRingError> {
        let slot = Self::at(
            self.avail,
            ring::avail_slot_offset(self.mask(self.last_avail)),
        );
        let head = dma.read_u16(slot)?;
        self.last_avail = self.last_avail.wrapping_add(1);
        self.walk(dma, head, segs)?;
        Ok(head)
    }

    /// Puts the last popped chain back (the device could not use it yet).
    pub(crate) fn unpop(&mut self) {
        self.last_avail = self.last_avail.wrapping_sub(1);
    }

    fn walk(&self, dma: &Dma, head: u16, segs: &mut Vec<Seg>) -> Result<(), SimRingError> {
        segs.clear();
        if head >= self.size {
            return Err(SimRingError::Malformed("head index out of range"));
        }
        let mut idx = head;
        loop {
            if segs.len() >= usize::from(self.size) {
                return Err(SimRingError::Malformed(
                    "descriptor chain longer than the ring",
                ));
            }
            let mut d = [0u8; DESC_SIZE];
            dma.read(
                Self::at(self.desc, ring::desc_offset(usize::from(idx))),
                &mut d,
            )?;
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default());
            let flags = u16::from_le_bytes([d[12], d[13]]);
            let next = u16::from_le_bytes([d[14], d[15]]);
            if flags & VRING_DESC_F_INDIRECT != 0 {
                return Err(SimRingError::Malformed("indirect descriptor (not offered)"));
            }
            segs.push(Seg {
                addr,
                len,
                writable: flags & VRING_DESC_F_WRITE != 0,
            });
            if flags & VRING_DESC_F_NEXT == 0 {
                return Ok(());
            }
            if next >= self.size {
                return Err(SimRingError::Malformed("next index out of range"));
            }
            idx = next;
        }
    }

    /// Writes a used element at the device's next used slot (not yet published).
    pub(crate) fn add_used(&mut self, dma: &Dma, head: u16, len: u32) -> Result<(), DmaFault> {
        let slot = Self::at(self.used, ring::used_slot_offset(self.mask(self.used_idx)));
        let mut e = [0u8; ring::USED_ELEM_SIZE];
        e[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        e[4..].copy_from_slice(&len.to_le_bytes());
        dma.write(slot, &e)?;
        self.used_idx = self.used_idx.wrapping_add(1);
        Ok(())
    }

    /// Publishes every used element written so far (Release: elements before index).
    pub(crate) fn publish(&self, dma: &Dma) -> Result<(), DmaFault> {
        fence(Ordering::Release);
        dma.write_u16(Self::at(self.used, ring::USED_IDX_OFFSET), self.used_idx)
    }

    /// Tells the driver which avail index to kick at next (EVENT_IDX), then re-reads
    /// the avail index so that a buffer added meanwhile is not missed. Returns whether
    /// more chains are pending.
    pub(crate) fn arm_kick(&self, dma: &Dma) -> Result<bool, SimRingError> {
        if self.event_idx {
            let avail_event = Self::at(self.used, ring::avail_event_offset(usize::from(self.size)));
            dma.write_u16(avail_event, self.last_avail)?;
            fence(Ordering::SeqCst);
        }
        Ok(self.pending(dma)? > 0)
    }

    /// Whether the driver wants an interrupt for the used elements published since the
    /// last decision (EVENT_IDX `used_event`, or the NO_INTERRUPT flag without it).
    pub(crate) fn should_interrupt(&mut self, dma: &Dma) -> Result<bool, DmaFault> {
        fence(Ordering::SeqCst);
        let old = self.signalled;
        let new = self.used_idx;
        if old == new {
            return Ok(false);
        }
        self.signalled = new;
        if self.event_idx {
            let used_event = dma.read_u16(Self::at(
                self.avail,
                ring::used_event_offset(usize::from(self.size)),
            ))?;
            Ok(need_event(used_event, new, old))
        } else {
            let flags = dma.read_u16(Self::at(self.avail, ring::AVAIL_FLAGS_OFFSET))?;
            Ok(flags & VRING_AVAIL_F_NO_INTERRUPT == 0)
        }
    }
}
