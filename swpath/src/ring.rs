//! The device side of a split virtqueue (virtio 1.x section 2.7) in guest memory:
//! reading the avail ring, walking and validating descriptor chains, writing used
//! entries in batches, and EVENT_IDX notification suppression in both directions.
//!
//! Guest memory is shared with a running guest, so every access here goes through a
//! raw pointer obtained from a [`Translator`], which proves the whole range lies inside
//! a mapping that the ring's `Arc<GuestMemory>` keeps alive. Index fields are accessed
//! atomically with the orderings the virtio memory model asks for; descriptors and used
//! elements with volatile reads and writes. No Rust reference to guest memory is ever
//! formed (the guest may change it at any time): frame bytes are moved with raw-pointer
//! copies only ([`Segment`]'s methods, and the backends' system calls).
//!
//! A translated buffer is a [`Segment`], which borrows what keeps its memory mapped:
//! the [`Chain`] it was read into (a chain holds the `Arc` of the table its buffers
//! came from) or the ring it was peeked from. So the compiler, not a comment, makes
//! sure no buffer address outlives its guest memory.

use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;

use vdpa::virtio::ring::{
    self, need_event, VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vdpa::{BadDescriptor, DatapathError, DirtyLog, GuestMemory, RingConfig, Translator};

/// One descriptor as laid out in the table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

const _: () = assert!(std::mem::size_of::<Descriptor>() == ring::DESC_SIZE);

/// One guest buffer, translated to a host address. It borrows (`'a`) the [`Chain`] or
/// [`DeviceRing`] it came from, which keeps the guest memory mapped, so it cannot
/// outlive that memory.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    ptr: *mut u8,
    len: u32,
    _mem: PhantomData<&'a GuestMemory>,
}

impl<'a> Segment<'a> {
    /// A buffer of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `[ptr, ptr + len)` must lie in one mapping that stays valid for `'a`.
    unsafe fn new(ptr: *mut u8, len: u32) -> Self {
        Segment {
            ptr,
            len,
            _mem: PhantomData,
        }
    }

    /// Length in bytes.
    #[inline(always)]
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the buffer is empty (never for a validated descriptor).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host address of the buffer's first byte, for system calls and copies; valid
    /// for `len()` bytes while the segment lives.
    #[inline(always)]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The buffer without its first `n` bytes; `None` if it is shorter than `n`.
    #[inline]
    pub fn skip(&self, n: usize) -> Option<Segment<'a>> {
        let rest = (self.len as usize).checked_sub(n)?;
        // SAFETY: `n <= len`: the rest lies inside this segment's mapping.
        Some(unsafe { Segment::new(self.ptr.add(n), rest as u32) })
    }

    /// Copies bytes from offset `off` of the buffer into `out`, as many as both have;
    /// returns how many.
    #[inline]
    pub fn read_at(&self, off: usize, out: &mut [u8]) -> usize {
        let n = (self.len as usize).saturating_sub(off).min(out.len());
        if n > 0 {
            // SAFETY: `off + n <= len` bytes of guest memory, mapped while `'a` lasts;
            // `out` is our own memory, so the two cannot overlap.
            unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), out.as_mut_ptr(), n) };
        }
        n
    }

    /// Copies `data` into the buffer at offset `off`, as much as fits; returns how
    /// many bytes.
    #[inline]
    pub fn write_at(&self, off: usize, data: &[u8]) -> usize {
        let n = (self.len as usize).saturating_sub(off).min(data.len());
        if n > 0 {
            // SAFETY: as in read_at, the other way round.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), n) };
        }
        n
    }
}

/// A validated descriptor chain: its head and its buffers, all of one direction. The
/// chain holds the guest memory its buffers are in, so they stay mapped while it lives.
#[derive(Debug)]
pub struct Chain {
    /// Head descriptor index, to return in the used ring.
    pub head: u16,
    /// The buffers in order; `'static` only inside: they are handed out borrowing the
    /// chain ([`segs`](Self::segs)), whose `mem` keeps them mapped.
    segs: Vec<Segment<'static>>,
    total: u64,
    mem: Option<Arc<GuestMemory>>,
}

