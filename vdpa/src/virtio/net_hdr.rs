//! The virtio-net header in front of every frame (virtio 1.3, 5.1.6), in its two forms:
//! 12 bytes (`virtio_net_hdr_v1`, with `num_buffers`) whenever VERSION_1 or MRG_RXBUF
//! is negotiated, 10 bytes (`virtio_net_hdr`) for a legacy driver and for the kernel's
//! vnet header (tap, packet sockets). All fields are little endian.
//!
//! ```text
//! 0 flags  1 gso_type  2 hdr_len  4 gso_size  6 csum_start  8 csum_offset  10 num_buffers
//! ```

use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_net::{virtio_net_hdr, virtio_net_hdr_v1, VIRTIO_NET_HDR_F_NEEDS_CSUM};

/// Length of the 12-byte header (`virtio_net_hdr_v1`).
pub const NET_HDR_LEN: usize = size_of::<virtio_net_hdr_v1>();
/// Length of the 10-byte legacy header (`virtio_net_hdr`): no `num_buffers`.
pub const LEGACY_NET_HDR_LEN: usize = size_of::<virtio_net_hdr>();
/// Offset of `csum_start`.
pub const CSUM_START_OFFSET: usize = offset_of!(virtio_net_hdr, csum_start);
/// Offset of `csum_offset`.
pub const CSUM_OFFSET_OFFSET: usize = offset_of!(virtio_net_hdr, csum_offset);
/// Offset of `num_buffers` in the 12-byte header.
pub const NUM_BUFFERS_OFFSET: usize = offset_of!(virtio_net_hdr_v1, num_buffers);
/// `flags` bit: the checksum from `csum_start` is still to be completed.
pub const NET_HDR_F_NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;

/// Length of the header a driver expects: 12 bytes with VERSION_1 or MRG_RXBUF, 10 for
/// a legacy driver without mergeable buffers.
#[inline]
pub const fn net_hdr_len(version_1: bool, mrg_rxbuf: bool) -> usize {
    if version_1 || mrg_rxbuf {
        NET_HDR_LEN
    } else {
        LEGACY_NET_HDR_LEN
    }
}

/// The header a device puts in front of a received frame that carries no offload:
/// all zero but `num_buffers` (meaningful only in the 12-byte form; write the first
/// 10 bytes for a legacy driver).
#[inline(always)]
pub const fn rx_header(num_buffers: u16) -> [u8; NET_HDR_LEN] {
    let n = num_buffers.to_le_bytes();
    let mut h = [0u8; NET_HDR_LEN];
    h[NUM_BUFFERS_OFFSET] = n[0];
    h[NUM_BUFFERS_OFFSET + 1] = n[1];
    h
}

/// The header's fields, parsed (`struct virtio_net_hdr_v1`).
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
    /// Number of merged RX buffers holding this frame (0 in the legacy form).
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// The 12-byte form.
    pub fn to_bytes(&self) -> [u8; NET_HDR_LEN] {
        let mut b = [0u8; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[CSUM_START_OFFSET..CSUM_START_OFFSET + 2].copy_from_slice(&self.csum_start.to_le_bytes());
        b[CSUM_OFFSET_OFFSET..CSUM_OFFSET_OFFSET + 2]
            .copy_from_slice(&self.csum_offset.to_le_bytes());
        b[NUM_BUFFERS_OFFSET..].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Parses the 12-byte form from the start of `b`; `None` if `b` is shorter.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; NET_HDR_LEN] = b.get(..NET_HDR_LEN)?.try_into().ok()?;
        let mut h = Self::from_legacy_bytes(b[..LEGACY_NET_HDR_LEN].try_into().ok()?);
        h.num_buffers = u16::from_le_bytes([b[NUM_BUFFERS_OFFSET], b[NUM_BUFFERS_OFFSET + 1]]);
        Some(h)
    }

    /// Parses the 10-byte legacy form (`num_buffers` is 0).
    pub fn from_legacy_bytes(b: &[u8; LEGACY_NET_HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(CSUM_START_OFFSET),
            csum_offset: u16_at(CSUM_OFFSET_OFFSET),
            num_buffers: 0,
        }
    }

    /// True when no offload field is set.
    pub fn is_plain(&self) -> bool {
        self.flags == 0
            && self.gso_type == 0
            && self.hdr_len == 0
            && self.gso_size == 0
            && self.csum_start == 0
            && self.csum_offset == 0
    }
}

/// Builds the iovec list of one frame's buffers (header first) for a host backend,
/// leaving out `num_buffers` when the guest's header is the 12-byte form and the
/// backend's the 10-byte one (the kernel's vnet header of a packet socket): the
/// backend then reads and writes bytes 0..10 and the frame, and `num_buffers` stays
/// the device's to fill. Otherwise every byte is covered.
///
/// Feed it the buffers in order with [`push`](Self::push).
#[derive(Clone, Copy, Debug)]
pub struct HdrIovecs {
    /// Bytes of the frame's buffers seen so far.
    offset: usize,
    /// Whether bytes `NUM_BUFFERS_OFFSET..NET_HDR_LEN` are left out.
    hole: bool,
}

