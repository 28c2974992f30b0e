//! Where the simulated NIC keeps its registers: the PCI configuration space image
//! (header and capability list) and the layout of BAR 4, which holds the virtio
//! structures the way QEMU's virtio-net-pci does.
//!
//! ```text
//! config space            BAR 4 (288 KiB)
//! 0x40 MSI-X cap          0x0000 common cfg (0x3c bytes)
//! 0x50 virtio COMMON      0x1000 ISR (1 byte)
//! 0x60 virtio ISR         0x2000 device cfg (virtio_net_config)
//! 0x70 virtio DEVICE      0x4000 ring state (vdpad extension): u32 per queue,
//! 0x80 virtio NOTIFY             last_avail | last_used << 16
//! 0x98 virtio PCI_CFG     0x8000 doorbells: queue q at 0x8000 + q * multiplier
//! 0xb0 ring state (opt.)         (4096: a page per queue, which can be mapped; or 4)
//! ```

use super::SimConfig;
use crate::spec::{self, cap, cfg};
use vdpa::virtio::net_config::NET_CONFIG_LEN;

/// BAR holding the virtio structures.
pub(crate) const VIRTIO_BAR: u8 = 4;
/// BAR holding the MSI-X table (never accessed by the driver: VFIO routes vectors).
pub(crate) const MSIX_BAR: u8 = 1;
/// Common configuration offset in BAR 4.
pub(crate) const COMMON: u64 = 0x0000;
/// ISR offset.
pub(crate) const ISR: u64 = 0x1000;
/// Device configuration offset.
pub(crate) const DEVICE: u64 = 0x2000;
/// Ring-state area offset.
pub(crate) const RING_STATE: u64 = 0x4000;
/// Doorbell area offset.
pub const NOTIFY: u64 = 0x8000;
/// `notify_off_multiplier` with [`SimConfig::doorbell_pages`]: every queue's doorbell
/// alone on its page.
pub const PAGE_MULTIPLIER: u32 = 4096;
/// `notify_off_multiplier` without: doorbells packed 4 bytes apart on one page.
pub const PACKED_MULTIPLIER: u32 = 4;
/// Size of BAR 4: room for a page per queue of the largest device.
pub const BAR4_SIZE: u64 = NOTIFY + 64 * PAGE_MULTIPLIER as u64;
/// Size of configuration space (PCI Express).
pub(crate) const CONFIG_SIZE: usize = 4096;

/// Offset of the MSI-X capability in configuration space.
pub(crate) const MSIX_CAP: usize = 0x40;

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn virtio_cap(b: &mut [u8], at: usize, next: usize, len: u8, cfg_type: u8, off: u64, length: u32) {
    b[at] = cfg::CAP_ID_VENDOR;
    b[at + 1] = next as u8;
    b[at + 2] = len;
    b[at + 3] = cfg_type;
    b[at + 4] = VIRTIO_BAR;
    put32(b, at + 8, off as u32);
    put32(b, at + 12, length);
}

/// The configuration space image at power-on.
pub fn config_space(c: &SimConfig) -> Vec<u8> {
    let mut b = vec![0u8; CONFIG_SIZE];
    put16(&mut b, cfg::VENDOR_ID as usize, spec::VIRTIO_VENDOR_ID);
    put16(
        &mut b,
        cfg::DEVICE_ID as usize,
        spec::VIRTIO_NET_MODERN_DEVICE_ID,
    );
    put16(&mut b, cfg::STATUS as usize, cfg::STATUS_CAP_LIST);
    // Revision 1 (modern), class 02 00 00 (Ethernet).
    put32(
        &mut b,
        cfg::REVISION as usize,
        1 | (cfg::CLASS_ETHERNET << 8),
    );
    // BAR1: 32-bit memory (MSI-X), BAR4: 64-bit memory, prefetchable.
    put32(&mut b, cfg::BAR0 as usize + 4, 0xfe00_0000);
    put32(&mut b, cfg::BAR0 as usize + 16, 0xfc00_000c);
    put16(
        &mut b,
        cfg::SUBSYSTEM_VENDOR as usize,
        spec::VIRTIO_VENDOR_ID,
    );
    put16(&mut b, cfg::SUBSYSTEM_ID as usize, 0x1100);
    b[cfg::CAP_PTR as usize] = MSIX_CAP as u8;

    // MSI-X: table size - 1, table and PBA in BAR 1.
    b[MSIX_CAP] = cfg::CAP_ID_MSIX;
    b[MSIX_CAP + 1] = 0x50;
    put16(
        &mut b,
        MSIX_CAP + 2,
        c.msix_vectors.saturating_sub(1) & 0x7ff,
    );
    put32(&mut b, MSIX_CAP + 4, u32::from(MSIX_BAR));
    put32(&mut b, MSIX_CAP + 8, 0x800 | u32::from(MSIX_BAR));

    let nq = u32::from(c.num_queues());
    virtio_cap(
        &mut b,
        0x50,
        0x60,
        16,
        cap::COMMON,
        COMMON,
        spec::common::LEN,
    );
    virtio_cap(&mut b, 0x60, 0x70, 16, cap::ISR, ISR, 1);
    virtio_cap(
        &mut b,
        0x70,
        0x80,
        16,
        cap::DEVICE,
        DEVICE,
        NET_CONFIG_LEN as u32,
    );
    virtio_cap(
        &mut b,
        0x80,
        0x98,
        20,
        cap::NOTIFY,
        NOTIFY,
        nq * c.notify_multiplier(),
    );
    put32(&mut b, 0x80 + 16, c.notify_multiplier());
    let after_pci_cfg = if c.ring_state { 0xb0 } else { 0 };
    virtio_cap(&mut b, 0x98, after_pci_cfg, 20, cap::PCI_CFG, 0, 0);
    if c.ring_state {
        virtio_cap(
            &mut b,
            0xb0,
            0,
            16,
            cap::VDPAD_RING_STATE,
            RING_STATE,
            4 * nq,
        );
    }
    b
}

/// Bytes of the configuration space the function lets a driver write: the command
/// register and the MSI-X message control. Everything else is read-only.
pub(crate) fn config_writable(offset: usize) -> bool {
    matches!(offset, 4 | 5) || offset == MSIX_CAP + 3
}
