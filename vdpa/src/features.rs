//! Device policy over the feature bits: the feature sets a device offers, what was
//! negotiated, and names for logs. The bits themselves are in
//! [`crate::virtio::features`].
//!
//! The guest-visible feature set is a function of the device configuration only, so
//! that the same device offers the same features whichever datapath serves it.

use vdpad_config::{DeviceConfig, Frontend};
use vhost::vhost_user::message::VhostUserProtocolFeatures;

use crate::virtio::features::*;
use crate::virtio::net_hdr::net_hdr_len;

/// The virtio features a device offers to the frontend, from its configuration: a
/// vhost-user device offers the protocol-features bit and GUEST_ANNOUNCE (QEMU runs
/// the control queue that announcing needs, and masks the bit for a guest without
/// one), a VDUSE device ACCESS_PLATFORM (the kernel requires it: every address is an
/// IOVA) and no GUEST_ANNOUNCE (it has no control queue, and Linux refuses the bit
/// without one).
pub fn offered_features(cfg: &DeviceConfig) -> u64 {
    let mut f = VIRTIO_F_VERSION_1
        | match cfg.frontend {
            Frontend::VhostUser => VHOST_USER_F_PROTOCOL_FEATURES | VIRTIO_NET_F_GUEST_ANNOUNCE,
            Frontend::Vduse { .. } => VIRTIO_F_ACCESS_PLATFORM,
        };
    if cfg.event_idx {
        f |= VIRTIO_RING_F_EVENT_IDX;
    }
    if cfg.mrg_rxbuf {
        f |= VIRTIO_NET_F_MRG_RXBUF;
    }
    if cfg.mac.is_some() {
        f |= VIRTIO_NET_F_MAC;
    }
    if cfg.mtu.is_some() {
        f |= VIRTIO_NET_F_MTU;
    }
    if cfg.queue_pairs > 1 {
        f |= VIRTIO_NET_F_MQ;
    }
    f
}

/// The vhost-user protocol features this control plane implements, and so offers;
/// with `dirty_log` (the device offers VHOST_F_LOG_ALL: its datapath can log) also
/// LOG_SHMFD and RARP, the two that live migration needs; with `host_notifiers` (its
/// datapath can hand out doorbell pages) BACKEND_REQ, BACKEND_SEND_FD and
/// HOST_NOTIFIER, which let the frontend map a NIC doorbell into the guest.
///
/// LOG_ALL and LOG_SHMFD always go together: a frontend that acks LOG_ALL without
/// LOG_SHMFD would keep the log in its own memory, and migrate without any page the
/// device wrote being copied again.
///
/// STATUS and INFLIGHT are deliberately absent: they are only offered once they are
/// implemented. CONFIG is not offered either: GET_CONFIG is answered, but QEMU keeps a
/// vhost-user net device's config space itself and warns about a backend that offers it.
pub fn offered_protocol_features(
    dirty_log: bool,
    host_notifiers: bool,
) -> VhostUserProtocolFeatures {
    let mut f = VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::MTU
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
    if dirty_log {
        f |= VhostUserProtocolFeatures::LOG_SHMFD | VhostUserProtocolFeatures::RARP;
    }
    if host_notifiers {
        f |= VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::BACKEND_SEND_FD
            | VhostUserProtocolFeatures::HOST_NOTIFIER;
    }
    f
}

/// Negotiated features as the datapath needs them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// All acked virtio feature bits.
    pub bits: u64,
}

impl Negotiated {
    /// Whether `bit` was acked.
    pub fn has(&self, bit: u64) -> bool {
        self.bits & bit != 0
    }

    /// EVENT_IDX notification suppression is on.
    pub fn event_idx(&self) -> bool {
        self.has(VIRTIO_RING_F_EVENT_IDX)
    }

    /// Mergeable receive buffers are on.
    pub fn mrg_rxbuf(&self) -> bool {
        self.has(VIRTIO_NET_F_MRG_RXBUF)
    }

    /// Length of the virtio-net header that precedes every frame: 12 bytes with
    /// VERSION_1 or MRG_RXBUF (it carries `num_buffers`), 10 bytes for a legacy driver.
    pub fn net_header_len(&self) -> usize {
        net_hdr_len(self.has(VIRTIO_F_VERSION_1), self.mrg_rxbuf())
    }
}

/// Names of the feature bits set in `bits`, for logs and `vdpactl`.
pub fn feature_names(bits: u64) -> Vec<&'static str> {
    const NAMES: &[(u64, &str)] = &[
        (VIRTIO_NET_F_CSUM, "CSUM"),
        (VIRTIO_NET_F_GUEST_CSUM, "GUEST_CSUM"),
        (VIRTIO_NET_F_GUEST_TSO4, "GUEST_TSO4"),
        (VIRTIO_NET_F_GUEST_TSO6, "GUEST_TSO6"),
        (VIRTIO_NET_F_GUEST_ECN, "GUEST_ECN"),
        (VIRTIO_NET_F_HOST_TSO4, "HOST_TSO4"),
        (VIRTIO_NET_F_HOST_TSO6, "HOST_TSO6"),
        (VIRTIO_NET_F_HOST_ECN, "HOST_ECN"),
        (VIRTIO_NET_F_MTU, "MTU"),
        (VIRTIO_NET_F_MAC, "MAC"),
        (VIRTIO_NET_F_MRG_RXBUF, "MRG_RXBUF"),
        (VIRTIO_NET_F_STATUS, "STATUS"),
        (VIRTIO_NET_F_GUEST_ANNOUNCE, "GUEST_ANNOUNCE"),
        (VIRTIO_NET_F_MQ, "MQ"),
        (VIRTIO_RING_F_INDIRECT_DESC, "INDIRECT_DESC"),
        (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
        (VHOST_F_LOG_ALL, "LOG_ALL"),
        (VHOST_USER_F_PROTOCOL_FEATURES, "PROTOCOL_FEATURES"),
        (VIRTIO_F_VERSION_1, "VERSION_1"),
        (VIRTIO_F_ACCESS_PLATFORM, "IOMMU_PLATFORM"),
        (VIRTIO_F_IN_ORDER, "IN_ORDER"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, n)| *n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_length_follows_version_and_mrg() {
        assert_eq!(
            Negotiated {
                bits: VIRTIO_F_VERSION_1
            }
            .net_header_len(),
            12
        );
        assert_eq!(
            Negotiated {
                bits: VIRTIO_NET_F_MRG_RXBUF
            }
            .net_header_len(),
            12
        );
        assert_eq!(Negotiated { bits: 0 }.net_header_len(), 10);
    }

    #[test]
    fn names_cover_set_bits() {
        let n = feature_names(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
        assert_eq!(n, vec!["EVENT_IDX", "VERSION_1"]);
    }
}
