//! The receive half of a queue pair: gathers the guest's RX buffers for a frame,
//! writes the frame into them (by copy for loopback, or by handing a backend iovecs
//! that point straight into guest memory), and returns them with the right
//! `num_buffers`.
//!
//! Buffers taken from the ring but not used yet stay *pending* in ring order. When the
//! pair stops they are handed back by rewinding the avail index (or, if a bad chain was
//! returned in between, as empty completions).

use vdpa::virtio::net_hdr::{
    rx_header, HdrIovecs, LEGACY_NET_HDR_LEN, NET_HDR_LEN, NUM_BUFFERS_OFFSET,
};
use vdpa::{BadDescriptor, DropReason, LogWriter};

use crate::queue::Queue;
use crate::ring::{Chain, Direction, Segment, KEEP_SEGMENTS};
use crate::syscall_vec::SyscallVec;

/// Validated RX chains taken from the ring and not used yet, oldest first, in a ring
/// of preallocated slots (no allocation or moving of chains per frame).
struct Pending {
    slots: Vec<Chain>,
    head: usize,
    len: usize,
    /// Buffers in the pending chains longer than [`KEEP_SEGMENTS`] (only those can
    /// make the slots' scratch memory grow beyond `slots × KEEP_SEGMENTS`).
    long_segs: usize,
}

impl Pending {
    /// Room for `cap` chains (a power of two): a ring never has more outstanding than
    /// its size.
    fn new(cap: usize) -> Self {
        debug_assert!(cap.is_power_of_two());
        Pending {
            slots: (0..cap).map(|_| Chain::with_capacity(4)).collect(),
            head: 0,
            len: 0,
            long_segs: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn is_full(&self) -> bool {
        self.len == self.slots.len()
    }

    fn slot(&self, i: usize) -> usize {
        // Ring sizes are powers of two.
        (self.head + i) & (self.slots.len() - 1)
    }

    /// The `i`-th pending chain.
    fn get(&self, i: usize) -> &Chain {
        &self.slots[self.slot(i)]
    }

    /// The free slot after the last pending chain, to fill and then [`push`](Self::push).
    fn next_free(&mut self) -> &mut Chain {
        let i = self.slot(self.len);
        &mut self.slots[i]
    }

    /// Makes the chain filled in [`next_free`](Self::next_free) pending.
    #[inline]
    fn push(&mut self) {
        assert!(!self.is_full(), "pending chains overflow their ring");
        self.len += 1;
    }

    #[inline]
    fn pop_front(&mut self) {
        let front = self.slot(0);
        // Only a chain longer than KEEP_SEGMENTS grows a slot beyond that (slots start
        // smaller and are trimmed back to it): one comparison in the common case.
        if self.slots[front].capacity() > KEEP_SEGMENTS {
            self.release_long(front);
        }
        self.head = self.slot(1);
        self.len -= 1;
    }

    /// Takes a long chain out of the count and gives its slot's memory back.
    #[cold]
    #[inline(never)]
    fn release_long(&mut self, slot: usize) {
        let n = self.slots[slot].segs().len();
        if n > KEEP_SEGMENTS {
            self.long_segs -= n;
        }
        self.slots[slot].trim();
    }

    /// Moves the oldest chain behind the newest.
    fn rotate(&mut self) {
        let (from, to) = (self.slot(0), self.slot(self.len));
        self.slots.swap(from, to);
        self.head = self.slot(1);
    }

    fn iter(&self) -> impl Iterator<Item = &Chain> {
        (0..self.len).map(move |i| self.get(i))
    }

    fn clear(&mut self) {
        while !self.is_empty() {
            self.pop_front();
        }
    }

    /// Scratch memory held by all slots, in buffers.
    fn capacity(&self) -> usize {
        self.slots.iter().map(Chain::capacity).sum()
    }
}

/// Whether the guest has buffers for a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// The first `n` pending chains hold the frame.
    Ready(usize),
    /// Mergeable buffers are off and the next buffer is too small for the frame.
    TooSmall,
    /// The guest has not posted enough buffers yet.
    Starved,
}

/// The RX ring of a pair.
pub struct RxQueue {
    /// The ring side.
    pub q: Queue,
    hdr_len: usize,
    mrg: bool,
    pending: Pending,
    /// A bad chain was returned after the first pending one was taken: pending chains
    /// can no longer be handed back by rewinding.
    interleaved: bool,
    iov: SyscallVec<libc::iovec>,
    /// While a migration runs: the dirty log every byte written into a buffer is
    /// marked in, before the buffer is returned.
    log: Option<LogWriter>,
}

impl RxQueue {
    /// An RX half over `q`; the guest expects a `hdr_len`-byte header and, with `mrg`,
    /// may receive one frame in several buffers.
    pub fn new(q: Queue, hdr_len: usize, mrg: bool) -> Self {
        let cap = usize::from(q.ring.size());
        RxQueue {
            q,
            hdr_len,
            mrg,
            pending: Pending::new(cap),
            interleaved: false,
            iov: SyscallVec::with_capacity(64),
            log: None,
        }
    }

