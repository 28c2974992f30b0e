//! The driver side of a virtio split ring, as a guest driver (Linux `virtio_ring.c`)
//! runs it: a descriptor table, the avail ring (driver → device) and the used ring
//! (device → driver) laid out in guest memory, a private free list of descriptors,
//! free-running 16-bit indices that wrap, and notification suppression both ways
//! (EVENT_IDX, or the NO_INTERRUPT / NO_NOTIFY flags without it).
//!
//! Layout (virtio 1.x, section 2.7):
//! * descriptor table: `size` × 16 bytes `{addr: u64, len: u32, flags: u16, next: u16}`,
//!   16-byte aligned (we use 4 KiB);
//! * avail ring: `flags: u16, idx: u16, ring[size]: u16, used_event: u16`, 2-byte aligned;
//! * used ring: `flags: u16, idx: u16, ring[size]: {id: u32, len: u32}, avail_event: u16`,
//!   4-byte aligned (we use 4 KiB, as the legacy layout does).
//!
//! All fields are little endian. The driver keeps its own bookkeeping (free list, chain
//! links) outside guest memory so that a misbehaving device cannot corrupt it.

use std::sync::atomic::{fence, AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;

use crate::memory::{Allocator, RigMemory, RigMemoryError};
use vdpa::virtio::ring::{
    self, need_event, VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
};

/// Errors of the driver ring.
#[derive(Debug, thiserror::Error)]
pub enum DriverRingError {
    /// The queue size is not a power of two in 1..=32768.
    #[error("queue size {0} is not a power of two in 1..=32768")]
    BadSize(u32),
    /// The ring areas are not inside guest memory or misaligned.
    #[error("ring area is not valid guest memory")]
    Memory(#[source] RigMemoryError),
    /// Not enough free descriptors for the chain.
    #[error("not enough free descriptors: need {need}, have {have}")]
    Full {
        /// Descriptors needed.
        need: usize,
        /// Descriptors free.
        have: usize,
    },
    /// Every avail ring slot holds an entry the device has not completed.
    #[error("avail ring full: every slot holds an entry not yet used")]
    AvailFull,
    /// A chain with no segment.
    #[error("empty descriptor chain")]
    EmptyChain,
    /// A descriptor index outside the table.
    #[error("descriptor index {0} is outside the table")]
    BadIndex(u16),
    /// The device returned a used element whose id is not an in-flight head.
    #[error("device returned used id {id} which is not an in-flight chain head")]
    BadUsedId {
        /// The id found in the used ring.
        id: u32,
    },
    /// The device moved `used->idx` by more than the ring size.
    #[error("device moved used->idx from {last} to {now}: more than the ring size")]
    UsedIdxJump {
        /// Our last consumed index.
        last: u16,
        /// The index the device published.
        now: u16,
    },
}

/// One buffer of a descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverSegment {
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (RX) rather than device-readable (TX).
    pub writable: bool,
}

/// A raw descriptor, written verbatim (hostile tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawDesc {
    /// Buffer address (GPA), unchecked.
    pub addr: u64,
    /// Buffer length, unchecked.
    pub len: u32,
    /// `VRING_DESC_F_*` flags, unchecked.
    pub flags: u16,
    /// Next descriptor index, unchecked.
    pub next: u16,
}

/// What a used element completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsedKind {
    /// A chain added with [`DriverRing::add_chain`], of this many descriptors.
    Chain(u16),
    /// A raw chain added with [`DriverRing::add_raw_head`].
    Raw,
}

/// One element taken from the used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index of the completed chain.
    pub head: u16,
    /// Bytes the device reports having written.
    pub len: u32,
    /// What the element completed.
    pub kind: UsedKind,
}

/// Where a ring lives in guest memory (guest-physical addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Number of descriptors.
    pub size: u16,
    /// Descriptor table GPA.
    pub desc: u64,
    /// Avail ring GPA.
    pub avail: u64,
    /// Used ring GPA.
    pub used: u64,
}

