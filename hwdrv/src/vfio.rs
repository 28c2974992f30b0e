//! A real PCI function through VFIO (`vfio-ioctls` 0.10, legacy container/group
//! API, no KVM).
//!
//! **One container per VM.** A VFIO container is one IOMMU domain: everything mapped
//! into it is reachable by every device in it. The caller creates one [`VfioVm`] per
//! virtual machine and opens all of that VM's NICs with it, so one VM's device can
//! never reach another VM's memory, and guest memory mapped for two NICs of the same
//! VM is pinned once (identical mappings are reference counted here — only when they
//! map the same memory, see [`crate::dma_share`]).
//!
//! The crate swallows errors in several places (region reads and writes, region
//! getters, reset, the IRQ calls lose errno); this module uses `pread`/`pwrite` on a
//! duplicate of the device fd for configuration and BAR access, and raw ioctls
//! (`vfio_sys`) for device info, region info, SET_IRQS and RESET, so every failure
//! reaches the caller. BARs are mmapped by hand, respecting sparse-mmap areas (the
//! MSI-X table is never mapped unless the kernel says it may be).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vdpa::NotifyArea;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_RESET, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};
use vmm_sys_util::eventfd::EventFd;

use crate::dma_share::{backing_of, DmaMaps};
use crate::pci::{check_width, PciFunction, ResetOutcome};
use crate::vfio_error::VfioError;
use crate::vfio_sys::{self, MmapArea, RegionInfo};

/// Bytes pinned by all VFIO containers of this process (type1 counts them all
/// against one RLIMIT_MEMLOCK).
static PINNED: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn vfio_err(what: impl std::fmt::Display, error: vfio_ioctls::VfioError) -> io::Error {
    VfioError::Crate {
        what: what.to_string(),
        error,
    }
    .into()
}

/// One VM's IOMMU domain: a VFIO container shared by all of that VM's functions.
pub struct VfioVm {
    name: String,
    container: Arc<VfioContainer>,
    maps: Mutex<DmaMaps>,
}

impl VfioVm {
    /// Opens a new container (`/dev/vfio/vfio`) for VM `name`.
    pub fn new(name: &str) -> io::Result<Arc<Self>> {
        if !Path::new("/dev/vfio/vfio").exists() {
            return Err(VfioError::NoVfio.into());
        }
        let container = VfioContainer::new(None)
            .map_err(|e| vfio_err(format!("opening the VFIO container for {name}"), e))?;
        Ok(Arc::new(VfioVm {
            name: name.into(),
            container: Arc::new(container),
            maps: Mutex::new(DmaMaps::default()),
        }))
    }

    /// The VM name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Maps `[iova, iova + size)` to `host` for device `owner` (reference counted per
    /// identical range showing the same memory; refused for other memory).
    ///
    /// # Safety
    /// As [`PciFunction::dma_map`]: the host range stays mapped until the matching
    /// number of [`unmap`](Self::unmap) calls.
    unsafe fn map(&self, iova: u64, size: u64, host: *mut u8, owner: &str) -> io::Result<()> {
        let backing = backing_of(host)?;
        let mut maps = lock(&self.maps);
        if maps.share(iova, size, &backing, owner)? {
            return Ok(());
        }
        vfio_sys::check_memlock(PINNED.load(Ordering::SeqCst), size)?;
        let len = usize::try_from(size).map_err(io::Error::other)?;
        if backing.is_private_file() {
            // Pinning copies every page: the device would work on a snapshot.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{owner}: iova {iova:#x} size {size:#x} is a private mapping of a file \
                     ({backing}): a DMA pin would copy it; map the file shared"
                ),
            ));
        }
        if !backing.writable {
            // SAFETY: forwarded from this function's contract.
            unsafe { vfio_sys::dma_map_read_only(self.container.as_raw_fd(), iova, size, host) }?;
            tracing::info!(vm = %self.name, owner, iova = format_args!("{iova:#x}"),
                  size = format_args!("{size:#x}"),
                  "vfio: DMA mapped read-only (the device may only read this memory)");
        } else {
            // SAFETY: forwarded from this function's contract.
            unsafe { self.container.vfio_dma_map(iova, len, host) }.map_err(|e| {
                vfio_err(
                    format!(
                        "VFIO_IOMMU_MAP_DMA iova {iova:#x} size {size:#x} for {}",
                        self.name
                    ),
                    e,
                )
            })?;
        }
        PINNED.fetch_add(size, Ordering::SeqCst);
        maps.insert(iova, size, backing, owner);
        Ok(())
    }

    fn unmap(&self, iova: u64, size: u64, owner: &str) -> io::Result<()> {
        let mut maps = lock(&self.maps);
        if !maps.release(iova, size, owner)? {
            return Ok(());
        }
        let len = usize::try_from(size).map_err(io::Error::other)?;
        self.container.vfio_dma_unmap(iova, len).map_err(|e| {
            vfio_err(
                format!("VFIO_IOMMU_UNMAP_DMA iova {iova:#x} size {size:#x}"),
                e,
            )
        })?;
        maps.remove(iova, size);
        PINNED.fetch_sub(size, Ordering::SeqCst);
        Ok(())
    }
}

