//! The RX queue of a pair: writable buffers posted from a slot pool, frames reassembled
//! from the used ring.
//!
//! With MRG_RXBUF every chain is one buffer and the device may spread a frame over
//! several; the first buffer's header says how many (`num_buffers`), and that many used
//! elements are consumed for the frame. Without it, each chain is enough chained buffers
//! for the header plus the largest frame (one buffer by default).

use crate::driver_ring::{DriverRing, DriverRingError, DriverSegment, UsedKind};
use crate::kick_call::KickCall;
use crate::stats::DriverQueueStats;
use crate::txq::{QueueError, SlotPool};
use vdpa::virtio::net_hdr::{VirtioNetHdr, NET_HDR_LEN};

/// A received frame, handed to the caller of [`DriverRxQueue::poll`].
#[derive(Debug)]
pub struct RxFrame<'a> {
    /// Header from the first buffer.
    pub hdr: VirtioNetHdr,
    /// Frame bytes (without header); empty unless inspection is on.
    pub data: &'a [u8],
    /// Frame length in bytes (without header).
    pub len: usize,
    /// Used elements consumed for this frame.
    pub buffers: u16,
}

/// A frame whose first buffers arrived but not yet all of them.
#[derive(Debug, Clone, Copy)]
struct Partial {
    hdr: VirtioNetHdr,
    remaining: u16,
    buffers: u16,
    len: usize,
}

/// Driver side of one RX ring.
#[derive(Debug)]
pub struct DriverRxQueue {
    ring: DriverRing,
    kick_call: KickCall,
    index: usize,
    pool: SlotPool,
    buf_size: u32,
    descs_per_chain: usize,
    mrg: bool,
    inspect: bool,
    free_slots: Vec<u16>,
    slot_of_head: Vec<u16>,
    partial: Option<Partial>,
    assembly: Vec<u8>,
    stats: DriverQueueStats,
}

impl DriverRxQueue {
    /// An RX queue over `ring` (vhost-user ring `index`). Each chain is `descs_per_chain`
    /// buffers of `buf_size` bytes inside one slot of `pool` (stride ≥ their sum).
    pub fn new(
        ring: DriverRing,
        kick_call: KickCall,
        index: usize,
        pool: SlotPool,
        buf_size: u32,
        descs_per_chain: usize,
        mrg: bool,
    ) -> Self {
        let size = usize::from(ring.size());
        debug_assert!(pool.stride >= u64::from(buf_size) * descs_per_chain as u64);
        Self {
            ring,
            kick_call,
            index,
            pool,
            buf_size,
            descs_per_chain,
            mrg,
            inspect: true,
            free_slots: (0..pool.count).rev().collect(),
            slot_of_head: vec![0; size],
            partial: None,
            assembly: Vec::new(),
            stats: DriverQueueStats::default(),
        }
    }

    /// vhost-user ring index.
    pub fn index(&self) -> usize {
        self.index
    }
    /// The driver ring.
    pub fn ring(&self) -> &DriverRing {
        &self.ring
    }
    /// The driver ring, mutable (hostile tests).
    pub fn ring_mut(&mut self) -> &mut DriverRing {
        &mut self.ring
    }
    /// The kick/call eventfds.
    pub fn kick_call(&self) -> &KickCall {
        &self.kick_call
    }
    /// The kick/call eventfds, mutable.
    pub fn kick_call_mut(&mut self) -> &mut KickCall {
        &mut self.kick_call
    }
    /// Whether MRG_RXBUF is in use.
    pub fn mergeable(&self) -> bool {
        self.mrg
    }
    /// Copy frame bytes out for the caller (on by default; bench turns it off).
    pub fn set_inspect(&mut self, on: bool) {
        self.inspect = on;
    }
    /// Bytes of one chain (all its buffers).
    pub fn chain_bytes(&self) -> usize {
        self.buf_size as usize * self.descs_per_chain
    }
    /// How many `len`-byte frames all chains of this queue hold at once (0 if a frame
    /// does not fit a chain without MRG_RXBUF).
    pub fn frames_capacity(&self, len: usize) -> usize {
        // Hostile heads the device never completed keep their avail slots.
        let slots = usize::from(self.ring.size()) - self.ring.raw_outstanding();
        let chains = usize::from(self.pool.count).min(slots / self.descs_per_chain);
        let need = NET_HDR_LEN + len;
        if self.mrg {
            chains / need.div_ceil(self.buf_size as usize)
        } else if need <= self.chain_bytes() {
            chains
        } else {
            0
        }
    }

    fn ring_err(&self, source: DriverRingError) -> QueueError {
        QueueError::Ring {
            ring: self.index,
            source,
        }
    }

