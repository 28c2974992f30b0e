//! Virtio constants and wire structures the rig needs: feature bits, split-ring flags,
//! the 12-byte `virtio_net_hdr_v1`, and the `vring_need_event` rule.

/// `VIRTIO_NET_F_MRG_RXBUF`: the device may spread one received frame over several buffers.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
/// `VIRTIO_NET_F_MQ`: multiple queue pairs.
pub const VIRTIO_NET_F_MQ: u64 = 1 << 22;
/// `VIRTIO_RING_F_INDIRECT_DESC`: indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// `VHOST_USER_F_PROTOCOL_FEATURES`: the backend speaks vhost-user protocol features.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VIRTIO_F_VERSION_1`: modern (virtio 1.x) device; the net header is 12 bytes.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Descriptor flag: the chain continues at `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable (RX).
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds an indirect descriptor table.
pub const VRING_DESC_F_INDIRECT: u16 = 4;

/// Avail ring flag (without EVENT_IDX): the driver does not want interrupts.
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag (without EVENT_IDX): the device does not want kicks.
pub(crate) const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// Largest split-ring size allowed by the virtio specification.
pub(crate) const MAX_QUEUE_SIZE: u16 = 32768;

/// Size of `virtio_net_hdr_v1` (used whenever VERSION_1 is negotiated).
pub const VIRTIO_NET_HDR_LEN: usize = 12;

/// `struct virtio_net_hdr_v1` (all fields little endian on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*` flags.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` type.
    pub gso_type: u8,
    /// Header length hint for GSO.
    pub hdr_len: u16,
    /// GSO segment size.
    pub gso_size: u16,
    /// Checksum start offset.
    pub csum_start: u16,
    /// Checksum field offset from `csum_start`.
    pub csum_offset: u16,
    /// Number of merged RX buffers holding this frame.
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// Serialises the header into its 12-byte wire form.
    pub fn to_bytes(&self) -> [u8; VIRTIO_NET_HDR_LEN] {
        let mut b = [0u8; VIRTIO_NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Parses a header from the first 12 bytes of `b`; `None` if `b` is shorter.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < VIRTIO_NET_HDR_LEN {
            return None;
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        })
    }

    /// True when no offload field is set (what the rig expects: it negotiates no offloads).
    pub(crate) fn is_plain(&self) -> bool {
        self.flags == 0
            && self.gso_type == 0
            && self.hdr_len == 0
            && self.gso_size == 0
            && self.csum_start == 0
            && self.csum_offset == 0
    }
}

/// The virtio `vring_need_event` rule (spec 2.7.10 / Linux `virtio_ring.h`): with
/// EVENT_IDX, the other side must be notified when moving its index from `old` to `new`
/// crosses `event`, i.e. when `event` lies in the half-open window `[old, new)`, computed
/// modulo 2^16 so that wrap-around of the free-running indices is handled.
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Human-readable names of the feature bits the rig cares about, for messages.
pub(crate) fn feature_names(features: u64) -> String {
    const NAMES: [(u64, &str); 6] = [
        (VIRTIO_NET_F_MRG_RXBUF, "MRG_RXBUF"),
        (VIRTIO_NET_F_MQ, "MQ"),
        (VIRTIO_RING_F_INDIRECT_DESC, "INDIRECT_DESC"),
        (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
        (VHOST_USER_F_PROTOCOL_FEATURES, "PROTOCOL_FEATURES"),
        (VIRTIO_F_VERSION_1, "VERSION_1"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| features & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    format!("{features:#x} [{}]", names.join("|"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_window() {
        // Event inside [old, new) -> notify.
        assert!(vring_need_event(5, 6, 5));
        assert!(vring_need_event(5, 10, 0));
        // Event already passed before old -> no notify.
        assert!(!vring_need_event(4, 10, 5));
        // Event not yet reached -> no notify.
        assert!(!vring_need_event(10, 10, 5));
        // Across the 16-bit wrap.
        assert!(vring_need_event(65535, 2, 65530));
        assert!(vring_need_event(0, 2, 65530));
        assert!(!vring_need_event(3, 2, 65530));
        // Nothing new -> never.
        assert!(!vring_need_event(7, 7, 7));
    }

    #[test]
    fn hdr_roundtrip() {
        let h = VirtioNetHdr {
            flags: 1,
            gso_type: 2,
            hdr_len: 0x304,
            gso_size: 0x506,
            csum_start: 0x708,
            csum_offset: 0x90a,
            num_buffers: 0xbcd,
        };
        assert_eq!(VirtioNetHdr::from_bytes(&h.to_bytes()), Some(h));
        assert!(VirtioNetHdr::from_bytes(&[0; 11]).is_none());
        assert!(VirtioNetHdr::default().is_plain());
    }
}