/// A BAR area mapped into this process.
#[derive(Debug)]
struct Mapped {
    area: MmapArea,
    ptr: *mut u8,
}

#[derive(Debug, Default)]
struct Bar {
    info: RegionInfo,
    maps: Vec<Mapped>,
}

/// A PCI function bound to vfio-pci, opened in a [`VfioVm`].
// Field order is drop order: the duplicate fd must be closed before the VfioDevice
// (whose drop detaches the group from the container, EBUSY while any device fd of the
// group is open), and the container (in `vm`) must outlive the device.
pub struct VfioFunction {
    bdf: String,
    /// Who the function's DMA mappings are for, in messages about sharing them: the
    /// device it serves and its address ([`serving`](Self::serving)), or the address.
    owner: String,
    fd: Arc<File>,
    flags: u32,
    config: RegionInfo,
    bars: Vec<Bar>,
    msix_count: u16,
    my_maps: Mutex<Vec<(u64, u64)>>,
    msix_on: std::sync::atomic::AtomicBool,
    /// How many vectors the last `set_msix` routed (the ones `set_msix_vector` may
    /// change).
    msix_routed: std::sync::atomic::AtomicU16,
    _device: VfioDevice,
    vm: Arc<VfioVm>,
}

// SAFETY: the raw pointers are addresses of BAR mappings owned by this struct until
// Drop; accesses through them are volatile MMIO, which is safe from any thread.
unsafe impl Send for VfioFunction {}
// SAFETY: see Send; no interior state is mutated through the pointers' owner.
unsafe impl Sync for VfioFunction {}

/// The sysfs directory of a PCI function.
pub(crate) fn sysfs_path(bdf: &str) -> PathBuf {
    PathBuf::from("/sys/bus/pci/devices").join(bdf)
}

