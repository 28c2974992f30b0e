//! The transmit half of a queue pair: takes frames the guest posted, validated, and
//! completes them once the backend has them.

use vdpa::{BadDescriptor, DropReason};

use crate::queue::Queue;
use crate::ring::{Chain, Direction};

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
        if self.q.available() == 0 {
            return TxNext::Empty;
        }
        let head = self.q.ring.pop_head();
        if let Err(kind) = self
            .q
            .ring
            .read_chain(head, Direction::DeviceReads, &mut self.chain)
        {
            self.q.reject(head, kind);
            return TxNext::Skipped;
        }
        if self.chain.total < self.hdr_len as u64 {
            self.q.reject(head, BadDescriptor::BadLength);
            return TxNext::Skipped;
        }
        if self.frame_len() > MAX_FRAME {
            self.drop_frame(DropReason::Oversized);
            return TxNext::Skipped;
        }
        TxNext::Frame
    }

    /// The current frame's chain (header included).
    pub fn frame(&self) -> &Chain {
        &self.chain
    }

    /// Length of the current frame without its header.
    pub fn frame_len(&self) -> u64 {
        self.chain.total - self.hdr_len as u64
    }

    /// Length of the virtio-net header in front of every frame.
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// The backend took the current frame: return the chain to the guest, count it.
    pub fn complete(&mut self) {
        self.q.ring.push_used(self.chain.head, 0);
        self.q.counts.packets += 1;
        self.q.counts.bytes += self.frame_len();
    }

    /// The current frame cannot be sent: return the chain, count the drop.
    pub fn drop_frame(&mut self, reason: DropReason) {
        self.q.ring.push_used(self.chain.head, 0);
        self.q.counts.drop(reason);
    }

    /// Puts the current frame back on the ring (the backend could not take it now).
    pub fn unpop(&mut self) {
        self.q.ring.unpop(1);
    }
}
