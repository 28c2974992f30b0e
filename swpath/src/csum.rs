//! Completing a partial checksum in software, for a guest that did not negotiate
//! VIRTIO_NET_F_GUEST_CSUM but got a frame the host left checksum-partial (what the
//! kernel does for a tap with TUN_F_CSUM off, done here for AF_PACKET).

/// A byte view over a list of buffers, as one contiguous frame.
pub trait Bytes {
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Whether there are no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Byte at `i` (< len).
    fn get(&self, i: usize) -> u8;
    /// Sets byte `i` (< len).
    fn set(&mut self, i: usize, v: u8);
}

/// Folds the Internet checksum of `frame[start..]` and stores it at `start + offset`
/// (virtio's `csum_start`/`csum_offset`). Returns false if the offsets are out of range.
pub(crate) fn complete<B: Bytes + ?Sized>(frame: &mut B, start: usize, offset: usize) -> bool {
    let len = frame.len();
    let at = start.saturating_add(offset);
    if start >= len || at.saturating_add(2) > len {
        return false;
    }
    let mut sum: u32 = 0;
    let mut i = start;
    while i + 1 < len {
        sum += u32::from(u16::from_be_bytes([frame.get(i), frame.get(i + 1)]));
        i += 2;
    }
    if i < len {
        sum += u32::from(frame.get(i)) << 8;
    }
    // The stored pseudo-header sum is already in the checksum field and was included.
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    let c = if c == 0 { 0xffff } else { c };
    let b = c.to_be_bytes();
    frame.set(at, b[0]);
    frame.set(at + 1, b[1]);
    true
}

impl Bytes for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn get(&self, i: usize) -> u8 {
        self[i]
    }
    fn set(&mut self, i: usize, v: u8) {
        self[i] = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_checksum_over_a_known_datagram() {
        // IPv4 UDP 192.0.2.1:1000 -> 192.0.2.2:2000, payload "hi", checksum field
        // holding the pseudo-header sum as a NIC driver leaves it for CHECKSUM_PARTIAL.
        let src = [192u8, 0, 2, 1];
        let dst = [192u8, 0, 2, 2];
        let udp_len = 8 + 2;
        let mut pseudo: u32 = 0;
        for w in [src, dst] {
            pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
            pseudo += u32::from(u16::from_be_bytes([w[2], w[3]]));
        }
        pseudo += 17 + udp_len as u32;
        while pseudo >> 16 != 0 {
            pseudo = (pseudo & 0xffff) + (pseudo >> 16);
        }
        let mut d = vec![0x03, 0xe8, 0x07, 0xd0, 0, udp_len as u8];
        d.extend((pseudo as u16).to_be_bytes());
        d.extend(b"hi");
        assert!(complete(d.as_mut_slice(), 0, 6));
        // A receiver's check: pseudo-header + datagram (with the checksum) sums to 0xffff.
        let mut sum = pseudo;
        let mut padded = d.clone();
        padded.push(0);
        for c in padded.chunks_exact(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        assert!(!complete(d.as_mut_slice(), 9, 6));
    }
}
