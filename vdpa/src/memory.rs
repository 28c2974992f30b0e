//! Guest memory as the frontend shares it: file-backed regions mapped into this
//! process, with guest-physical and frontend-virtual address translation.
//!
//! A [`GuestMemory`] is immutable. A memory-table change builds a new one (sharing the
//! regions that did not change) and the control plane swaps it in after quiescing the
//! datapath, so a worker never sees regions disappear under it: it holds an `Arc` to
//! the table it started with.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use thiserror::Error;

use crate::fault::{self, Registration};

mod translator;
pub use translator::Translator;

/// Why a memory region could not be used.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The region's size, addresses or offset are zero or overflow.
    #[error(
        "invalid region: gpa {gpa:#x} size {size:#x} user_addr {user_addr:#x} offset {offset:#x}"
    )]
    InvalidRegion {
        /// Guest-physical start.
        gpa: u64,
        /// Length in bytes.
        size: u64,
        /// Frontend virtual address.
        user_addr: u64,
        /// Offset into the file.
        offset: u64,
    },
    /// The backing file is not a regular file or is smaller than the region.
    #[error("region gpa {gpa:#x} needs {needed:#x} bytes of its file, which has {actual:#x}")]
    FileTooSmall {
        /// Guest-physical start.
        gpa: u64,
        /// Bytes needed (offset + size).
        needed: u64,
        /// Bytes the file has (0 if not a regular file).
        actual: u64,
    },
    /// fstat or mmap failed.
    #[error("mapping region gpa {gpa:#x} failed")]
    Map {
        /// Guest-physical start.
        gpa: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The region overlaps an existing one in guest-physical or frontend-virtual space.
    #[error("region gpa {gpa:#x} size {size:#x} overlaps an existing region")]
    Overlap {
        /// Guest-physical start.
        gpa: u64,
        /// Length in bytes.
        size: u64,
    },
    /// A removal named a region that is not in the table.
    #[error("no region at gpa {gpa:#x} size {size:#x} to remove")]
    NoSuchRegion {
        /// Guest-physical start.
        gpa: u64,
        /// Length in bytes.
        size: u64,
    },
    /// More regions than the table may hold.
    #[error("too many memory regions (at most {max})")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// The table would map more guest memory than the device may (`max_guest_memory`).
    #[error(
        "guest memory of {total:#x} bytes exceeds this device's limit of {limit:#x} bytes \
         (max_guest_memory)"
    )]
    TooLarge {
        /// Bytes the table would map with the new region.
        total: u64,
        /// The device's limit.
        limit: u64,
    },
}

/// A fault on guest memory that was contained (see [`crate::fault`]): the frontend
/// took the memory away (truncated its file). The region now reads as zeroes; the
/// device that owns it must stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryFault {
    /// Guest-physical address of the region that faulted.
    pub region_gpa: u64,
    /// Guest-physical address whose access faulted (for a fault in the page-alignment
    /// lead of the mapping: the region start).
    pub gpa: u64,
}

impl std::fmt::Display for MemoryFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "guest memory at gpa {:#x} (region {:#x}) faulted: the frontend took it away",
            self.gpa, self.region_gpa
        )
    }
}

/// Most regions one memory table may hold (answered to GET_MAX_MEM_SLOTS).
pub const MAX_REGIONS: usize = 64;

/// One mapped region of guest memory.
#[derive(Debug)]
pub struct MemoryRegion {
    gpa: u64,
    size: u64,
    user_addr: u64,
    mmap_offset: u64,
    /// Host address of guest-physical `gpa`.
    host: *mut u8,
    map_base: *mut libc::c_void,
    map_len: usize,
    /// The mapping's place in the SIGBUS containment registry (dropped before unmapping).
    registration: Option<Registration>,
    /// The backing file (`None` for [`MemoryRegion::anonymous`]).
    file: Option<File>,
}

