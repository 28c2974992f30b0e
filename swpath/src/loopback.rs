//! The loopback mover: every frame the guest transmits on a queue pair's TX ring is
//! written straight into the guest's RX buffers of the same pair — one copy, guest
//! buffer to guest buffer, with a fresh virtio-net header (`num_buffers` set for
//! mergeable RX buffers).
//!
//! Flow control: a frame waits on the TX ring while the guest has no RX buffer for
//! it; it is never dropped for lack of buffers.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::interrupt::Interrupt;
use crate::ring::{Chain, DeviceRing, Direction, Segment};
use vdpa::features::Negotiated;
use vdpa::{BadDescriptor, BurstCounts, DropReason, QueueCounters};

/// Largest Ethernet frame accepted from the guest without GSO (64 KiB, the most a
/// virtio-net driver can post without segmentation offloads).
pub const MAX_FRAME: u64 = 65_535;

/// Why a processing pass ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The work cap was reached; more may be waiting.
    BudgetSpent,
    /// The TX ring is empty.
    TxEmpty,
    /// A frame is waiting and the guest has no RX buffer for it.
    RxStarved,
}

/// One ring with its eventfd and counters.
pub struct Side {
    /// The ring.
    pub ring: DeviceRing,
    /// Where interrupts go.
    pub interrupt: Arc<Interrupt>,
    /// Shared counters.
    pub counters: Arc<QueueCounters>,
    /// Counts of the current burst.
    pub counts: BurstCounts,
}

impl Side {
    /// Publishes used entries, interrupts the guest if it asked for it, and adds the
    /// burst's counts to the shared counters.
    pub fn flush(&mut self) {
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
    fn reject(&mut self, head: u16, kind: BadDescriptor) {
        self.counts.bad(kind);
        if kind != BadDescriptor::HeadOutOfRange {
            self.ring.push_used(head, 0);
        }
    }
}

/// Reflects TX frames into RX buffers for one queue pair.
pub struct LoopbackPair {
    /// The RX ring side (device writes).
    pub rx: Side,
    /// The TX ring side (device reads).
    pub tx: Side,
    hdr_len: usize,
    mrg: bool,
    tx_chain: Chain,
    /// RX chains taken from the ring, validated, waiting for a frame.
    rx_pending: VecDeque<Chain>,
    /// Whether a bad RX chain was returned after the first pending one was taken, in
    /// which case pending chains can no longer be handed back by rewinding.
    rx_pending_interleaved: bool,
    spare: Vec<Chain>,
}

impl LoopbackPair {
    /// A mover over `rx` and `tx` with the negotiated `features`.
    pub fn new(rx: Side, tx: Side, features: Negotiated) -> Self {
        let cap = usize::from(rx.ring.size());
        LoopbackPair {
            hdr_len: features.net_header_len(),
            mrg: features.mrg_rxbuf(),
            tx_chain: Chain::with_capacity(4),
            rx_pending: VecDeque::with_capacity(cap),
            rx_pending_interleaved: false,
            spare: (0..cap.min(64)).map(|_| Chain::with_capacity(4)).collect(),
            rx,
            tx,
        }
    }

    /// Moves up to `budget` TX chains (good or bad). Used entries are written but not
    /// published: call [`flush`](Self::flush) afterwards.
    pub fn process(&mut self, budget: usize) -> Outcome {
        for _ in 0..budget {
            match self.tx.ring.available() {
                Ok(0) => return Outcome::TxEmpty,
                Ok(_) => {}
                Err(kind) => {
                    self.tx.counts.bad(kind);
                    return Outcome::TxEmpty;
                }
            }
            let head = self.tx.ring.pop_head();
            if let Err(kind) =
                self.tx
                    .ring
                    .read_chain(head, Direction::DeviceReads, &mut self.tx_chain)
            {
                self.tx.reject(head, kind);
                continue;
            }
            let total = self.tx_chain.total;
            if total < self.hdr_len as u64 {
                self.tx.reject(head, BadDescriptor::BadLength);
                continue;
            }
            let frame_len = total - self.hdr_len as u64;
            if frame_len > MAX_FRAME {
                self.tx.counts.drop(DropReason::Oversized);
                self.tx.ring.push_used(head, 0);
                continue;
            }
            let Some(nbufs) = self.take_rx_buffers(total) else {
                // Leave the frame on the TX ring until RX buffers arrive.
                self.tx.ring.unpop(1);
                self.rx.counts.rx_no_buffer += 1;
                return Outcome::RxStarved;
            };
            if nbufs == 0 {
                self.rx.counts.drop(DropReason::RxBufferTooSmall);
            } else {
                self.deliver(nbufs);
                self.rx.counts.packets += 1;
                self.rx.counts.bytes += frame_len;
            }
            self.tx.ring.push_used(head, 0);
            self.tx.counts.packets += 1;
            self.tx.counts.bytes += frame_len;
        }
        Outcome::BudgetSpent
    }

