//! The raw VFIO calls that `vfio-ioctls` 0.10 does not expose with their errors:
//! VFIO_DEVICE_GET_INFO (reset support), VFIO_DEVICE_GET_REGION_INFO with its
//! capability chain (sparse mmap areas), VFIO_DEVICE_SET_IRQS (so that errno reaches
//! the caller) and VFIO_DEVICE_RESET (so that its result does); plus the
//! RLIMIT_MEMLOCK check for DMA mappings.

use std::io;
use std::os::fd::RawFd;

use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_iommu_type1_dma_map, vfio_irq_set, vfio_region_info,
    VFIO_DMA_MAP_FLAG_READ, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_FLAG_CAPS,
};

use crate::vfio_error::VfioError;

/// Capability number of CAP_IPC_LOCK (linux/capability.h).
const CAP_IPC_LOCK: u32 = 14;

// _IO(VFIO_TYPE = ';', VFIO_BASE + n), VFIO_BASE = 100.
const VFIO_DEVICE_GET_INFO: libc::c_ulong = 0x3b6b;
const VFIO_DEVICE_GET_REGION_INFO: libc::c_ulong = 0x3b6c;
const VFIO_DEVICE_SET_IRQS: libc::c_ulong = 0x3b6e;
const VFIO_DEVICE_RESET: libc::c_ulong = 0x3b6f;
const VFIO_IOMMU_MAP_DMA: libc::c_ulong = 0x3b71;

fn ioctl_err(what: &str) -> io::Error {
    VfioError::Ioctl {
        what: what.into(),
        os: io::Error::last_os_error(),
    }
    .into()
}

/// VFIO_DEVICE_GET_INFO: the device flags (VFIO_DEVICE_FLAGS_RESET, ...).
pub(crate) fn device_flags(fd: RawFd) -> io::Result<u32> {
    let mut info = vfio_device_info {
        argsz: std::mem::size_of::<vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: the ioctl writes at most argsz bytes into `info`, which is that large.
    let rc = unsafe { libc::ioctl(fd, VFIO_DEVICE_GET_INFO as _, &mut info) };
    if rc < 0 {
        return Err(ioctl_err("VFIO_DEVICE_GET_INFO"));
    }
    Ok(info.flags)
}

/// VFIO_DEVICE_RESET, with its result.
pub(crate) fn device_reset(fd: RawFd) -> io::Result<()> {
    // SAFETY: VFIO_DEVICE_RESET takes no argument.
    let rc = unsafe { libc::ioctl(fd, VFIO_DEVICE_RESET as _) };
    if rc < 0 {
        return Err(ioctl_err("VFIO_DEVICE_RESET"));
    }
    Ok(())
}

/// VFIO_IOMMU_MAP_DMA of `size` bytes at `host` to `iova`, readable by the device and
/// not writable (`vfio-ioctls` maps everything read-write, which needs a writable
/// mapping: the pages are pinned for writing).
///
/// # Safety
/// `[host, host + size)` must stay mapped in this process until the range is unmapped
/// from the container.
pub(crate) unsafe fn dma_map_read_only(
    container: RawFd,
    iova: u64,
    size: u64,
    host: *mut u8,
) -> io::Result<()> {
    let map = vfio_iommu_type1_dma_map {
        argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
        flags: VFIO_DMA_MAP_FLAG_READ,
        vaddr: host as u64,
        iova,
        size,
    };
    // SAFETY: the ioctl reads `map`, which is argsz bytes; the memory it describes is
    // kept mapped by the caller's contract.
    let rc = unsafe { libc::ioctl(container, VFIO_IOMMU_MAP_DMA as _, &map) };
    if rc < 0 {
        return Err(ioctl_err(&format!(
            "VFIO_IOMMU_MAP_DMA (read-only) iova {iova:#x} size {size:#x}"
        )));
    }
    Ok(())
}

/// One mmap-able area of a region, relative to the region start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapArea {
    /// Offset in the region.
    pub offset: u64,
    /// Length.
    pub size: u64,
}

