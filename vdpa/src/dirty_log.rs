//! The dirty log of a live migration: a bitmap the frontend shares (vhost-user
//! SET_LOG_BASE with the LOG_SHMFD protocol feature) in which the device sets one bit
//! per 4 KiB page of guest-physical memory it wrote to, so that the frontend copies
//! those pages again.
//!
//! Format (vhost-user spec, "Migration"; QEMU `vhost_dev_sync_region`): bit
//! `page % 8` of byte `page / 8`, with `page = gpa / 4096`. QEMU harvests the log by
//! atomically exchanging 64-bit words with zero, so every bit is set with an atomic
//! `fetch_or`, and only after the data it stands for was written (a release fence
//! first): a harvest that clears a bit is then always followed by a copy of the page
//! that includes the write, or by the bit being set again.
//!
//! Marks beyond the end of the log (the frontend's log does not cover a guest address
//! the device wrote to) are counted, never written.

use std::fs::File;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, Ordering};

use thiserror::Error;
use tracing::warn;

use crate::memory::{GuestMemory, MemoryError, MemoryRegion};

/// Bytes of guest memory one bit of the log stands for (`VHOST_LOG_PAGE`).
pub const LOG_PAGE: u64 = 0x1000;

/// Environment variable of the migration tests' control run: when it is `1`, the
/// daemon accepts a dirty log and VHOST_F_LOG_ALL as usual but marks nothing, so that a
/// migration copies stale guest pages. Never set it outside that test.
pub const TEST_UNMARKED_ENV: &str = "VDPAD_TEST_UNMARKED_MIGRATION";

/// Whether [`TEST_UNMARKED_ENV`] disables marking in this process (read once; says so
/// in the log, loudly, the first time it does).
pub fn marking_disabled_for_a_test() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| {
        let off = std::env::var(TEST_UNMARKED_ENV).is_ok_and(|v| v == "1");
        if off {
            tracing::error!(
                "{TEST_UNMARKED_ENV}=1: dirty pages are NOT marked; a migrating guest will be \
                 corrupted (a test's control run only)"
            );
        }
        off
    })
}

/// Log bytes the frontend may map beyond what the largest possible guest needs: QEMU
/// allocates 4 KiB more than it needs (`VHOST_LOG_BUFFER`) and rounds to 64-bit words.
const LOG_SLACK: u64 = 64 * 1024;

/// Why a log was refused.
#[derive(Debug, Error)]
pub enum LogError {
    /// The size is zero or larger than any guest of this device could need.
    #[error("dirty log of {size:#x} bytes refused: must be 1..={max:#x} for this guest memory")]
    Size {
        /// Bytes offered.
        size: u64,
        /// Most bytes accepted.
        max: u64,
    },
    /// The file could not be mapped (too small, not a regular file, mmap failed).
    #[error("dirty log cannot be mapped")]
    Map(#[from] MemoryError),
    /// The device does not offer dirty logging (its datapath cannot log).
    #[error("dirty logging was not offered (VHOST_F_LOG_ALL)")]
    NotOffered,
}

/// Bytes of log that cover guest-physical addresses `[0, end)`.
pub fn log_bytes_for(end: u64) -> u64 {
    end.div_ceil(LOG_PAGE).div_ceil(8)
}

/// A mapped dirty log, shared by every worker of a device while a migration runs.
#[derive(Debug)]
pub struct DirtyLog {
    map: MemoryRegion,
    /// Pages whose bit this device set (that were clear when it set them).
    pages: AtomicU64,
    /// Pages that fell outside the log.
    outside: AtomicU64,
    /// Whether a mark outside the log was logged already.
    warned: AtomicBool,
}

impl DirtyLog {
    /// Maps `size` bytes of `file` from `offset` as the log of a device whose guest
    /// memory is `mem`: the size must be nonzero and at most what a guest that grows
    /// to the device's `max_guest_memory` above its highest address could need, and
    /// the file must hold the whole range.
    pub fn map(file: File, size: u64, offset: u64, mem: &GuestMemory) -> Result<Self, LogError> {
        let max = Self::max_size(mem);
        if size == 0 || size > max {
            return Err(LogError::Size { size, max });
        }
        let map = MemoryRegion::map(0, size, 0, offset, file)?;
        Ok(DirtyLog {
            map,
            pages: AtomicU64::new(0),
            outside: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        })
    }

