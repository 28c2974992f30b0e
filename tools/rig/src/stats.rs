//! Per-queue counters of the rig.

use serde::Serialize;

/// Counters of one queue (TX or RX ring).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DriverQueueStats {
    /// Frames posted (TX) or received (RX).
    pub frames: u64,
    /// L2 frame bytes posted (TX) or received (RX), without the virtio-net header.
    pub bytes: u64,
    /// Used elements consumed (TX completions, RX buffers).
    pub completions: u64,
    /// Used elements that completed hostile (raw) chains.
    pub raw_completions: u64,
    /// Kicks the rig sent (eventfd writes or doorbell-page stores).
    pub kicks: u64,
    /// Of those, stores into a doorbell page the backend gave (host notifier).
    pub page_kicks: u64,
    /// Interrupts received (successful call eventfd reads).
    pub interrupts: u64,
    /// Sum of the call eventfd counter values read.
    pub interrupt_sum: u64,
    /// RX used elements with a length shorter than the header or longer than the buffer.
    pub bad_len: u64,
    /// RX frames whose `num_buffers` was impossible (0, too large, or not 1 without MRG).
    pub bad_num_buffers: u64,
    /// RX frames whose virtio-net header had offload fields set (none were negotiated).
    pub bad_hdr: u64,
}

impl DriverQueueStats {
    /// Adds `o` to `self`, field by field.
    pub fn add(&mut self, o: &DriverQueueStats) {
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.completions += o.completions;
        self.raw_completions += o.raw_completions;
        self.kicks += o.kicks;
        self.page_kicks += o.page_kicks;
        self.interrupts += o.interrupts;
        self.interrupt_sum += o.interrupt_sum;
        self.bad_len += o.bad_len;
        self.bad_num_buffers += o.bad_num_buffers;
        self.bad_hdr += o.bad_hdr;
    }
}

/// Counters of the whole rig: all TX rings and all RX rings summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RigStats {
    /// Sum over TX rings.
    pub tx: DriverQueueStats,
    /// Sum over RX rings.
    pub rx: DriverQueueStats,
}

impl DriverQueueStats {
    /// `self - earlier`, field by field (counters only grow).
    pub fn since(&self, earlier: &DriverQueueStats) -> DriverQueueStats {
        DriverQueueStats {
            frames: self.frames - earlier.frames,
            bytes: self.bytes - earlier.bytes,
            completions: self.completions - earlier.completions,
            raw_completions: self.raw_completions - earlier.raw_completions,
            kicks: self.kicks - earlier.kicks,
            page_kicks: self.page_kicks - earlier.page_kicks,
            interrupts: self.interrupts - earlier.interrupts,
            interrupt_sum: self.interrupt_sum - earlier.interrupt_sum,
            bad_len: self.bad_len - earlier.bad_len,
            bad_num_buffers: self.bad_num_buffers - earlier.bad_num_buffers,
            bad_hdr: self.bad_hdr - earlier.bad_hdr,
        }
    }
}

impl RigStats {
    /// `self - earlier` for both directions.
    pub fn since(&self, earlier: &RigStats) -> RigStats {
        RigStats {
            tx: self.tx.since(&earlier.tx),
            rx: self.rx.since(&earlier.rx),
        }
    }
}