impl HdrIovecs {
    /// For a guest header of `guest_hdr_len` bytes and a backend that takes the 10-byte
    /// header (`legacy_backend`) or the guest's own.
    #[inline(always)]
    pub fn new(guest_hdr_len: usize, legacy_backend: bool) -> Self {
        HdrIovecs {
            offset: 0,
            hole: Self::hole_len(guest_hdr_len, legacy_backend) != 0,
        }
    }

    /// How many header bytes are left out of the iovecs: 2 (`num_buffers`) when a
    /// 12-byte guest header meets a legacy backend, else 0.
    #[inline(always)]
    pub const fn hole_len(guest_hdr_len: usize, legacy_backend: bool) -> usize {
        if legacy_backend && guest_hdr_len == NET_HDR_LEN {
            NET_HDR_LEN - NUM_BUFFERS_OFFSET
        } else {
            0
        }
    }

    /// Appends the iovecs for the next buffer of the frame, `len` bytes at `ptr`: one,
    /// or two around the hole, or one or none if the hole touches the buffer's edge.
    #[inline(always)]
    pub fn push(&mut self, ptr: *mut u8, len: usize, out: &mut Vec<libc::iovec>) {
        let start = self.offset;
        self.offset += len;
        let mut put = |from: usize, to: usize| {
            if to > from {
                out.push(libc::iovec {
                    // Address arithmetic only (never dereferenced here): `from < to <= len`.
                    iov_base: ptr.wrapping_add(from).cast(),
                    iov_len: to - from,
                });
            }
        };
        if self.hole && start < NET_HDR_LEN && start + len > NUM_BUFFERS_OFFSET {
            put(0, NUM_BUFFERS_OFFSET.saturating_sub(start));
            put((NET_HDR_LEN - start).min(len), len);
        } else {
            put(0, len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_offsets() {
        assert_eq!((NET_HDR_LEN, LEGACY_NET_HDR_LEN), (12, 10));
        assert_eq!(
            (CSUM_START_OFFSET, CSUM_OFFSET_OFFSET, NUM_BUFFERS_OFFSET),
            (6, 8, 10)
        );
        assert_eq!(net_hdr_len(true, false), 12);
        assert_eq!(net_hdr_len(false, true), 12);
        assert_eq!(net_hdr_len(false, false), 10);
        assert_eq!(rx_header(0x0203), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 2]);
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
        let b = h.to_bytes();
        assert_eq!(VirtioNetHdr::from_bytes(&b), Some(h));
        assert!(VirtioNetHdr::from_bytes(&[0; 11]).is_none());
        let legacy = VirtioNetHdr::from_legacy_bytes(b[..10].try_into().unwrap());
        assert_eq!(
            legacy,
            VirtioNetHdr {
                num_buffers: 0,
                ..h
            }
        );
        assert!(VirtioNetHdr::default().is_plain());
        assert!(!h.is_plain());
        assert_eq!(
            VirtioNetHdr::from_bytes(&rx_header(7)).unwrap().num_buffers,
            7
        );
    }

    /// The (offset into the buffer list, length) pairs the iovecs cover, for buffers of
    /// the given lengths laid end to end.
    fn cover(lens: &[usize], hdr: usize, legacy: bool) -> Vec<(usize, usize)> {
        let mut mem = vec![0u8; lens.iter().sum()];
        let base = mem.as_mut_ptr();
        let mut out = Vec::new();
        let mut b = HdrIovecs::new(hdr, legacy);
        let mut at = 0;
        for &len in lens {
            b.push(base.wrapping_add(at), len, &mut out);
            at += len;
        }
        out.iter()
            .map(|v| (v.iov_base as usize - base as usize, v.iov_len))
            .collect()
    }

    #[test]
    fn iovecs_skip_num_buffers_only_when_forms_differ() {
        // Header and frame in one buffer.
        assert_eq!(cover(&[100], 12, true), [(0, 10), (12, 88)]);
        assert_eq!(cover(&[100], 12, false), [(0, 100)]);
        assert_eq!(cover(&[100], 10, true), [(0, 100)]);
        assert_eq!(HdrIovecs::hole_len(12, true), 2);
        assert_eq!(HdrIovecs::hole_len(10, true), 0);
        // The header alone in its own buffer, then the frame.
        assert_eq!(cover(&[12, 50], 12, true), [(0, 10), (12, 50)]);
        // The hole split across buffers: 0..11 and 11..
        assert_eq!(cover(&[11, 50], 12, true), [(0, 10), (12, 49)]);
        // A buffer that is entirely the hole disappears.
        assert_eq!(cover(&[10, 2, 50], 12, true), [(0, 10), (12, 50)]);
        // Tiny buffers before the hole are kept whole.
        assert_eq!(
            cover(&[4, 4, 4, 40], 12, true),
            [(0, 4), (4, 4), (8, 2), (12, 40)]
        );
    }
}