/// What VFIO_DEVICE_GET_REGION_INFO says about one region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// VFIO_REGION_INFO_FLAG_*.
    pub flags: u32,
    /// Size of the region.
    pub size: u64,
    /// Offset of the region in the device fd.
    pub offset: u64,
    /// Sparse mmap areas, if the kernel restricts mmap (e.g. around the MSI-X table).
    pub sparse: Option<Vec<MmapArea>>,
    /// The MSI-X table in this region may be mmapped.
    pub msix_mappable: bool,
}

/// VFIO_DEVICE_GET_REGION_INFO for region `index`, including its capability chain.
pub(crate) fn region_info(fd: RawFd, index: u32) -> io::Result<RegionInfo> {
    let base = std::mem::size_of::<vfio_region_info>();
    let mut buf = vec![0u64; 512]; // 4 KiB, 8-byte aligned
    let bytes = buf.len() * 8;
    let head = vfio_region_info {
        argsz: bytes as u32,
        index,
        ..Default::default()
    };
    // SAFETY: `buf` is at least size_of::<vfio_region_info>() bytes and 8-byte aligned.
    unsafe { std::ptr::write(buf.as_mut_ptr() as *mut vfio_region_info, head) };
    // SAFETY: the kernel writes at most argsz (= the buffer size) bytes.
    let rc = unsafe { libc::ioctl(fd, VFIO_DEVICE_GET_REGION_INFO as _, buf.as_mut_ptr()) };
    if rc < 0 {
        return Err(ioctl_err(&format!("VFIO_DEVICE_GET_REGION_INFO({index})")));
    }
    // SAFETY: the buffer starts with a vfio_region_info the kernel filled.
    let info = unsafe { std::ptr::read(buf.as_ptr() as *const vfio_region_info) };
    // SAFETY: reinterpreting the u64 buffer as bytes of the same length.
    let raw = unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, bytes) };
    let mut out = RegionInfo {
        flags: info.flags,
        size: info.size,
        offset: info.offset,
        ..Default::default()
    };
    if info.flags & VFIO_REGION_INFO_FLAG_CAPS != 0 && (info.argsz as usize) <= bytes {
        parse_region_caps(raw, info.cap_offset as usize, base, &mut out);
    }
    Ok(out)
}

fn rd32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn rd64(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Walks a region-info capability chain (`struct vfio_info_cap_header { u16 id;
/// u16 version; u32 next; }`), bounded and tolerant of garbage.
pub(crate) fn parse_region_caps(raw: &[u8], first: usize, min: usize, out: &mut RegionInfo) {
    let mut at = first;
    for _ in 0..16 {
        if at < min || at + 8 > raw.len() {
            return;
        }
        let id = u16::from_le_bytes([raw[at], raw[at + 1]]);
        let next = rd32(raw, at + 4).unwrap_or(0) as usize;
        if u32::from(id) == VFIO_REGION_INFO_CAP_SPARSE_MMAP {
            let n = rd32(raw, at + 8).unwrap_or(0) as usize;
            let mut areas = Vec::new();
            for i in 0..n.min(64) {
                let o = at + 16 + 16 * i;
                if let (Some(offset), Some(size)) = (rd64(raw, o), rd64(raw, o + 8)) {
                    if size > 0 {
                        areas.push(MmapArea { offset, size });
                    }
                }
            }
            out.sparse = Some(areas);
        } else if u32::from(id) == VFIO_REGION_INFO_CAP_MSIX_MAPPABLE {
            out.msix_mappable = true;
        }
        if next == 0 {
            return;
        }
        at = next;
    }
}

/// VFIO_DEVICE_SET_IRQS on the MSI-X index: vectors `0..fds.len()` trigger `fds`;
/// an empty list disables MSI-X.
pub(crate) fn set_msix(fd: RawFd, fds: &[RawFd]) -> io::Result<()> {
    set_msix_from(fd, 0, fds)
}

/// VFIO_DEVICE_SET_IRQS on the MSI-X index: vectors `start..start + fds.len()`
/// trigger `fds`. With MSI-X enabled and those vectors among the ones enabled, the
/// kernel swaps only their eventfds (vfio_msi_set_block); the others keep theirs.
pub(crate) fn set_msix_from(fd: RawFd, start: u32, fds: &[RawFd]) -> io::Result<()> {
    let head = std::mem::size_of::<vfio_irq_set>();
    let len = head + 4 * fds.len();
    let mut buf = vec![0u32; len.div_ceil(4)];
    let set = vfio_irq_set {
        argsz: len as u32,
        flags: if fds.is_empty() {
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER
        } else {
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER
        },
        index: VFIO_PCI_MSIX_IRQ_INDEX,
        start,
        count: fds.len() as u32,
        data: Default::default(),
    };
    // SAFETY: `buf` holds at least `head` bytes, 4-byte aligned like vfio_irq_set.
    unsafe { std::ptr::write(buf.as_mut_ptr() as *mut vfio_irq_set, set) };
    for (i, f) in fds.iter().enumerate() {
        buf[head / 4 + i] = *f as u32;
    }
    // SAFETY: the kernel reads argsz bytes from the buffer, which is that long.
    let rc = unsafe { libc::ioctl(fd, VFIO_DEVICE_SET_IRQS as _, buf.as_ptr()) };
    if rc < 0 {
        return Err(ioctl_err(&format!(
            "VFIO_DEVICE_SET_IRQS(MSI-X, {} vectors from {start})",
            fds.len()
        )));
    }
    Ok(())
}

/// Whether the process has CAP_IPC_LOCK (then RLIMIT_MEMLOCK does not apply).
pub(crate) fn has_cap_ipc_lock() -> bool {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// The soft RLIMIT_MEMLOCK in bytes (`None` = unlimited).
pub(crate) fn memlock_limit() -> io::Result<Option<u64>> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur))
}

