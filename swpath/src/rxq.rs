//! The receive half of a queue pair: gathers the guest's RX buffers for a frame,
//! writes the frame into them (by copy for loopback, or by handing a backend iovecs
//! that point straight into guest memory), and returns them with the right
//! `num_buffers`.
//!
//! Buffers taken from the ring but not used yet stay *pending* in ring order. When the
//! pair stops they are handed back by rewinding the avail index (or, if a bad chain was
//! returned in between, as empty completions).

use std::collections::VecDeque;

use vdpa::DropReason;

use crate::queue::Queue;
use crate::ring::{Chain, Direction, Segment};

/// Offset of `num_buffers` in the 12-byte virtio-net header.
const NUM_BUFFERS_OFFSET: usize = 10;

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
    pending: VecDeque<Chain>,
    /// A bad chain was returned after the first pending one was taken: pending chains
    /// can no longer be handed back by rewinding.
    interleaved: bool,
    spare: Vec<Chain>,
    iov: Vec<libc::iovec>,
}

// SAFETY: `iov` only caches addresses into guest memory (kept mapped by the ring's
// Arc<GuestMemory>); it is rebuilt before every use and moves with the queue.
unsafe impl Send for RxQueue {}

impl RxQueue {
    /// An RX half over `q`; the guest expects a `hdr_len`-byte header and, with `mrg`,
    /// may receive one frame in several buffers.
    pub fn new(q: Queue, hdr_len: usize, mrg: bool) -> Self {
        let cap = usize::from(q.ring.size());
        RxQueue {
            q,
            hdr_len,
            mrg,
            pending: VecDeque::with_capacity(cap),
            interleaved: false,
            spare: (0..cap.min(64)).map(|_| Chain::with_capacity(4)).collect(),
            iov: Vec::with_capacity(64),
        }
    }

