//! The simulated NIC's mappable doorbells. With [`SimConfig::doorbell_pages`] queue q's
//! doorbell is alone on page q of a memfd, the way a real NIC's doorbell page sits in
//! its BAR: the offload datapath hands that page to the frontend (a host notifier),
//! which maps it into the guest, and the guest's store of the queue index lands here
//! without any eventfd or daemon thread in between.
//!
//! Hardware sees every store; memory does not, and queue 0's doorbell value is 0. So
//! each page's doorbell word holds a sentinel the driver never writes (0xFFFF): the
//! device thread swaps the sentinel back in and treats anything else as a ring.
//!
//! [`SimConfig::doorbell_pages`]: super::SimConfig::doorbell_pages

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;

use super::layout::PAGE_MULTIPLIER;

/// What a doorbell word holds when nobody rang since the device last looked.
const SENTINEL: u16 = 0xffff;
const PAGE: usize = PAGE_MULTIPLIER as usize;

/// One page per queue, shared with whoever maps the file.
pub(crate) struct DoorbellPages {
    /// The memfd holding the pages.
    pub file: Arc<File>,
    /// Set once a page was handed out: the device thread then watches the pages.
    pub exported: AtomicBool,
    base: *mut u8,
    pages: usize,
}

// SAFETY: `base` is a shared mapping owned by this value for its whole life; it is
// only accessed through atomics, which any thread may do.
unsafe impl Send for DoorbellPages {}
// SAFETY: as above: every access to the mapping is an atomic operation.
unsafe impl Sync for DoorbellPages {}

impl DoorbellPages {
    /// `pages` doorbell pages, each holding the sentinel.
    pub(crate) fn new(pages: usize) -> io::Result<Self> {
        let name = c"vdpad-sim-doorbells";
        // SAFETY: a valid NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let len = pages * PAGE;
        file.set_len(len as u64)?;
        // SAFETY: a fresh shared mapping of a file of exactly `len` bytes; checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let me = DoorbellPages {
            file: Arc::new(file),
            exported: AtomicBool::new(false),
            base: base as *mut u8,
            pages,
        };
        for q in 0..pages {
            me.word(q).store(SENTINEL, Ordering::SeqCst);
        }
        Ok(me)
    }

    fn word(&self, q: usize) -> &AtomicU16 {
        assert!(q < self.pages);
        // SAFETY: page q lies inside the mapping (checked above), is page-aligned and
        // so aligned for u16, and lives as long as `self`; it is only ever accessed
        // atomically by this process.
        unsafe { AtomicU16::from_ptr(self.base.add(q * PAGE) as *mut u16) }
    }

    /// The queues whose doorbell pages were written since the last call, as a mask.
    pub(crate) fn take_rung(&self) -> u64 {
        if !self.exported.load(Ordering::Relaxed) {
            return 0;
        }
        let mut rung = 0u64;
        for q in 0..self.pages.min(64) {
            if self.word(q).swap(SENTINEL, Ordering::SeqCst) != SENTINEL {
                rung |= 1 << q;
            }
        }
        rung
    }

    /// Whether the device thread must watch the pages.
    pub(crate) fn watched(&self) -> bool {
        self.exported.load(Ordering::Relaxed)
    }
}

impl Drop for DoorbellPages {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`; no reference into it outlives self.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.pages * PAGE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_store_through_another_mapping_rings_that_queue_once() {
        let pages = DoorbellPages::new(4).unwrap();
        pages
            .file
            .write_at(&2u16.to_le_bytes(), 2 * PAGE as u64)
            .unwrap();
        assert_eq!(
            pages.take_rung(),
            0,
            "not watched before a page is handed out"
        );
        pages.exported.store(true, Ordering::SeqCst);
        assert_eq!(pages.take_rung(), 1 << 2);
        assert_eq!(pages.take_rung(), 0);
        pages.file.write_at(&0u16.to_le_bytes(), 0).unwrap();
        assert_eq!(pages.take_rung(), 1, "queue 0's doorbell value 0 is a ring");
    }
}