fn check_bound_to_vfio(bdf: &str) -> io::Result<()> {
    let dev = sysfs_path(bdf);
    if !dev.exists() {
        return Err(VfioError::NoFunction {
            bdf: bdf.into(),
            sysfs: dev,
        }
        .into());
    }
    let driver = std::fs::read_link(dev.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    if driver.as_deref() != Some("vfio-pci") {
        return Err(VfioError::NotVfioBound {
            bdf: bdf.into(),
            driver,
            sysfs: dev,
        }
        .into());
    }
    if !dev.join("iommu_group").exists() {
        return Err(VfioError::NoIommuGroup { bdf: bdf.into() }.into());
    }
    Ok(())
}

impl VfioFunction {
    /// Names the device this function serves in what its DMA mappings say about their
    /// owner (a refused shared mapping names both devices and their functions).
    pub fn serving(mut self, device: &str) -> Self {
        self.owner = format!("device {device} ({})", self.bdf);
        self
    }

    /// Opens function `bdf` (e.g. `0000:01:00.0`, bound to vfio-pci) in `vm`'s
    /// container, reads its regions and MSI-X count, and mmaps its BARs.
    pub fn open(vm: &Arc<VfioVm>, bdf: &str) -> io::Result<Self> {
        check_bound_to_vfio(bdf)?;
        let ops: Arc<dyn VfioOps> = vm.container.clone();
        let device = VfioDevice::new(&sysfs_path(bdf), ops, false)
            .map_err(|e| vfio_err(format!("opening {bdf} through VFIO"), e))?;
        // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd we own (checked).
        let dup = unsafe { libc::fcntl(device.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `dup` is a fresh descriptor owned by nobody else.
        let fd = unsafe { File::from_raw_fd(dup) };
        let flags = vfio_sys::device_flags(fd.as_raw_fd())?;
        let config = vfio_sys::region_info(fd.as_raw_fd(), VFIO_PCI_CONFIG_REGION_INDEX)?;
        let mut bars = Vec::new();
        for i in 0..6 {
            let info = vfio_sys::region_info(fd.as_raw_fd(), i)?;
            let maps = map_bar(&fd, bdf, i, &info);
            bars.push(Bar { info, maps });
        }
        let msix_count = device
            .get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
            .map_or(0, |i| i.count.min(u32::from(u16::MAX)) as u16);
        tracing::info!(bdf, vm = %vm.name, reset = flags & VFIO_DEVICE_FLAGS_RESET != 0, msix_count,
            mapped_bars = ?bars.iter().enumerate().filter(|(_, b)| !b.maps.is_empty()).map(|(i, _)| i).collect::<Vec<_>>(),
            "vfio: function opened");
        Ok(VfioFunction {
            vm: vm.clone(),
            bdf: bdf.into(),
            owner: bdf.into(),
            _device: device,
            fd: Arc::new(fd),
            flags,
            config,
            bars,
            msix_count,
            my_maps: Mutex::new(Vec::new()),
            msix_on: std::sync::atomic::AtomicBool::new(false),
            msix_routed: std::sync::atomic::AtomicU16::new(0),
        })
    }

    /// Whether VFIO_DEVICE_RESET is available (FLR or equivalent).
    pub fn can_reset(&self) -> bool {
        self.flags & VFIO_DEVICE_FLAGS_RESET != 0
    }

    fn bar(&self, bar: u8) -> io::Result<&Bar> {
        self.bars
            .get(usize::from(bar))
            .filter(|b| b.info.size > 0)
            .ok_or_else(|| {
                VfioError::NoBar {
                    bdf: self.bdf.clone(),
                    bar,
                }
                .into()
            })
    }

    fn pread_exact(&self, buf: &mut [u8], at: u64, what: &str) -> io::Result<()> {
        let n = self.fd.read_at(buf, at)?;
        if n != buf.len() {
            return Err(VfioError::ShortRead {
                bdf: self.bdf.clone(),
                what: what.into(),
                done: n,
                len: buf.len(),
            }
            .into());
        }
        Ok(())
    }

    fn pwrite_exact(&self, data: &[u8], at: u64, what: &str) -> io::Result<()> {
        let n = self.fd.write_at(data, at)?;
        if n != data.len() {
            return Err(VfioError::ShortWrite {
                bdf: self.bdf.clone(),
                what: what.into(),
                done: n,
                len: data.len(),
            }
            .into());
        }
        Ok(())
    }
}

/// mmaps the mappable areas of BAR `index` (all of it, or its sparse areas).
fn map_bar(fd: &File, bdf: &str, index: u32, info: &RegionInfo) -> Vec<Mapped> {
    if info.size == 0 || info.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
        return Vec::new();
    }
    let areas = info.sparse.clone().unwrap_or_else(|| {
        vec![MmapArea {
            offset: 0,
            size: info.size,
        }]
    });
    let mut out = Vec::new();
    for a in areas {
        let Ok(len) = usize::try_from(a.size) else {
            continue;
        };
        // SAFETY: a fresh shared mapping of the device fd at the offset VFIO gave for
        // this region; the kernel validates offset and length against the BAR.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                (info.offset + a.offset) as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            tracing::warn!(bdf, bar = index, offset = a.offset, error = %io::Error::last_os_error(),
                "vfio: BAR mmap failed, using pread/pwrite");
            continue;
        }
        out.push(Mapped {
            area: a,
            ptr: p as *mut u8,
        });
    }
    out
}