// SAFETY: the segments point into the mappings `mem` keeps alive, and the Arc moves
// with the chain; nothing in the chain is tied to a thread.
unsafe impl Send for Chain {}

/// Buffers a reusable [`Chain`] keeps room for after holding a longer chain (Linux
/// posts at most MAX_SKB_FRAGS + 2 = 19): a chain's scratch memory grows with the
/// longest chain it held, and a guest can post queue-size-long chains.
pub const KEEP_SEGMENTS: usize = 32;

impl Chain {
    /// An empty chain able to hold `capacity` buffers without reallocating.
    pub fn with_capacity(capacity: usize) -> Self {
        Chain {
            head: 0,
            segs: Vec::with_capacity(capacity),
            total: 0,
            mem: None,
        }
    }

    /// The buffers in order, borrowing the chain.
    #[inline(always)]
    pub fn segs(&self) -> &[Segment<'_>] {
        &self.segs
    }

    /// Total length of all buffers.
    #[inline(always)]
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Makes the chain hold `mem`, the table its next buffers are read from.
    #[inline(always)]
    fn hold(&mut self, mem: &Arc<GuestMemory>) {
        let held = self.mem.as_ref().map_or(std::ptr::null(), Arc::as_ptr);
        if held != Arc::as_ptr(mem) {
            self.mem = Some(mem.clone());
        }
    }

    /// Buffers the chain has room for without reallocating.
    pub fn capacity(&self) -> usize {
        self.segs.capacity()
    }

    /// A chain over buffers of the test's own, at `head`.
    ///
    /// # Safety
    /// Every buffer must stay valid, and not move, while the chain is used.
    #[cfg(test)]
    pub(crate) unsafe fn over_host_buffers(head: u16, bufs: &mut [Vec<u8>]) -> Self {
        let mut c = Chain::with_capacity(bufs.len());
        c.head = head;
        for b in bufs {
            // SAFETY: the caller keeps the buffers alive and in place.
            c.segs
                .push(unsafe { Segment::new(b.as_mut_ptr(), b.len() as u32) });
            c.total += b.len() as u64;
        }
        c
    }

    /// Gives back the memory of a long chain this one held, keeping room for
    /// [`KEEP_SEGMENTS`] buffers. The chain's contents are not needed any more.
    #[inline]
    pub fn trim(&mut self) {
        if self.segs.capacity() > KEEP_SEGMENTS {
            self.segs = Vec::with_capacity(KEEP_SEGMENTS);
        }
    }
}

/// Which way the buffers of a chain must point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Device reads (guest TX).
    DeviceReads,
    /// Device writes (guest RX).
    DeviceWrites,
}

/// The used index of a ring, readable while this handle keeps its memory mapped.
#[derive(Clone)]
pub struct UsedIndex {
    mem: Arc<GuestMemory>,
    /// Guest-physical address of the used index (checked when the ring was mapped).
    gpa: u64,
}

impl UsedIndex {
    /// The used index in guest memory now.
    pub fn load(&self) -> u16 {
        // The table is immutable and the ring was mapped in it, so this translates.
        self.mem.translate(self.gpa, 2).map_or(0, |p| {
            // SAFETY: two bytes of a mapping `mem` keeps alive, 2-byte aligned (the
            // used ring is 4-byte aligned); AtomicU16 has the layout of u16.
            unsafe { (*(p as *const AtomicU16)).load(Ordering::Acquire) }
        })
    }
}

/// The device side of one split ring.
pub struct DeviceRing {
    index: u16,
    size: u16,
    desc: *const Descriptor,
    avail: *mut u8,
    used: *mut u8,
    used_gpa: u64,
    event_idx: bool,
    next_avail: u16,
    /// The avail index as last read: chains up to it are known to be there without
    /// reading the shared index again.
    avail_seen: u16,
    next_used: u16,
    /// Used index the driver last saw (published).
    published_used: u16,
    /// Used index when we last decided about an interrupt.
    signalled_used: u16,
    mem: Translator,
    broken: bool,
    /// While a migration runs: where writes to the used ring are logged.
    log: Option<UsedLog>,
}

