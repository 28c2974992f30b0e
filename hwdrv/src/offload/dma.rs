//! Guest memory as the NIC sees it: every region of a memory table DMA-mapped into
//! the function's IOMMU domain at the address the rings use, for as long as a
//! [`DmaMapping`] lives. Dropping it unmaps; a region the kernel refuses to unmap stays
//! mapped in this process too, since the NIC may still reach it.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{error, info};
use vdpa::{DatapathError, GuestMemory, MemoryRegion};

use super::Addresses;
use crate::dma_share::{backing_of, SharedView};
use crate::pci::PciFunction;

/// A memory table DMA-mapped for one NIC; unmapped when dropped.
pub(crate) struct DmaMapping {
    device: String,
    pci: Arc<dyn PciFunction>,
    /// The mapped table (taken only by `drop`).
    mem: Option<Arc<GuestMemory>>,
    /// Shared read-only views DMA-mapped instead of regions this process maps
    /// privately (by region index), dropped only after the DMA unmap.
    views: BTreeMap<usize, SharedView>,
}

impl DmaMapping {
    /// Maps every region of `mem` for `pci` at the address it is keyed by (IOVA = GPA
    /// for vhost-user, the driver's IOVA for VDUSE). A region that cannot be mapped
    /// unmaps the ones before it and fails with the region and the kernel's error.
    pub(crate) fn map(
        device: &str,
        pci: Arc<dyn PciFunction>,
        mem: &Arc<GuestMemory>,
        addresses: Addresses,
    ) -> Result<Self, DatapathError> {
        let mut me = DmaMapping {
            device: device.to_owned(),
            pci,
            mem: None,
            views: BTreeMap::new(),
        };
        for (i, r) in mem.regions().iter().enumerate() {
            let res = me.target(i, r).and_then(|host| {
                // SAFETY: `host` is a live mapping of the region's memory owned by
                // `mem` or by `me.views`, which this value keeps alive until its drop
                // has unmapped the region; nothing in this process holds references
                // into guest memory.
                unsafe { me.pci.dma_map(r.gpa(), r.size(), host) }
            });
            if let Err(e) = res {
                for done in &mem.regions()[..i] {
                    let _ = me.pci.dma_unmap(done.gpa(), done.size());
                }
                me.views.clear();
                return Err(DatapathError::backend(
                    format!(
                        "DMA map of guest region gpa {:#x} size {:#x}",
                        r.gpa(),
                        r.size()
                    ),
                    e,
                ));
            }
            let (iova, size) = (r.gpa(), r.size());
            let access = if me.views.contains_key(&i) {
                "read-only"
            } else {
                "read-write"
            };
            match addresses {
                Addresses::GuestPhysical => info!(device,
                    iova = format_args!("{iova:#x}"), size = format_args!("{size:#x}"), access = %access,
                    "offload: DMA mapped (IOVA = GPA)"),
                Addresses::DriverIova => info!(device,
                    iova = format_args!("{iova:#x}"), size = format_args!("{size:#x}"), access = %access,
                    "offload: DMA mapped (IOVA = the driver's IOVA, a VDUSE IOTLB region)"),
            }
        }
        me.mem = Some(mem.clone());
        Ok(me)
    }

    /// The mapped table.
    pub(crate) fn memory(&self) -> &Arc<GuestMemory> {
        self.mem.as_ref().expect("set once mapped")
    }

    /// The host address to DMA-map for region `i`: the region itself, or for a region
    /// this process maps privately from a file (a VDUSE IOTLB entry the device may only
    /// read, mapped copy-on-write) a shared read-only view of the same piece of the
    /// file, kept in `views`: pinning the private mapping would copy it, and the NIC
    /// would read a snapshot instead of the frontend's memory.
    fn target(&mut self, i: usize, r: &MemoryRegion) -> std::io::Result<*mut u8> {
        let private_file = backing_of(r.host_addr()).is_ok_and(|b| b.is_private_file());
        let Some(file) = r.file().filter(|_| private_file) else {
            return Ok(r.host_addr());
        };
        let view = SharedView::map(file, r.mmap_offset(), r.size())?;
        let host = view.host_addr();
        self.views.insert(i, view);
        Ok(host)
    }
}

impl Drop for DmaMapping {
    fn drop(&mut self) {
        let Some(mem) = self.mem.take() else {
            return;
        };
        let mut failed = false;
        for r in mem.regions() {
            if let Err(e) = self.pci.dma_unmap(r.gpa(), r.size()) {
                error!(device = %self.device, gpa = format_args!("{:#x}", r.gpa()), error = %e,
                       "offload: DMA unmap failed; keeping guest memory mapped");
                failed = true;
            }
        }
        let views = std::mem::take(&mut self.views);
        if failed {
            // The NIC may still reach this memory: never unmap it from the process.
            std::mem::forget(mem);
            std::mem::forget(views);
        }
    }
}