    /// Header length the guest expects.
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// Takes and checks chains from the ring until pending ones can hold `need` bytes
    /// (header included), and says how many the frame takes.
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
            cap += c.total;
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
    pub fn deliver_copy(&mut self, nbufs: usize, src: &[Segment], skip: usize, frame_len: u64) {
        let mut hdr = [0u8; 12];
        if self.hdr_len == 12 {
            hdr[NUM_BUFFERS_OFFSET..].copy_from_slice(&(nbufs as u16).to_le_bytes());
        }
        let mut dst = Cursor::default();
        let chains = &self.pending.make_contiguous()[..nbufs];
        dst.write_from(chains, hdr.as_ptr(), self.hdr_len);
        let mut skip = skip;
        for seg in src {
            let len = seg.len as usize;
            if skip >= len {
                skip -= len;
                continue;
            }
            // SAFETY: `seg` was translated for `len` bytes and `skip < len`.
            let from = unsafe { seg.ptr.add(skip) };
            dst.write_from(chains, from, len - skip);
            skip = 0;
        }
        self.complete(nbufs, &dst, frame_len);
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
        let mut offset = 0usize;
        let hole = hole && self.hdr_len == 12;
        for c in self.pending.range(chains) {
            for s in &c.segs {
                let (start, len) = (offset, s.len as usize);
                offset += len;
                let mut push = |from: usize, to: usize| {
                    if to > from {
                        // SAFETY: from < to <= len: inside the translated segment.
                        let base = unsafe { s.ptr.add(from) };
                        out.push(libc::iovec {
                            iov_base: base.cast(),
                            iov_len: to - from,
                        });
                    }
                };
                if hole && start < 12 && start + len > NUM_BUFFERS_OFFSET {
                    let cut_from = NUM_BUFFERS_OFFSET.saturating_sub(start);
                    let cut_to = (12 - start).min(len);
                    push(0, cut_from);
                    push(cut_to, len);
                } else {
                    push(0, len);
                }
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
                .take_while(|c| c.total >= need)
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
    fn reserve_one(&mut self) -> Option<()> {
        loop {
            if self.q.available() == 0 {
                return None;
            }
            let head = self.q.ring.pop_head();
            let mut chain = self.spare.pop().unwrap_or_else(|| Chain::with_capacity(4));
            match self
                .q
                .ring
                .read_chain(head, Direction::DeviceWrites, &mut chain)
            {
                Ok(()) => {
                    self.pending.push_back(chain);
                    return Some(());
                }
                Err(kind) => {
                    self.spare.push(chain);
                    self.q.reject(head, kind);
                    if !self.pending.is_empty() {
                        self.interleaved = true;
                    }
                }
            }
        }
    }

    /// A backend wrote `written` bytes (header included, `num_buffers` hole excluded if
    /// it used one) through [`iovecs`](Self::iovecs): set `num_buffers`, return the
    /// chains that hold data, keep the rest pending.
    pub fn complete_read(&mut self, written: usize, hole: bool) {
        let bytes = written as u64 + if hole && self.hdr_len == 12 { 2 } else { 0 };
        let (nbufs, _) = self.fit(bytes);
        let mut dst = Cursor::default();
        let chains = &self.pending.make_contiguous()[..nbufs];
        dst.skip(chains, bytes as usize);
        if self.hdr_len == 12 {
            let n = (nbufs as u16).to_le_bytes();
            let mut at = Cursor::default();
            at.skip(chains, NUM_BUFFERS_OFFSET);
            at.write_from(chains, n.as_ptr(), 2);
        }
        self.complete(nbufs, &dst, bytes.saturating_sub(self.hdr_len as u64));
    }

    fn complete(&mut self, nbufs: usize, dst: &Cursor, frame_len: u64) {
        for (i, c) in self.pending.iter().take(nbufs).enumerate() {
            let written = dst.written_in(i, c);
            self.q.ring.push_used(c.head, written as u32);
        }
        for _ in 0..nbufs {
            let c = self.pending.pop_front().expect("nbufs pending");
            self.spare.push(c);
        }
        if self.pending.is_empty() {
            self.interleaved = false;
        }
        self.q.counts.packets += 1;
        self.q.counts.bytes += frame_len;
    }

    /// The first 10 bytes the front pending chains hold (a virtio-net header a backend
    /// just wrote).
    pub fn peek_header(&self) -> [u8; 10] {
        let mut out = [0u8; 10];
        let mut got = 0;
        for s in self.pending_segments() {
            let n = (s.len as usize).min(10 - got);
            // SAFETY: `s.ptr` is valid for `s.len >= n` bytes of guest memory.
            unsafe { std::ptr::copy(s.ptr, out[got..].as_mut_ptr(), n) };
            got += n;
            if got == 10 {
                break;
            }
        }
        out
    }

    /// The buffers of the pending chains, in order.
    pub fn pending_segments(&self) -> impl Iterator<Item = &Segment> {
        self.pending.iter().flat_map(|c| c.segs.iter())
    }

    /// Moves the front pending chain (unused: its frame was dropped) to the back, for
    /// backends that received into several chains at once.
    pub fn requeue_front(&mut self) {
        if let Some(c) = self.pending.pop_front() {
            self.pending.push_back(c);
            // Pending chains are no longer in ring order: hand them back as empty
            // completions rather than by rewinding.
            self.interleaved = true;
        }
    }

    /// Hands pending buffers back before the pair stops.
    pub fn release_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if self.interleaved {
            for c in self.pending.drain(..) {
                self.q.ring.push_used(c.head, 0);
            }
        } else {
            self.q.ring.unpop(self.pending.len() as u16);
            self.pending.clear();
        }
        self.interleaved = false;
    }
}

/// A write position across a list of chains' buffers.
#[derive(Default)]
struct Cursor {
    chain: usize,
    seg: usize,
    off: usize,
    /// Bytes written into chain `chain` so far.
    in_chain: u64,
}

impl Cursor {
    /// Copies `len` bytes from `src` into the chains at the cursor. The caller made
    /// sure the chains have room.
    fn write_from(&mut self, chains: &[Chain], mut src: *const u8, mut len: usize) {
        while len > 0 {
            let Some(seg) = self.current(chains) else {
                return;
            };
            let n = (seg.len as usize - self.off).min(len);
            // SAFETY: `seg.ptr` was translated for `seg.len` bytes and `off + n <=
            // seg.len`; `src` has `len >= n` readable bytes. Source and destination are
            // guest memory (or our header array) and overlap if the guest posted the
            // same buffer twice, so this is a memmove.
            unsafe { std::ptr::copy(src, seg.ptr.add(self.off), n) };
            // SAFETY: n <= len, so `src + n` stays within (or one past) the source.
            src = unsafe { src.add(n) };
            len -= n;
            self.off += n;
            self.in_chain += n as u64;
        }
    }

    /// Moves the cursor over `len` bytes already written by someone else.
    fn skip(&mut self, chains: &[Chain], mut len: usize) {
        while len > 0 {
            let Some(seg) = self.current(chains) else {
                return;
            };
            let n = (seg.len as usize - self.off).min(len);
            len -= n;
            self.off += n;
            self.in_chain += n as u64;
        }
    }

    /// The segment at the cursor, moving on over full segments and chains.
    fn current(&mut self, chains: &[Chain]) -> Option<Segment> {
        loop {
            let chain = chains.get(self.chain)?;
            match chain.segs.get(self.seg) {
                Some(s) if self.off < s.len as usize => return Some(*s),
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
            Less => c.total,
            Equal => self.in_chain,
            Greater => 0,
        }
    }
}