    /// Marks every byte written into the guest's buffers in `log` from now on.
    pub fn set_log(&mut self, log: Option<LogWriter>) {
        self.log = log;
    }

    /// Marks the first `written` bytes of `segs` in the dirty log.
    #[cold]
    #[inline(never)]
    fn log_written(log: &mut LogWriter, segs: &[Segment<'_>], mut written: u64) {
        for s in segs {
            if written == 0 {
                break;
            }
            let n = written.min(u64::from(s.len()));
            log.mark_host(s.as_ptr(), n);
            written -= n;
        }
    }

    /// Header length the guest expects.
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// Takes and checks chains from the ring until pending ones can hold `need` bytes
    /// (header included), and says how many the frame takes.
    #[inline]
    pub fn reserve(&mut self, need: u64) -> Reserve {
        loop {
            let (count, capacity) = self.fit(need);
            if capacity >= need {
                return Reserve::Ready(count);
            }
            if !self.mrg && !self.pending.is_empty() {
                return Reserve::TooSmall;
            }
            if self.reserve_one().is_none() {
                return Reserve::Starved;
            }
        }
    }

    /// How many pending chains `need` bytes take, and their capacity.
    fn fit(&self, need: u64) -> (usize, u64) {
        let mut cap = 0;
        for (i, c) in self.pending.iter().enumerate() {
            cap += c.total();
            if cap >= need || !self.mrg {
                return (i + 1, cap);
            }
        }
        (self.pending.len(), cap)
    }

    /// Counts a frame that could not be delivered.
    pub fn drop_frame(&mut self, reason: DropReason) {
        self.q.counts.drop(reason);
    }

    /// Copies a frame (`frame_len` bytes from `src`, after skipping `skip` bytes of
    /// them) into the first `nbufs` pending chains behind a fresh header, and returns
    /// those chains to the guest.
    pub fn deliver_copy(&mut self, nbufs: usize, src: &[Segment<'_>], skip: usize, frame_len: u64) {
        let hdr = self.header(nbufs);
        let whole = self.hdr_len as u64 + frame_len;
        let first = self.pending.get(0);
        if nbufs == 1 && u64::from(first.segs()[0].len()) >= whole {
            // The common case: one buffer holds header and frame.
            let (head, mut dst) = (first.head, first.segs()[0].as_ptr());
            // SAFETY: the segment was translated for `whole` bytes or more; the header
            // is ours, the frame bytes come from translated TX segments (possibly the
            // same guest memory, hence memmove).
            unsafe {
                write_header(self.hdr_len, dst, &hdr);
                dst = dst.add(self.hdr_len);
                let mut skip = skip;
                for seg in src {
                    let len = seg.len() as usize;
                    if skip >= len {
                        skip -= len;
                        continue;
                    }
                    std::ptr::copy(seg.as_ptr().add(skip), dst, len - skip);
                    dst = dst.add(len - skip);
                    skip = 0;
                }
            }
            if let Some(log) = &mut self.log {
                Self::log_written(log, &first.segs()[..1], whole);
            }
            self.q.ring.push_used(head, whole as u32);
            self.pending.pop_front();
            if self.pending.is_empty() {
                self.interleaved = false;
            }
            self.q.counts.packets += 1;
            self.q.counts.bytes += frame_len;
            return;
        }
        let mut dst = Cursor::new(nbufs);
        let chains = &self.pending;
        dst.write_from(chains, hdr.as_ptr(), self.hdr_len);
        let mut skip = skip;
        for seg in src {
            let len = seg.len() as usize;
            if skip >= len {
                skip -= len;
                continue;
            }
            // SAFETY: `seg` was translated for `len` bytes and `skip < len`.
            let from = unsafe { seg.as_ptr().add(skip) };
            dst.write_from(chains, from, len - skip);
            skip = 0;
        }
        self.complete(nbufs, &dst, frame_len);
    }

    /// A fresh virtio-net header for a frame spread over `nbufs` buffers.
    #[inline(always)]
    fn header(&self, nbufs: usize) -> [u8; NET_HDR_LEN] {
        rx_header(if self.hdr_len == NET_HDR_LEN {
            nbufs as u16
        } else {
            0
        })
    }

    /// The fast path for a frame in `frame` (a translated guest buffer, header not included)
    /// when no chain is pending and the next one is a single buffer big enough: the
    /// frame is copied in behind a fresh header and the buffer returned. Returns false,
    /// having taken nothing, when the general path must handle it.
    #[inline]
    pub fn deliver_single(&mut self, frame: Segment<'_>) -> bool {
        let frame_len = u64::from(frame.len());
        if !self.pending.is_empty() {
            return false;
        }
        let hdr_len = self.hdr_len;
        let whole = hdr_len as u64 + frame_len;
        let hdr = self.header(1);
        let Some((head, buf)) = self.q.ring.peek_single(Direction::DeviceWrites) else {
            return false;
        };
        if u64::from(buf.len()) < whole {
            return false;
        }
        // SAFETY: `buf` was translated for `buf.len() >= whole` bytes; `frame` is a
        // translated guest buffer of `frame_len` bytes, which may be the same buffer if
        // the guest posted it twice (memmove).
        unsafe {
            write_header(hdr_len, buf.as_ptr(), &hdr);
            std::ptr::copy(
                frame.as_ptr(),
                buf.as_ptr().add(hdr_len),
                frame_len as usize,
            );
        }
        if let Some(log) = &mut self.log {
            Self::log_written(log, &[buf], whole);
        }
        self.q.ring.pop_head();
        self.q.ring.push_used(head, whole as u32);
        self.q.counts.packets += 1;
        self.q.counts.bytes += frame_len;
        true
    }

    /// iovecs covering the first `nbufs` pending chains (after [`reserve`]
    /// said `Ready(nbufs)`), for a backend to read one frame straight into guest memory.
    /// With `hole`, bytes 10..12 of the header (`num_buffers`) are left out, for
    /// backends whose header is the 10-byte legacy one.
    ///
    /// [`reserve`]: Self::reserve
    pub fn iovecs(&mut self, nbufs: usize, hole: bool) -> &mut [libc::iovec] {
        let mut iov = std::mem::take(&mut self.iov);
        iov.clear();
        self.append_iovecs(0..nbufs, hole, &mut iov);
        self.iov = iov;
        &mut self.iov
    }

    /// Appends iovecs for pending chains `chains` (one frame's worth), as
    /// [`iovecs`](Self::iovecs) does.
    pub fn append_iovecs(
        &self,
        chains: std::ops::Range<usize>,
        hole: bool,
        out: &mut Vec<libc::iovec>,
    ) {
        let mut iov = HdrIovecs::new(self.hdr_len, hole);
        for c in chains.map(|i| self.pending.get(i)) {
            for s in c.segs() {
                iov.push(s.as_ptr(), s.len() as usize, out);
            }
        }
    }

    /// Takes chains from the ring until the first `max` pending chains can each hold
    /// `need` bytes on their own, for a backend that receives several frames at once
    /// (one chain per frame). Returns how many such chains lead the pending list.
    pub fn reserve_each(&mut self, need: u64, max: usize) -> usize {
        loop {
            let fit = self
                .pending
                .iter()
                .take(max)
                .take_while(|c| c.total() >= need)
                .count();
            if fit == max || fit < self.pending.len() {
                return fit;
            }
            if self.reserve_one().is_none() {
                return fit;
            }
        }
    }

    /// Takes one chain from the ring into the pending list; `None` if the ring is empty.
    #[inline]
    fn reserve_one(&mut self) -> Option<()> {
        loop {
            // A guest that posts more than a ring's worth of buffers without the
            // earlier ones being usable gets no more taken: nothing is overwritten.
            if self.pending.is_full() || self.q.available() == 0 {
                return None;
            }
            let head = self.q.ring.pop_head();
            let chain = self.pending.next_free();
            // Chains of up to KEEP_SEGMENTS buffers on the fast path; longer ones are
            // read again, and counted, on a slow one.
            match self
                .q
                .ring
                .read_chain_max(head, Direction::DeviceWrites, chain, KEEP_SEGMENTS)
            {
                Ok(()) => {
                    self.pending.push();
                    return Some(());
                }
                Err(BadDescriptor::ChainTooLong) => {
                    if self.take_long(head) {
                        return Some(());
                    }
                }
                Err(kind) => self.refuse(head, kind),
            }
        }
    }

    /// The chain at `head` has more than [`KEEP_SEGMENTS`] buffers: read all of it
    /// into the next free slot and make it pending, unless long pending chains would
    /// then hold more buffers than the ring has — only possible if the guest links
    /// several chains into the same descriptors; refusing that bounds the slots'
    /// scratch memory.
    #[cold]
    #[inline(never)]
    fn take_long(&mut self, head: u16) -> bool {
        let chain = self.pending.next_free();
        if let Err(kind) = self.q.ring.read_chain(head, Direction::DeviceWrites, chain) {
            self.refuse(head, kind);
            return false;
        }
        // (The guest may have shortened the chain since the first read.)
        let n = chain.segs().len();
        if n > KEEP_SEGMENTS {
            if self.pending.long_segs + n > usize::from(self.q.ring.size()) {
                self.refuse(head, BadDescriptor::ChainTooLong);
                return false;
            }
            self.pending.long_segs += n;
        }
        self.pending.push();
        true
    }

    /// Returns the chain at `head` (read into the next free slot) to the guest unused.
    #[cold]
    fn refuse(&mut self, head: u16, kind: BadDescriptor) {
        self.pending.next_free().trim();
        self.q.reject(head, kind);
        if !self.pending.is_empty() {
            self.interleaved = true;
        }
    }

    /// A backend wrote `written` bytes (header included, `num_buffers` hole excluded if
    /// it used one) through [`iovecs`](Self::iovecs): set `num_buffers`, return the
    /// chains that hold data, keep the rest pending.
    pub fn complete_read(&mut self, written: usize, hole: bool) {
        let bytes = (written + HdrIovecs::hole_len(self.hdr_len, hole)) as u64;
        let (nbufs, _) = self.fit(bytes);
        let mut dst = Cursor::new(nbufs);
        let chains = &self.pending;
        dst.skip(chains, bytes as usize);
        if self.hdr_len == NET_HDR_LEN {
            let n = (nbufs as u16).to_le_bytes();
            let mut at = Cursor::new(nbufs);
            at.skip(chains, NUM_BUFFERS_OFFSET);
            at.write_from(chains, n.as_ptr(), 2);
        }
        self.complete(nbufs, &dst, bytes.saturating_sub(self.hdr_len as u64));
    }

    fn complete(&mut self, nbufs: usize, dst: &Cursor, frame_len: u64) {
        for i in 0..nbufs {
            let c = self.pending.get(i);
            let written = dst.written_in(i, c);
            if let Some(log) = &mut self.log {
                Self::log_written(log, c.segs(), written);
            }
            self.q.ring.push_used(c.head, written as u32);
        }
        for _ in 0..nbufs {
            self.pending.pop_front();
        }
        if self.pending.is_empty() {
            self.interleaved = false;
        }
        self.q.counts.packets += 1;
        self.q.counts.bytes += frame_len;
    }

    /// The first 10 bytes the front pending chains hold (a virtio-net header a backend
    /// just wrote).
    pub fn peek_header(&self) -> [u8; LEGACY_NET_HDR_LEN] {
        let mut out = [0u8; LEGACY_NET_HDR_LEN];
        let mut got = 0;
        for s in self.pending_segments() {
            got += s.read_at(0, &mut out[got..]);
            if got == LEGACY_NET_HDR_LEN {
                break;
            }
        }
        out
    }

    /// The buffers of the pending chains, in order.
    pub fn pending_segments(&self) -> impl Iterator<Item = &Segment<'_>> {
        self.pending.iter().flat_map(|c| c.segs().iter())
    }

    /// Moves the front pending chain (unused: its frame was dropped) to the back, for
    /// backends that received into several chains at once.
    pub fn requeue_front(&mut self) {
        if !self.pending.is_empty() {
            self.pending.rotate();
            // Pending chains are no longer in ring order: hand them back as empty
            // completions rather than by rewinding.
            self.interleaved = true;
        }
    }

    /// Returns the oldest pending chain to the guest unused and counts a drop for
    /// `reason` (its buffers cannot take a frame, e.g. too many segments for one
    /// system call). False if nothing is pending.
    pub fn discard_front(&mut self, reason: DropReason) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let head = self.pending.get(0).head;
        self.q.ring.push_used(head, 0);
        self.pending.pop_front();
        if self.pending.is_empty() {
            self.interleaved = false;
        }
        self.q.counts.drop(reason);
        true
    }

