//! Guest memory: a memfd mapped `MAP_SHARED` at a guest-physical base, split into one or
//! two regions, plus a bump allocator that carves rings and buffers out of it.
//!
//! The rig plays QEMU: our own virtual address of each region is the `user_addr` the
//! backend sees in SET_MEM_TABLE, and ring addresses in SET_VRING_ADDR are our VAs.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::NonNull;

use vhost::VhostUserMemoryRegionInfo;

/// Page granularity of region sizes (2 MiB, so a backend may also back it with huge pages).
const REGION_ALIGN: u64 = 2 << 20;

/// Errors of guest memory creation and access.
#[derive(Debug, thiserror::Error)]
pub enum RigMemoryError {
    /// `memfd_create` or `ftruncate` failed.
    #[error("cannot create the guest memory memfd")]
    Memfd(#[source] io::Error),
    /// `mmap` failed.
    #[error("cannot mmap guest memory region {region}")]
    Mmap {
        /// Region index.
        region: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The options describe an impossible layout.
    #[error("invalid guest memory layout: {0}")]
    Layout(String),
    /// A guest-physical range is not inside one region.
    #[error("guest range {gpa:#x}+{len:#x} is not inside guest memory")]
    OutOfRange {
        /// Start of the range.
        gpa: u64,
        /// Length of the range.
        len: u64,
    },
    /// The allocator ran out of space.
    #[error("guest memory exhausted: cannot allocate {len:#x} bytes (size the memory larger)")]
    Exhausted {
        /// Requested length.
        len: u64,
    },
}

/// How to lay out guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Guest-physical address of the first region (default 0x100000 so GPA 0 is invalid).
    pub base_gpa: u64,
    /// Total size in bytes (rounded up to 2 MiB per region).
    pub size: u64,
    /// Number of regions: 1, or 2 to exercise multi-region translation in the backend.
    pub regions: usize,
    /// Guest-physical hole between region 0 and region 1 (so GPAs are not contiguous).
    pub gap: u64,
}

impl Default for MemoryLayout {
    fn default() -> Self {
        Self {
            base_gpa: 0x10_0000,
            size: 16 << 20,
            regions: 1,
            gap: 1 << 20,
        }
    }
}

/// One mapped region of guest memory.
#[derive(Debug)]
pub struct Region {
    gpa: u64,
    len: u64,
    host: NonNull<u8>,
    file_offset: u64,
}

impl Region {
    /// Guest-physical start address.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// True if the region is empty (never, for a mapped region).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Our virtual address of the region start (the vhost-user `user_addr`).
    pub fn user_addr(&self) -> u64 {
        self.host.as_ptr() as u64
    }
    /// Offset of the region within the memfd (the vhost-user `mmap_offset`).
    pub fn file_offset(&self) -> u64 {
        self.file_offset
    }
    fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.gpa && len <= self.len && gpa - self.gpa <= self.len - len
    }
}

/// memfd-backed guest memory shared with the backend.
#[derive(Debug)]
pub struct RigMemory {
    memfd: File,
    regions: Vec<Region>,
}

// SAFETY: the raw pointers in `regions` point to MAP_SHARED mappings owned by this value
// and unmapped only in `Drop`; every access goes through bounds-checked methods, and the
// memory is by design shared with another process, so moving the owner between threads
// or sharing it adds no hazard that the virtio ownership protocol does not already govern.
unsafe impl Send for RigMemory {}
// SAFETY: see `Send`: `&RigMemory` only offers bounds-checked copies into and out of the
// shared mapping; which side owns which bytes at which time is the virtio ring protocol.
unsafe impl Sync for RigMemory {}