/// The memlock verdict: VFIO type1 pins every mapped byte and counts it against
/// RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK.
pub(crate) fn memlock_verdict(
    limit: Option<u64>,
    cap_ipc_lock: bool,
    pinned: u64,
    more: u64,
) -> Result<(), VfioError> {
    let Some(limit) = limit else {
        return Ok(());
    };
    let needed = pinned.saturating_add(more);
    if cap_ipc_lock || needed <= limit {
        return Ok(());
    }
    Err(VfioError::Memlock {
        limit,
        pinned,
        more,
    })
}

/// Checks that `more` bytes can be pinned on top of `pinned`.
pub(crate) fn check_memlock(pinned: u64, more: u64) -> io::Result<()> {
    Ok(memlock_verdict(
        memlock_limit()?,
        has_cap_ipc_lock(),
        pinned,
        more,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_message_names_the_amounts() {
        assert!(memlock_verdict(None, false, 0, u64::MAX).is_ok());
        assert!(memlock_verdict(Some(1 << 20), true, 0, 1 << 30).is_ok());
        assert!(memlock_verdict(Some(4 << 20), false, 2 << 20, 2 << 20).is_ok());
        let e = memlock_verdict(Some(1 << 20), false, 0, 2 << 20)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("needs 2097152 bytes") && e.contains("CAP_IPC_LOCK"),
            "{e}"
        );
    }

    #[test]
    fn sparse_mmap_capability_is_parsed() {
        // vfio_region_info (32 bytes) then a SPARSE_MMAP cap at 32 with two areas,
        // chained to an MSIX_MAPPABLE cap.
        let mut raw = vec![0u8; 128];
        raw[32..34].copy_from_slice(&1u16.to_le_bytes());
        raw[36..40].copy_from_slice(&80u32.to_le_bytes());
        raw[40..44].copy_from_slice(&2u32.to_le_bytes());
        raw[48..56].copy_from_slice(&0u64.to_le_bytes());
        raw[56..64].copy_from_slice(&0x2000u64.to_le_bytes());
        raw[64..72].copy_from_slice(&0x3000u64.to_le_bytes());
        raw[72..80].copy_from_slice(&0x1000u64.to_le_bytes());
        raw[80..82].copy_from_slice(&3u16.to_le_bytes());
        let mut out = RegionInfo::default();
        parse_region_caps(&raw, 32, 32, &mut out);
        assert_eq!(
            out.sparse,
            Some(vec![
                MmapArea {
                    offset: 0,
                    size: 0x2000
                },
                MmapArea {
                    offset: 0x3000,
                    size: 0x1000
                }
            ])
        );
        assert!(out.msix_mappable);
        // A chain pointing backwards into the header or looping stays bounded.
        raw[84..88].copy_from_slice(&80u32.to_le_bytes());
        parse_region_caps(&raw, 32, 32, &mut RegionInfo::default());
    }
}