    /// Scratch memory the pending-chain slots hold, in buffers (16 bytes each).
    pub fn scratch_segments(&self) -> usize {
        self.pending.capacity()
    }

    /// Hands pending buffers back before the pair stops.
    pub fn release_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if self.interleaved {
            for i in 0..self.pending.len() {
                let head = self.pending.get(i).head;
                self.q.ring.push_used(head, 0);
            }
            self.pending.clear();
        } else {
            self.q.ring.unpop(self.pending.len() as u16);
            self.pending.clear();
        }
        self.interleaved = false;
    }
}

/// Writes `hdr` (its first `hdr_len` bytes) at `dst`.
///
/// # Safety
/// `dst` must be valid for `hdr_len` bytes of writing.
#[inline(always)]
unsafe fn write_header(hdr_len: usize, dst: *mut u8, hdr: &[u8; NET_HDR_LEN]) {
    // SAFETY: the caller vouches for `dst`; the header comes from our stack, so the two
    // cannot overlap. Constant lengths let the copy be inlined.
    unsafe {
        if hdr_len == NET_HDR_LEN {
            std::ptr::copy_nonoverlapping(hdr.as_ptr(), dst, NET_HDR_LEN);
        } else {
            std::ptr::copy_nonoverlapping(hdr.as_ptr(), dst, LEGACY_NET_HDR_LEN);
        }
    }
}

