//! What a virtio-net NIC can serve, and which features to negotiate with it for a
//! given guest: the policy part of offload, separate from the register work.
//!
//! The NIC processes the guest's rings itself, so every feature that changes the
//! ring layout or the virtio-net header (VERSION_1, EVENT_IDX, MRG_RXBUF, INDIRECT,
//! PACKED, checksum/segmentation offloads) must be negotiated with the NIC exactly
//! as the guest acked it. Features that only concern the device configuration or the
//! control queue (MAC, MTU, STATUS, MQ, CTRL_*) stay with QEMU, which emulates them
//! for vhost-user; the NIC does not need them.

use vdpa::features::{feature_names, offered_features};
use vdpa::virtio::features::{
    VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_RING_RESET,
    VIRTIO_F_VERSION_1, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, VIRTIO_NET_F_CTRL_MAC_ADDR,
    VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VLAN, VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS,
};
use vdpad_config::DeviceConfig;

use crate::virtio_pci::{NetConfig, VirtioError, VirtioPci};

/// Guest feature bits the NIC does not need to support: they are answered by the
/// frontend (QEMU emulates config space and the control queue for vhost-user) or by
/// the vhost-user protocol.
pub(crate) const CONFIG_ONLY_FEATURES: u64 = VIRTIO_NET_F_MAC
    | VIRTIO_NET_F_MTU
    | VIRTIO_NET_F_STATUS
    | VIRTIO_NET_F_MQ
    | VIRTIO_NET_F_CTRL_VQ
    | VIRTIO_NET_F_CTRL_RX
    | VIRTIO_NET_F_CTRL_VLAN
    | VIRTIO_NET_F_GUEST_ANNOUNCE
    | VIRTIO_NET_F_CTRL_MAC_ADDR
    | VIRTIO_NET_F_CTRL_GUEST_OFFLOADS
    | VHOST_USER_F_PROTOCOL_FEATURES
    | VIRTIO_F_ACCESS_PLATFORM;

/// Names of `bits`, including bits `feature_names` does not know (as `bit N`).
pub(crate) fn describe_bits(bits: u64) -> String {
    let mut names: Vec<String> = feature_names(bits).iter().map(|s| s.to_string()).collect();
    let mut named = 0u64;
    for b in 0..64 {
        let bit = 1u64 << b;
        if bits & bit != 0 && !feature_names(bit).is_empty() {
            named |= bit;
        }
    }
    for b in 0..64 {
        let bit = 1u64 << b;
        if bits & bit != 0 && named & bit == 0 {
            names.push(format!("bit {b}"));
        }
    }
    names.join(", ")
}

/// Why a NIC cannot serve a guest or a device configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsuitable {
    /// The guest drives the device as a legacy (pre-1.0) virtio device.
    #[error("the guest did not ack VERSION_1 (legacy drivers are not offloaded)")]
    LegacyGuest,
    /// Ring or header features the guest uses that the NIC does not offer.
    #[error("the NIC lacks {}", describe_bits(*.0))]
    MissingFeatures(u64),
    /// More queue pairs asked of the datapath than the NIC can drive (or none).
    #[error("{requested} queue pairs requested, the NIC can drive {usable} ({why})")]
    PairsRequested {
        /// Queue pairs asked for.
        requested: u16,
        /// Queue pairs the NIC can drive.
        usable: u16,
        /// What limits them ([`NicCapabilities::pairs_limit`]).
        why: String,
    },
    /// More queue pairs configured than the NIC can drive.
    #[error("{configured} queue pairs configured, the NIC can drive {usable} ({why})")]
    PairsConfigured {
        /// Queue pairs in the configuration.
        configured: u16,
        /// Queue pairs the NIC can drive.
        usable: u16,
        /// What limits them ([`NicCapabilities::pairs_limit`]).
        why: String,
    },
    /// Fewer MSI-X vectors than one per ring plus the config vector.
    #[error(
        "{pairs} queue pairs need {needed} MSI-X vectors (one per ring + config), the NIC has {available}"
    )]
    Vectors {
        /// Queue pairs.
        pairs: u16,
        /// Vectors they need.
        needed: u32,
        /// Vectors the NIC has.
        available: u16,
    },
    /// The configured ring size is above the NIC's maximum.
    #[error("queue_size {configured} exceeds the NIC's maximum ring size {max}")]
    RingSize {
        /// `queue_size` of the configuration.
        configured: u16,
        /// The NIC's maximum.
        max: u16,
    },
}