// SAFETY: the region owns its mapping; the raw pointers are only addresses into that
// shared mapping, which stays valid until Drop, and every access through them is done
// by code that already treats the memory as shared with a concurrently running guest.
unsafe impl Send for MemoryRegion {}
// SAFETY: see Send; the struct itself is never mutated after construction.
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    /// Maps `size` bytes of `file` at `mmap_offset`, to serve guest-physical
    /// `[gpa, gpa + size)`, known to the frontend at virtual address `user_addr`.
    pub fn map(
        gpa: u64,
        size: u64,
        user_addr: u64,
        mmap_offset: u64,
        file: File,
    ) -> Result<Self, MemoryError> {
        let invalid = || MemoryError::InvalidRegion {
            gpa,
            size,
            user_addr,
            offset: mmap_offset,
        };
        let end_in_file = mmap_offset.checked_add(size).ok_or_else(invalid)?;
        if size == 0
            || gpa.checked_add(size).is_none()
            || user_addr.checked_add(size).is_none()
            || usize::try_from(end_in_file).is_err()
        {
            return Err(invalid());
        }
        // Touching a mapping beyond the end of its file raises SIGBUS: refuse regions
        // that the file cannot back, and anything that is not a regular file.
        let meta = file
            .metadata()
            .map_err(|source| MemoryError::Map { gpa, source })?;
        let actual = if meta.file_type().is_file() {
            meta.len()
        } else {
            0
        };
        if actual < end_in_file {
            return Err(MemoryError::FileTooSmall {
                gpa,
                needed: end_in_file,
                actual,
            });
        }
        seal_against_shrinking(&file, gpa);
        Self::map_file(gpa, size, user_addr, mmap_offset, file, libc::MAP_SHARED)
    }

    /// Maps one VDUSE IOTLB entry: `size` bytes of `file` at `offset` serve IOVAs
    /// `[iova, iova + size)`. The kernel vouches for the entry, and its file may be the
    /// VDUSE bounce domain (an anonymous inode of size 0, whose pages appear as the
    /// driver maps buffers), so the size check of [`map`](Self::map) does not apply.
    /// An entry the device may only read is mapped copy-on-write: a hostile driver
    /// that makes the device write there changes a private copy, never its memory.
    pub fn map_iotlb(
        iova: u64,
        size: u64,
        offset: u64,
        file: File,
        device_writable: bool,
    ) -> Result<Self, MemoryError> {
        if size == 0
            || iova.checked_add(size).is_none()
            || offset.checked_add(size).is_none()
            || usize::try_from(size).is_err()
        {
            return Err(MemoryError::InvalidRegion {
                gpa: iova,
                size,
                user_addr: iova,
                offset,
            });
        }
        let flags = if device_writable {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        Self::map_file(iova, size, iova, offset, file, flags)
    }

    /// Maps `size` bytes of `file` from `mmap_offset`, readable and writable, with the
    /// mmap `flags` given; the arguments were checked by the caller.
    fn map_file(
        gpa: u64,
        size: u64,
        user_addr: u64,
        mmap_offset: u64,
        file: File,
        flags: libc::c_int,
    ) -> Result<Self, MemoryError> {
        let page = page_size();
        let aligned_offset = mmap_offset & !(page - 1);
        let lead = (mmap_offset - aligned_offset) as usize;
        let map_len = lead + size as usize;
        // SAFETY: a fresh mapping of a file we own, at an address the kernel picks;
        // the offset is page aligned and the caller checked the length.
        let map_base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                file.as_raw_fd(),
                aligned_offset as libc::off_t,
            )
        };
        if map_base == libc::MAP_FAILED {
            return Err(MemoryError::Map {
                gpa,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `lead < page <= map_len`, so the result stays inside the mapping.
        let host = unsafe { (map_base as *mut u8).add(lead) };
        let registration = Registration::new(map_base.cast(), map_len);
        Ok(MemoryRegion {
            gpa,
            size,
            user_addr,
            mmap_offset,
            host,
            map_base,
            map_len,
            registration,
            file: Some(file),
        })
    }

    /// A region of fresh, zeroed, private anonymous memory instead of a frontend's
    /// file, for tests: no guest can see it, but tables and rings built on it behave
    /// as on shared memory. Unlike memfds, such mappings also exist under Miri, so the
    /// translation and ring code can be checked there.
    #[doc(hidden)]
    pub fn anonymous(gpa: u64, size: u64, user_addr: u64) -> Result<Self, MemoryError> {
        let invalid = || MemoryError::InvalidRegion {
            gpa,
            size,
            user_addr,
            offset: 0,
        };
        if size == 0 || gpa.checked_add(size).is_none() || user_addr.checked_add(size).is_none() {
            return Err(invalid());
        }
        let map_len = usize::try_from(size).map_err(|_| invalid())?;
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks.
        let map_base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map_base == libc::MAP_FAILED {
            return Err(MemoryError::Map {
                gpa,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(MemoryRegion {
            gpa,
            size,
            user_addr,
            mmap_offset: 0,
            host: map_base.cast(),
            map_base,
            map_len,
            // Test memory nobody can truncate: no SIGBUS containment needed (and Miri,
            // which runs these tests, has no signal handlers).
            registration: None,
            file: None,
        })
    }

    /// Guest-physical start address.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// Length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The frontend's virtual address of the region start.
    pub fn user_addr(&self) -> u64 {
        self.user_addr
    }

    /// Offset of the region in its file.
    pub fn mmap_offset(&self) -> u64 {
        self.mmap_offset
    }

    /// Host address of the region start in this process (for DMA mapping).
    pub fn host_addr(&self) -> *mut u8 {
        self.host
    }

    /// The backing file (to tell whether two regions map the same memory); `None`
    /// for anonymous test memory.
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// The contained fault on this region, if its memory was taken away.
    pub fn fault(&self) -> Option<MemoryFault> {
        let at = self.registration.as_ref()?.fault()?;
        let off = (at as u64).saturating_sub(self.host as u64);
        Some(MemoryFault {
            region_gpa: self.gpa,
            gpa: self.gpa + off.min(self.size - 1),
        })
    }

    /// Whether `[gpa, gpa + len)` lies in this region. The start must be inside the
    /// region even for an empty range, as [`Translator`]'s cache
    /// check has it: an empty range at the end of one region belongs to the region
    /// that starts there, so the cached and the searched translation always agree.
    fn contains_gpa(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.gpa && gpa - self.gpa < self.size && len <= self.size - (gpa - self.gpa)
    }

    fn same_placement(&self, gpa: u64, size: u64, user_addr: u64) -> bool {
        self.gpa == gpa && self.size == size && self.user_addr == user_addr
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // Leave the fault registry first: the SIGBUS handler must never replace a
        // range that is no longer ours.
        self.registration.take();
        // SAFETY: `map_base`/`map_len` are exactly what mmap returned; nothing borrows
        // the mapping any more because every user holds an Arc to this region.
        unsafe {
            libc::munmap(self.map_base, self.map_len);
        }
    }
}

/// Whether a frontend can no longer shrink `file` under our mapping: a memfd sealed
/// with F_SEAL_SHRINK (QEMU's memfd backend seals by default). If it is not sealed we
/// try to add the seal; where that is refused (hugetlbfs, or sealing not allowed) a
/// frontend that truncated its own memory makes our next access fault; that fault is
/// contained ([`crate::fault`]) and stops only this device. Logged once per region.
fn seal_against_shrinking(file: &File, gpa: u64) -> bool {
    let fd = file.as_raw_fd();
    // SAFETY: F_GET_SEALS/F_ADD_SEALS take an int argument and only read the fd.
    let sealed = unsafe {
        let seals = libc::fcntl(fd, libc::F_GET_SEALS);
        (seals >= 0 && seals & libc::F_SEAL_SHRINK != 0)
            || libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) == 0
    };
    if !sealed {
        tracing::warn!(
            gpa = format_args!("{gpa:#x}"),
            "guest memory region is not sealed against shrinking: a frontend that truncates \
             it stops its device when it does (use memory-backend-memfd with seal=on)"
        );
    }
    sealed
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

fn ranges_overlap(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

/// An immutable table of guest memory regions.
#[derive(Clone, Debug)]
pub struct GuestMemory {
    regions: Vec<Arc<MemoryRegion>>,
    /// Most bytes the table may map (the device's `max_guest_memory`).
    limit: u64,
}

impl Default for GuestMemory {
    fn default() -> Self {
        GuestMemory {
            regions: Vec::new(),
            limit: u64::MAX,
        }
    }
}

impl GuestMemory {
    /// A table with no memory and no limit on how much it may map.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A table with no memory that refuses to grow beyond `limit` bytes (the device's
    /// `max_guest_memory`); tables derived from it keep the limit.
    pub fn empty_with_limit(limit: u64) -> Self {
        GuestMemory {
            regions: Vec::new(),
            limit,
        }
    }

    /// A table holding exactly `regions` (SET_MEM_TABLE), without a size limit.
    pub fn from_regions(regions: Vec<MemoryRegion>) -> Result<Self, MemoryError> {
        Self::from_regions_with_limit(regions, u64::MAX)
    }

    /// A table holding exactly `regions` (SET_MEM_TABLE); refused with
    /// [`MemoryError::TooLarge`] if they add up to more than `limit` bytes.
    pub fn from_regions_with_limit(
        regions: Vec<MemoryRegion>,
        limit: u64,
    ) -> Result<Self, MemoryError> {
        let mut mem = Self::empty_with_limit(limit);
        for r in regions {
            mem = mem.with_region(r)?;
        }
        Ok(mem)
    }

    /// Most bytes this table may map.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The first contained fault on this table's memory (the frontend took memory away
    /// under us), if any. Cheap enough for once per burst: one load of a process-wide
    /// counter while no fault happened anywhere.
    #[inline]
    pub fn fault(&self) -> Option<MemoryFault> {
        if fault::contained() == 0 {
            return None;
        }
        self.regions.iter().find_map(|r| r.fault())
    }

    /// This table plus `region` (ADD_MEM_REG). A region identical in placement to one
    /// already present is accepted as a no-op (multiqueue frontends repeat it).
    pub fn with_region(&self, region: MemoryRegion) -> Result<Self, MemoryError> {
        if self
            .regions
            .iter()
            .any(|r| r.same_placement(region.gpa, region.size, region.user_addr))
        {
            return Ok(self.clone());
        }
        if self.regions.len() >= MAX_REGIONS {
            return Err(MemoryError::TooMany { max: MAX_REGIONS });
        }
        let clash = self.regions.iter().any(|r| {
            ranges_overlap(r.gpa, r.size, region.gpa, region.size)
                || ranges_overlap(r.user_addr, r.size, region.user_addr, region.size)
        });
        if clash {
            return Err(MemoryError::Overlap {
                gpa: region.gpa,
                size: region.size,
            });
        }
        let total = self.total_size().saturating_add(region.size);
        if total > self.limit {
            return Err(MemoryError::TooLarge {
                total,
                limit: self.limit,
            });
        }
        let mut regions = self.regions.clone();
        regions.push(Arc::new(region));
        regions.sort_by_key(|r| r.gpa);
        Ok(GuestMemory {
            regions,
            limit: self.limit,
        })
    }

    /// This table without the region at `gpa`/`size`/`user_addr` (REM_MEM_REG).
    pub fn without_region(&self, gpa: u64, size: u64, user_addr: u64) -> Result<Self, MemoryError> {
        let before = self.regions.len();
        let regions: Vec<_> = self
            .regions
            .iter()
            .filter(|r| !r.same_placement(gpa, size, user_addr))
            .cloned()
            .collect();
        if regions.len() == before {
            return Err(MemoryError::NoSuchRegion { gpa, size });
        }
        Ok(GuestMemory {
            regions,
            limit: self.limit,
        })
    }

    /// The regions, sorted by guest-physical address.
    pub fn regions(&self) -> &[Arc<MemoryRegion>] {
        &self.regions
    }

    /// Whether the table has no memory.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Host pointer for guest-physical `[gpa, gpa + len)`, which must lie within one
    /// region. `None` for any range that is not entirely guest memory. The pointer is
    /// valid while this table (or a [`Translator`] over it) lives; hot paths translate
    /// through a [`Translator`], which caches the last region.
    pub fn translate(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let r = self.regions.iter().find(|r| r.contains_gpa(gpa, len))?;
        // SAFETY: contains_gpa proved `gpa - r.gpa + len <= r.size`.
        Some(unsafe { r.host.add((gpa - r.gpa) as usize) })
    }

    /// Guest-physical address of frontend virtual address `va`, if `[va, va + len)`
    /// lies in one region. Ring addresses in SET_VRING_ADDR are frontend VAs.
    pub fn va_to_gpa(&self, va: u64, len: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let off = va.checked_sub(r.user_addr)?;
            // `then`, not `then_some`: the sum must only be formed once the offset is
            // known to be inside the region (where it cannot overflow). The start lies
            // inside the region even for an empty range, as for `translate`.
            (off < r.size && len <= r.size - off).then(|| r.gpa + off)
        })
    }

    /// Total bytes of guest memory mapped.
    pub fn total_size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }
}

#[cfg(test)]
mod tests;
