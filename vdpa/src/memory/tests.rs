//! Guest memory tables: mapping, translation, limits and faults.

use super::*;
use std::io::Write;

fn memfd(len: u64) -> File {
    let name = std::ffi::CString::new("vdpa-test").unwrap();
    // SAFETY: memfd_create with a valid NUL-terminated name; the fd is checked and
    // immediately owned by a File.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}

#[test]
fn anonymous_regions_translate_within_bounds() {
    let a = MemoryRegion::anonymous(0x10000, 0x2000, 0x7f00_0000).unwrap();
    let b = MemoryRegion::anonymous(0x20000, 0x1000, 0x7e00_0000).unwrap();
    let mem = Arc::new(GuestMemory::from_regions(vec![b, a]).unwrap());
    assert_eq!(mem.regions()[0].gpa(), 0x10000);
    let mut cache = Translator::new(mem.clone());
    for (gpa, len) in [
        (0x10000, 0x2000),
        (0x11ff8, 8),
        (0x20000, 0x1000),
        (0x20ff0, 16),
    ] {
        let p = cache.translate(gpa, len).unwrap();
        assert_eq!(Some(p), mem.translate(gpa, len));
        // SAFETY: translate guaranteed `len` bytes at p, inside a live mapping.
        let bytes = unsafe { std::slice::from_raw_parts_mut(p, len as usize) };
        bytes.fill(0xa5);
        assert!(bytes.iter().all(|&b| b == 0xa5));
    }
    for (gpa, len) in [
        (0x11fff, 2),
        (0x12000, 1),
        (0x1ffff, 2),
        (0x21000, 1),
        (u64::MAX, 2),
    ] {
        assert!(mem.translate(gpa, len).is_none(), "{gpa:#x}+{len:#x}");
        assert!(cache.translate(gpa, len).is_none());
    }
    assert_eq!(mem.va_to_gpa(0x7e00_0ff0, 16), Some(0x20ff0));
    assert_eq!(mem.va_to_gpa(0x7e00_0ff0, 17), None);
    assert!(MemoryRegion::anonymous(u64::MAX, 1, 0).is_err());
}

#[test]
#[cfg_attr(miri, ignore = "memfd_create is not available under Miri")]
fn translate_and_va_to_gpa_respect_bounds() {
    let mut f = memfd(0x3000);
    f.write_all(b"hello").unwrap();
    let r = MemoryRegion::map(0x10000, 0x2000, 0x7f00_0000, 0x1000, f).unwrap();
    let mem = GuestMemory::from_regions(vec![r]).unwrap();
    assert!(mem.translate(0x10000, 0x2000).is_some());
    assert!(mem.translate(0x10000, 0x2001).is_none());
    assert!(mem.translate(0xffff, 1).is_none());
    assert!(mem.translate(0x11fff, 1).is_some());
    assert!(mem.translate(0x12000, 1).is_none());
    assert!(mem.translate(u64::MAX, 2).is_none());
    assert_eq!(mem.va_to_gpa(0x7f00_0010, 16), Some(0x10010));
    assert_eq!(mem.va_to_gpa(0x7f00_1ff8, 16), None);
}

/// Found by the memory_table fuzz target: a VA far beyond a region at a high
/// guest-physical address overflowed `gpa + offset` before the bounds check.
#[test]
fn va_far_beyond_a_high_region_is_not_an_overflow() {
    let r = MemoryRegion::anonymous(u64::MAX - 0x1000, 0x1000, 0).unwrap();
    let mem = GuestMemory::from_regions(vec![r]).unwrap();
    assert_eq!(mem.va_to_gpa(u64::MAX - 8, 1), None);
    assert_eq!(mem.va_to_gpa(0xff8, 8), Some(u64::MAX - 8));
}

#[test]
#[cfg_attr(miri, ignore = "memfd_create is not available under Miri")]
fn unaligned_offset_maps_the_right_bytes() {
    let mut f = memfd(0x2000);
    f.write_all(&[0u8; 0x1010]).unwrap();
    f.write_all(b"marker").unwrap();
    let r = MemoryRegion::map(0x0, 0x100, 0x1000, 0x1010, f).unwrap();
    let mem = GuestMemory::from_regions(vec![r]).unwrap();
    let p = mem.translate(0, 6).unwrap();
    // SAFETY: translate guaranteed 6 readable bytes at p.
    let got = unsafe { std::slice::from_raw_parts(p, 6) };
    assert_eq!(got, b"marker");
}

#[test]
#[cfg_attr(miri, ignore = "memfd_create is not available under Miri")]
fn file_smaller_than_region_is_refused() {
    let f = memfd(0x1000);
    let e = MemoryRegion::map(0, 0x2000, 0, 0, f).unwrap_err();
    assert!(matches!(e, MemoryError::FileTooSmall { .. }));
}

#[test]
fn an_empty_range_at_a_region_boundary_translates_the_same_with_a_cache() {
    // Found by the memory_table fuzz target: two adjacent regions, an empty range at
    // the end of the first; the cache holds the second.
    let low = MemoryRegion::anonymous(0x1000, 0x1000, 0x10_0000).unwrap();
    let high = MemoryRegion::anonymous(0x2000, 0x1000, 0x20_0000).unwrap();
    let mem = Arc::new(GuestMemory::from_regions(vec![low, high]).unwrap());
    let mut cache = Translator::new(mem.clone());
    assert!(cache.translate(0x2800, 8).is_some());
    assert_eq!(mem.translate(0x2000, 0), cache.translate(0x2000, 0));
    assert_eq!(mem.translate(0x2000, 0), mem.translate(0x2000, 1));
    assert!(mem.translate(0x3000, 0).is_none(), "past the last region");
}

#[test]
fn overlap_duplicate_and_removal() {
    let a = MemoryRegion::anonymous(0, 0x1000, 0x10000).unwrap();
    let mem = GuestMemory::empty().with_region(a).unwrap();
    let dup = MemoryRegion::anonymous(0, 0x1000, 0x10000).unwrap();
    assert_eq!(mem.with_region(dup).unwrap().regions().len(), 1);
    let clash = MemoryRegion::anonymous(0x800, 0x1000, 0x20000).unwrap();
    assert!(matches!(
        mem.with_region(clash),
        Err(MemoryError::Overlap { .. })
    ));
    let b = MemoryRegion::anonymous(0x4000, 0x1000, 0x20000).unwrap();
    let mem = mem.with_region(b).unwrap();
    assert_eq!(mem.total_size(), 0x2000);
    let mem = mem.without_region(0, 0x1000, 0x10000).unwrap();
    assert_eq!(mem.regions().len(), 1);
    assert!(mem.without_region(0, 0x1000, 0x10000).is_err());
}

#[test]
#[cfg_attr(miri, ignore = "memfd_create is not available under Miri")]
fn a_truncated_region_faults_only_its_own_table() {
    // memfd_create(name, 0): no MFD_ALLOW_SEALING, so the seal cannot be added.
    let fa = memfd(0x4000);
    let fb = memfd(0x4000);
    let (ta, tb) = (fa.try_clone().unwrap(), fb.try_clone().unwrap());
    let map = |f| MemoryRegion::map(0, 0x4000, 0x1_0000, 0, f).unwrap();
    let a = GuestMemory::from_regions(vec![map(fa)]).unwrap();
    let b = GuestMemory::from_regions(vec![map(fb)]).unwrap();
    let write = |m: &GuestMemory, gpa: u64, v: u8| {
        // SAFETY: translate checked one byte at gpa.
        unsafe { m.translate(gpa, 1).unwrap().write_volatile(v) }
    };
    let read = |m: &GuestMemory, gpa: u64| {
        // SAFETY: as above.
        unsafe { m.translate(gpa, 1).unwrap().read_volatile() }
    };
    write(&a, 0x2000, 7);
    write(&b, 0x2000, 9);
    assert_eq!(a.fault(), None);
    tb.set_len(0x4000).unwrap();
    ta.set_len(0).unwrap();
    // Without containment this access kills the test process with SIGBUS.
    assert_eq!(read(&a, 0x2000), 0, "a faulted region reads as zeroes");
    write(&a, 0x3000, 1);
    let f = a.fault().expect("the fault is recorded on the table");
    assert_eq!(f.region_gpa, 0);
    assert_eq!(f.gpa, 0x2000);
    assert!(fault::contained() >= 1);
    // The other table is untouched and keeps its memory.
    assert_eq!(b.fault(), None);
    assert_eq!(read(&b, 0x2000), 9);
    write(&b, 0x2001, 3);
    assert_eq!(read(&b, 0x2001), 3);
    // A table derived from the faulted one still reports it.
    let c = MemoryRegion::map(0x10000, 0x1000, 0x9_0000, 0, memfd(0x1000)).unwrap();
    assert!(a.with_region(c).unwrap().fault().is_some());
}

#[test]
#[cfg_attr(miri, ignore = "memfd_create is not available under Miri")]
fn a_table_refuses_to_grow_beyond_its_limit() {
    let r = |gpa, ua| MemoryRegion::map(gpa, 0x2000, ua, 0, memfd(0x2000)).unwrap();
    let mem = GuestMemory::from_regions_with_limit(vec![r(0, 0x10_0000)], 0x3000).unwrap();
    assert_eq!(mem.limit(), 0x3000);
    let e = mem.with_region(r(0x4000, 0x20_0000)).unwrap_err();
    assert!(
        matches!(
            e,
            MemoryError::TooLarge {
                total: 0x4000,
                limit: 0x3000
            }
        ),
        "{e}"
    );
    let both = vec![r(0, 0x10_0000), r(0x4000, 0x20_0000)];
    let e = GuestMemory::from_regions_with_limit(both, 0x3000).unwrap_err();
    assert!(e.to_string().contains("max_guest_memory"), "{e}");
    // Removing a region keeps the limit.
    let empty = mem.without_region(0, 0x2000, 0x10_0000).unwrap();
    assert_eq!(empty.limit(), 0x3000);
}
