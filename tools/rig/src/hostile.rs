//! Hostile descriptors: raw, deliberately broken chains published into a ring, so that a
//! test can check the device counts them, never touches memory outside the table, and
//! keeps serving normal traffic afterwards (see [`Rig::send_and_wait`]).
//!
//! Each kind breaks exactly one rule; the rest of the chain is valid (buffers point into
//! the rig's scratch area, RX buffers are writable, TX ones readable).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::driver_ring::{DriverRing, RawDesc};
use crate::error::RigError;
use crate::frame::{build_frame, MIN_FRAME};
use crate::rig::Rig;
use vdpa::virtio::features::VIRTIO_RING_F_INDIRECT_DESC;
use vdpa::virtio::net_hdr::{VirtioNetHdr, NET_HDR_LEN};
use vdpa::virtio::ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

/// Which ring of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PairRing {
    /// The TX ring (device reads).
    Tx,
    /// The RX ring (device writes).
    Rx,
}

/// The kinds of broken chains the rig can publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Hostile {
    /// A buffer at a GPA far outside guest memory.
    AddrOutOfRange,
    /// A buffer just below the first region (GPAs under the base are never valid).
    AddrBelowMemory,
    /// `addr + len` wraps around 2^64.
    AddrLenOverflow,
    /// A buffer that starts inside region 0 and runs past its end.
    CrossRegionEnd,
    /// A zero-length buffer.
    ZeroLength,
    /// Two descriptors whose `next` fields point at each other.
    NextLoop,
    /// A `next` index outside the descriptor table.
    NextOutOfRange,
    /// A device-writable buffer on the TX ring.
    WriteOnlyOnTx,
    /// A device-readable buffer on the RX ring.
    ReadOnlyOnRx,
    /// Every descriptor of the table chained, the last pointing back at the first (the
    /// ring must be idle: all descriptors free).
    ChainLongerThanQueue,
    /// An INDIRECT descriptor although INDIRECT_DESC was not negotiated.
    IndirectNotNegotiated,
    /// An avail ring entry naming a head outside the table.
    HeadOutOfRange,
}

impl Hostile {
    /// Every kind.
    pub const ALL: [Hostile; 12] = [
        Hostile::AddrOutOfRange,
        Hostile::AddrBelowMemory,
        Hostile::AddrLenOverflow,
        Hostile::CrossRegionEnd,
        Hostile::ZeroLength,
        Hostile::NextLoop,
        Hostile::NextOutOfRange,
        Hostile::WriteOnlyOnTx,
        Hostile::ReadOnlyOnRx,
        Hostile::ChainLongerThanQueue,
        Hostile::IndirectNotNegotiated,
        Hostile::HeadOutOfRange,
    ];

    /// Whether the kind makes sense on `dir` (WriteOnlyOnTx only on TX, ReadOnlyOnRx only
    /// on RX, the rest on both).
    pub fn applies_to(self, dir: PairRing) -> bool {
        match self {
            Hostile::WriteOnlyOnTx => dir == PairRing::Tx,
            Hostile::ReadOnlyOnRx => dir == PairRing::Rx,
            _ => true,
        }
    }
}

/// A published hostile chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// vhost-user ring index.
    pub ring: usize,
    /// Head value put in the avail ring.
    pub head: u16,
    /// Descriptor indices it occupies (until the device completes it, if ever).
    pub descs: Vec<u16>,
}

/// Offsets inside the scratch area.
const SCRATCH_FRAME: u64 = 0;
const SCRATCH_INDIRECT: u64 = 4096;
const SCRATCH_RX: u64 = 16 << 10;
/// Length of the test frame hostile TX chains carry (marked pair 0xffff).
const HOSTILE_FRAME: usize = 64;

impl Rig {
    fn ring_for(
        &mut self,
        pair: usize,
        dir: PairRing,
    ) -> Result<(usize, &mut DriverRing), RigError> {
        let p = self
            .pairs_mut()
            .get_mut(pair)
            .ok_or_else(|| RigError::Options(format!("no queue pair {pair}")))?;
        Ok(match dir {
            PairRing::Tx => (p.tx.index(), p.tx.ring_mut()),
            PairRing::Rx => (p.rx.index(), p.rx.ring_mut()),
        })
    }

