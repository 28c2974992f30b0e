//! A minimal driver side of split rings in anonymous guest memory, for unit tests that
//! must also run under Miri (no memfd, no files): lays out rings, writes descriptors
//! and frames, offers chains and reads used entries back.

use std::sync::Arc;

use vdpa::{GuestMemory, MemoryRegion, QueueCounters, RingAddrs, RingConfig, RingEvents};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory of `size` bytes at gpa 0, anonymous.
pub(crate) fn memory(size: u64) -> Arc<GuestMemory> {
    let region = MemoryRegion::anonymous(0, size, 0x7f00_0000).unwrap();
    Arc::new(GuestMemory::from_regions(vec![region]).unwrap())
}

/// Writes `v` at `gpa`.
pub(crate) fn put<T: Copy>(mem: &GuestMemory, gpa: u64, v: T) {
    let p = mem.translate(gpa, size_of::<T>() as u64).unwrap();
    // SAFETY: translate proved room for a T at p; the test owns the memory.
    unsafe { std::ptr::write_unaligned(p.cast::<T>(), v) }
}

/// Reads a `T` at `gpa`.
pub(crate) fn get<T: Copy>(mem: &GuestMemory, gpa: u64) -> T {
    let p = mem.translate(gpa, size_of::<T>() as u64).unwrap();
    // SAFETY: as in put.
    unsafe { std::ptr::read_unaligned(p.cast::<T>()) }
}

/// Writes `bytes` at `gpa`.
pub(crate) fn write(mem: &GuestMemory, gpa: u64, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        put(mem, gpa + i as u64, *b);
    }
}

/// Reads `len` bytes at `gpa`.
pub(crate) fn read(mem: &GuestMemory, gpa: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| get(mem, gpa + i as u64)).collect()
}

/// The driver side of one ring: descriptor table at `desc`, then the avail ring one
/// page up, the used ring a page above that.
pub(crate) struct DriverRing {
    /// Guest memory the ring is in.
    pub mem: Arc<GuestMemory>,
    /// Ring size.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Avail ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
}

impl DriverRing {
    /// A ring of `size` entries whose three parts start at `at`, `at + 0x1000` and
    /// `at + 0x2000`.
    pub(crate) fn new(mem: &Arc<GuestMemory>, at: u64, size: u16) -> Self {
        DriverRing {
            mem: mem.clone(),
            size,
            desc: at,
            avail: at + 0x1000,
            used: at + 0x2000,
        }
    }

    /// The device-side configuration of this ring as vhost-user index `index`.
    pub(crate) fn config(&self, index: u16) -> RingConfig {
        RingConfig {
            index,
            size: self.size,
            addrs: RingAddrs {
                desc: self.desc,
                avail: self.avail,
                used: self.used,
            },
            base: 0,
            events: RingEvents {
                kick: Arc::new(EventFd::new(0).unwrap()),
                call: None,
            },
            counters: Arc::new(QueueCounters::default()),
            log_used: None,
        }
    }

    /// Writes descriptor `i`.
    pub(crate) fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc + 16 * u64::from(i);
        put(&self.mem, at, addr.to_le());
        put(&self.mem, at + 8, len.to_le());
        put(&self.mem, at + 12, flags.to_le());
        put(&self.mem, at + 14, next.to_le());
    }

    /// Makes the chains at `heads` available.
    pub(crate) fn offer(&self, heads: &[u16]) {
        let idx: u16 = get(&self.mem, self.avail + 2);
        for (k, &h) in heads.iter().enumerate() {
            let slot = u64::from(idx.wrapping_add(k as u16) & (self.size - 1));
            put(&self.mem, self.avail + 4 + 2 * slot, h.to_le());
        }
        let new = idx.wrapping_add(heads.len() as u16);
        put(&self.mem, self.avail + 2, new.to_le());
    }

    /// The used index.
    pub(crate) fn used_idx(&self) -> u16 {
        u16::from_le(get(&self.mem, self.used + 2))
    }

    /// Used entry `i`: (head, length written).
    pub(crate) fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i & (self.size - 1));
        (
            u32::from_le(get(&self.mem, at)),
            u32::from_le(get(&self.mem, at + 4)),
        )
    }
}
