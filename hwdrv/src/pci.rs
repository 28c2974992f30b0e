//! The PCI function abstraction the virtio-pci driver runs on: configuration space,
//! BAR registers, BAR mappings, DMA mappings, MSI-X routing to eventfds and reset.
//!
//! Two implementations: [`crate::vfio::VfioFunction`] drives a real function through
//! VFIO; `sim::SimNic` (feature `test-utils`) simulates a virtio-net function
//! in-process for tests.
//! Every method takes `&self`: a function is shared (behind an `Arc`) between the
//! control thread that programs it and the kick-relay thread that rings its doorbells.

use std::io;

use vdpa::NotifyArea;
use vmm_sys_util::eventfd::EventFd;

use crate::spec::cfg;

/// What [`PciFunction::reset`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetOutcome {
    /// The function was reset (FLR or equivalent): its state is as after power-on.
    Done,
    /// The function has no reset method (e.g. a VFIO device without FLR on the root
    /// bus); nothing happened. Drivers must then rely on their own reset (virtio:
    /// device_status = 0).
    Unsupported,
}

/// One PCI function as the driver sees it.
///
/// Register accesses are little endian and of the width of the buffer (1, 2 or 4
/// bytes for BARs). Every access reports failure: a VFIO error is never swallowed.
pub trait PciFunction: Send + Sync {
    /// Short human-readable identity, e.g. `vfio 0000:01:00.0` or `sim`.
    fn describe(&self) -> String;

    /// Reads `buf.len()` bytes of configuration space at `offset`.
    fn config_read(&self, offset: u16, buf: &mut [u8]) -> io::Result<()>;

    /// Writes `data` to configuration space at `offset`.
    fn config_write(&self, offset: u16, data: &[u8]) -> io::Result<()>;

    /// Reads a register of `buf.len()` bytes (1, 2 or 4) from BAR `bar` at `offset`.
    fn bar_read(&self, bar: u8, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes a register of `data.len()` bytes (1, 2 or 4) to BAR `bar` at `offset`.
    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Whether BAR `bar` is memory-mapped into this process, so that register
    /// accesses to it are plain loads and stores (fast doorbells). Implementations
    /// that cannot map (the simulator, a BAR without the MMAP flag) return false and
    /// still serve [`bar_read`](Self::bar_read)/[`bar_write`](Self::bar_write).
    fn bar_mapped(&self, bar: u8) -> bool;

    /// Maps guest memory for device DMA: device address `iova` (the guest-physical
    /// address for vhost-user, the driver's IOVA for VDUSE) reaches host memory
    /// `host` for `size` bytes. Where the implementation pins memory (VFIO), memory
    /// this process cannot write is mapped read-only for the device, and a private
    /// mapping of a file is refused (a pin would copy it; see
    /// [`SharedView`](crate::dma_share::SharedView)).
    ///
    /// # Safety
    /// `[host, host + size)` must be a valid mapping of this process that stays
    /// mapped until [`dma_unmap`](Self::dma_unmap) of the same range (or the drop of
    /// the function) returns; the device may read and write it at any time in between,
    /// so no Rust reference to that memory may exist.
    unsafe fn dma_map(&self, iova: u64, size: u64, host: *mut u8) -> io::Result<()>;

    /// Removes a mapping made by [`dma_map`](Self::dma_map) with the same range.
    fn dma_unmap(&self, iova: u64, size: u64) -> io::Result<()>;

    /// Number of MSI-X vectors the function has (0 without MSI-X).
    fn msix_vectors(&self) -> u16;

    /// Routes MSI-X vector `i` to `fds[i]` for every `i`, replacing any previous
    /// routing; vectors beyond `fds.len()` are not routed. Always pass the full list:
    /// VFIO programs vectors `0..n` in one call.
    fn set_msix(&self, fds: &[&EventFd]) -> io::Result<()>;

    /// Routes MSI-X vector `vector`, one of those the last [`set_msix`](Self::set_msix)
    /// routed, to `fd`, leaving every other vector as it is (an error for a vector
    /// that is not routed).
    fn set_msix_vector(&self, vector: u16, fd: &EventFd) -> io::Result<()>;

    /// Removes all MSI-X routing and disables MSI-X.
    fn clear_msix(&self) -> io::Result<()>;

    /// Resets the function (VFIO_DEVICE_RESET: FLR or equivalent) and says whether a
    /// reset really happened.
    fn reset(&self) -> io::Result<ResetOutcome>;

    /// The page holding the doorbell at `offset` in BAR `bar`, as a file and offset a
    /// frontend can map (vhost-user host notifier), or why it cannot be handed out (the
    /// BAR or that part of it cannot be mapped). The caller checks that nothing but
    /// that doorbell lives on the page.
    fn doorbell_page(&self, bar: u8, _offset: u64) -> Result<NotifyArea, String> {
        Err(format!("BAR{bar} of this function cannot be mapped"))
    }

    /// How many times MSI-X vector `vector` fired, if the implementation can know.
    /// The simulator counts; with VFIO the interrupt goes from the device to the
    /// eventfd (and on to KVM) without passing through this process, so `None`.
    fn vector_fired(&self, _vector: u16) -> Option<u64> {
        None
    }

    /// Turns bus mastering (the function's permission to DMA) on or off through the
    /// command register. VFIO leaves it off after opening a device.
    fn set_bus_master(&self, on: bool) -> io::Result<()> {
        let cmd = self.config_read16(cfg::COMMAND)?;
        let new = if on {
            cmd | cfg::COMMAND_BUS_MASTER | cfg::COMMAND_MEMORY
        } else {
            cmd & !cfg::COMMAND_BUS_MASTER
        };
        if new != cmd {
            self.config_write(cfg::COMMAND, &new.to_le_bytes())?;
        }
        Ok(())
    }

    /// Reads an 8-bit configuration register.
    fn config_read8(&self, offset: u16) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.config_read(offset, &mut b)?;
        Ok(b[0])
    }

