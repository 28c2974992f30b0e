//! The transmit half of a queue pair: takes frames the guest posted, validated, and
//! completes them once the backend has them.

use vdpa::virtio::net_hdr::HdrIovecs;
use vdpa::{BadDescriptor, DropReason};

use crate::queue::Queue;
use crate::ring::{Chain, Direction, Segment};

/// Largest frame accepted from the guest: 64 KiB, the most a virtio-net driver posts
/// (a GSO frame included).
pub const MAX_FRAME: u64 = 65_535;

/// What [`TxQueue::take`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxNext {
    /// The ring has no more frames.
    Empty,
    /// A frame is ready in [`TxQueue::frame`].
    Frame,
    /// A chain was bad or the frame unusable; it was counted and completed.
    Skipped,
    /// The next chain is bad or unusable and was left on the ring: frames taken before
    /// it are not completed yet, and completions stay in ring order. Finish those,
    /// then take again (it is then counted and completed as [`Skipped`](Self::Skipped)).
    Later,
}

/// The TX ring of a pair.
pub struct TxQueue {
    /// The ring side.
    pub q: Queue,
    chain: Chain,
    hdr_len: usize,
}

impl TxQueue {
    /// A TX half over `q`; frames start with a `hdr_len`-byte virtio-net header.
    pub fn new(q: Queue, hdr_len: usize) -> Self {
        TxQueue {
            q,
            chain: Chain::with_capacity(8),
            hdr_len,
        }
    }

    /// Takes the next chain off the ring and checks it.
    pub fn take(&mut self) -> TxNext {
        take(&mut self.q, self.hdr_len, &mut self.chain, false)
    }

    /// The next frame if its chain is a single valid buffer: its head and the frame
    /// (after the header) as a segment. Nothing is taken; `None` sends the caller to
    /// [`take`](Self::take), which also validates and counts bad chains.
    #[inline]
    pub fn peek_single(&mut self) -> Option<(u16, Segment<'_>)> {
        let hdr_len = self.hdr_len;
        let (head, buf) = self.q.ring.peek_single(Direction::DeviceReads)?;
        let frame = buf.skip(hdr_len)?;
        (u64::from(frame.len()) <= MAX_FRAME).then_some((head, frame))
    }

    /// Completes the frame [`peek_single`](Self::peek_single) returned (after the
    /// backend took it).
    #[inline]
    pub fn complete_single(&mut self, head: u16, frame_len: u32) {
        self.q.ring.pop_head();
        self.q.ring.push_used(head, 0);
        self.q.counts.packets += 1;
        self.q.counts.bytes += u64::from(frame_len);
    }

    /// [`take`](Self::take) into a chain of the caller's, for backends that send
    /// several frames at once; complete it with [`complete_chain`](Self::complete_chain).
    /// With `batch_open` (frames taken and not completed yet), a bad chain is left on
    /// the ring ([`TxNext::Later`]) so that a batch is always a contiguous run of the
    /// ring: completions stay in order and [`unpop_n`](Self::unpop_n) puts back
    /// exactly the batch's tail.
    pub fn take_into(&mut self, chain: &mut Chain, batch_open: bool) -> TxNext {
        take(&mut self.q, self.hdr_len, chain, batch_open)
    }

    /// The backend took `chain` (from [`take_into`](Self::take_into)).
    pub fn complete_chain(&mut self, chain: &Chain) {
        self.q.ring.push_used(chain.head, 0);
        self.q.counts.packets += 1;
        self.q.counts.bytes += chain.total() - self.hdr_len as u64;
    }

    /// `chain` cannot be sent: return it, count the drop.
    pub fn drop_chain(&mut self, chain: &Chain, reason: DropReason) {
        self.q.ring.push_used(chain.head, 0);
        self.q.counts.drop(reason);
    }

    /// Puts the last `n` chains taken back on the ring.
    pub fn unpop_n(&mut self, n: u16) {
        self.q.ring.unpop(n);
    }

    /// The current frame's chain (header included).
    pub fn frame(&self) -> &Chain {
        &self.chain
    }

    /// Length of the current frame without its header.
    pub fn frame_len(&self) -> u64 {
        self.chain.total() - self.hdr_len as u64
    }

    /// Length of the virtio-net header in front of every frame.
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// The backend took the current frame: return the chain to the guest, count it.
    pub fn complete(&mut self) {
        self.q.ring.push_used(self.chain.head, 0);
        self.q.counts.packets += 1;
        self.q.counts.bytes += self.chain.total() - self.hdr_len as u64;
    }

    /// The current frame cannot be sent: return the chain, count the drop.
    pub fn drop_frame(&mut self, reason: DropReason) {
        self.q.ring.push_used(self.chain.head, 0);
        self.q.counts.drop(reason);
    }

    /// iovecs over `chain`'s buffers, appended to `out`; with `hole`, bytes 10..12 of
    /// the 12-byte header are left out (for a backend that takes the 10-byte one).
    pub fn append_iovecs(&self, chain: &Chain, hole: bool, out: &mut Vec<libc::iovec>) {
        let mut iov = HdrIovecs::new(self.hdr_len, hole);
        for s in chain.segs() {
            iov.push(s.as_ptr(), s.len() as usize, out);
        }
    }

    /// Puts the current frame back on the ring (the backend could not take it now).
    pub fn unpop(&mut self) {
        self.q.ring.unpop(1);
    }
}

/// Takes the next chain of `q` into `chain` and checks it as a frame with a
/// `hdr_len`-byte header. A bad chain is completed and counted, or with `defer_bad`
/// left on the ring.
#[inline]
fn take(q: &mut Queue, hdr_len: usize, chain: &mut Chain, defer_bad: bool) -> TxNext {
    if q.available() == 0 {
        return TxNext::Empty;
    }
    let head = q.ring.pop_head();
    // Err: a malformed chain (a bad descriptor); Ok: a well-formed frame that is dropped.
    let problem = match q.ring.read_chain(head, Direction::DeviceReads, chain) {
        Err(kind) => Some(Err(kind)),
        Ok(()) if chain.total() < hdr_len as u64 => Some(Err(BadDescriptor::BadLength)),
        Ok(()) if chain.total() - hdr_len as u64 > MAX_FRAME => Some(Ok(DropReason::Oversized)),
        Ok(()) => None,
    };
    match problem {
        None => TxNext::Frame,
        Some(_) if defer_bad => {
            q.ring.unpop(1);
            TxNext::Later
        }
        Some(Err(kind)) => {
            q.reject(head, kind);
            TxNext::Skipped
        }
        Some(Ok(reason)) => {
            q.ring.push_used(head, 0);
            q.counts.drop(reason);
            TxNext::Skipped
        }
    }
}