    /// Takes `n` free descriptors of a ring for raw use (see [`Rig::write_raw_desc`]).
    pub fn reserve_descs(
        &mut self,
        pair: usize,
        dir: PairRing,
        n: usize,
    ) -> Result<Vec<u16>, RigError> {
        let (ring, r) = self.ring_for(pair, dir)?;
        r.reserve(n)
            .map_err(|source| RigError::Queue(crate::txq::QueueError::Ring { ring, source }))
    }

    /// Writes a raw descriptor (no checks on its contents) at `index`.
    pub fn write_raw_desc(
        &mut self,
        pair: usize,
        dir: PairRing,
        index: u16,
        desc: RawDesc,
    ) -> Result<(), RigError> {
        let (ring, r) = self.ring_for(pair, dir)?;
        r.write_raw_desc(index, desc)
            .map_err(|source| RigError::Queue(crate::txq::QueueError::Ring { ring, source }))
    }

    /// Puts `head` in the avail ring, publishes it and kicks. `descs` are the reserved
    /// descriptors the chain uses (freed if the device ever completes `head`).
    pub fn publish_raw(
        &mut self,
        pair: usize,
        dir: PairRing,
        head: u16,
        descs: Vec<u16>,
    ) -> Result<Injected, RigError> {
        let (ring, r) = self.ring_for(pair, dir)?;
        r.add_raw_head(head, descs.clone())
            .map_err(|source| RigError::Queue(crate::txq::QueueError::Ring { ring, source }))?;
        r.publish();
        let _ = r.kick_needed();
        let p = &mut self.pairs_mut()[pair];
        match dir {
            PairRing::Tx => p.tx.kick()?,
            PairRing::Rx => p.rx.kick()?,
        }
        Ok(Injected { ring, head, descs })
    }

    /// Uses up every RX buffer posted on `pair` by looping filler frames (marked pair
    /// 0xfffe) without reposting, so that an RX chain injected next is the first one the
    /// device looks at (rings are FIFO: a hostile chain behind posted buffers is only
    /// reached once those are used). Returns the number of filler frames looped.
    pub fn drain_rx(&mut self, pair: usize, timeout: Duration) -> Result<u64, RigError> {
        if pair >= self.pairs().len() {
            return Err(RigError::Options(format!("no queue pair {pair}")));
        }
        let deadline = Instant::now() + timeout;
        let filler = build_frame(0xfffe, 0, MIN_FRAME);
        let (mut sent, mut back) = (0u64, 0u64);
        loop {
            let p = &mut self.pairs_mut()[pair];
            p.tx.reap()?;
            back += p.rx.poll(usize::MAX, |_| {})? as u64;
            let posted = p.rx.ring().in_flight() as u64;
            if posted == 0 {
                return Ok(sent);
            }
            while sent - back < posted && p.tx.can_send() {
                p.tx.send(&filler)?;
                sent += 1;
            }
            p.tx.flush()?;
            let now = Instant::now();
            if now >= deadline {
                return Err(RigError::Timeout(format!(
                    "{posted} RX buffers of pair {pair} still posted after {timeout:?}"
                )));
            }
            self.sleep_for_work(true, (deadline - now).min(Duration::from_millis(20)))?;
        }
    }