impl RingLayout {
    /// Guest memory needed by [`RingLayout::allocate`] (upper bound, with alignment).
    pub fn footprint(size: u16) -> u64 {
        let (desc, avail, used) = ring::area_sizes(size);
        (desc + avail).div_ceil(4096) * 4096 + used.div_ceil(4096) * 4096 + 4096
    }
    /// Allocates a ring of `size` descriptors: the table page aligned with the avail ring
    /// right after it, the used ring on its own page aligned area.
    pub fn allocate(alloc: &mut Allocator, size: u16) -> Result<Self, DriverRingError> {
        check_size(u32::from(size))?;
        let (desc_len, avail_len, used_len) = ring::area_sizes(size);
        let desc = alloc
            .alloc(desc_len + avail_len, 4096)
            .map_err(DriverRingError::Memory)?;
        let used = alloc
            .alloc(used_len, 4096)
            .map_err(DriverRingError::Memory)?;
        Ok(Self {
            size,
            desc,
            avail: desc + desc_len,
            used,
        })
    }
}

fn check_size(size: u32) -> Result<(), DriverRingError> {
    if !ring::is_valid_size(size) {
        return Err(DriverRingError::BadSize(size));
    }
    Ok(())
}

/// A hostile chain in flight: the head value published and the descriptors it reserved.
#[derive(Debug)]
struct RawChain {
    head: u16,
    descs: Vec<u16>,
}

/// Driver side of one split ring.
#[derive(Debug)]
pub struct DriverRing {
    mem: Arc<RigMemory>,
    layout: RingLayout,
    desc: *mut u8,
    avail: *mut u8,
    used: *mut u8,
    size: u16,
    /// Free descriptor indices (a stack; the top is handed out first).
    free: Vec<u16>,
    /// Shadow of each descriptor's `next` link within an in-flight chain.
    next: Vec<u16>,
    /// Per head: length of the in-flight chain, 0 when not in flight.
    chain_len: Vec<u16>,
    raw: Vec<RawChain>,
    /// What each descriptor was last written with. The table is the driver's (the
    /// device only reads it), so a descriptor that would get the same bytes again is
    /// left alone: its cache line then stays shared with the device's CPU instead of
    /// moving back and forth on every refill. Buffers and descriptors are taken from
    /// and returned to their free lists in step, so in a steady stream each descriptor
    /// keeps its buffer and most refills write only the avail ring.
    written: Vec<RawDesc>,
    /// Next avail index to fill (includes entries not yet published).
    avail_idx: u16,
    /// Value last stored to `avail->idx`.
    published: u16,
    /// `avail->idx` value at the last kick decision (the `old` of need_event).
    kicked: u16,
    /// Next used index to consume.
    last_used: u16,
    in_flight: usize,
    event_idx: bool,
    irq_enabled: bool,
}

// SAFETY: the raw pointers point into `mem`, an Arc-owned mapping that lives as long as
// this ring; they are only dereferenced through `&self`/`&mut self` methods.
unsafe impl Send for DriverRing {}