impl RigMemory {
    /// Creates the memfd, sizes it and maps each region `MAP_SHARED`.
    pub fn new(layout: &MemoryLayout) -> Result<Self, RigMemoryError> {
        if layout.regions == 0 || layout.regions > 2 {
            return Err(RigMemoryError::Layout(format!(
                "{} regions requested; 1 or 2 are supported",
                layout.regions
            )));
        }
        if layout.base_gpa == 0 || !layout.base_gpa.is_multiple_of(4096) {
            return Err(RigMemoryError::Layout(format!(
                "base GPA {:#x} must be nonzero and page aligned",
                layout.base_gpa
            )));
        }
        let per_region = layout
            .size
            .div_ceil(layout.regions as u64)
            .div_ceil(REGION_ALIGN)
            .max(1)
            * REGION_ALIGN;
        let total = per_region * layout.regions as u64;
        let gap = layout.gap.div_ceil(4096) * 4096;

        // SAFETY: memfd_create takes a NUL-terminated name, which the literal is.
        let fd = unsafe { libc::memfd_create(c"vdpa-rig-guest".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(RigMemoryError::Memfd(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let memfd = unsafe { File::from_raw_fd(fd) };
        memfd.set_len(total).map_err(RigMemoryError::Memfd)?;

        let mut mem = Self {
            memfd,
            regions: Vec::with_capacity(layout.regions),
        };
        let mut gpa = layout.base_gpa;
        for i in 0..layout.regions {
            let file_offset = per_region * i as u64;
            // SAFETY: a fresh shared mapping of `per_region` bytes of our memfd at a page
            // aligned offset inside its size; the kernel picks the address (no MAP_FIXED),
            // so no existing mapping is replaced.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    per_region as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    mem.memfd.as_raw_fd(),
                    file_offset as libc::off_t,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(RigMemoryError::Mmap {
                    region: i,
                    source: io::Error::last_os_error(),
                });
            }
            let host = NonNull::new(ptr.cast::<u8>()).ok_or(RigMemoryError::Mmap {
                region: i,
                source: io::Error::other("mmap returned NULL"),
            })?;
            mem.regions.push(Region {
                gpa,
                len: per_region,
                host,
                file_offset,
            });
            gpa += per_region + gap;
        }
        Ok(mem)
    }

    /// The memfd backing every region (sent to the backend with SET_MEM_TABLE).
    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    /// The mapped regions, in guest-physical order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The regions as vhost-user memory region descriptions (fd = our memfd).
    pub fn region_infos(&self) -> Vec<VhostUserMemoryRegionInfo> {
        self.regions
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.gpa,
                memory_size: r.len,
                userspace_addr: r.user_addr(),
                mmap_offset: r.file_offset,
                mmap_handle: self.memfd.as_raw_fd(),
            })
            .collect()
    }

    fn region_of(&self, gpa: u64, len: u64) -> Result<&Region, RigMemoryError> {
        self.regions
            .iter()
            .find(|r| r.contains(gpa, len))
            .ok_or(RigMemoryError::OutOfRange { gpa, len })
    }

    /// Host pointer to `len` bytes at `gpa`, checked to lie inside a single region.
    pub fn host_ptr(&self, gpa: u64, len: u64) -> Result<*mut u8, RigMemoryError> {
        let r = self.region_of(gpa, len)?;
        // SAFETY: `contains` checked gpa - r.gpa + len <= r.len, so the offset stays inside
        // the mapping of `r.len` bytes starting at `r.host`.
        Ok(unsafe { r.host.as_ptr().add((gpa - r.gpa) as usize) })
    }

    /// Our virtual address of `gpa` (what QEMU would put in SET_VRING_ADDR).
    pub fn user_addr(&self, gpa: u64) -> Result<u64, RigMemoryError> {
        Ok(self.host_ptr(gpa, 1)? as u64)
    }

    /// Guest-physical address just past the end of region `i`.
    pub fn region_end(&self, i: usize) -> Option<u64> {
        self.regions.get(i).map(|r| r.gpa + r.len)
    }

    /// Copies `data` into guest memory at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), RigMemoryError> {
        let dst = self.host_ptr(gpa, data.len() as u64)?;
        // SAFETY: `dst` is valid for data.len() bytes (checked by host_ptr); `data` is a
        // Rust slice that cannot overlap the mapping's bytes we own by protocol (the driver
        // owns a buffer until it is made available).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// Copies guest memory at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), RigMemoryError> {
        let src = self.host_ptr(gpa, buf.len() as u64)?;
        // SAFETY: `src` is valid for buf.len() bytes (checked by host_ptr); the buffer was
        // returned by the device (used ring, read after an Acquire load), so it no longer
        // writes to it.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Fills `len` bytes at `gpa` with `byte`.
    pub fn fill(&self, gpa: u64, len: u64, byte: u8) -> Result<(), RigMemoryError> {
        let dst = self.host_ptr(gpa, len)?;
        // SAFETY: `dst` is valid for `len` bytes (checked by host_ptr).
        unsafe { std::ptr::write_bytes(dst, byte, len as usize) };
        Ok(())
    }

    /// A bump allocator over this memory (start of every region).
    pub fn allocator(&self) -> Allocator {
        Allocator {
            cursors: self
                .regions
                .iter()
                .map(|r| (r.gpa, r.gpa + r.len))
                .collect(),
        }
    }
}

impl Drop for RigMemory {
    fn drop(&mut self) {
        for r in &self.regions {
            // SAFETY: `r.host`/`r.len` describe a mapping created in `new` and unmapped only
            // here; nothing derived from it outlives `self` (rings hold an Arc to us).
            unsafe { libc::munmap(r.host.as_ptr().cast(), r.len as usize) };
        }
    }
}

/// Bump allocator handing out guest-physical ranges. With two regions every allocation
/// goes to the region with the most space left, so rings and buffers end up in both.
#[derive(Debug, Clone)]
pub struct Allocator {
    cursors: Vec<(u64, u64)>,
}

impl Allocator {
    /// Allocates `len` bytes aligned to `align` (a power of two); returns the GPA.
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<u64, RigMemoryError> {
        debug_assert!(align.is_power_of_two());
        let best = self
            .cursors
            .iter_mut()
            .filter_map(|c| {
                let start = c.0.div_ceil(align) * align;
                (start.checked_add(len)? <= c.1).then_some((c, start))
            })
            .max_by_key(|(c, start)| c.1 - *start);
        match best {
            Some((c, start)) => {
                c.0 = start + len;
                Ok(start)
            }
            None => Err(RigMemoryError::Exhausted { len }),
        }
    }