/// What a NIC offers, as far as offload is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicCapabilities {
    /// PCI identity (vendor, device).
    pub ids: (u16, u16),
    /// Device feature bits.
    pub features: u64,
    /// Virtqueues of the device.
    pub num_queues: u16,
    /// Queue pairs offload can use (see `usable_pairs`).
    pub max_pairs: u16,
    /// MSI-X vectors.
    pub msix_vectors: u16,
    /// Smallest maximum ring size over the data queues.
    pub queue_max_size: u16,
    /// Queues can resume at any index (vendor ring-state registers).
    pub ring_state: bool,
    /// Queues can be started and stopped one by one after DRIVER_OK.
    pub ring_reset: bool,
    /// The device configuration.
    pub net: NetConfig,
}

impl NicCapabilities {
    /// Reads the capabilities of a probed device. Does not change its state beyond
    /// selecting queues to read their maximum sizes.
    pub(crate) fn probe(nic: &VirtioPci) -> Result<Self, VirtioError> {
        let features = nic.device_features();
        let net = nic.net_config()?;
        let max_pairs = Self::usable_pairs(features, net.max_pairs, nic.num_queues());
        // Only the queues that exist before negotiation can be read (see
        // `usable_pairs`); the others are taken to be like them.
        let control = u16::from(features & VIRTIO_NET_F_CTRL_VQ != 0);
        let data_queues = nic.num_queues().saturating_sub(control);
        let mut queue_max_size = u16::MAX;
        for q in 0..(2 * max_pairs).min(data_queues) {
            queue_max_size = queue_max_size.min(nic.queue_max_size(q)?);
        }
        Ok(NicCapabilities {
            ids: nic.ids(),
            features,
            num_queues: nic.num_queues(),
            max_pairs,
            msix_vectors: nic.msix_vectors(),
            queue_max_size: if max_pairs == 0 { 0 } else { queue_max_size },
            ring_state: nic.has_ring_state(),
            ring_reset: features & VIRTIO_F_RING_RESET != 0,
            net,
        })
    }

    /// Queue pairs offload can drive.
    ///
    /// - MQ with CTRL_VQ (the spec way): `max_virtqueue_pairs`. Such a device uses only
    ///   pair 0 until told otherwise on its control queue, which the datapath drives
    ///   (`offload/control_queue.rs`). Its `num_queues` before negotiation is not a
    ///   bound: QEMU's virtio-net shows 3 queues (one pair and the control queue) until
    ///   MQ is negotiated, and all of them after.
    /// - MQ alone (the simulator, ifcvf's vendor MQ register): every enabled queue runs,
    ///   so `max_virtqueue_pairs` as far as the queues go.
    /// - No MQ: one pair.
    pub(crate) fn usable_pairs(features: u64, max_pairs: u16, num_queues: u16) -> u16 {
        let both = VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ;
        if features & both == both {
            max_pairs
        } else if features & VIRTIO_NET_F_MQ != 0 {
            max_pairs.min(num_queues / 2)
        } else {
            1.min(num_queues / 2)
        }
    }

    /// What limits the pairs this NIC can drive, for error messages.
    pub fn pairs_limit(&self) -> String {
        let mq = if self.features & VIRTIO_NET_F_MQ != 0 {
            format!("MQ with max_virtqueue_pairs {}", self.net.max_pairs)
        } else {
            "no VIRTIO_NET_F_MQ".to_owned()
        };
        let ctrl = if self.features & VIRTIO_NET_F_CTRL_VQ != 0 {
            " and a control queue"
        } else {
            ""
        };
        format!("{mq}{ctrl}; {} queues", self.num_queues)
    }

    /// Whether pairs beyond the first must be switched on through the NIC's control
    /// queue (MQ with CTRL_VQ, the spec way).
    pub(crate) fn pairs_through_control_queue(&self) -> bool {
        let both = VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ;
        self.features & both == both
    }

    /// The control queue's index: after every data queue of `max_virtqueue_pairs`.
    pub(crate) fn control_queue_index(&self) -> u16 {
        2 * self.net.max_pairs.max(1)
    }

    /// MSI-X vectors needed to serve `pairs`: one per ring plus the config vector.
    pub(crate) fn vectors_needed(pairs: u16) -> u32 {
        1 + 2 * u32::from(pairs)
    }

    /// Checks that the NIC has the MSI-X vectors `pairs` queue pairs need.
    pub(crate) fn check_vectors(&self, pairs: u16) -> Result<(), Unsuitable> {
        let needed = Self::vectors_needed(pairs);
        if u32::from(self.msix_vectors) < needed {
            return Err(Unsuitable::Vectors {
                pairs,
                needed,
                available: self.msix_vectors,
            });
        }
        Ok(())
    }