/// The dirty log of a used ring: the log, and the guest-physical range the frontend
/// wants the ring's writes logged at (VHOST_VRING_F_LOG's `log_guest_addr`).
struct UsedLog {
    log: Arc<DirtyLog>,
    gpa: u64,
    len: u64,
}

// SAFETY: the raw pointers point into guest memory kept mapped by `mem` (which holds
// the table's Arc and moves with the ring); the ring is used by one thread at a time.
unsafe impl Send for DeviceRing {}

impl DeviceRing {
    /// Maps a ring's three parts. Fails if any part is outside guest memory or
    /// misaligned; resumes at `cfg.base` and at the used index found in memory.
    pub fn new(
        cfg: &RingConfig,
        mem: Arc<GuestMemory>,
        event_idx: bool,
    ) -> Result<Self, DatapathError> {
        let err = |what: &str| DatapathError::Ring {
            ring: cfg.index,
            what: what.to_owned(),
        };
        if cfg.size == 0 || !cfg.size.is_power_of_two() {
            return Err(err("size is not a power of two"));
        }
        if !ring::areas_aligned(cfg.addrs.desc, cfg.addrs.avail, cfg.addrs.used) {
            return Err(err("misaligned ring address"));
        }
        let (desc_len, avail_len, used_len) = ring::area_sizes(cfg.size);
        let desc = mem
            .translate(cfg.addrs.desc, desc_len)
            .ok_or_else(|| err("descriptor table outside guest memory"))?;
        let avail = mem
            .translate(cfg.addrs.avail, avail_len)
            .ok_or_else(|| err("avail ring outside guest memory"))?;
        let used = mem
            .translate(cfg.addrs.used, used_len)
            .ok_or_else(|| err("used ring outside guest memory"))?;
        let mut ring = DeviceRing {
            index: cfg.index,
            size: cfg.size,
            desc: desc as *const Descriptor,
            avail,
            used,
            used_gpa: cfg.addrs.used,
            event_idx,
            next_avail: cfg.base,
            avail_seen: cfg.base,
            next_used: 0,
            published_used: 0,
            signalled_used: 0,
            mem: Translator::new(mem),
            broken: false,
            log: None,
        };
        let used_idx = ring.used_idx_field().load(Ordering::Acquire);
        ring.next_used = used_idx;
        ring.published_used = used_idx;
        ring.signalled_used = used_idx;
        Ok(ring)
    }

    /// Logs every write to the used ring in `log`, at guest-physical `gpa` (the used
    /// ring's address as the frontend gave it for logging): after each used index
    /// store and each change of the notification fields, the whole used ring's pages
    /// are marked (one or two pages; the elements written since the last store are
    /// among them).
    pub fn log_used_at(&mut self, log: Arc<DirtyLog>, gpa: u64) {
        let (_, _, len) = ring::area_sizes(self.size);
        self.log = Some(UsedLog { log, gpa, len });
    }

    /// Marks the used ring in the dirty log, if there is one: after the write.
    #[inline(always)]
    fn log_used(&self) {
        if let Some(l) = &self.log {
            l.log.mark(l.gpa, l.len);
        }
    }