impl DriverRing {
    /// Initialises a ring in guest memory: zeroes the three areas and sets `avail->idx`,
    /// `used->idx` and our indices to `initial_index` (the value to send with
    /// SET_VRING_BASE), as a guest that has already used the ring would have them.
    pub fn new(
        mem: Arc<RigMemory>,
        layout: RingLayout,
        initial_index: u16,
    ) -> Result<Self, DriverRingError> {
        let size = layout.size;
        check_size(u32::from(size))?;
        if !ring::areas_aligned(layout.desc, layout.avail, layout.used) {
            return Err(DriverRingError::Memory(RigMemoryError::Layout(format!(
                "misaligned ring {layout:x?}"
            ))));
        }
        let (desc_len, avail_len, used_len) = ring::area_sizes(size);
        let desc = mem
            .host_ptr(layout.desc, desc_len)
            .map_err(DriverRingError::Memory)?;
        let avail = mem
            .host_ptr(layout.avail, avail_len)
            .map_err(DriverRingError::Memory)?;
        let used = mem
            .host_ptr(layout.used, used_len)
            .map_err(DriverRingError::Memory)?;
        for (gpa, len) in [
            (layout.desc, desc_len),
            (layout.avail, avail_len),
            (layout.used, used_len),
        ] {
            mem.fill(gpa, len, 0).map_err(DriverRingError::Memory)?;
        }
        let ring = Self {
            mem,
            layout,
            desc,
            avail,
            used,
            size,
            free: (0..size).rev().collect(),
            next: vec![0; usize::from(size)],
            chain_len: vec![0; usize::from(size)],
            raw: Vec::new(),
            // `new` zeroed the table.
            written: vec![RawDesc::default(); usize::from(size)],
            avail_idx: initial_index,
            published: initial_index,
            kicked: initial_index,
            last_used: initial_index,
            in_flight: 0,
            event_idx: false,
            irq_enabled: true,
        };
        ring.avail_idx_ref()
            .store(initial_index.to_le(), Ordering::Relaxed);
        ring.used_idx_ref()
            .store(initial_index.to_le(), Ordering::Relaxed);
        ring.used_event_ref()
            .store(initial_index.to_le(), Ordering::Relaxed);
        // Release: the initialised ring is complete before anything that publishes it
        // (SET_VRING_ADDR is a syscall, itself a barrier; this documents the intent).
        fence(Ordering::Release);
        Ok(ring)
    }

    // ---- field accessors (all offsets from virtio 1.x 2.7, checked in `new`) ----

    fn u16_at(&self, base: *mut u8, off: usize) -> &AtomicU16 {
        // SAFETY: callers pass `base` = one of the ring areas validated in `new` and an
        // offset inside that area; both areas are at least 2-byte aligned and every u16
        // field is at an even offset, so the pointer is aligned. The mapping lives as long
        // as `self.mem`, which outlives the returned borrow of `self`.
        unsafe { &*(base.add(off) as *const AtomicU16) }
    }
    fn avail_flags_ref(&self) -> &AtomicU16 {
        self.u16_at(self.avail, ring::AVAIL_FLAGS_OFFSET)
    }
    fn avail_idx_ref(&self) -> &AtomicU16 {
        self.u16_at(self.avail, ring::AVAIL_IDX_OFFSET)
    }
    fn avail_entry_ref(&self, slot: u16) -> &AtomicU16 {
        self.u16_at(self.avail, ring::avail_slot_offset(usize::from(slot)))
    }
    fn used_event_ref(&self) -> &AtomicU16 {
        self.u16_at(self.avail, ring::used_event_offset(usize::from(self.size)))
    }
    fn used_flags_ref(&self) -> &AtomicU16 {
        self.u16_at(self.used, ring::USED_FLAGS_OFFSET)
    }
    fn used_idx_ref(&self) -> &AtomicU16 {
        self.u16_at(self.used, ring::USED_IDX_OFFSET)
    }
    fn avail_event_ref(&self) -> &AtomicU16 {
        self.u16_at(self.used, ring::avail_event_offset(usize::from(self.size)))
    }
    fn used_elem(&self, slot: u16) -> (u32, u32) {
        let off = ring::used_slot_offset(usize::from(slot));
        // SAFETY: slot < size, so off..off+8 is inside the used area validated in `new`;
        // the used area is 4-byte aligned and `off` is a multiple of 4.
        let (id, len) = unsafe {
            (
                &*(self.used.add(off) as *const AtomicU32),
                &*(self.used.add(off + 4) as *const AtomicU32),
            )
        };
        (
            u32::from_le(id.load(Ordering::Relaxed)),
            u32::from_le(len.load(Ordering::Relaxed)),
        )
    }
    fn write_desc(&mut self, index: u16, d: RawDesc) {
        debug_assert!(index < self.size);
        self.written[usize::from(index)] = d;
        let mut bytes = [0u8; ring::DESC_SIZE];
        bytes[0..8].copy_from_slice(&d.addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&d.len.to_le_bytes());
        bytes[12..14].copy_from_slice(&d.flags.to_le_bytes());
        bytes[14..16].copy_from_slice(&d.next.to_le_bytes());
        // SAFETY: index < size, so the 16 bytes of descriptor `index` are inside the
        // descriptor table validated in `new`. The descriptor is free (owned by the
        // driver), so the device does not read it concurrently; a volatile write keeps the
        // compiler from eliding stores to memory another process reads.
        unsafe {
            std::ptr::write_volatile(
                self.desc
                    .add(ring::desc_offset(usize::from(index)))
                    .cast::<[u8; ring::DESC_SIZE]>(),
                bytes,
            )
        };
    }