    /// Reads a 16-bit configuration register.
    fn config_read16(&self, offset: u16) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.config_read(offset, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a 32-bit configuration register.
    fn config_read32(&self, offset: u16) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.config_read(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads an 8-bit BAR register.
    fn bar_read8(&self, bar: u8, offset: u64) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.bar_read(bar, offset, &mut b)?;
        Ok(b[0])
    }

    /// Reads a 16-bit BAR register.
    fn bar_read16(&self, bar: u8, offset: u64) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.bar_read(bar, offset, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a 32-bit BAR register.
    fn bar_read32(&self, bar: u8, offset: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.bar_read(bar, offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes an 8-bit BAR register.
    fn bar_write8(&self, bar: u8, offset: u64, v: u8) -> io::Result<()> {
        self.bar_write(bar, offset, &[v])
    }

    /// Writes a 16-bit BAR register.
    fn bar_write16(&self, bar: u8, offset: u64, v: u16) -> io::Result<()> {
        self.bar_write(bar, offset, &v.to_le_bytes())
    }

    /// Writes a 32-bit BAR register.
    fn bar_write32(&self, bar: u8, offset: u64, v: u32) -> io::Result<()> {
        self.bar_write(bar, offset, &v.to_le_bytes())
    }
}

/// Checks that a register access is 1, 2 or 4 bytes wide.
pub(crate) fn check_width(len: usize) -> io::Result<()> {
    match len {
        1 | 2 | 4 => Ok(()),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, BadWidth(len))),
    }
}

/// A register access that is not 1, 2 or 4 bytes wide (travels inside an
/// `io::Error` of kind `InvalidInput`, as the [`PciFunction`] methods return).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("register access of {0} bytes (must be 1, 2 or 4)")]
pub struct BadWidth(pub usize);

/// A capability in the standard capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Capability id (0x09 vendor, 0x11 MSI-X, ...).
    pub id: u8,
    /// Offset in configuration space.
    pub offset: u8,
}

/// A virtio vendor capability (`struct virtio_pci_cap`, 4.1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioCap {
    /// Structure type (`spec::cap::*`).
    pub cfg_type: u8,
    /// BAR holding the structure.
    pub bar: u8,
    /// Offset of the structure in the BAR.
    pub offset: u32,
    /// Length of the structure.
    pub length: u32,
    /// `notify_off_multiplier` (NOTIFY capability only, else 0).
    pub notify_off_multiplier: u32,
    /// Offset of the capability in configuration space.
    pub cap_offset: u8,
}

/// A copy of the first 256 bytes of a function's configuration space, with the
/// parsing both the driver and auto-mode classification need.
#[derive(Clone, Debug)]
pub struct ConfigSnapshot {
    bytes: Vec<u8>,
}

impl ConfigSnapshot {
    /// Bytes of standard configuration space.
    pub(crate) const LEN: usize = 256;