    /// Publishes one hostile chain of `kind` on the `dir` ring of `pair`, and kicks.
    /// On RX the device reaches it only after the buffers posted before it (see
    /// [`Rig::drain_rx`]).
    pub fn inject(
        &mut self,
        pair: usize,
        dir: PairRing,
        kind: Hostile,
    ) -> Result<Injected, RigError> {
        if !kind.applies_to(dir) {
            return Err(RigError::Options(format!(
                "{kind:?} does not apply to {dir:?}"
            )));
        }
        if kind == Hostile::IndirectNotNegotiated
            && self.negotiated().acked_features & VIRTIO_RING_F_INDIRECT_DESC != 0
        {
            return Err(RigError::Options(
                "INDIRECT_DESC was negotiated".to_string(),
            ));
        }
        let scratch = self.scratch();
        let hdr_len = NET_HDR_LEN as u32;
        let frame_len = HOSTILE_FRAME as u32;
        // Valid contents for the parts of the chain that are not the defect.
        let mut payload = VirtioNetHdr::default().to_bytes().to_vec();
        payload.extend(build_frame(0xffff, 0, HOSTILE_FRAME));
        self.memory().write(scratch.gpa + SCRATCH_FRAME, &payload)?;
        let (w, buf) = match dir {
            PairRing::Tx => (0, scratch.gpa + SCRATCH_FRAME),
            PairRing::Rx => (VRING_DESC_F_WRITE, scratch.gpa + SCRATCH_RX),
        };
        let whole = hdr_len + frame_len;
        let region0_end = self.memory().region_end(0).expect("region 0 exists");
        let base = self.memory().regions()[0].gpa();
        let size = match dir {
            PairRing::Tx => self.pairs()[pair].tx.ring().size(),
            PairRing::Rx => self.pairs()[pair].rx.ring().size(),
        };
        let single = |addr: u64, len: u32, flags: u16| {
            vec![RawDesc {
                addr,
                len,
                flags,
                next: 0,
            }]
        };
        // Descriptors by chain position; `next` holds a position, patched to real indices
        // below unless it is a deliberate out-of-table value.
        let (chain, links_are_positions): (Vec<RawDesc>, bool) = match kind {
            Hostile::AddrOutOfRange => (single(0xdead_0000_0000, whole, w), true),
            Hostile::AddrBelowMemory => (single(base - 4096, whole, w), true),
            Hostile::AddrLenOverflow => (single(u64::MAX - 15, whole, w), true),
            Hostile::CrossRegionEnd => (single(region0_end - 32, whole, w), true),
            Hostile::ZeroLength => (single(buf, 0, w), true),
            Hostile::NextLoop => (
                vec![
                    RawDesc {
                        addr: buf,
                        len: hdr_len,
                        flags: w | VRING_DESC_F_NEXT,
                        next: 1,
                    },
                    RawDesc {
                        addr: buf + u64::from(hdr_len),
                        len: frame_len,
                        flags: w | VRING_DESC_F_NEXT,
                        next: 0,
                    },
                ],
                true,
            ),
            Hostile::NextOutOfRange => (
                vec![RawDesc {
                    addr: buf,
                    len: hdr_len,
                    flags: w | VRING_DESC_F_NEXT,
                    next: size.wrapping_add(3),
                }],
                false,
            ),
            Hostile::WriteOnlyOnTx => (
                single(scratch.gpa + SCRATCH_RX, whole, VRING_DESC_F_WRITE),
                true,
            ),
            Hostile::ReadOnlyOnRx => (single(scratch.gpa + SCRATCH_RX, 2048, 0), true),
            Hostile::ChainLongerThanQueue => {
                let n = usize::from(size);
                let chain = (0..n)
                    .map(|i| RawDesc {
                        addr: buf,
                        len: hdr_len,
                        flags: w | VRING_DESC_F_NEXT,
                        next: ((i + 1) % n) as u16,
                    })
                    .collect();
                (chain, true)
            }
            Hostile::IndirectNotNegotiated => {
                let table = [
                    RawDesc {
                        addr: buf,
                        len: hdr_len,
                        flags: w | VRING_DESC_F_NEXT,
                        next: 1,
                    },
                    RawDesc {
                        addr: buf + u64::from(hdr_len),
                        len: frame_len,
                        flags: w,
                        next: 0,
                    },
                ];
                let mut bytes = Vec::with_capacity(32);
                for d in table {
                    bytes.extend(d.addr.to_le_bytes());
                    bytes.extend(d.len.to_le_bytes());
                    bytes.extend(d.flags.to_le_bytes());
                    bytes.extend(d.next.to_le_bytes());
                }
                self.memory()
                    .write(scratch.gpa + SCRATCH_INDIRECT, &bytes)?;
                (
                    single(scratch.gpa + SCRATCH_INDIRECT, 32, VRING_DESC_F_INDIRECT),
                    true,
                )
            }
            Hostile::HeadOutOfRange => {
                return self.publish_raw(pair, dir, size.wrapping_add(7), Vec::new());
            }
        };
        let ids = self.reserve_descs(pair, dir, chain.len())?;
        for (pos, d) in chain.iter().enumerate() {
            let mut d = *d;
            if links_are_positions {
                d.next = ids[usize::from(d.next)];
            }
            self.write_raw_desc(pair, dir, ids[pos], d)?;
        }
        self.publish_raw(pair, dir, ids[0], ids)
    }
}
