//! Options of a rig session and the sizes derived from them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::driver_ring::RingLayout;
use crate::frame::{MAX_FRAME, MIN_FRAME};
use vdpa::virtio::net_hdr::NET_HDR_LEN;
use vdpa::virtio::ring::MAX_QUEUE_SIZE;

/// Default RX buffer: 1536 bytes of frame plus the 12-byte header.
pub const DEFAULT_RX_BUF_SIZE: u32 = 1536 + NET_HDR_LEN as u32;

/// Everything that shapes a rig session. Start from [`RigOptions::new`] and adjust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RigOptions {
    /// vhost-user socket of the backend.
    pub socket: PathBuf,
    /// Queue pairs to set up (RX of pair i is ring 2i, TX is 2i+1).
    pub queue_pairs: usize,
    /// Descriptors per ring (power of two).
    pub queue_size: u16,
    /// Ack VIRTIO_RING_F_EVENT_IDX if offered.
    pub event_idx: bool,
    /// Ack VIRTIO_NET_F_MRG_RXBUF if offered.
    pub mrg_rxbuf: bool,
    /// Size of one RX buffer (one descriptor) in bytes, header included.
    pub rx_buf_size: u32,
    /// Largest L2 frame the session sends (sizes TX buffers, and RX chains without MRG).
    pub max_frame: u32,
    /// Post each TX frame as two descriptors (header, data), as Linux does; else one.
    pub tx_two_desc: bool,
    /// Initial ring index, sent with SET_VRING_BASE (e.g. 65500 to wrap early).
    pub initial_index: u16,
    /// Guest-physical base of guest memory.
    pub mem_base: u64,
    /// Number of memory regions (1 or 2).
    pub mem_regions: usize,
    /// Use ADD_MEM_REG instead of SET_MEM_TABLE when CONFIGURE_MEM_SLOTS is offered.
    pub mem_slots: bool,
    /// Play a migrating QEMU: share a dirty log (SET_LOG_BASE with LOG_SHMFD), ack
    /// VHOST_F_LOG_ALL and ask for every used ring to be logged, so that the backend
    /// logs every page it writes (to measure what logging costs).
    pub dirty_log: bool,
    /// Ask for host notifiers (BACKEND_REQ, BACKEND_SEND_FD, HOST_NOTIFIER), map the
    /// doorbell pages the backend sends, and kick through them instead of eventfds.
    pub host_notifiers: bool,
    /// Own the socket instead of connecting to it: create it (replacing a stale
    /// socket), listen, and accept the backend's connection — QEMU's
    /// `-chardev socket,server=on` for a backend in client mode.
    pub listen: bool,
    /// How long to retry connecting while the socket is missing or refuses (with
    /// `listen`: how long to wait for the backend to connect).
    #[serde(serialize_with = "ser_secs")]
    pub connect_timeout: Duration,
    /// Socket receive timeout for every reply from the backend.
    #[serde(serialize_with = "ser_secs")]
    pub reply_timeout: Duration,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl RigOptions {
    /// Defaults: 1 pair, 256 descriptors, EVENT_IDX and MRG_RXBUF wanted, 1548-byte RX
    /// buffers, frames up to 1514 bytes, 2 descriptors per TX frame, index 0, memory at
    /// GPA 0x100000 in one region, SET_MEM_TABLE, connecting (not listening), 5 s connect
    /// and reply timeouts.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            queue_pairs: 1,
            queue_size: 256,
            event_idx: true,
            mrg_rxbuf: true,
            rx_buf_size: DEFAULT_RX_BUF_SIZE,
            max_frame: 1514,
            tx_two_desc: true,
            initial_index: 0,
            mem_base: 0x10_0000,
            mem_regions: 1,
            mem_slots: false,
            dirty_log: false,
            host_notifiers: false,
            listen: false,
            connect_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(5),
        }
    }

    /// Checks the options for consistency; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_pairs == 0 || self.queue_pairs > 64 {
            return Err(format!("queue pairs {} not in 1..=64", self.queue_pairs));
        }
        let qs = u32::from(self.queue_size);
        if qs < 2 || qs > u32::from(MAX_QUEUE_SIZE) || !qs.is_power_of_two() {
            return Err(format!(
                "queue size {qs} must be a power of two in 2..=32768"
            ));
        }
        if (self.rx_buf_size as usize) <= NET_HDR_LEN || self.rx_buf_size > 1 << 20 {
            return Err(format!(
                "RX buffer size {} must be in 13..=1048576",
                self.rx_buf_size
            ));
        }
        if !(MIN_FRAME..=MAX_FRAME).contains(&(self.max_frame as usize)) {
            return Err(format!(
                "frame size {} not in {MIN_FRAME}..={MAX_FRAME}",
                self.max_frame
            ));
        }
        if self.mem_regions == 0 || self.mem_regions > 2 {
            return Err(format!("memory regions {} not 1 or 2", self.mem_regions));
        }
        if self.mem_base == 0 || !self.mem_base.is_multiple_of(4096) {
            return Err(format!(
                "memory base {:#x} must be nonzero and 4 KiB aligned",
                self.mem_base
            ));
        }
        // Without MRG_RXBUF a frame must fit one chain of the ring.
        if usize::from(self.queue_size) < self.rx_descs_per_chain(false) {
            return Err(format!(
                "{}-byte frames need {} chained {}-byte RX buffers without MRG_RXBUF, \
                 more than the queue size {}; raise --rx-buf-size",
                self.max_frame,
                self.rx_descs_per_chain(false),
                self.rx_buf_size,
                self.queue_size
            ));
        }
        Ok(())
    }

    /// Descriptors per RX chain: 1 with MRG_RXBUF, else enough chained buffers for the
    /// header plus the largest frame (Linux "big packets").
    pub fn rx_descs_per_chain(&self, mrg: bool) -> usize {
        if mrg {
            1
        } else {
            (NET_HDR_LEN + self.max_frame as usize).div_ceil(self.rx_buf_size as usize)
        }
    }

    /// Bytes of one TX slot: header plus the largest frame, rounded to 64.
    pub fn tx_slot_bytes(&self) -> u64 {
        ((NET_HDR_LEN + self.max_frame as usize).div_ceil(64) * 64) as u64
    }

    /// Guest memory needed for all rings, buffers and scratch space, with slack.
    pub fn memory_bytes(&self) -> u64 {
        let qs = u64::from(self.queue_size);
        let per_pair = 2 * RingLayout::footprint(self.queue_size)
            + qs * self.tx_slot_bytes()
            + qs * u64::from(self.rx_buf_size)
            + 2 * 4096;
        let scratch = 256 << 10;
        // Slack: alignment waste, and two regions filling unevenly.
        (per_pair * self.queue_pairs as u64 + scratch) * 5 / 4 + (4 << 20)
    }
}