    /// vhost-user ring index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Number of descriptors.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The next avail entry the device will take (`last_avail_idx`).
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// The guest memory the ring lives in.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        self.mem.memory()
    }

    /// A handle that reads this ring's used index from guest memory, usable after the
    /// ring is gone (to resume a ring whose worker died where the guest saw it stop).
    pub fn used_index(&self) -> UsedIndex {
        UsedIndex {
            mem: self.mem.memory().clone(),
            gpa: self.used_gpa + ring::USED_IDX_OFFSET as u64,
        }
    }

    /// Whether the ring was found corrupt and is no longer processed.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn avail_idx_field(&self) -> &AtomicU16 {
        // SAFETY: `idx` is inside the translated avail ring and 2-byte aligned (avail
        // is checked even); AtomicU16 has the layout of u16.
        unsafe { &*(self.avail.add(ring::AVAIL_IDX_OFFSET) as *const AtomicU16) }
    }

    fn used_idx_field(&self) -> &AtomicU16 {
        // SAFETY: `idx` is inside the translated used ring, 2-byte aligned.
        unsafe { &*(self.used.add(ring::USED_IDX_OFFSET) as *const AtomicU16) }
    }

    fn used_event_field(&self) -> &AtomicU16 {
        let at = ring::used_event_offset(usize::from(self.size));
        // SAFETY: the avail ring was translated with room for `used_event`, at an even
        // offset.
        unsafe { &*(self.avail.add(at) as *const AtomicU16) }
    }

    fn avail_event_field(&self) -> &AtomicU16 {
        let at = ring::avail_event_offset(usize::from(self.size));
        // SAFETY: the used ring was translated with room for `avail_event`, at an even
        // offset.
        unsafe { &*(self.used.add(at) as *const AtomicU16) }
    }

    fn avail_flags(&self) -> u16 {
        // SAFETY: `flags` of the avail ring, 2-byte aligned, inside the mapping.
        unsafe {
            (*(self.avail.add(ring::AVAIL_FLAGS_OFFSET) as *const AtomicU16))
                .load(Ordering::Relaxed)
        }
    }

    fn used_flags_field(&self) -> &AtomicU16 {
        // SAFETY: `flags` of the used ring, 2-byte aligned, inside the mapping.
        unsafe { &*(self.used.add(ring::USED_FLAGS_OFFSET) as *const AtomicU16) }
    }

    /// How many chains the driver has made available beyond `next_avail`. A jump of
    /// more than the ring size means the driver corrupted the ring: the ring is marked
    /// broken (no longer processed) and the error is returned once.
    #[inline]
    pub fn available(&mut self) -> Result<u16, BadDescriptor> {
        if self.broken {
            return Ok(0);
        }
        // Chains already seen need no new look at the shared index.
        let seen = self.avail_seen.wrapping_sub(self.next_avail);
        if seen != 0 && seen <= self.size {
            return Ok(seen);
        }
        // Acquire pairs with the driver's write barrier before it bumps `idx`: the
        // ring entries up to `idx` are visible after this load.
        let idx = self.avail_idx_field().load(Ordering::Acquire);
        let n = idx.wrapping_sub(self.next_avail);
        if n > self.size {
            self.broken = true;
            return Err(BadDescriptor::AvailIndexJump);
        }
        self.avail_seen = idx;
        Ok(n)
    }

    /// Takes the next available head index. Call only when `available() > 0`.
    #[inline]
    pub fn pop_head(&mut self) -> u16 {
        let slot = usize::from(self.next_avail & (self.size - 1));
        // SAFETY: slot < size, and the avail ring was translated with all its entries.
        let head = unsafe {
            (*(self.avail.add(ring::avail_slot_offset(slot)) as *const AtomicU16))
                .load(Ordering::Relaxed)
        };
        self.next_avail = self.next_avail.wrapping_add(1);
        head
    }

    /// Gives back the last `n` heads taken with [`pop_head`](Self::pop_head).
    pub fn unpop(&mut self, n: u16) {
        self.next_avail = self.next_avail.wrapping_sub(n);
    }

    fn descriptor(&self, i: u16) -> Descriptor {
        // SAFETY: callers pass i < size; the table was translated for 16*size bytes
        // and is 16-byte aligned.
        let d = unsafe { std::ptr::read_volatile(self.desc.add(usize::from(i))) };
        Descriptor {
            addr: u64::from_le(d.addr),
            len: u32::from_le(d.len),
            flags: u16::from_le(d.flags),
            next: u16::from_le(d.next),
        }
    }

    /// Checks one descriptor for a chain the device `dir`: no indirect table (not
    /// negotiated), the expected direction, a non-zero length, the buffer inside
    /// guest memory. Returns the buffer's host address.
    #[inline(always)]
    fn check(&mut self, d: &Descriptor, dir: Direction) -> Result<*mut u8, BadDescriptor> {
        if d.flags & VRING_DESC_F_INDIRECT != 0 {
            return Err(BadDescriptor::Indirect);
        }
        let writes = d.flags & VRING_DESC_F_WRITE != 0;
        if writes != (dir == Direction::DeviceWrites) {
            return Err(BadDescriptor::WrongDirection);
        }
        if d.len == 0 {
            return Err(BadDescriptor::ZeroLength);
        }
        self.mem
            .translate(d.addr, u64::from(d.len))
            .ok_or(BadDescriptor::Address)
    }

    /// The next available chain if it is a single valid descriptor for `dir` — the
    /// common case, served without building a [`Chain`]. Nothing is taken: call
    /// [`pop_head`](Self::pop_head) to consume it. `None` for anything else (no chain,
    /// several descriptors, or a bad one: [`read_chain`](Self::read_chain) then
    /// handles and counts it).
    #[inline(always)]
    pub fn peek_single(&mut self, dir: Direction) -> Option<(u16, Segment<'_>)> {
        let seen = self.avail_seen.wrapping_sub(self.next_avail);
        if seen == 0 || seen > self.size {
            if self.broken {
                return None;
            }
            // Acquire: as in available(). A corrupt index is left for available() to
            // detect and count.
            let idx = self.avail_idx_field().load(Ordering::Acquire);
            let n = idx.wrapping_sub(self.next_avail);
            if n == 0 || n > self.size {
                return None;
            }
            self.avail_seen = idx;
        }
        let slot = usize::from(self.next_avail & (self.size - 1));
        // SAFETY: slot < size, and the avail ring was translated with all its entries.
        let head = unsafe {
            (*(self.avail.add(ring::avail_slot_offset(slot)) as *const AtomicU16))
                .load(Ordering::Relaxed)
        };
        if head >= self.size {
            return None;
        }
        let d = self.descriptor(head);
        if d.flags & VRING_DESC_F_NEXT != 0 {
            return None;
        }
        let ptr = self.check(&d, dir).ok()?;
        // SAFETY: checked to lie in guest memory that `self.mem` keeps mapped while the
        // segment borrows the ring.
        Some((head, unsafe { Segment::new(ptr, d.len) }))
    }

    /// The head index at `next_avail`: valid once [`available`](Self::available) said
    /// there is a chain (which read the avail index).
    #[inline]
    pub fn peeked_head(&self) -> u16 {
        let slot = usize::from(self.next_avail & (self.size - 1));
        // SAFETY: as in peek_single.
        unsafe {
            (*(self.avail.add(ring::avail_slot_offset(slot)) as *const AtomicU16))
                .load(Ordering::Relaxed)
        }
    }

    /// Walks the chain at `head` into `out`, checking every descriptor: index in
    /// range, buffer inside guest memory, non-zero length, the expected direction, no
    /// indirect tables (not negotiated), at most `size` descriptors (so no loops).
    #[inline]
    pub fn read_chain(
        &mut self,
        head: u16,
        dir: Direction,
        out: &mut Chain,
    ) -> Result<(), BadDescriptor> {
        self.read_chain_max(head, dir, out, usize::from(self.size))
    }

    /// [`read_chain`](Self::read_chain) that stops with
    /// [`BadDescriptor::ChainTooLong`] after `max` (at most `size`) descriptors: a
    /// caller can look at longer chains on a slower path.
    #[inline(always)]
    pub fn read_chain_max(
        &mut self,
        head: u16,
        dir: Direction,
        out: &mut Chain,
        max: usize,
    ) -> Result<(), BadDescriptor> {
        out.head = head;
        out.segs.clear();
        out.total = 0;
        out.hold(self.mem.memory());
        if head >= self.size {
            return Err(BadDescriptor::HeadOutOfRange);
        }
        let mut i = head;
        loop {
            if out.segs.len() >= max {
                return Err(BadDescriptor::ChainTooLong);
            }
            let d = self.descriptor(i);
            let ptr = self.check(&d, dir)?;
            // SAFETY: checked to lie in the guest memory `out.mem` now holds.
            out.segs.push(unsafe { Segment::new(ptr, d.len) });
            out.total += u64::from(d.len);
            if d.flags & VRING_DESC_F_NEXT == 0 {
                return Ok(());
            }
            if d.next >= self.size {
                return Err(BadDescriptor::NextOutOfRange);
            }
            i = d.next;
        }
    }

    /// Writes a used entry; the driver sees it after [`publish_used`](Self::publish_used).
    #[inline]
    pub fn push_used(&mut self, head: u16, len: u32) {
        let slot = usize::from(self.next_used & (self.size - 1));
        // SAFETY: slot < size; the used ring was translated with all its elements and
        // each 8-byte element is 4-byte aligned.
        unsafe {
            let elem = self.used.add(ring::used_slot_offset(slot)) as *mut u32;
            std::ptr::write_volatile(elem, u32::from(head).to_le());
            std::ptr::write_volatile(elem.add(1), len.to_le());
        }
        self.next_used = self.next_used.wrapping_add(1);
    }

    /// Whether used entries were written but not yet published.
    pub fn has_unpublished(&self) -> bool {
        self.next_used != self.published_used
    }

    /// Publishes every used entry written so far with one index store.
    pub fn publish_used(&mut self) {
        if !self.has_unpublished() {
            return;
        }
        // Release orders the element writes before the index the driver reads.
        self.used_idx_field()
            .store(self.next_used, Ordering::Release);
        self.published_used = self.next_used;
        self.log_used();
    }

    /// Whether the driver wants an interrupt for what was published since the last
    /// decision. Records the decision point either way.
    pub fn needs_interrupt(&mut self) -> bool {
        let old = self.signalled_used;
        let new = self.published_used;
        if old == new {
            return false;
        }
        self.signalled_used = new;
        // Full barrier: our used-index store must be visible before we read the
        // driver's used_event / flags, or both sides could decide not to notify.
        fence(Ordering::SeqCst);
        if self.event_idx {
            need_event(self.used_event_field().load(Ordering::Relaxed), new, old)
        } else {
            self.avail_flags() & VRING_AVAIL_F_NO_INTERRUPT == 0
        }
    }

    /// Asks the driver for a kick when it adds buffers, then checks whether some were
    /// added meanwhile. Returns true if there is work (the caller should process
    /// again instead of sleeping).
    pub fn enable_notification(&mut self) -> bool {
        if self.broken {
            return false;
        }
        if self.event_idx {
            self.avail_event_field()
                .store(self.next_avail, Ordering::Relaxed);
        } else {
            self.used_flags_field().store(0, Ordering::Relaxed);
        }
        self.log_used();
        // Full barrier: the request for a kick must be visible before we re-read the
        // avail index, or a buffer added in between would go unnoticed.
        fence(Ordering::SeqCst);
        self.avail_idx_field().load(Ordering::Acquire) != self.next_avail
    }

    /// Tells the driver kicks are not needed while the device is busy. With EVENT_IDX
    /// this is implicit: `avail_event` is simply not advanced.
    pub fn disable_notification(&mut self) {
        if !self.event_idx {
            self.used_flags_field()
                .store(VRING_USED_F_NO_NOTIFY, Ordering::Relaxed);
            self.log_used();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_driver::{get, memory, put, DriverRing};

    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    /// A 4-entry ring in 64 KiB of anonymous guest memory at gpa 0 (runs under Miri),
    /// its parts at 0x1000, AVAIL and USED.
    fn ring(event_idx: bool) -> (DeviceRing, DriverRing) {
        let mem = memory(0x10000);
        let d = DriverRing::new(&mem, 0x1000, 4);
        (DeviceRing::new(&d.config(1), mem, event_idx).unwrap(), d)
    }

    #[test]
    fn chains_are_read_checked_and_returned() {
        let (mut r, d) = ring(false);
        d.desc(0, 0x8000, 12, VRING_DESC_F_NEXT, 1);
        d.desc(1, 0x9000, 1500, 0, 0);
        d.desc(2, 0xa000, 2048, VRING_DESC_F_WRITE, 0);
        d.desc(3, 0xfff0, 32, 0, 0); // runs past the end of guest memory
        d.offer(&[0, 2, 3]);
        assert_eq!(r.available(), Ok(3));
        assert!(r.peek_single(Direction::DeviceReads).is_none()); // two buffers
        let mut chain = Chain::with_capacity(4);
        let head = r.pop_head();
        r.read_chain(head, Direction::DeviceReads, &mut chain)
            .unwrap();
        assert_eq!(
            (chain.head, chain.segs().len(), chain.total()),
            (0, 2, 1512)
        );
        assert_eq!(
            chain.segs()[1].as_ptr(),
            d.mem.translate(0x9000, 1500).unwrap()
        );
        assert_eq!(r.peeked_head(), 2);
        let (head, single) = r.peek_single(Direction::DeviceWrites).unwrap();
        assert_eq!(
            (head, single.as_ptr(), single.len()),
            (2, d.mem.translate(0xa000, 1).unwrap(), 2048)
        );
        let head = r.pop_head();
        assert_eq!(
            r.read_chain(head, Direction::DeviceReads, &mut chain),
            Err(BadDescriptor::WrongDirection)
        );
        let head = r.pop_head();
        assert_eq!(
            r.read_chain(head, Direction::DeviceReads, &mut chain),
            Err(BadDescriptor::Address)
        );
        for (h, len) in [(0, 0), (2, 64), (3, 0)] {
            r.push_used(h, len);
        }
        assert!(r.has_unpublished());
        r.publish_used();
        assert_eq!(u16::from_le(get(&d.mem, USED + 2)), 3);
        assert_eq!(u32::from_le(get(&d.mem, USED + 4 + 8)), 2);
        assert_eq!(u32::from_le(get(&d.mem, USED + 4 + 8 + 4)), 64);
        assert!(r.needs_interrupt());
        assert!(!r.needs_interrupt());
        assert!(!r.enable_notification());
        r.disable_notification();
        assert_eq!(u16::from_le(get(&d.mem, USED)), VRING_USED_F_NO_NOTIFY);
    }

    #[test]
    fn loops_and_index_jumps_break_nothing() {
        let (mut r, d) = ring(true);
        d.desc(0, 0x8000, 8, VRING_DESC_F_NEXT, 1);
        d.desc(1, 0x8008, 8, VRING_DESC_F_NEXT, 0);
        d.offer(&[0]);
        assert_eq!(r.available(), Ok(1));
        let mut chain = Chain::with_capacity(4);
        let head = r.pop_head();
        assert_eq!(
            r.read_chain(head, Direction::DeviceReads, &mut chain),
            Err(BadDescriptor::ChainTooLong)
        );
        assert_eq!(
            r.read_chain(7, Direction::DeviceReads, &mut chain),
            Err(BadDescriptor::HeadOutOfRange)
        );
        r.push_used(head, 0);
        r.publish_used();
        put(&d.mem, AVAIL + 4 + 2 * 4, 0u16); // used_event 0: crossed by 0 -> 1
        assert!(r.needs_interrupt());
        assert!(!r.enable_notification());
        assert_eq!(u16::from_le(get(&d.mem, USED + 4 + 8 * 4)), 1); // avail_event
        put(&d.mem, AVAIL + 2, 9u16.to_le()); // 8 ahead of a 4-entry ring
        assert_eq!(r.available(), Err(BadDescriptor::AvailIndexJump));
        assert!(r.is_broken());
        assert_eq!(r.available(), Ok(0));
    }

    #[test]
    fn need_event_matches_the_spec_formula() {
        // Event at 5: moving 4 -> 6 crosses it, 6 -> 8 does not.
        assert!(need_event(5, 6, 4));
        assert!(!need_event(5, 8, 6));
        // Exactly reaching event+1 crosses it.
        assert!(need_event(5, 6, 5));
        // Across the 16-bit wrap.
        assert!(need_event(0xffff, 1, 0xfffe));
        assert!(!need_event(0xfff0, 1, 0xfffe));
    }
}
