//! Test frames: built deterministically from (pair, sequence number, length) so that the
//! receiver can check every byte.
//!
//! Layout (all integers big endian, as on the wire):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0      | 6    | destination MAC `02:00:00:00:52:02` (locally administered) |
//! | 6      | 6    | source MAC `02:00:00:00:52:01` |
//! | 12     | 2    | ethertype 0x88B5 (IEEE local experimental) |
//! | 14     | 4    | magic `VRIG` |
//! | 18     | 2    | queue pair |
//! | 20     | 8    | sequence number |
//! | 28     | 2    | frame length |
//! | 30     | n    | payload: splitmix64 stream seeded by (pair, seq) |
//! | len-8  | 8    | FNV-1a 64 over bytes 0..len-8 |

/// Destination MAC of test frames.
pub(crate) const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x52, 0x02];
/// Source MAC of test frames.
pub(crate) const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x52, 0x01];
/// Ethertype of test frames (IEEE 802 local experimental 1).
pub(crate) const ETHERTYPE: u16 = 0x88B5;
/// Magic following the Ethernet header.
pub(crate) const MAGIC: [u8; 4] = *b"VRIG";
/// Smallest frame the rig builds (Ethernet minimum without FCS).
pub(crate) const MIN_FRAME: usize = 60;
/// Largest frame the rig builds (the length field is 16 bits).
pub(crate) const MAX_FRAME: usize = 65535;

const HEADER_LEN: usize = 30;
const TRAILER_LEN: usize = 8;

/// Identity of a good frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameId {
    /// Queue pair it was sent on.
    pub pair: u16,
    /// Per-pair sequence number.
    pub seq: u64,
}

/// Why a received frame is not a good test frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than the fixed header and trailer.
    #[error("frame of {0} bytes is too short")]
    TooShort(usize),
    /// MACs, ethertype or magic differ.
    #[error("not a rig frame (header mismatch)")]
    NotRigFrame,
    /// The length field disagrees with the received length.
    #[error("length field {field} but {actual} bytes received")]
    Length {
        /// Length in the frame.
        field: usize,
        /// Length received.
        actual: usize,
    },
    /// The FNV-1a checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// The checksum matches but a byte differs from the pattern.
    #[error("payload differs at byte {0}")]
    Payload(usize),
}

/// FNV-1a 64-bit hash.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64 step: a fast, well-mixed deterministic stream.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fill_payload(pair: u16, seq: u64, out: &mut [u8]) {
    let mut state = seq ^ (u64::from(pair) << 48) ^ 0x5652_4947;
    for chunk in out.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let w = splitmix64(state).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// Writes the test frame for (`pair`, `seq`) into `out`; its length is `out.len()`,
/// which must be in `MIN_FRAME..=MAX_FRAME`.
pub fn write_frame(pair: u16, seq: u64, out: &mut [u8]) {
    let len = out.len();
    assert!(
        (MIN_FRAME..=MAX_FRAME).contains(&len),
        "frame length {len} out of range"
    );
    out[0..6].copy_from_slice(&DST_MAC);
    out[6..12].copy_from_slice(&SRC_MAC);
    out[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    out[14..18].copy_from_slice(&MAGIC);
    out[18..20].copy_from_slice(&pair.to_be_bytes());
    out[20..28].copy_from_slice(&seq.to_be_bytes());
    out[28..30].copy_from_slice(&(len as u16).to_be_bytes());
    fill_payload(pair, seq, &mut out[HEADER_LEN..len - TRAILER_LEN]);
    let sum = fnv1a64(&out[..len - TRAILER_LEN]);
    out[len - TRAILER_LEN..].copy_from_slice(&sum.to_be_bytes());
}

/// Builds the test frame for (`pair`, `seq`) of `len` bytes.
pub fn build_frame(pair: u16, seq: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    write_frame(pair, seq, &mut v);
    v
}

/// Length of frame `seq` of `pair` when lengths vary in `min..=max` (fixed if equal).
pub fn frame_len(pair: u16, seq: u64, min: usize, max: usize) -> usize {
    if max <= min {
        return min;
    }
    let span = (max - min + 1) as u64;
    min + (splitmix64(seq ^ (u64::from(pair) << 40) ^ 0x004c_454e) % span) as usize
}

/// Checks received frames byte by byte (keeps a scratch buffer between calls).
#[derive(Debug, Default)]
pub struct FrameChecker {
    scratch: Vec<u8>,
}

impl FrameChecker {
    /// A checker with an empty scratch buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks `data` against the frame its header claims to be; returns its identity.
    pub fn check(&mut self, data: &[u8]) -> Result<FrameId, FrameError> {
        let len = data.len();
        if len < HEADER_LEN + TRAILER_LEN {
            return Err(FrameError::TooShort(len));
        }
        if data[0..6] != DST_MAC
            || data[6..12] != SRC_MAC
            || data[12..14] != ETHERTYPE.to_be_bytes()
            || data[14..18] != MAGIC
        {
            return Err(FrameError::NotRigFrame);
        }
        let field = usize::from(u16::from_be_bytes([data[28], data[29]]));
        if field != len {
            return Err(FrameError::Length { field, actual: len });
        }
        let sum = u64::from_be_bytes(data[len - TRAILER_LEN..].try_into().expect("8 bytes"));
        if sum != fnv1a64(&data[..len - TRAILER_LEN]) {
            return Err(FrameError::Checksum);
        }
        let pair = u16::from_be_bytes([data[18], data[19]]);
        let seq = u64::from_be_bytes(data[20..28].try_into().expect("8 bytes"));
        if len < MIN_FRAME {
            return Err(FrameError::TooShort(len));
        }
        self.scratch.resize(len, 0);
        write_frame(pair, seq, &mut self.scratch);
        if let Some(off) = self.scratch.iter().zip(data).position(|(a, b)| a != b) {
            return Err(FrameError::Payload(off));
        }
        Ok(FrameId { pair, seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption() {
        let mut c = FrameChecker::new();
        for len in [60, 61, 64, 67, 1514, 9000] {
            let f = build_frame(3, 12345 + len as u64, len);
            assert_eq!(
                c.check(&f),
                Ok(FrameId {
                    pair: 3,
                    seq: 12345 + len as u64
                })
            );
            for pos in [0, 20, 29, len / 2, len - 1] {
                let mut g = f.clone();
                g[pos] ^= 0x40;
                assert!(c.check(&g).is_err(), "flip at {pos} of {len} undetected");
            }
            assert!(c.check(&f[..len - 1]).is_err());
        }
        assert_ne!(build_frame(0, 1, 64), build_frame(0, 2, 64));
        assert_ne!(build_frame(0, 1, 64), build_frame(1, 1, 64));
    }

    #[test]
    fn lengths_in_range() {
        for s in 0..1000 {
            let l = frame_len(1, s, 60, 1514);
            assert!((60..=1514).contains(&l));
        }
        assert_eq!(frame_len(0, 7, 128, 128), 128);
    }
}