impl Drop for VfioFunction {
    fn drop(&mut self) {
        for (iova, size) in std::mem::take(&mut *lock(&self.my_maps)) {
            if let Err(e) = self.vm.unmap(iova, size, &self.owner) {
                tracing::error!(bdf = %self.bdf, error = %e, "vfio: unmap on close failed");
            }
        }
        for b in &self.bars {
            for m in &b.maps {
                // SAFETY: exactly the mapping mmap returned; no access after Drop.
                unsafe { libc::munmap(m.ptr as *mut libc::c_void, m.area.size as usize) };
            }
        }
    }
}

impl PciFunction for VfioFunction {
    fn describe(&self) -> String {
        format!("vfio {}", self.bdf)
    }

    fn config_read(&self, offset: u16, buf: &mut [u8]) -> io::Result<()> {
        self.pread_exact(buf, self.config.offset + u64::from(offset), "config read")
    }

    fn config_write(&self, offset: u16, data: &[u8]) -> io::Result<()> {
        self.pwrite_exact(data, self.config.offset + u64::from(offset), "config write")
    }

    fn bar_read(&self, bar: u8, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_width(buf.len())?;
        let b = self.bar(bar)?;
        let len = buf.len() as u64;
        if let Some(m) = b
            .maps
            .iter()
            .find(|m| offset >= m.area.offset && offset + len <= m.area.offset + m.area.size)
        {
            let at = (offset - m.area.offset) as usize;
            // SAFETY: `at + len` lies inside this live BAR mapping; MMIO registers are
            // read with one volatile access of their natural width (aligned by spec).
            unsafe {
                let p = m.ptr.add(at);
                match buf.len() {
                    1 => buf[0] = std::ptr::read_volatile(p),
                    2 => {
                        buf.copy_from_slice(&std::ptr::read_volatile(p as *const u16).to_ne_bytes())
                    }
                    _ => {
                        buf.copy_from_slice(&std::ptr::read_volatile(p as *const u32).to_ne_bytes())
                    }
                }
            }
            return Ok(());
        }
        if offset + len > b.info.size {
            return Err(VfioError::BeyondBar {
                bar,
                access: "read",
                offset,
            }
            .into());
        }
        self.pread_exact(
            buf,
            b.info.offset + offset,
            &format!("BAR{bar} read at {offset:#x}"),
        )
    }

    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> io::Result<()> {
        check_width(data.len())?;
        let b = self.bar(bar)?;
        let len = data.len() as u64;
        if let Some(m) = b
            .maps
            .iter()
            .find(|m| offset >= m.area.offset && offset + len <= m.area.offset + m.area.size)
        {
            let at = (offset - m.area.offset) as usize;
            // SAFETY: as in bar_read, one volatile store of the register's width.
            unsafe {
                let p = m.ptr.add(at);
                match data.len() {
                    1 => std::ptr::write_volatile(p, data[0]),
                    2 => std::ptr::write_volatile(
                        p as *mut u16,
                        u16::from_ne_bytes([data[0], data[1]]),
                    ),
                    _ => std::ptr::write_volatile(
                        p as *mut u32,
                        u32::from_ne_bytes([data[0], data[1], data[2], data[3]]),
                    ),
                }
            }
            return Ok(());
        }
        if offset + len > b.info.size {
            return Err(VfioError::BeyondBar {
                bar,
                access: "write",
                offset,
            }
            .into());
        }
        self.pwrite_exact(
            data,
            b.info.offset + offset,
            &format!("BAR{bar} write at {offset:#x}"),
        )
    }

    fn bar_mapped(&self, bar: u8) -> bool {
        self.bars
            .get(usize::from(bar))
            .is_some_and(|b| !b.maps.is_empty())
    }

