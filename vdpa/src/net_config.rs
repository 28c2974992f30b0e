//! The virtio-net device configuration space (virtio 1.x, 5.1.4), as GET_CONFIG
//! returns it.

use vdpad_config::DeviceConfig;

/// Link is up (VIRTIO_NET_S_LINK_UP).
const LINK_UP: u16 = 1;

/// Bytes of the config space up to and including `mtu`: mac[6], status, max pairs, mtu.
pub const NET_CONFIG_LEN: usize = 12;

/// The config space of `cfg`, with `mtu` overriding the configured MTU if the frontend
/// set one with NET_SET_MTU.
pub fn net_config_bytes(cfg: &DeviceConfig, mtu: Option<u16>) -> [u8; NET_CONFIG_LEN] {
    let mut b = [0u8; NET_CONFIG_LEN];
    if let Some(mac) = cfg.mac {
        b[0..6].copy_from_slice(&mac.0);
    }
    b[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
    b[8..10].copy_from_slice(&cfg.queue_pairs.to_le_bytes());
    b[10..12].copy_from_slice(&mtu.or(cfg.mtu).unwrap_or(1500).to_le_bytes());
    b
}
