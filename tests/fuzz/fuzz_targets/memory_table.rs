//! Guest memory tables: regions with arbitrary gpa/size/user_addr/offset over a small
//! memfd through `MemoryRegion::map`, `GuestMemory::from_regions`, `with_region` and
//! `without_region`, then `translate`, a `Translator`'s cached translation and
//! `host_to_gpa`, and `va_to_gpa` on arbitrary
//! addresses. Never panics; every translation lands inside its region, and each answer
//! matches a plain search over the table's regions (which never overlap).
//!
//! Input: file length u16 (bytes, at most 64 KiB), then operations, each an opcode
//! byte and its fields:
//!   0 map + with_region: gpa u64, size u64, user_addr u64, offset u64
//!   1 without_region:    index of an existing region u8, or (if >= count) the next
//!                        gpa u64, size u64, user_addr u64
//!   2 from_regions:      the next opcode-0 fields, for two regions at once
//!   3 translate:         gpa u64, len u64 (also through a Translator)
//!   4 va_to_gpa:         va u64, len u64
//! Small values are the interesting ones: each u64 field is read as a u16 when the
//! opcode's bit 7 is set.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vdpa::memory::{GuestMemory, MemoryRegion, Translator};
use vdpad_fuzz::{memfd, Cursor};

/// Most operations per input, to keep one input quick.
const MAX_OPS: usize = 64;

fn field(input: &mut Cursor, small: bool) -> u64 {
    if small {
        u64::from(input.u16())
    } else {
        input.u64()
    }
}

fn map(input: &mut Cursor, small: bool, file_len: u64) -> Option<MemoryRegion> {
    let gpa = field(input, small);
    let size = field(input, small);
    let user_addr = field(input, small);
    let offset = field(input, small);
    let r = MemoryRegion::map(gpa, size, user_addr, offset, memfd(file_len)).ok()?;
    assert!(
        size > 0 && offset + size <= file_len,
        "mapped beyond the file"
    );
    assert_eq!((r.gpa(), r.size(), r.user_addr()), (gpa, size, user_addr));
    Some(r)
}

/// The region that holds `[gpa, gpa + len)`, by a plain search.
fn holder(mem: &GuestMemory, gpa: u64, len: u64) -> Option<&Arc<MemoryRegion>> {
    // The start lies inside the region even for an empty range (an empty range at a
    // region's end belongs to the region that starts there, if any).
    mem.regions().iter().find(|r| {
        gpa >= r.gpa()
            && gpa < r.gpa() + r.size()
            && gpa
                .checked_add(len)
                .is_some_and(|end| end <= r.gpa() + r.size())
    })
}

fn check_table(mem: &GuestMemory) {
    let rs = mem.regions();
    assert!(rs.len() <= vdpa::memory::MAX_REGIONS);
    for (i, a) in rs.iter().enumerate() {
        for b in &rs[i + 1..] {
            assert!(a.gpa() <= b.gpa(), "regions not sorted");
            assert!(a.gpa() + a.size() <= b.gpa(), "guest-physical overlap");
            let (lo, hi) = if a.user_addr() <= b.user_addr() {
                (a, b)
            } else {
                (b, a)
            };
            assert!(
                lo.user_addr() + lo.size() <= hi.user_addr(),
                "virtual overlap"
            );
        }
    }
}

fn check_translate(mem: &GuestMemory, cache: &mut Translator, gpa: u64, len: u64) {
    let got = mem.translate(gpa, len);
    let cached = cache.translate(gpa, len);
    assert_eq!(got, cached, "the cached translation disagrees with translate");
    if let Some(p) = got {
        assert_eq!(cache.host_to_gpa(p), Some(gpa), "host_to_gpa is not the inverse");
    }
    match (got, holder(mem, gpa, len)) {
        (Some(p), Some(r)) => {
            let off = (gpa - r.gpa()) as usize;
            assert_eq!(p, r.host_addr().wrapping_add(off));
            if len > 0 {
                // SAFETY: the range was just proven to lie in a mapped region, which
                // `mem` keeps alive; a read touches the mapping (ASan and SIGBUS check).
                unsafe {
                    let _ = std::ptr::read_volatile(p);
                    let _ = std::ptr::read_volatile(p.add(len as usize - 1));
                }
            }
        }
        (None, None) => {}
        (got, want) => panic!(
            "translate({gpa:#x}, {len:#x}) = {got:?}, but the region holding it is {:?}",
            want.map(|r| (r.gpa(), r.size()))
        ),
    }
}

fn check_va(mem: &GuestMemory, va: u64, len: u64) {
    let want = mem.regions().iter().find_map(|r| {
        let off = va.checked_sub(r.user_addr())?;
        (off < r.size() && off.checked_add(len)? <= r.size()).then(|| r.gpa() + off)
    });
    assert_eq!(mem.va_to_gpa(va, len), want, "va_to_gpa({va:#x}, {len:#x})");
    if let Some(g) = want {
        assert!(
            mem.translate(g, len).is_some(),
            "a VA range maps to no host memory"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let file_len = u64::from(input.u16());
    let mut mem = Arc::new(GuestMemory::empty());
    let mut cache = Translator::new(mem.clone());
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let small = op & 0x80 != 0;
        match op & 0x7f {
            0 => {
                if let Some(r) = map(&mut input, small, file_len) {
                    if let Ok(m) = mem.with_region(r) {
                        mem = Arc::new(m);
                        cache = Translator::new(mem.clone());
                    }
                }
            }
            1 => {
                let i = usize::from(input.u8());
                let (gpa, size, user_addr) = match mem.regions().get(i) {
                    Some(r) => (r.gpa(), r.size(), r.user_addr()),
                    None => (
                        field(&mut input, small),
                        field(&mut input, small),
                        field(&mut input, small),
                    ),
                };
                let known = mem
                    .regions()
                    .iter()
                    .any(|r| (r.gpa(), r.size(), r.user_addr()) == (gpa, size, user_addr));
                match mem.without_region(gpa, size, user_addr) {
                    Ok(m) => {
                        assert!(known);
                        assert_eq!(m.regions().len() + 1, mem.regions().len());
                        mem = Arc::new(m);
                        cache = Translator::new(mem.clone());
                    }
                    Err(_) => assert!(!known, "an existing region could not be removed"),
                }
            }
            2 => {
                let regions: Vec<_> = (0..2)
                    .filter_map(|_| map(&mut input, small, file_len))
                    .collect();
                if let Ok(m) = GuestMemory::from_regions(regions) {
                    mem = Arc::new(m);
                    cache = Translator::new(mem.clone());
                }
            }
            3 => {
                let gpa = field(&mut input, small);
                let len = field(&mut input, small);
                check_translate(&mem, &mut cache, gpa, len);
            }
            4 => {
                let va = field(&mut input, small);
                let len = field(&mut input, small);
                check_va(&mem, va, len);
            }
            _ => {}
        }
        check_table(&mem);
    }
    assert_eq!(
        mem.total_size(),
        mem.regions().iter().map(|r| r.size()).sum::<u64>()
    );
});
