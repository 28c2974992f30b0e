//! Virtio feature bits as masks of the 64-bit feature word (virtio 1.3, 5.1.3 for the
//! net device, 6 for the reserved transport bits), plus the one bit vhost-user borrows.
//!
//! The bit numbers come from `virtio-bindings`; each constant here is `1 << bit`, under
//! the name the specification (and Linux) gives the bit.

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use virtio_bindings::{virtio_config as cfg, virtio_net as net, virtio_ring as ring};

/// The mask of feature bit number `n`.
const fn bit(n: u32) -> u64 {
    1 << n
}

/// `VIRTIO_NET_F_CSUM`: the device takes frames with a partial checksum (guest TX).
pub const VIRTIO_NET_F_CSUM: u64 = bit(net::VIRTIO_NET_F_CSUM);
/// `VIRTIO_NET_F_GUEST_CSUM`: the driver takes frames with a partial checksum (guest RX).
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = bit(net::VIRTIO_NET_F_GUEST_CSUM);
/// `VIRTIO_NET_F_CTRL_GUEST_OFFLOADS`: offloads can be changed on the control queue.
pub const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS: u64 = bit(net::VIRTIO_NET_F_CTRL_GUEST_OFFLOADS);
/// `VIRTIO_NET_F_MTU`: the device reports a maximum MTU in its config space.
pub const VIRTIO_NET_F_MTU: u64 = bit(net::VIRTIO_NET_F_MTU);
/// `VIRTIO_NET_F_MAC`: the device has a MAC address in its config space.
pub const VIRTIO_NET_F_MAC: u64 = bit(net::VIRTIO_NET_F_MAC);
/// `VIRTIO_NET_F_GUEST_TSO4`: the driver takes TCPv4 GSO frames.
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = bit(net::VIRTIO_NET_F_GUEST_TSO4);
/// `VIRTIO_NET_F_GUEST_TSO6`: the driver takes TCPv6 GSO frames.
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = bit(net::VIRTIO_NET_F_GUEST_TSO6);
/// `VIRTIO_NET_F_GUEST_ECN`: the driver takes TSO frames with ECN.
pub const VIRTIO_NET_F_GUEST_ECN: u64 = bit(net::VIRTIO_NET_F_GUEST_ECN);
/// `VIRTIO_NET_F_HOST_TSO4`: the device takes TCPv4 GSO frames.
pub const VIRTIO_NET_F_HOST_TSO4: u64 = bit(net::VIRTIO_NET_F_HOST_TSO4);
/// `VIRTIO_NET_F_HOST_TSO6`: the device takes TCPv6 GSO frames.
pub const VIRTIO_NET_F_HOST_TSO6: u64 = bit(net::VIRTIO_NET_F_HOST_TSO6);
/// `VIRTIO_NET_F_HOST_ECN`: the device takes TSO frames with ECN.
pub const VIRTIO_NET_F_HOST_ECN: u64 = bit(net::VIRTIO_NET_F_HOST_ECN);
/// `VIRTIO_NET_F_MRG_RXBUF`: the device may spread one received frame over several
/// buffers (the header's `num_buffers` says how many).
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = bit(net::VIRTIO_NET_F_MRG_RXBUF);
/// `VIRTIO_NET_F_STATUS`: the config space has a link status field.
pub const VIRTIO_NET_F_STATUS: u64 = bit(net::VIRTIO_NET_F_STATUS);
/// `VIRTIO_NET_F_CTRL_VQ`: a control virtqueue exists.
pub const VIRTIO_NET_F_CTRL_VQ: u64 = bit(net::VIRTIO_NET_F_CTRL_VQ);
/// `VIRTIO_NET_F_CTRL_RX`: RX mode control on the control queue.
pub const VIRTIO_NET_F_CTRL_RX: u64 = bit(net::VIRTIO_NET_F_CTRL_RX);
/// `VIRTIO_NET_F_CTRL_VLAN`: VLAN filtering on the control queue.
pub const VIRTIO_NET_F_CTRL_VLAN: u64 = bit(net::VIRTIO_NET_F_CTRL_VLAN);
/// `VIRTIO_NET_F_GUEST_ANNOUNCE`: the driver can send gratuitous packets.
pub const VIRTIO_NET_F_GUEST_ANNOUNCE: u64 = bit(net::VIRTIO_NET_F_GUEST_ANNOUNCE);
/// `VIRTIO_NET_F_MQ`: more than one RX/TX queue pair.
pub const VIRTIO_NET_F_MQ: u64 = bit(net::VIRTIO_NET_F_MQ);
/// `VIRTIO_NET_F_CTRL_MAC_ADDR`: the MAC address can be set on the control queue.
pub const VIRTIO_NET_F_CTRL_MAC_ADDR: u64 = bit(net::VIRTIO_NET_F_CTRL_MAC_ADDR);