    /// Posts buffers until slots or descriptors run out (not yet visible: see
    /// [`DriverRxQueue::flush`]). Returns how many chains were added.
    pub fn refill(&mut self) -> Result<usize, QueueError> {
        let k = self.descs_per_chain;
        // Called on every pass of a polling driver, most often with nothing to post:
        // leave before building the segment array.
        if self.free_slots.is_empty() || !self.ring.can_add(k) {
            return Ok(0);
        }
        let mut n = 0;
        let mut segs = [DriverSegment {
            gpa: 0,
            len: self.buf_size,
            writable: true,
        }; 64];
        while !self.free_slots.is_empty() && self.ring.can_add(k) {
            let slot = self.free_slots.pop().expect("checked non-empty");
            let gpa = self.pool.slot(slot);
            let head = if k <= segs.len() {
                for (i, s) in segs[..k].iter_mut().enumerate() {
                    s.gpa = gpa + i as u64 * u64::from(self.buf_size);
                }
                self.ring.add_chain(&segs[..k])
            } else {
                let v: Vec<DriverSegment> = (0..k)
                    .map(|i| DriverSegment {
                        gpa: gpa + i as u64 * u64::from(self.buf_size),
                        len: self.buf_size,
                        writable: true,
                    })
                    .collect();
                self.ring.add_chain(&v)
            };
            match head {
                Ok(h) => self.slot_of_head[usize::from(h)] = slot,
                Err(e) => {
                    self.free_slots.push(slot);
                    return Err(self.ring_err(e));
                }
            }
            n += 1;
        }
        Ok(n)
    }

    /// Publishes posted buffers and kicks if the device asked for it. Returns whether a
    /// kick was sent.
    pub fn flush(&mut self) -> Result<bool, QueueError> {
        self.ring.publish();
        if self.ring.kick_needed() {
            self.kick()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Kicks unconditionally.
    pub fn kick(&mut self) -> Result<(), QueueError> {
        self.kick_call.kick().map_err(|source| QueueError::Event {
            ring: self.index,
            source,
        })
    }

    /// Consumes used buffers and hands up to `budget` complete frames to `f`. Returns the
    /// number of frames delivered. Anomalies (bad lengths, impossible `num_buffers`,
    /// offload bits) are counted in [`DriverRxQueue::stats`].
    pub fn poll(
        &mut self,
        budget: usize,
        mut f: impl FnMut(RxFrame<'_>),
    ) -> Result<usize, QueueError> {
        let mut delivered = 0;
        while delivered < budget {
            let Some(u) = self.ring.pop_used().map_err(|e| self.ring_err(e))? else {
                break;
            };
            if u.kind == UsedKind::Raw {
                self.stats.raw_completions += 1;
                continue;
            }
            self.stats.completions += 1;
            let slot = self.slot_of_head[usize::from(u.head)];
            let gpa = self.pool.slot(slot);
            let mut len = u.len as usize;
            if len > self.chain_bytes() {
                self.stats.bad_len += 1;
                len = self.chain_bytes();
            }
            let done = match self.partial.take() {
                None => self.first_buffer(gpa, len)?,
                Some(mut p) => {
                    self.copy_out(gpa, 0, len)?;
                    p.len += len;
                    p.remaining -= 1;
                    p.buffers += 1;
                    p
                }
            };
            self.free_slots.push(slot);
            if done.remaining > 0 {
                self.partial = Some(done);
                continue;
            }
            if done.buffers == 0 {
                // A used element too short to hold a header: counted, not delivered.
                continue;
            }
            self.stats.frames += 1;
            self.stats.bytes += done.len as u64;
            delivered += 1;
            f(RxFrame {
                hdr: done.hdr,
                data: if self.inspect { &self.assembly } else { &[] },
                len: done.len,
                buffers: done.buffers,
            });
        }
        Ok(delivered)
    }

    fn first_buffer(&mut self, gpa: u64, len: usize) -> Result<Partial, QueueError> {
        self.assembly.clear();
        if len < NET_HDR_LEN {
            self.stats.bad_len += 1;
            return Ok(Partial {
                hdr: VirtioNetHdr::default(),
                remaining: 0,
                buffers: 0,
                len: 0,
            });
        }
        let mut raw = [0u8; NET_HDR_LEN];
        self.ring
            .memory()
            .read(gpa, &mut raw)
            .map_err(|e| self.ring_err(DriverRingError::Memory(e)))?;
        let hdr = VirtioNetHdr::from_bytes(&raw).expect("12 bytes");
        if !hdr.is_plain() {
            self.stats.bad_hdr += 1;
        }
        let mut nb = hdr.num_buffers;
        if self.mrg {
            if nb == 0 || nb > self.ring.size() {
                self.stats.bad_num_buffers += 1;
                nb = 1;
            }
        } else {
            // Without MRG_RXBUF a frame is always one chain; devices write 1 or leave 0.
            if nb > 1 {
                self.stats.bad_num_buffers += 1;
            }
            nb = 1;
        }
        self.copy_out(gpa, NET_HDR_LEN, len - NET_HDR_LEN)?;
        Ok(Partial {
            hdr,
            remaining: nb - 1,
            buffers: 1,
            len: len - NET_HDR_LEN,
        })
    }

    fn copy_out(&mut self, gpa: u64, off: usize, len: usize) -> Result<(), QueueError> {
        if !self.inspect || len == 0 {
            return Ok(());
        }
        let start = self.assembly.len();
        self.assembly.resize(start + len, 0);
        self.ring
            .memory()
            .read(gpa + off as u64, &mut self.assembly[start..])
            .map_err(|e| QueueError::Ring {
                ring: self.index,
                source: DriverRingError::Memory(e),
            })
    }

    /// Counters, including the eventfd ones.
    pub fn stats(&self) -> DriverQueueStats {
        DriverQueueStats {
            kicks: self.kick_call.kicks(),
            page_kicks: self.kick_call.page_kicks(),
            interrupts: self.kick_call.interrupts(),
            interrupt_sum: self.kick_call.interrupt_sum(),
            ..self.stats
        }
    }
}