    unsafe fn dma_map(&self, iova: u64, size: u64, host: *mut u8) -> io::Result<()> {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.vm.map(iova, size, host, &self.owner) }?;
        lock(&self.my_maps).push((iova, size));
        Ok(())
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> io::Result<()> {
        let mut mine = lock(&self.my_maps);
        let Some(i) = mine.iter().position(|&m| m == (iova, size)) else {
            return Err(VfioError::NotMappedHere {
                bdf: self.bdf.clone(),
                iova,
                size,
            }
            .into());
        };
        self.vm.unmap(iova, size, &self.owner)?;
        mine.swap_remove(i);
        Ok(())
    }

    /// The page's place in the device descriptor, when it lies inside an area of the
    /// BAR that VFIO lets us map (a sparse area: never the MSI-X table).
    fn doorbell_page(&self, bar: u8, offset: u64) -> Result<NotifyArea, String> {
        const PAGE: u64 = 4096;
        let b = self.bar(bar).map_err(|e| e.to_string())?;
        if b.info.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(format!(
                "VFIO does not let BAR{bar} of {} be mapped",
                self.bdf
            ));
        }
        if !offset.is_multiple_of(PAGE) {
            return Err(format!("BAR{bar} offset {offset:#x} is not page-aligned"));
        }
        let inside = b
            .maps
            .iter()
            .any(|m| m.area.offset <= offset && offset + PAGE <= m.area.offset + m.area.size);
        if !inside {
            return Err(format!(
                "BAR{bar} offset {offset:#x} of {} is outside the areas VFIO lets us map",
                self.bdf
            ));
        }
        Ok(NotifyArea {
            file: self.fd.clone(),
            offset: b.info.offset + offset,
            size: PAGE,
        })
    }

    fn msix_vectors(&self) -> u16 {
        self.msix_count
    }

    fn set_msix(&self, fds: &[&EventFd]) -> io::Result<()> {
        if fds.len() > usize::from(self.msix_count) {
            return Err(VfioError::TooManyVectors {
                bdf: self.bdf.clone(),
                fds: fds.len(),
                vectors: self.msix_count,
            }
            .into());
        }
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        vfio_sys::set_msix(self.fd.as_raw_fd(), &raw)?;
        self.msix_on.store(!raw.is_empty(), Ordering::SeqCst);
        self.msix_routed.store(raw.len() as u16, Ordering::SeqCst);
        Ok(())
    }

    fn set_msix_vector(&self, vector: u16, fd: &EventFd) -> io::Result<()> {
        let routed = self.msix_routed.load(Ordering::SeqCst);
        if !self.msix_on.load(Ordering::SeqCst) || vector >= routed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: MSI-X vector {vector} is not routed ({routed} are)",
                    self.bdf
                ),
            ));
        }
        vfio_sys::set_msix_from(self.fd.as_raw_fd(), u32::from(vector), &[fd.as_raw_fd()])
    }

    fn clear_msix(&self) -> io::Result<()> {
        // Disabling MSI-X that is not enabled is EINVAL: nothing to do then.
        if !self.msix_on.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        vfio_sys::set_msix(self.fd.as_raw_fd(), &[])
    }

    fn reset(&self) -> io::Result<ResetOutcome> {
        if !self.can_reset() {
            tracing::warn!(bdf = %self.bdf, "vfio: no function reset (no FLR; put the NIC behind a PCIe root port)");
            return Ok(ResetOutcome::Unsupported);
        }
        vfio_sys::device_reset(self.fd.as_raw_fd())?;
        Ok(ResetOutcome::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_function_is_a_clear_error() {
        let e = check_bound_to_vfio("ffff:ff:1f.7").unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn container_without_vfio_is_a_clear_error() {
        if Path::new("/dev/vfio/vfio").exists() {
            return; // a host with VFIO: nothing to check here
        }
        let e = VfioVm::new("vm1").err().unwrap();
        assert!(e.to_string().contains("/dev/vfio/vfio"), "{e}");
    }
}