/// A write position across the first `limit` pending chains' buffers.
struct Cursor {
    limit: usize,
    chain: usize,
    seg: usize,
    off: usize,
    /// Bytes written into chain `chain` so far.
    in_chain: u64,
}

impl Cursor {
    fn new(limit: usize) -> Self {
        Cursor {
            limit,
            chain: 0,
            seg: 0,
            off: 0,
            in_chain: 0,
        }
    }

    /// Copies `len` bytes from `src` into the chains at the cursor. The caller made
    /// sure the chains have room.
    fn write_from(&mut self, chains: &Pending, mut src: *const u8, mut len: usize) {
        while len > 0 {
            let Some(seg) = self.current(chains) else {
                return;
            };
            let n = (seg.len() as usize - self.off).min(len);
            // SAFETY: `seg` was translated for `seg.len()` bytes and `off + n <=
            // seg.len()`; `src` has `len >= n` readable bytes. Source and destination are
            // guest memory (or our header array) and overlap if the guest posted the
            // same buffer twice, so this is a memmove.
            unsafe { std::ptr::copy(src, seg.as_ptr().add(self.off), n) };
            // SAFETY: n <= len, so `src + n` stays within (or one past) the source.
            src = unsafe { src.add(n) };
            len -= n;
            self.off += n;
            self.in_chain += n as u64;
        }
    }