    /// Wraps raw configuration bytes (a sysfs `config` read, or a VFIO region read).
    /// Fewer than 256 bytes (an unprivileged sysfs read gives 64) means no
    /// capabilities can be seen.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        ConfigSnapshot { bytes }
    }

    /// Reads the first 256 bytes of `f`'s configuration space.
    pub fn read(f: &dyn PciFunction) -> io::Result<Self> {
        let mut bytes = vec![0u8; Self::LEN];
        // Dword reads: some implementations only accept naturally aligned accesses.
        for (i, chunk) in bytes.chunks_mut(4).enumerate() {
            f.config_read((i * 4) as u16, chunk)?;
        }
        Ok(ConfigSnapshot { bytes })
    }

    fn u8_at(&self, off: usize) -> u8 {
        self.bytes.get(off).copied().unwrap_or(0)
    }

    fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.u8_at(off), self.u8_at(off + 1)])
    }

    fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.u8_at(off),
            self.u8_at(off + 1),
            self.u8_at(off + 2),
            self.u8_at(off + 3),
        ])
    }

    /// Vendor id.
    pub fn vendor_id(&self) -> u16 {
        self.u16_at(cfg::VENDOR_ID as usize)
    }

    /// Device id.
    pub fn device_id(&self) -> u16 {
        self.u16_at(cfg::DEVICE_ID as usize)
    }

    /// 24-bit class code: class, subclass, programming interface.
    pub fn class_code(&self) -> u32 {
        self.u32_at(cfg::REVISION as usize) >> 8
    }

    /// Whether the snapshot covers the whole standard configuration space (the
    /// capability list can only be walked then).
    pub(crate) fn is_complete(&self) -> bool {
        self.bytes.len() >= Self::LEN
    }

    /// The capability list, in list order. Bounded: at most 48 entries, pointers below
    /// 0x40 end the walk (malformed lists cannot loop).
    pub(crate) fn capabilities(&self) -> Vec<Capability> {
        let mut out = Vec::new();
        if !self.is_complete() || self.u16_at(cfg::STATUS as usize) & cfg::STATUS_CAP_LIST == 0 {
            return out;
        }
        let mut ptr = self.u8_at(cfg::CAP_PTR as usize) & !3;
        while ptr >= 0x40 && out.len() < 48 {
            out.push(Capability {
                id: self.u8_at(ptr as usize),
                offset: ptr,
            });
            ptr = self.u8_at(ptr as usize + 1) & !3;
        }
        out
    }

    /// The virtio vendor capabilities, in list order.
    pub fn virtio_caps(&self) -> Vec<VirtioCap> {
        self.capabilities()
            .into_iter()
            .filter(|c| c.id == cfg::CAP_ID_VENDOR)
            .filter_map(|c| {
                let o = c.offset as usize;
                let cap_len = self.u8_at(o + 2);
                if cap_len < 16 {
                    return None;
                }
                let cfg_type = self.u8_at(o + 3);
                let notify_off_multiplier = if cfg_type == crate::spec::cap::NOTIFY && cap_len >= 20
                {
                    self.u32_at(o + 16)
                } else {
                    0
                };
                Some(VirtioCap {
                    cfg_type,
                    bar: self.u8_at(o + 4),
                    offset: self.u32_at(o + 8),
                    length: self.u32_at(o + 12),
                    notify_off_multiplier,
                    cap_offset: c.offset,
                })
            })
            .collect()
    }

    /// MSI-X table size from the MSI-X capability, if present.
    pub fn msix_table_size(&self) -> Option<u16> {
        self.capabilities()
            .into_iter()
            .find(|c| c.id == cfg::CAP_ID_MSIX)
            .map(|c| (self.u16_at(c.offset as usize + 2) & 0x7ff) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_walk_is_bounded_on_a_loop() {
        let mut b = vec![0u8; 256];
        b[6] = cfg::STATUS_CAP_LIST as u8;
        b[0x34] = 0x40;
        b[0x40] = 0x09;
        b[0x41] = 0x40; // points to itself
        let s = ConfigSnapshot::from_bytes(b);
        assert_eq!(s.capabilities().len(), 48);
    }

    #[test]
    fn short_snapshot_has_no_capabilities() {
        let mut b = vec![0u8; 64];
        b[6] = cfg::STATUS_CAP_LIST as u8;
        b[0x34] = 0x40;
        let s = ConfigSnapshot::from_bytes(b);
        assert!(s.capabilities().is_empty());
        assert!(!s.is_complete());
    }
}