/// `VIRTIO_RING_F_INDIRECT_DESC`: indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = bit(ring::VIRTIO_RING_F_INDIRECT_DESC);
/// `VIRTIO_RING_F_EVENT_IDX`: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = bit(ring::VIRTIO_RING_F_EVENT_IDX);

/// `VIRTIO_F_VERSION_1`: virtio 1.x (little endian, 12-byte net header).
pub const VIRTIO_F_VERSION_1: u64 = bit(cfg::VIRTIO_F_VERSION_1);
/// `VIRTIO_F_ACCESS_PLATFORM` (formerly `IOMMU_PLATFORM`): the device's DMA goes through
/// an IOMMU. With VFIO that is exactly the case (IOVA = GPA); vdpad never offers it to a
/// vhost-user frontend (no IOTLB).
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = bit(cfg::VIRTIO_F_ACCESS_PLATFORM);
/// `VIRTIO_F_RING_PACKED`: packed virtqueues.
pub const VIRTIO_F_RING_PACKED: u64 = bit(cfg::VIRTIO_F_RING_PACKED);
/// `VIRTIO_F_IN_ORDER`: the device uses buffers in the order they were made available.
pub const VIRTIO_F_IN_ORDER: u64 = bit(cfg::VIRTIO_F_IN_ORDER);
/// `VIRTIO_F_ORDER_PLATFORM`: memory accesses are ordered the platform's way.
pub const VIRTIO_F_ORDER_PLATFORM: u64 = bit(cfg::VIRTIO_F_ORDER_PLATFORM);
/// `VIRTIO_F_SR_IOV`: the device supports single root I/O virtualization.
pub const VIRTIO_F_SR_IOV: u64 = bit(cfg::VIRTIO_F_SR_IOV);
/// `VIRTIO_F_NOTIFICATION_DATA`: the driver passes extra data with its notifications.
pub const VIRTIO_F_NOTIFICATION_DATA: u64 = bit(cfg::VIRTIO_F_NOTIFICATION_DATA);
/// `VIRTIO_F_RING_RESET`: queues can be reset and enabled one by one after DRIVER_OK.
pub const VIRTIO_F_RING_RESET: u64 = bit(cfg::VIRTIO_F_RING_RESET);

/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30, which virtio leaves to the transport): the
/// backend speaks vhost-user protocol features. Not a virtio feature, but it travels in
/// the same word (GET/SET_FEATURES).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// `VHOST_F_LOG_ALL` (bit 26, also borrowed from the transport range): the backend logs
/// every page it writes into a shared dirty log, for live migration. Acked by the
/// frontend only while a migration runs.
pub const VHOST_F_LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_the_spec_bits() {
        let masks = [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_MTU,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_CTRL_VQ,
            VIRTIO_NET_F_GUEST_ANNOUNCE,
            VIRTIO_NET_F_MQ,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_RING_F_EVENT_IDX,
            VHOST_F_LOG_ALL,
            VHOST_USER_F_PROTOCOL_FEATURES,
            VIRTIO_F_VERSION_1,
            VIRTIO_F_ACCESS_PLATFORM,
            VIRTIO_F_IN_ORDER,
            VIRTIO_F_RING_RESET,
        ];
        assert!(masks.iter().all(|m| m.is_power_of_two()));
        let bits = masks.map(u64::trailing_zeros);
        assert_eq!(
            bits,
            [0, 3, 5, 15, 17, 21, 22, 28, 29, 26, 30, 32, 33, 35, 40]
        );
    }
}
