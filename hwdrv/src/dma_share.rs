//! Sharing DMA mappings between the functions of one VM's container.
//!
//! Two NICs of the same VM map the same guest memory at the same IOVAs, so a mapping
//! is made once and reference counted. But "same IOVA range" is not "same memory":
//! two devices configured with the same `vm` may be served to different frontends,
//! and letting the second one reuse the first one's mapping would let its NIC DMA into
//! the other frontend's memory. A mapping is shared only when the memory behind it is
//! the same — the same file (device and inode) at the same offset, or for anonymous
//! memory the same host address; otherwise the second mapping is refused, naming both
//! devices.
//!
//! Memory this process maps privately from a file cannot be pinned for DMA without
//! being copied; [`SharedView`] maps the same piece of the file shared and read-only
//! for the device instead.

use std::collections::BTreeMap;
use std::io;

/// What memory a host address range shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backing {
    /// `major:minor` of the backing file's device ("00:00" for anonymous memory).
    pub dev: String,
    /// The backing file's inode (0 for anonymous memory).
    pub ino: u64,
    /// Offset of the start in the file (for anonymous memory: the host address).
    pub offset: u64,
    /// A private (copy-on-write) mapping, `p` in `/proc/self/maps`.
    pub private: bool,
    /// The mapping is writable by this process, `w` in `/proc/self/maps`.
    pub writable: bool,
}

impl Backing {
    /// A private mapping of a file: this process sees the file's pages only until a
    /// page is written, which replaces it with a private copy. A long-term pin for
    /// DMA makes that copy at once, read-only pins included (Linux >= 6.2 breaks COW
    /// early so that the device and the process see the same page), so the device
    /// would see a snapshot of the file, not the file. Such memory is DMA-mapped
    /// through a [`SharedView`] instead.
    pub fn is_private_file(&self) -> bool {
        self.private && self.ino != 0
    }
}

impl std::fmt::Display for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ino == 0 {
            write!(f, "anonymous memory at {:#x}", self.offset)
        } else {
            write!(
                f,
                "file {} inode {} offset {:#x}",
                self.dev, self.ino, self.offset
            )
        }
    }
}

/// The memory behind host address `host`, from `/proc/self/maps`.
pub fn backing_of(host: *const u8) -> io::Result<Backing> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let addr = host as u64;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(off), Some(dev), Some(ino)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let hex = |s: &str| u64::from_str_radix(s, 16).map_err(io::Error::other);
        let (start, end) = (hex(start)?, hex(end)?);
        if addr < start || addr >= end {
            continue;
        }
        let ino: u64 = ino.parse().map_err(io::Error::other)?;
        let private = perms.ends_with('p');
        let writable = perms.as_bytes().get(1) == Some(&b'w');
        return Ok(if ino == 0 {
            Backing {
                dev: dev.to_owned(),
                ino: 0,
                offset: addr,
                private,
                writable,
            }
        } else {
            Backing {
                dev: dev.to_owned(),
                ino,
                offset: hex(off)? + (addr - start),
                private,
                writable,
            }
        });
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("host address {addr:#x} is not mapped"),
    ))
}

/// A shared, read-only mapping of a piece of a file: what a device may DMA from when
/// the process itself maps that piece privately (a VDUSE IOTLB entry the device may
/// only read, mapped copy-on-write so that no software path can change the
/// frontend's memory). Pinned for DMA it shows the file's live pages, never a copy;
/// the device cannot write through it because it is mapped read-only for DMA too.
#[derive(Debug)]
pub struct SharedView {
    base: *mut libc::c_void,
    len: usize,
    /// The address of the piece's first byte.
    host: *mut u8,
}

// SAFETY: the view owns its mapping; the pointers are addresses in it, only handed to
// the IOMMU, never dereferenced here.
unsafe impl Send for SharedView {}

