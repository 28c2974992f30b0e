//! The simulated NIC's DMA engine behind a simulated IOMMU: the device can only reach
//! IOVA ranges that were DMA-mapped, and only while bus mastering is on. Anything else
//! is recorded as a fault (what an IOMMU would log as a DMAR fault) and fails the
//! access without touching memory — tests assert that the fault count stays zero, or
//! that a hostile buffer produced exactly the faults it should.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// One DMA access the IOMMU refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaFault {
    /// Device address of the access.
    pub iova: u64,
    /// Its length.
    pub len: u64,
    /// Whether the device tried to write.
    pub write: bool,
    /// Why it was refused.
    pub reason: FaultReason,
}

/// Why a DMA access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReason {
    /// No mapping covers (part of) the range.
    Unmapped,
    /// Bus mastering is off in the command register.
    BusMasterOff,
}

#[derive(Clone, Copy, Debug)]
struct Mapping {
    iova: u64,
    size: u64,
    host: usize,
}

/// IOMMU-checked access to mapped memory.
#[derive(Debug, Default)]
pub(crate) struct Dma {
    maps: Mutex<Vec<Mapping>>,
    bus_master: AtomicBool,
    faults: AtomicU64,
    last_fault: Mutex<Option<DmaFault>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Dma {
    /// Adds a mapping; overlapping an existing one is refused like VFIO does (EEXIST).
    pub(crate) fn map(&self, iova: u64, size: u64, host: *mut u8) -> std::io::Result<()> {
        let end = iova.checked_add(size).filter(|_| size > 0).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty or overflowing DMA range",
            )
        })?;
        let mut maps = lock(&self.maps);
        if maps.iter().any(|m| iova < m.iova + m.size && m.iova < end) {
            return Err(std::io::Error::from_raw_os_error(libc::EEXIST));
        }
        maps.push(Mapping {
            iova,
            size,
            host: host as usize,
        });
        maps.sort_by_key(|m| m.iova);
        Ok(())
    }

    /// Removes the mapping of exactly `[iova, iova + size)`.
    pub(crate) fn unmap(&self, iova: u64, size: u64) -> std::io::Result<()> {
        let mut maps = lock(&self.maps);
        let before = maps.len();
        maps.retain(|m| !(m.iova == iova && m.size == size));
        if maps.len() == before {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no DMA mapping at iova {iova:#x} size {size:#x}"),
            ));
        }
        Ok(())
    }

    /// The mapped ranges (iova, size), sorted.
    pub(crate) fn mappings(&self) -> Vec<(u64, u64)> {
        lock(&self.maps).iter().map(|m| (m.iova, m.size)).collect()
    }

    pub(crate) fn set_bus_master(&self, on: bool) {
        self.bus_master.store(on, Ordering::SeqCst);
    }

    pub(crate) fn faults(&self) -> u64 {
        self.faults.load(Ordering::SeqCst)
    }

    pub(crate) fn last_fault(&self) -> Option<DmaFault> {
        *lock(&self.last_fault)
    }

    fn fault(&self, iova: u64, len: u64, write: bool, reason: FaultReason) -> DmaFault {
        let f = DmaFault {
            iova,
            len,
            write,
            reason,
        };
        self.faults.fetch_add(1, Ordering::SeqCst);
        *lock(&self.last_fault) = Some(f);
        tracing::warn!(
            iova = format_args!("{iova:#x}"),
            len,
            write,
            ?reason,
            "sim: IOMMU fault"
        );
        f
    }

    /// Splits `[iova, iova + len)` into host pieces, or faults without side effects if
    /// any byte is not mapped.
    fn translate(&self, iova: u64, len: u64, write: bool) -> Result<Vec<(usize, usize)>, DmaFault> {
        if !self.bus_master.load(Ordering::SeqCst) {
            return Err(self.fault(iova, len, write, FaultReason::BusMasterOff));
        }
        let maps = lock(&self.maps);
        let mut pieces = Vec::with_capacity(1);
        let mut cur = iova;
        let mut left = len;
        while left > 0 {
            let Some(m) = maps.iter().find(|m| cur >= m.iova && cur - m.iova < m.size) else {
                drop(maps);
                return Err(self.fault(iova, len, write, FaultReason::Unmapped));
            };
            let off = cur - m.iova;
            let n = left.min(m.size - off);
            pieces.push((m.host + off as usize, n as usize));
            cur = match cur.checked_add(n) {
                Some(c) => c,
                None if n == left => cur,
                None => {
                    drop(maps);
                    return Err(self.fault(iova, len, write, FaultReason::Unmapped));
                }
            };
            left -= n;
        }
        Ok(pieces)
    }

    /// Device read of `buf.len()` bytes at `iova`.
    pub(crate) fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let mut done = 0;
        for (host, n) in self.translate(iova, buf.len() as u64, false)? {
            // SAFETY: `host..host+n` lies inside a range the driver DMA-mapped; the
            // dma_map contract keeps it mapped until unmap, and unmap takes the same lock
            // order (the device thread finishes its burst before a reset returns, and
            // the driver only unmaps after reset). Guest memory is shared with a guest,
            // so a byte copy without references is the only sound access.
            unsafe {
                std::ptr::copy_nonoverlapping(host as *const u8, buf[done..].as_mut_ptr(), n)
            };
            done += n;
        }
        Ok(())
    }

    /// Device write of `data` at `iova`.
    pub(crate) fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        let mut done = 0;
        for (host, n) in self.translate(iova, data.len() as u64, true)? {
            // SAFETY: as in `read`: the range is DMA-mapped writable host memory.
            unsafe { std::ptr::copy_nonoverlapping(data[done..].as_ptr(), host as *mut u8, n) };
            done += n;
        }
        Ok(())
    }

    /// Device read of a little-endian u16 (ring indices), as one access.
    pub(crate) fn read_u16(&self, iova: u64) -> Result<u16, DmaFault> {
        let pieces = self.translate(iova, 2, false)?;
        if pieces.len() == 1 && pieces[0].0.is_multiple_of(2) {
            // SAFETY: two mapped, aligned bytes; a volatile load sees the driver's
            // latest store and is not torn.
            let v = unsafe { std::ptr::read_volatile(pieces[0].0 as *const u16) };
            return Ok(u16::from_le(v));
        }
        let mut b = [0u8; 2];
        self.read(iova, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Device write of a little-endian u16 (used index, avail_event), as one access.
    pub(crate) fn write_u16(&self, iova: u64, v: u16) -> Result<(), DmaFault> {
        let pieces = self.translate(iova, 2, true)?;
        if pieces.len() == 1 && pieces[0].0.is_multiple_of(2) {
            // SAFETY: two mapped, aligned, writable bytes.
            unsafe { std::ptr::write_volatile(pieces[0].0 as *mut u16, v.to_le()) };
            return Ok(());
        }
        self.write(iova, &v.to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmapped_and_bus_master_off_fault_without_touching_memory() {
        let mut mem = vec![0u8; 64];
        let dma = Dma::default();
        dma.map(0x1000, 32, mem.as_mut_ptr()).unwrap();
        assert!(dma.write(0x1000, &[1]).is_err());
        assert_eq!(dma.last_fault().unwrap().reason, FaultReason::BusMasterOff);
        dma.set_bus_master(true);
        dma.write(0x1000, &[7; 32]).unwrap();
        let f = dma.write(0x1010, &[9; 32]).unwrap_err();
        assert_eq!(f.reason, FaultReason::Unmapped);
        assert_eq!(dma.faults(), 2);
        assert_eq!(&mem[..33], &[[7u8; 32].as_slice(), &[0]].concat()[..]);
        assert!(dma.map(0x1010, 8, mem.as_mut_ptr()).is_err());
        dma.unmap(0x1000, 32).unwrap();
        assert!(dma.read_u16(0x1000).is_err());
    }

    #[test]
    fn access_may_span_adjacent_mappings() {
        let mut a = vec![0u8; 16];
        let mut b = vec![0u8; 16];
        let dma = Dma::default();
        dma.set_bus_master(true);
        dma.map(0, 16, a.as_mut_ptr()).unwrap();
        dma.map(16, 16, b.as_mut_ptr()).unwrap();
        dma.write(12, &[5; 8]).unwrap();
        assert_eq!(&a[12..], &[5; 4]);
        assert_eq!(&b[..4], &[5; 4]);
        assert_eq!(dma.faults(), 0);
    }
}
