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
        let (Some(range), Some(_perms), Some(off), Some(dev), Some(ino)) =
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
        return Ok(if ino == 0 {
            Backing {
                dev: dev.to_owned(),
                ino: 0,
                offset: addr,
            }
        } else {
            Backing {
                dev: dev.to_owned(),
                ino,
                offset: hex(off)? + (addr - start),
            }
        });
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("host address {addr:#x} is not mapped"),
    ))
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
        // SAFETY: a fresh shared mapping of a file we own; checked below. The test
        // leaks it (the process ends soon).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
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
}