    // ---- configuration and state ----

    /// Turns EVENT_IDX handling on or off (per the negotiated features).
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }
    /// Whether EVENT_IDX is in use.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }
    /// Where the ring lives.
    pub fn layout(&self) -> &RingLayout {
        &self.layout
    }
    /// The guest memory the ring lives in.
    pub fn memory(&self) -> &Arc<RigMemory> {
        &self.mem
    }
    /// Number of descriptors.
    pub fn size(&self) -> u16 {
        self.size
    }
    /// Free descriptors.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }
    /// True when a chain of `n` descriptors can be added now.
    pub fn can_add(&self, n: usize) -> bool {
        n <= self.free.len() && self.avail_slot_free()
    }
    /// Normal chains made available and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
    /// Hostile chains made available and not (yet) returned by the device.
    pub fn raw_outstanding(&self) -> usize {
        self.raw.len()
    }
    /// Our avail index (including entries not yet published).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }
    /// Next used index we will consume.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }
    /// The device's `used->idx` (Acquire load).
    pub fn device_used_idx(&self) -> u16 {
        u16::from_le(self.used_idx_ref().load(Ordering::Acquire))
    }
    /// The device's `avail_event` (meaningful with EVENT_IDX).
    pub fn device_avail_event(&self) -> u16 {
        u16::from_le(self.avail_event_ref().load(Ordering::Acquire))
    }
    /// The device's used-ring flags.
    pub fn device_used_flags(&self) -> u16 {
        u16::from_le(self.used_flags_ref().load(Ordering::Acquire))
    }
    /// The `used_event` we last wrote.
    pub fn used_event(&self) -> u16 {
        u16::from_le(self.used_event_ref().load(Ordering::Relaxed))
    }
    /// The avail flags we last wrote.
    pub fn avail_flags(&self) -> u16 {
        u16::from_le(self.avail_flags_ref().load(Ordering::Relaxed))
    }

    // ---- driver → device ----

    /// Writes a chain into free descriptors and queues its head in the avail ring (not yet
    /// visible to the device: call [`DriverRing::publish`]). Returns the head index.
    pub fn add_chain(&mut self, segs: &[DriverSegment]) -> Result<u16, DriverRingError> {
        let n = segs.len();
        if n == 0 {
            return Err(DriverRingError::EmptyChain);
        }
        if n > self.free.len() {
            return Err(DriverRingError::Full {
                need: n,
                have: self.free.len(),
            });
        }
        if !self.avail_slot_free() {
            return Err(DriverRingError::AvailFull);
        }
        for s in segs {
            self.mem
                .host_ptr(s.gpa, u64::from(s.len))
                .map_err(DriverRingError::Memory)?;
        }
        // The chain takes the top `n` entries of the free stack; the top one is the head.
        let base = self.free.len() - n;
        for (i, s) in segs.iter().enumerate() {
            let idx = self.free[base + n - 1 - i];
            let more = i + 1 < n;
            let next = if more { self.free[base + n - 2 - i] } else { 0 };
            let mut flags = if more { VRING_DESC_F_NEXT } else { 0 };
            if s.writable {
                flags |= VRING_DESC_F_WRITE;
            }
            let d = RawDesc {
                addr: s.gpa,
                len: s.len,
                flags,
                next,
            };
            if self.written[usize::from(idx)] != d {
                self.write_desc(idx, d);
            }
            self.next[usize::from(idx)] = next;
        }
        let head = self.free[base + n - 1];
        self.free.truncate(base);
        self.chain_len[usize::from(head)] = n as u16;
        self.push_avail(head);
        self.in_flight += 1;
        Ok(head)
    }

    /// True when one more avail entry may be queued. Each in-flight chain holds one avail
    /// entry until it is used; so does each hostile head (the device may have skipped it
    /// without a used element, and we cannot tell), so the ring never holds more than
    /// `size` entries the device has not consumed.
    fn avail_slot_free(&self) -> bool {
        self.in_flight + self.raw.len() < usize::from(self.size)
    }

    fn push_avail(&mut self, head: u16) {
        let slot = self.avail_idx & (self.size - 1);
        // Relaxed: the device may not look at this slot before it sees the new avail->idx,
        // which `publish` stores with Release ordering after this write.
        self.avail_entry_ref(slot)
            .store(head.to_le(), Ordering::Relaxed);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Makes every queued chain visible to the device by storing `avail->idx`.
    pub fn publish(&mut self) {
        if self.published == self.avail_idx {
            return;
        }
        // Release: the descriptors and avail ring entries written before must be visible
        // to the device before it can observe the new index (pairs with the device's
        // Acquire load of avail->idx; Linux virtio_wmb before the idx store).
        self.avail_idx_ref()
            .store(self.avail_idx.to_le(), Ordering::Release);
        self.published = self.avail_idx;
    }

    /// Decides whether the device must be kicked for the entries published since the last
    /// decision (Linux `virtqueue_kick_prepare`): with EVENT_IDX, kick when `avail_event`
    /// lies in `[old, new)`; without it, kick unless the device set NO_NOTIFY.
    pub fn kick_needed(&mut self) -> bool {
        // SeqCst fence: the avail->idx store above must be globally visible before we read
        // avail_event / used flags. Otherwise the device could read the old avail->idx,
        // decide to sleep and re-enable notifications, while we read its stale
        // avail_event and skip the kick: a lost wakeup (Linux virtio_mb in kick_prepare).
        fence(Ordering::SeqCst);
        let new = self.published;
        let old = self.kicked;
        self.kicked = new;
        if new == old {
            return false;
        }
        if self.event_idx {
            need_event(self.device_avail_event(), new, old)
        } else {
            self.device_used_flags() & VRING_USED_F_NO_NOTIFY == 0
        }
    }

    // ---- device → driver ----

    /// True when the device has published used elements we have not consumed.
    pub fn has_used(&self) -> bool {
        self.device_used_idx() != self.last_used
    }

    /// Takes the next used element, returning its chain's descriptors to the free list.
    pub fn pop_used(&mut self) -> Result<Option<UsedElem>, DriverRingError> {
        // Acquire: pairs with the device's Release store of used->idx, so the used element
        // and the buffer contents it wrote before it are visible to us afterwards.
        let now = self.device_used_idx();
        if now == self.last_used {
            return Ok(None);
        }
        if now.wrapping_sub(self.last_used) > self.size {
            return Err(DriverRingError::UsedIdxJump {
                last: self.last_used,
                now,
            });
        }
        let (id, len) = self.used_elem(self.last_used & (self.size - 1));
        let kind = if let Some(pos) = self.raw.iter().position(|r| u32::from(r.head) == id) {
            let raw = self.raw.swap_remove(pos);
            self.free.extend(raw.descs);
            UsedKind::Raw
        } else {
            let head = u16::try_from(id)
                .ok()
                .filter(|&h| h < self.size && self.chain_len[usize::from(h)] != 0)
                .ok_or(DriverRingError::BadUsedId { id })?;
            let n = self.chain_len[usize::from(head)];
            self.chain_len[usize::from(head)] = 0;
            let mut idx = head;
            for _ in 0..n {
                self.free.push(idx);
                idx = self.next[usize::from(idx)];
            }
            self.in_flight -= 1;
            UsedKind::Chain(n)
        };
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx && self.irq_enabled {
            // Interrupts are wanted for the next entry: move used_event along (Linux
            // virtqueue_get_buf writes it with virtio_store_mb). The SeqCst fence orders
            // the store before our next read of used->idx (a store-load pair).
            self.used_event_ref()
                .store(self.last_used.to_le(), Ordering::Relaxed);
            fence(Ordering::SeqCst);
        }
        Ok(Some(UsedElem {
            head: id as u16,
            len,
            kind,
        }))
    }

    /// Asks the device not to interrupt (NAPI polling). A hint: the device may still do so.
    pub fn disable_interrupts(&mut self) {
        self.irq_enabled = false;
        if self.event_idx {
            // With EVENT_IDX the avail flags must stay 0; park used_event half a lap ahead
            // so the device crosses it as rarely as possible (Linux writes a fixed value).
            self.used_event_ref().store(
                self.last_used.wrapping_add(0x8000).to_le(),
                Ordering::Relaxed,
            );
        } else {
            self.avail_flags_ref()
                .store(VRING_AVAIL_F_NO_INTERRUPT.to_le(), Ordering::Relaxed);
        }
    }

    /// Re-enables interrupts for the next used element. Returns true when used elements
    /// are already pending (the caller must poll again instead of sleeping).
    pub fn enable_interrupts(&mut self) -> bool {
        self.arm(self.last_used)
    }

    /// Re-enables interrupts, but with EVENT_IDX only once about 3/4 of the chains in
    /// flight have completed (Linux `virtqueue_enable_cb_delayed`, used for TX). Returns
    /// true when used elements are already pending.
    pub fn enable_interrupts_delayed(&mut self) -> bool {
        let pending = self.avail_idx.wrapping_sub(self.last_used);
        self.arm(self.last_used.wrapping_add(pending * 3 / 4))
    }

    fn arm(&mut self, event: u16) -> bool {
        self.irq_enabled = true;
        if self.event_idx {
            self.used_event_ref()
                .store(event.to_le(), Ordering::Relaxed);
        } else {
            self.avail_flags_ref().store(0, Ordering::Relaxed);
        }
        // SeqCst fence: the used_event / flags store must be visible before we re-read
        // used->idx. Otherwise the device could publish an entry after reading the old
        // value (and not interrupt) while we read the old used->idx and go to sleep:
        // a lost interrupt (Linux virtio_mb in virtqueue_enable_cb).
        fence(Ordering::SeqCst);
        self.has_used()
    }

    /// Whether interrupts are currently enabled.
    pub fn interrupts_enabled(&self) -> bool {
        self.irq_enabled
    }

    // ---- hostile descriptors ----

    /// Takes `n` descriptors off the free list for raw use.
    pub fn reserve(&mut self, n: usize) -> Result<Vec<u16>, DriverRingError> {
        if n > self.free.len() {
            return Err(DriverRingError::Full {
                need: n,
                have: self.free.len(),
            });
        }
        let at = self.free.len() - n;
        let mut v = self.free.split_off(at);
        v.reverse();
        Ok(v)
    }

    /// Writes an arbitrary descriptor at `index` (which must be one we reserved).
    pub fn write_raw_desc(&mut self, index: u16, d: RawDesc) -> Result<(), DriverRingError> {
        if index >= self.size {
            return Err(DriverRingError::BadIndex(index));
        }
        self.write_desc(index, d);
        Ok(())
    }

    /// Queues an arbitrary head value in the avail ring; `descs` are the descriptors it
    /// owns, returned to the free list if the device ever completes `head`.
    pub fn add_raw_head(&mut self, head: u16, descs: Vec<u16>) -> Result<(), DriverRingError> {
        if !self.avail_slot_free() {
            return Err(DriverRingError::AvailFull);
        }
        self.push_avail(head);
        self.raw.push(RawChain { head, descs });
        Ok(())
    }
}