    /// The largest log accepted with guest memory `mem`: one that covers its highest
    /// address plus the device's memory limit (a frontend grows the log before it
    /// adds memory), and some slack.
    pub fn max_size(mem: &GuestMemory) -> u64 {
        let end = mem
            .regions()
            .iter()
            .map(|r| r.gpa() + r.size())
            .max()
            .unwrap_or(0);
        log_bytes_for(end.saturating_add(mem.limit())).saturating_add(LOG_SLACK)
    }

    /// Size of the log in bytes.
    pub fn size(&self) -> u64 {
        self.map.size()
    }

    fn byte(&self, i: u64) -> &AtomicU8 {
        debug_assert!(i < self.size());
        // SAFETY: `i` is below the mapped size (callers check), the mapping lives as
        // long as `self`, and AtomicU8 has the layout of u8 (any alignment).
        unsafe { &*(self.map.host_addr().add(i as usize) as *const AtomicU8) }
    }

    /// Marks the pages of guest-physical `[gpa, gpa + len)` dirty. Call after the
    /// bytes were written.
    #[inline]
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        // The data must be visible before any bit that announces it.
        fence(Ordering::Release);
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        let mut page = first;
        while page <= last {
            let byte = page / 8;
            let end = (byte * 8 + 7).min(last);
            if byte >= self.size() {
                self.mark_outside(gpa, last - page + 1);
                return;
            }
            let bits = (end - page + 1) as u32;
            let mask = (((1u16 << bits) - 1) << (page % 8)) as u8;
            let old = self.byte(byte).fetch_or(mask, Ordering::Relaxed);
            let new = mask & !old;
            if new != 0 {
                self.pages
                    .fetch_add(u64::from(new.count_ones()), Ordering::Relaxed);
            }
            page = end + 1;
        }
    }

    #[cold]
    fn mark_outside(&self, gpa: u64, pages: u64) {
        self.outside.fetch_add(pages, Ordering::Relaxed);
        if !self.warned.swap(true, Ordering::Relaxed) {
            warn!(
                gpa = format_args!("{gpa:#x}"),
                log_bytes = self.size(),
                "a write to guest memory lies beyond the dirty log (counted; logged once)"
            );
        }
    }

    /// Whether the page holding `gpa` is marked (for tests and diagnostics).
    pub fn is_marked(&self, gpa: u64) -> bool {
        let page = gpa / LOG_PAGE;
        page / 8 < self.size()
            && self.byte(page / 8).load(Ordering::Relaxed) & (1 << (page % 8)) != 0
    }

    /// Pages this device marked that were not marked yet (each time the frontend
    /// cleared them, a new mark counts again).
    pub fn pages_marked(&self) -> u64 {
        self.pages.load(Ordering::Relaxed)
    }

    /// Pages that lay beyond the end of the log and could not be marked.
    pub fn outside(&self) -> u64 {
        self.outside.load(Ordering::Relaxed)
    }
}

/// A worker's view of the log: the log and the guest memory its buffers live in, to
/// find the guest-physical address of a host pointer (buffers are kept as host
/// addresses; only logging needs their guest addresses back).
#[derive(Debug)]
pub struct LogWriter {
    log: std::sync::Arc<DirtyLog>,
    mem: crate::memory::Translator,
}

impl LogWriter {
    /// A writer marking `log` for buffers in `mem`.
    pub fn new(log: std::sync::Arc<DirtyLog>, mem: std::sync::Arc<GuestMemory>) -> Self {
        LogWriter {
            log,
            mem: crate::memory::Translator::new(mem),
        }
    }

    /// The log.
    pub fn log(&self) -> &DirtyLog {
        &self.log
    }

    /// Marks the `len` bytes at host address `ptr`, a buffer inside guest memory.
    /// A pointer outside guest memory is counted as outside the log.
    #[inline]
    pub fn mark_host(&mut self, ptr: *const u8, len: u64) {
        match self.mem.host_to_gpa(ptr) {
            Some(gpa) => self.log.mark(gpa, len),
            None => self.log.mark_outside(ptr as u64, len.div_ceil(LOG_PAGE)),
        }
    }

