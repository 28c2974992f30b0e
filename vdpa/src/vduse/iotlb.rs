//! The device's IOTLB as a memory table: every entry the kernel has, mapped into this
//! process and keyed by IOVA, so the datapaths translate IOVAs exactly as they
//! translate guest-physical addresses.
//!
//! Two kinds of entries exist. With `vhost_vdpa` (QEMU, DPDK) every entry is a piece
//! of the frontend's shared memory file; the table changes only with a
//! `VDUSE_UPDATE_IOTLB` request, after which it is read again. With `virtio_vdpa` (the
//! host kernel's own driver) entries belong to VDUSE's bounce domain, an anonymous file
//! whose offsets are IOVAs: the rings are coherent allocations above `bounce_size`, and
//! packet buffers are bounced through `[0, bounce_size)`, an entry the kernel creates
//! only when the first buffer is mapped (possibly after DRIVER_OK) and announces to
//! nobody. So when the domain file shows up, the whole bounce range is mapped at once
//! from it; its pages appear as the driver maps buffers, and a page the driver never
//! mapped faults like truncated guest memory would.

use std::fs::File;
use std::io;

use tracing::{debug, info};

use super::control::VduseDevice;
use super::sys::VDUSE_ACCESS_WO;
use crate::memory::{GuestMemory, MemoryError, MemoryRegion, MAX_REGIONS};
use crate::request::fd_kind;

/// What `/proc/self/fd` calls VDUSE's bounce domain file.
const DOMAIN_FILE: &str = "anon_inode:[vduse-domain]";

/// The bounce region's size when sysfs does not say (the kernel's default, 64 MiB).
const DEFAULT_BOUNCE_SIZE: u64 = 64 << 20;

/// Why the IOTLB could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IotlbError {
    /// The kernel refused to hand out an entry.
    #[error("reading IOTLB entry at {start:#x}")]
    Entry {
        /// Where the lookup started.
        start: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// An entry could not be mapped or does not fit the table.
    #[error("IOTLB entry {start:#x}..={last:#x}")]
    Map {
        /// First IOVA.
        start: u64,
        /// Last IOVA.
        last: u64,
        /// Why.
        #[source]
        source: MemoryError,
    },
    /// More entries than a memory table holds.
    #[error("more than {MAX_REGIONS} IOTLB entries")]
    TooMany,
}

/// Reads every IOTLB entry of `dev` into a memory table keyed by IOVA.
/// The table is refused if it maps more than `limit` bytes (`max_guest_memory`).
pub fn read_table(dev: &VduseDevice, limit: u64) -> Result<GuestMemory, IotlbError> {
    let bounce_size = bounce_size(dev.name());
    let mut regions = Vec::new();
    let mut domain: Option<File> = None;
    let mut next = 0u64;
    loop {
        let Some((e, file)) =
            dev.iotlb_entry(next, u64::MAX)
                .map_err(|source| IotlbError::Entry {
                    start: next,
                    source,
                })?
        else {
            break;
        };
        let in_domain = fd_kind(&file) == DOMAIN_FILE;
        debug!(
            device = dev.name(),
            start = format_args!("{:#x}", e.start),
            last = format_args!("{:#x}", e.last),
            offset = format_args!("{:#x}", e.offset),
            perm = e.perm,
            in_domain,
            "IOTLB entry"
        );
        if in_domain && domain.is_none() {
            domain = file.try_clone().ok();
        }
        if in_domain && e.start < bounce_size {
            // The bounce region: mapped whole below.
        } else {
            if regions.len() >= MAX_REGIONS {
                return Err(IotlbError::TooMany);
            }
            regions.push(map_entry(e.start, e.last, e.offset, e.perm, file)?);
        }
        match e.last.checked_add(1) {
            Some(n) => next = n,
            None => break,
        }
    }
    if let Some(file) = domain {
        regions.push(map_entry(0, bounce_size - 1, 0, VDUSE_ACCESS_WO, file)?);
    }
    let count = regions.len();
    let mem =
        GuestMemory::from_regions_with_limit(regions, limit).map_err(|source| IotlbError::Map {
            start: 0,
            last: u64::MAX,
            source,
        })?;
    for r in mem.regions() {
        info!(
            device = dev.name(),
            iova = format_args!("{:#x}", r.gpa()),
            size = format_args!("{:#x}", r.size()),
            "VDUSE IOTLB region mapped"
        );
    }
    debug!(device = dev.name(), regions = count, "IOTLB read");
    Ok(mem)
}

fn map_entry(
    start: u64,
    last: u64,
    offset: u64,
    perm: u8,
    file: File,
) -> Result<MemoryRegion, IotlbError> {
    let size = last
        .checked_sub(start)
        .and_then(|d| d.checked_add(1))
        .ok_or(IotlbError::Map {
            start,
            last,
            source: MemoryError::InvalidRegion {
                gpa: start,
                size: 0,
                user_addr: start,
                offset,
            },
        })?;
    MemoryRegion::map_iotlb(start, size, offset, file, perm & VDUSE_ACCESS_WO != 0).map_err(
        |source| IotlbError::Map {
            start,
            last,
            source,
        },
    )
}

/// The size of the device's bounce region, from sysfs.
fn bounce_size(name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/vduse/{name}/bounce_size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n: &u64| n > 0)
        .unwrap_or(DEFAULT_BOUNCE_SIZE)
}
