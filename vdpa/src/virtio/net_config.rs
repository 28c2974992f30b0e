//! The virtio-net device configuration space (virtio 1.3, 5.1.4), up to and including
//! `mtu`: what vdpad answers to GET_CONFIG, what the simulated NIC presents and what
//! the virtio-pci driver reads from a NIC. All fields little endian.
//!
//! ```text
//! 0 mac[6]  6 status  8 max_virtqueue_pairs  10 mtu
//! ```

use std::mem::offset_of;

use virtio_bindings::virtio_net::{virtio_net_config, VIRTIO_NET_S_LINK_UP as LINK_UP};

/// Offset of `mac` (6 bytes, valid with `VIRTIO_NET_F_MAC`).
pub const MAC_OFFSET: usize = offset_of!(virtio_net_config, mac);
/// Offset of `status` (u16, valid with `VIRTIO_NET_F_STATUS`).
pub const STATUS_OFFSET: usize = offset_of!(virtio_net_config, status);
/// Offset of `max_virtqueue_pairs` (u16, valid with `VIRTIO_NET_F_MQ`).
pub const MAX_PAIRS_OFFSET: usize = offset_of!(virtio_net_config, max_virtqueue_pairs);
/// Offset of `mtu` (u16, valid with `VIRTIO_NET_F_MTU`).
pub const MTU_OFFSET: usize = offset_of!(virtio_net_config, mtu);
/// Bytes of the fields up to and including `mtu`.
pub const NET_CONFIG_LEN: usize = MTU_OFFSET + 2;
/// `status` bit: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = LINK_UP as u16;

/// The fields of the config space vdpad uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfigSpace {
    /// MAC address.
    pub mac: [u8; 6],
    /// Link status bits (`VIRTIO_NET_S_*`).
    pub status: u16,
    /// Largest number of queue pairs.
    pub max_pairs: u16,
    /// MTU.
    pub mtu: u16,
}

impl NetConfigSpace {
    /// The config space bytes up to and including `mtu`.
    pub fn to_bytes(&self) -> [u8; NET_CONFIG_LEN] {
        let mut b = [0u8; NET_CONFIG_LEN];
        b[MAC_OFFSET..MAC_OFFSET + 6].copy_from_slice(&self.mac);
        b[STATUS_OFFSET..STATUS_OFFSET + 2].copy_from_slice(&self.status.to_le_bytes());
        b[MAX_PAIRS_OFFSET..MAX_PAIRS_OFFSET + 2].copy_from_slice(&self.max_pairs.to_le_bytes());
        b[MTU_OFFSET..MTU_OFFSET + 2].copy_from_slice(&self.mtu.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_the_spec_one() {
        assert_eq!(
            (MAC_OFFSET, STATUS_OFFSET, MAX_PAIRS_OFFSET, MTU_OFFSET),
            (0, 6, 8, 10)
        );
        assert_eq!(NET_CONFIG_LEN, 12);
        let c = NetConfigSpace {
            mac: [1, 2, 3, 4, 5, 6],
            status: VIRTIO_NET_S_LINK_UP,
            max_pairs: 0x0102,
            mtu: 1500,
        };
        assert_eq!(c.to_bytes(), [1, 2, 3, 4, 5, 6, 1, 0, 2, 1, 0xdc, 0x05]);
    }
}