    /// Marks guest-physical `[gpa, gpa + len)`.
    #[inline]
    pub fn mark(&self, gpa: u64, len: u64) {
        self.log.mark(gpa, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn memfd(len: u64) -> File {
        let name = std::ffi::CString::new("vdpa-log-test").unwrap();
        // SAFETY: memfd_create with a valid name; the fd is owned at once.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(len).unwrap();
        f
    }

    fn small_mem() -> GuestMemory {
        let r = MemoryRegion::anonymous(0, 0x10_0000, 0x7f00_0000).unwrap();
        GuestMemory::from_regions_with_limit(vec![r], 0x10_0000).unwrap()
    }

    #[test]
    fn marks_set_one_bit_per_page_and_count_new_pages() {
        let mem = small_mem();
        let log = DirtyLog::map(memfd(64), 64, 0, &mem).unwrap();
        log.mark(0x1fff, 2); // pages 1 and 2
        log.mark(0x2000, 1); // page 2 again: nothing new
        log.mark(0x7000, 0x9001); // pages 7..=16, across three bytes
        let marked: Vec<u64> = (0..64).filter(|p| log.is_marked(p * LOG_PAGE)).collect();
        assert_eq!(marked, [1, 2, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        assert_eq!(log.pages_marked(), 12);
        assert_eq!(log.outside(), 0);
        log.mark(0, 0);
        assert!(!log.is_marked(0));
    }

    #[test]
    fn marks_beyond_the_log_are_counted_not_written() {
        let mem = small_mem();
        let file = memfd(4096);
        let log = DirtyLog::map(file.try_clone().unwrap(), 2, 8, &mem).unwrap();
        // 2 bytes cover pages 0..16; pages 15..=17 straddle the end.
        log.mark(15 * LOG_PAGE, 3 * LOG_PAGE);
        assert_eq!(log.pages_marked(), 1);
        assert_eq!(log.outside(), 2);
        let mut bytes = [0u8; 16];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0).unwrap();
        assert_eq!(
            bytes[8..11],
            [0, 0x80, 0],
            "only page 15 is set, at offset 8"
        );
        assert_eq!(bytes[..8], [0; 8]);
    }

    #[test]
    fn sizes_are_bounded_by_the_memory_table() {
        let mem = small_mem();
        // 1 MiB of memory plus a 1 MiB limit: 64 bytes of log, plus the slack.
        let max = DirtyLog::max_size(&mem);
        assert_eq!(max, 64 + LOG_SLACK);
        assert!(matches!(
            DirtyLog::map(memfd(max + 8), max + 1, 0, &mem),
            Err(LogError::Size { .. })
        ));
        assert!(matches!(
            DirtyLog::map(memfd(8), 0, 0, &mem),
            Err(LogError::Size { .. })
        ));
        assert!(matches!(
            DirtyLog::map(memfd(8), 16, 0, &mem),
            Err(LogError::Map(MemoryError::FileTooSmall { .. }))
        ));
    }

    #[test]
    fn writers_find_guest_addresses_of_host_pointers() {
        let a = MemoryRegion::anonymous(0x10_0000, 0x4000, 0x7f00_0000).unwrap();
        let b = MemoryRegion::anonymous(0x20_0000, 0x4000, 0x7e00_0000).unwrap();
        let mem = std::sync::Arc::new(GuestMemory::from_regions(vec![a, b]).unwrap());
        let log = std::sync::Arc::new(DirtyLog::map(memfd(128), 128, 0, &mem).unwrap());
        let mut w = LogWriter::new(log.clone(), mem.clone());
        let p = mem.translate(0x20_1ff0, 0x20).unwrap();
        w.mark_host(p, 0x20);
        assert!(log.is_marked(0x20_1000) && log.is_marked(0x20_2000));
        let q = mem.translate(0x10_0000, 1).unwrap();
        w.mark_host(q, 1);
        assert!(log.is_marked(0x10_0000));
        assert_eq!(log.pages_marked(), 3);
        let stack = [0u8; 4];
        w.mark_host(stack.as_ptr(), 4);
        assert_eq!(log.outside(), 1);
    }
}
