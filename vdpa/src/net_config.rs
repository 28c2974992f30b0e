//! The virtio-net device configuration space of a configured device, as GET_CONFIG
//! returns it (the layout is [`crate::virtio::net_config`]).

use vdpad_config::DeviceConfig;

use crate::virtio::net_config::NET_CONFIG_LEN;
use crate::virtio::net_config::{NetConfigSpace, VIRTIO_NET_S_LINK_UP};

/// The config space of `cfg`, with `mtu` overriding the configured MTU if the frontend
/// set one with NET_SET_MTU, and the link status `link_up`.
pub fn net_config_bytes(
    cfg: &DeviceConfig,
    mtu: Option<u16>,
    link_up: bool,
) -> [u8; NET_CONFIG_LEN] {
    NetConfigSpace {
        mac: cfg.mac.map(|m| m.0).unwrap_or_default(),
        status: if link_up { VIRTIO_NET_S_LINK_UP } else { 0 },
        max_pairs: cfg.queue_pairs,
        mtu: mtu.or(cfg.mtu).unwrap_or(1500),
    }
    .to_bytes()
}