    /// Bytes still free in the fullest-empty region.
    pub fn largest_free(&self) -> u64 {
        self.cursors.iter().map(|c| c.1 - c.0).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_regions_translate() {
        let mem = RigMemory::new(&MemoryLayout {
            size: 8 << 20,
            regions: 2,
            ..Default::default()
        })
        .unwrap();
        let r = mem.regions();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].gpa(), 0x10_0000);
        assert!(r[1].gpa() > r[0].gpa() + r[0].len());
        assert_eq!(r[1].file_offset(), r[0].len());
        mem.write(r[1].gpa() + 10, b"hello").unwrap();
        let mut b = [0u8; 5];
        mem.read(r[1].gpa() + 10, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        // Straddling the end of region 0 / inside the gap / below base: all rejected.
        assert!(mem.host_ptr(r[0].gpa() + r[0].len() - 2, 4).is_err());
        assert!(mem.host_ptr(r[0].gpa() + r[0].len() + 4096, 1).is_err());
        assert!(mem.host_ptr(0, 1).is_err());
        assert!(mem.host_ptr(u64::MAX - 1, 4).is_err());
        let mut a = mem.allocator();
        let x = a.alloc(100, 4096).unwrap();
        let y = a.alloc(100, 4096).unwrap();
        assert_ne!(
            mem.region_of(x, 1).unwrap().gpa(),
            mem.region_of(y, 1).unwrap().gpa()
        );
    }
}
