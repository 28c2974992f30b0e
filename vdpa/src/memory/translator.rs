//! Translation with a one-region cache, bound to the table it caches.
//!
//! The hot path translates every descriptor's address; consecutive buffers of a guest
//! usually lie in the same region, so remembering the last region turns a search into
//! two comparisons. A cache is only meaningful for the table that filled it: a cache
//! kept across a memory-table change would hand out the old table's memory. So the
//! cache is not a value of its own that could be paired with any table: it lives inside
//! a [`Translator`] together with the `Arc` of its table, and the only way to use it is
//! through that translator.

use std::sync::Arc;

use super::{GuestMemory, MemoryRegion};

/// The region the last translation hit. Holding the region's `Arc` (`_mapping`) keeps its mapping
/// alive, so the cached host address is valid whatever happens to the table. The
/// address is kept beside the `Arc` so that a hit needs no load through it.
#[derive(Clone, Debug)]
struct RegionCache {
    gpa: u64,
    /// 0 while nothing is cached: no range then hits.
    size: u64,
    host: *mut u8,
    _mapping: Option<Arc<MemoryRegion>>,
}

impl Default for RegionCache {
    fn default() -> Self {
        RegionCache {
            gpa: 0,
            size: 0,
            host: std::ptr::null_mut(),
            _mapping: None,
        }
    }
}

impl RegionCache {
    #[cold]
    fn fill(&mut self, r: &Arc<MemoryRegion>) {
        *self = RegionCache {
            gpa: r.gpa,
            size: r.size,
            host: r.host,
            _mapping: Some(r.clone()),
        };
    }
}

/// A guest memory table and a cache of the region it translated last.
#[derive(Clone, Debug)]
pub struct Translator {
    mem: Arc<GuestMemory>,
    cache: RegionCache,
}

// SAFETY: the cached host address points into the mapping of `cache.region`, an Arc
// that moves with the translator; MemoryRegion is Send and Sync, and nothing here is
// tied to a thread.
unsafe impl Send for Translator {}

impl Translator {
    /// A translator for `mem`, starting with an empty cache.
    pub fn new(mem: Arc<GuestMemory>) -> Self {
        Translator {
            mem,
            cache: RegionCache::default(),
        }
    }

    /// The table this translator translates in.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// [`GuestMemory::translate`] that tries the cached region first and caches the
    /// region that matched. `None` for any range that is not entirely guest memory.
    #[inline]
    pub fn translate(&mut self, gpa: u64, len: u64) -> Option<*mut u8> {
        let off = gpa.wrapping_sub(self.cache.gpa);
        if off < self.cache.size && len <= self.cache.size - off {
            // SAFETY: `off + len <= size` of the cached region (size is 0, so nothing
            // hits, while none is cached), whose mapping the cache's Arc keeps alive.
            return Some(unsafe { self.cache.host.add(off as usize) });
        }
        let r = self.mem.regions.iter().find(|r| r.contains_gpa(gpa, len))?;
        self.cache.fill(r);
        // SAFETY: contains_gpa proved the range lies within the region.
        Some(unsafe { r.host.add((gpa - r.gpa) as usize) })
    }

    /// Guest-physical address of host address `ptr` (one that a translation in this
    /// table returned), looking in the cached region first. `None` for an address
    /// outside this table's memory.
    #[inline]
    pub fn host_to_gpa(&mut self, ptr: *const u8) -> Option<u64> {
        let off = (ptr as u64).wrapping_sub(self.cache.host as u64);
        if off < self.cache.size {
            return Some(self.cache.gpa + off);
        }
        let r = self.mem.regions.iter().find(|r| {
            let off = (ptr as u64).wrapping_sub(r.host as u64);
            off < r.size
        })?;
        self.cache.fill(r);
        Some(r.gpa + (ptr as u64 - r.host as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_regions() -> Arc<GuestMemory> {
        let low = MemoryRegion::anonymous(0x1000, 0x1000, 0x10_0000).unwrap();
        let high = MemoryRegion::anonymous(0x2000, 0x1000, 0x20_0000).unwrap();
        Arc::new(GuestMemory::from_regions(vec![low, high]).unwrap())
    }

    #[test]
    fn cached_translations_agree_with_the_table() {
        let mem = two_regions();
        let mut t = Translator::new(mem.clone());
        for (gpa, len) in [
            (0x1000, 0x1000),
            (0x1ff8, 8),
            (0x2800, 8),
            (0x2000, 0),
            (0x1fff, 2),
            (0x3000, 0),
            (u64::MAX, 2),
        ] {
            assert_eq!(t.translate(gpa, len), mem.translate(gpa, len), "{gpa:#x}");
        }
        let p = mem.translate(0x2804, 4).unwrap();
        assert_eq!(t.host_to_gpa(p), Some(0x2804));
        assert_eq!(t.host_to_gpa(std::ptr::null()), None);
    }

    #[test]
    fn a_translator_keeps_the_regions_it_cached_mapped() {
        let mut t = Translator::new(two_regions());
        let p = t.translate(0x2000, 8).unwrap();
        // The table is only reachable through the translator; its cache still holds
        // the region, so the address stays valid for as long as the translator lives.
        // SAFETY: translated for 8 bytes in a mapping the translator keeps alive.
        unsafe { std::ptr::write_volatile(p as *mut u64, 7) };
        // SAFETY: as above.
        assert_eq!(unsafe { std::ptr::read_volatile(p as *const u64) }, 7);
    }

    #[test]
    fn translators_are_send() {
        fn send<T: Send>() {}
        send::<Translator>();
    }
}