    /// Moves the cursor over `len` bytes already written by someone else.
    fn skip(&mut self, chains: &Pending, mut len: usize) {
        while len > 0 {
            let Some(seg) = self.current(chains) else {
                return;
            };
            let n = (seg.len() as usize - self.off).min(len);
            len -= n;
            self.off += n;
            self.in_chain += n as u64;
        }
    }

    /// The segment at the cursor, moving on over full segments and chains.
    fn current<'c>(&mut self, chains: &'c Pending) -> Option<Segment<'c>> {
        loop {
            if self.chain >= self.limit {
                return None;
            }
            let chain = chains.get(self.chain);
            match chain.segs().get(self.seg) {
                Some(s) if self.off < s.len() as usize => return Some(*s),
                Some(_) => {
                    self.seg += 1;
                    self.off = 0;
                }
                None => {
                    self.chain += 1;
                    self.seg = 0;
                    self.off = 0;
                    self.in_chain = 0;
                }
            }
        }
    }

    /// Bytes written into chain `i` (valid once the writing is complete).
    fn written_in(&self, i: usize, c: &Chain) -> u64 {
        use std::cmp::Ordering::*;
        match i.cmp(&self.chain) {
            Less => c.total(),
            Equal => self.in_chain,
            Greater => 0,
        }
    }
}