    /// The features to negotiate with the NIC for a guest that acked `guest`, or why
    /// the NIC cannot serve it.
    pub(crate) fn nic_features_for(&self, guest: u64, pairs: u16) -> Result<u64, Unsuitable> {
        if guest & VIRTIO_F_VERSION_1 == 0 {
            return Err(Unsuitable::LegacyGuest);
        }
        let needed = guest & !CONFIG_ONLY_FEATURES;
        let missing = needed & !self.features;
        if missing != 0 {
            return Err(Unsuitable::MissingFeatures(missing));
        }
        let mut wanted = needed
            | (self.features
                & (VIRTIO_F_ACCESS_PLATFORM
                    | VIRTIO_F_RING_RESET
                    | VIRTIO_NET_F_MAC
                    | VIRTIO_NET_F_STATUS
                    | VIRTIO_NET_F_MTU));
        if pairs > 1 {
            wanted |= VIRTIO_NET_F_MQ;
            if self.pairs_through_control_queue() {
                wanted |= VIRTIO_NET_F_CTRL_VQ;
            }
        }
        Ok(wanted)
    }

    /// Checks up front that this NIC can serve a device configured by `cfg`: the
    /// guest-visible features the configuration offers, its queue pairs, ring size and
    /// the MSI-X vectors they need. Returns every reason it cannot.
    pub(crate) fn can_serve(&self, cfg: &DeviceConfig) -> Result<(), Vec<Unsuitable>> {
        let mut why = Vec::new();
        let offered = offered_features(cfg);
        if let Err(e) = self.nic_features_for(offered, cfg.queue_pairs) {
            why.push(e);
        }
        if cfg.queue_pairs > self.max_pairs {
            why.push(Unsuitable::PairsConfigured {
                configured: cfg.queue_pairs,
                usable: self.max_pairs,
                why: self.pairs_limit(),
            });
        }
        if let Err(e) = self.check_vectors(cfg.queue_pairs) {
            why.push(e);
        }
        if cfg.queue_size > self.queue_max_size {
            why.push(Unsuitable::RingSize {
                configured: cfg.queue_size,
                max: self.queue_max_size,
            });
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdpa::virtio::features::VIRTIO_RING_F_EVENT_IDX;

    fn caps(features: u64) -> NicCapabilities {
        NicCapabilities {
            ids: (0x1af4, 0x1041),
            features,
            num_queues: 8,
            max_pairs: 4,
            msix_vectors: 9,
            queue_max_size: 256,
            ring_state: false,
            ring_reset: false,
            net: NetConfig::default(),
        }
    }

    #[test]
    fn ring_features_must_match_config_features_need_not() {
        let c = caps(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM);
        let guest = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VHOST_USER_F_PROTOCOL_FEATURES;
        let w = c.nic_features_for(guest, 1).unwrap();
        assert_eq!(w, VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM);
        let e = c
            .nic_features_for(guest | VIRTIO_RING_F_EVENT_IDX, 1)
            .unwrap_err();
        assert!(e.to_string().contains("EVENT_IDX"), "{e}");
        assert!(c.nic_features_for(VIRTIO_NET_F_MAC, 1).is_err());
    }

    #[test]
    fn multiqueue_counts_with_or_without_the_control_queue() {
        let f = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MQ;
        assert_eq!(NicCapabilities::usable_pairs(f, 4, 8), 4);
        let ctrl = f | VIRTIO_NET_F_CTRL_VQ;
        assert_eq!(NicCapabilities::usable_pairs(ctrl, 4, 9), 4);
        assert_eq!(
            NicCapabilities::usable_pairs(ctrl, 4, 3),
            4,
            "QEMU shows its queues only once MQ is negotiated"
        );
        assert_eq!(NicCapabilities::usable_pairs(VIRTIO_F_VERSION_1, 4, 3), 1);
        assert_eq!(NicCapabilities::usable_pairs(f, 4, 4), 2);
    }

    #[test]
    fn more_than_one_pair_on_a_spec_nic_negotiates_its_control_queue() {
        let mut c = caps(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ);
        c.net.max_pairs = 4;
        let guest = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ;
        let one = c.nic_features_for(guest, 1).unwrap();
        assert_eq!(one & (VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ), 0);
        let two = c.nic_features_for(guest, 2).unwrap();
        assert_eq!(
            two & (VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ),
            VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ
        );
        assert_eq!(c.control_queue_index(), 8);
        let vendor = caps(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MQ);
        let two = vendor.nic_features_for(guest, 2).unwrap();
        assert_eq!(two & VIRTIO_NET_F_CTRL_VQ, 0, "no control queue to drive");
    }

    #[test]
    fn unknown_bits_are_named_by_number() {
        assert_eq!(describe_bits((1 << 29) | (1 << 50)), "EVENT_IDX, bit 50");
    }
}