impl SharedView {
    /// Maps `size` bytes of `file` from `offset`, shared and read-only.
    pub fn map(file: &std::fs::File, offset: u64, size: u64) -> io::Result<SharedView> {
        use std::os::fd::AsRawFd;
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as u64;
        let aligned = offset & !(page - 1);
        let lead = (offset - aligned) as usize;
        let len = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_add(lead))
            .filter(|&l| l > lead)
            .ok_or_else(|| io::Error::other(format!("cannot map {size:#x} bytes")))?;
        let off = libc::off_t::try_from(aligned).map_err(io::Error::other)?;
        // SAFETY: a fresh read-only shared mapping of a file the caller owns, at an
        // address the kernel picks; unmapped only by Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `lead < page <= len`: inside the mapping.
        let host = unsafe { base.cast::<u8>().add(lead) };
        Ok(SharedView { base, len, host })
    }

    /// The address of the piece's first byte in this process.
    pub fn host_addr(&self) -> *mut u8 {
        self.host
    }
}

impl Drop for SharedView {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping mmap returned; its users (DMA maps) are gone
        // first, as the owner guarantees.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

#[derive(Debug)]
struct Entry {
    backing: Backing,
    /// The devices holding the mapping, one entry per reference.
    owners: Vec<String>,
}

/// The DMA mappings of one container, by (iova, size).
#[derive(Debug, Default)]
pub struct DmaMaps {
    maps: BTreeMap<(u64, u64), Entry>,
}

impl DmaMaps {
    /// Takes a reference to the mapping of `[iova, iova + size)` for `owner` if one
    /// exists and shows the same memory (`Ok(true)`: nothing to map); `Ok(false)` if
    /// there is none (map it, then [`insert`](Self::insert)); an error naming both
    /// devices if one exists for other memory.
    pub fn share(
        &mut self,
        iova: u64,
        size: u64,
        backing: &Backing,
        owner: &str,
    ) -> io::Result<bool> {
        let Some(e) = self.maps.get_mut(&(iova, size)) else {
            return Ok(false);
        };
        if e.backing != *backing {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{owner}: iova {iova:#x} size {size:#x} is already mapped by {} for other \
                     memory ({} there, {} here): devices sharing a vm must serve the same VM",
                    e.owners.first().map_or("another device", |s| s.as_str()),
                    e.backing,
                    backing
                ),
            ));
        }
        e.owners.push(owner.to_owned());
        Ok(true)
    }

    /// Records a new mapping made for `owner`.
    pub fn insert(&mut self, iova: u64, size: u64, backing: Backing, owner: &str) {
        self.maps.insert(
            (iova, size),
            Entry {
                backing,
                owners: vec![owner.to_owned()],
            },
        );
    }

    /// Drops `owner`'s reference. `Ok(true)` if it was the last one (unmap it, then
    /// [`remove`](Self::remove)).
    pub fn release(&mut self, iova: u64, size: u64, owner: &str) -> io::Result<bool> {
        let Some(e) = self.maps.get_mut(&(iova, size)) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no DMA mapping at iova {iova:#x} size {size:#x}"),
            ));
        };
        if e.owners.len() > 1 {
            let i = e.owners.iter().position(|o| o == owner).unwrap_or(0);
            e.owners.swap_remove(i);
            return Ok(false);
        }
        Ok(true)
    }

    /// Forgets a mapping that was unmapped.
    pub fn remove(&mut self, iova: u64, size: u64) {
        self.maps.remove(&(iova, size));
    }

    /// Bytes mapped.
    pub fn bytes(&self) -> u64 {
        self.maps.keys().map(|(_, s)| s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn memfd(len: u64) -> std::fs::File {
        let name = std::ffi::CString::new("dma-share").unwrap();
        // SAFETY: valid NUL-terminated name; the result is checked and owned at once.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.set_len(len).unwrap();
        f
    }

    fn map(f: &std::fs::File, len: usize, off: i64) -> *mut u8 {
        map_with(f, len, off, libc::MAP_SHARED)
    }

    fn map_with(f: &std::fs::File, len: usize, off: i64, flags: libc::c_int) -> *mut u8 {
        // SAFETY: a fresh mapping of a file we own; checked below. The test leaks it
        // (the process ends soon).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                f.as_raw_fd(),
                off,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p.cast()
    }

    #[test]
    fn a_mapping_is_shared_only_for_the_same_memory() {
        let (vm_a, vm_b) = (memfd(0x4000), memfd(0x4000));
        // Device 1 and device 2 serve VM A: two mappings of the same file.
        let a1 = backing_of(map(&vm_a, 0x2000, 0x1000)).unwrap();
        let a2 = backing_of(map(&vm_a, 0x2000, 0x1000)).unwrap();
        assert_eq!(a1, a2);
        assert_eq!(a1.offset, 0x1000);
        // Device 3 (same `vm` in the config) serves another frontend.
        let b = backing_of(map(&vm_b, 0x2000, 0x1000)).unwrap();
        assert_ne!(a1, b);
        // The same file at another offset is other memory too.
        let a_off = backing_of(map(&vm_a, 0x2000, 0)).unwrap();
        assert_ne!(a1, a_off);

        let mut maps = DmaMaps::default();
        assert!(!maps.share(0, 0x2000, &a1, "0000:01:00.0").unwrap());
        maps.insert(0, 0x2000, a1, "0000:01:00.0");
        assert!(maps.share(0, 0x2000, &a2, "0000:01:00.1").unwrap());
        let e = maps.share(0, 0x2000, &b, "0000:02:00.0").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("0000:02:00.0") && msg.contains("0000:01:00.0"),
            "{msg}"
        );
        assert!(maps.share(0, 0x2000, &a_off, "0000:02:00.0").is_err());
        assert_eq!(maps.bytes(), 0x2000);
        assert!(!maps.release(0, 0x2000, "0000:01:00.1").unwrap());
        assert!(maps.release(0, 0x2000, "0000:01:00.0").unwrap());
        maps.remove(0, 0x2000);
        assert_eq!(maps.bytes(), 0);
    }

    #[test]
    fn private_file_mappings_are_told_apart() {
        let f = memfd(0x4000);
        let shared = backing_of(map(&f, 0x2000, 0)).unwrap();
        assert!(!shared.private && !shared.is_private_file());
        // A VDUSE IOTLB entry the device may only read is mapped like this.
        let private = backing_of(map_with(&f, 0x2000, 0, libc::MAP_PRIVATE)).unwrap();
        assert!(private.is_private_file(), "{private:?}");
        // Same file and offset, but not the same memory once written: never shared.
        assert_ne!(shared, private);
        // SAFETY: a fresh private anonymous mapping; checked below, leaked.
        let anon = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                0x1000,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(anon, libc::MAP_FAILED);
        let anon = backing_of(anon.cast()).unwrap();
        assert!(anon.private && !anon.is_private_file(), "{anon:?}");
        assert!(shared.writable && private.writable && anon.writable);
    }

    #[test]
    fn a_shared_view_shows_the_file_live_and_read_only() {
        let f = memfd(0x4000);
        let writer = map(&f, 0x4000, 0);
        let view = SharedView::map(&f, 0x1800, 0x2000).unwrap();
        let b = backing_of(view.host_addr()).unwrap();
        assert!(!b.private && !b.writable && !b.is_private_file(), "{b:?}");
        assert_eq!(b.offset, 0x1800);
        for (i, v) in [(0x1800, 7u8), (0x37ff, 9)] {
            // SAFETY: both addresses are inside the memfd mappings made above.
            unsafe {
                writer.add(i).write_volatile(v);
                assert_eq!(view.host_addr().add(i - 0x1800).read_volatile(), v);
            }
        }
        assert!(SharedView::map(&f, 0, 0).is_err());
    }
}