    /// Makes sure enough validated RX chains are pending for `need` bytes and says how
    /// many the frame will use: `Some(0)` if the frame cannot fit (mergeable buffers
    /// off and the next buffer is too small), `None` if the guest has not posted
    /// enough buffers yet.
    fn take_rx_buffers(&mut self, need: u64) -> Option<usize> {
        loop {
            let (count, capacity) = self.pending_fit(need);
            if capacity >= need {
                return Some(count);
            }
            if !self.mrg && !self.rx_pending.is_empty() {
                return Some(0);
            }
            match self.rx.ring.available() {
                Ok(0) => return None,
                Ok(_) => {}
                Err(kind) => {
                    self.rx.counts.bad(kind);
                    return None;
                }
            }
            let head = self.rx.ring.pop_head();
            let mut chain = self.spare.pop().unwrap_or_else(|| Chain::with_capacity(4));
            match self
                .rx
                .ring
                .read_chain(head, Direction::DeviceWrites, &mut chain)
            {
                Ok(()) => self.rx_pending.push_back(chain),
                Err(kind) => {
                    self.spare.push(chain);
                    self.rx.reject(head, kind);
                    if !self.rx_pending.is_empty() {
                        self.rx_pending_interleaved = true;
                    }
                }
            }
        }
    }

    /// How many pending chains a frame of `need` bytes takes, and their capacity.
    fn pending_fit(&self, need: u64) -> (usize, u64) {
        let mut cap = 0;
        for (i, c) in self.rx_pending.iter().enumerate() {
            cap += c.total;
            if cap >= need || !self.mrg {
                return (i + 1, cap);
            }
        }
        (self.rx_pending.len(), cap)
    }

    /// Copies the TX frame into the first `nbufs` pending RX chains behind a fresh
    /// header, and returns those chains to the guest.
    fn deliver(&mut self, nbufs: usize) {
        let mut hdr = [0u8; 12];
        if self.hdr_len == 12 {
            hdr[10..12].copy_from_slice(&(nbufs as u16).to_le_bytes());
        }
        let mut dst = Cursor::default();
        let pending = self.rx_pending.make_contiguous();
        let chains = &pending[..nbufs];
        dst.write_from(chains, hdr[..self.hdr_len].as_ptr(), self.hdr_len);
        let mut skip = self.hdr_len;
        for seg in &self.tx_chain.segs {
            let len = seg.len as usize;
            if skip >= len {
                skip -= len;
                continue;
            }
            // SAFETY: `seg` was translated for `len` bytes and `skip < len`.
            let src = unsafe { seg.ptr.add(skip) };
            dst.write_from(chains, src, len - skip);
            skip = 0;
        }
        for (i, c) in chains.iter().enumerate() {
            let written = dst.written_in(i, c);
            self.rx.ring.push_used(c.head, written as u32);
        }
        for _ in 0..nbufs {
            let c = self.rx_pending.pop_front().expect("nbufs pending");
            self.spare.push(c);
        }
        if self.rx_pending.is_empty() {
            self.rx_pending_interleaved = false;
        }
    }

    /// Publishes both rings and sends the interrupts the guest wants.
    pub fn flush(&mut self) {
        self.rx.flush();
        self.tx.flush();
    }

    /// Stops: hands pending RX buffers back (by rewinding when possible, else as
    /// empty completions), publishes, and returns where each ring stopped (rx, tx).
    pub fn finish(mut self) -> (u16, u16) {
        if !self.rx_pending.is_empty() {
            if self.rx_pending_interleaved {
                for c in self.rx_pending.drain(..) {
                    self.rx.ring.push_used(c.head, 0);
                }
            } else {
                self.rx.ring.unpop(self.rx_pending.len() as u16);
                self.rx_pending.clear();
            }
        }
        self.flush();
        (self.rx.ring.next_avail(), self.tx.ring.next_avail())
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
            let room = seg.len as usize - self.off;
            let n = room.min(len);
            // SAFETY: `seg.ptr` was translated for `seg.len` bytes and `off + n <=
            // seg.len`; `src` has `len >= n` readable bytes. Both are guest memory (or
            // our header array) and may overlap if the guest posted the same buffer
            // twice, so this is a memmove.
            unsafe { std::ptr::copy(src, seg.ptr.add(self.off), n) };
            // SAFETY: n <= len, so `src + n` stays within (or one past) the source.
            src = unsafe { src.add(n) };
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

    /// Bytes written into chain `i` (only valid once the copy is complete).
    fn written_in(&self, i: usize, c: &Chain) -> u64 {
        use std::cmp::Ordering::*;
        match i.cmp(&self.chain) {
            Less => c.total,
            Equal => self.in_chain,
            Greater => 0,
        }
    }
}
