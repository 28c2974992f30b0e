//! What can go wrong opening and driving a function through VFIO.
//!
//! [`crate::pci::PciFunction`] speaks `io::Result` (the simulator and VFIO share it,
//! and callers mostly want the message), so these errors travel inside an
//! [`io::Error`] of the matching [`io::ErrorKind`]; a caller that needs the detail
//! gets it back with `io_error.get_ref()` and `downcast_ref::<VfioError>()`.

use std::io;
use std::path::PathBuf;

/// A VFIO failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// `/dev/vfio/vfio` is missing: no vfio-pci module or no IOMMU.
    #[error(
        "/dev/vfio/vfio does not exist: load vfio-pci and enable the IOMMU \
         (intel_iommu=on / amd_iommu=on) to use offload"
    )]
    NoVfio,
    /// A call into the `vfio-ioctls` crate failed.
    #[error("{what}: {}", chain(.error))]
    Crate {
        /// What was being done.
        what: String,
        /// The crate's error (shown with its cause).
        error: vfio_ioctls::VfioError,
    },
    /// A raw VFIO ioctl failed.
    #[error("{what}: {os}")]
    Ioctl {
        /// The ioctl and its argument.
        what: String,
        /// The kernel's error.
        os: io::Error,
    },
    /// Pinning more guest memory would exceed RLIMIT_MEMLOCK.
    #[error(
        "RLIMIT_MEMLOCK is {limit} bytes ({} MiB) but DMA-mapping guest memory needs {} \
         bytes ({} MiB: {pinned} already pinned + {more} more) locked; raise the limit \
         (systemd LimitMEMLOCK=infinity, `ulimit -l`) or grant CAP_IPC_LOCK",
        .limit >> 20,
        .pinned.saturating_add(*.more),
        .pinned.saturating_add(*.more).div_ceil(1 << 20)
    )]
    Memlock {
        /// The soft limit in bytes.
        limit: u64,
        /// Bytes already pinned by this process.
        pinned: u64,
        /// Bytes the mapping would add.
        more: u64,
    },
    /// No PCI function at that address.
    #[error("PCI function {bdf} does not exist ({} missing)", .sysfs.display())]
    NoFunction {
        /// The function's address.
        bdf: String,
        /// Its sysfs directory.
        sysfs: PathBuf,
    },
    /// The function is bound to another driver than vfio-pci.
    #[error(
        "{bdf} is bound to {}, not vfio-pci: echo vfio-pci > {p}/driver_override; \
         echo {bdf} > {p}/driver/unbind; echo {bdf} > /sys/bus/pci/drivers_probe",
        .driver.as_deref().unwrap_or("no driver"),
        p = .sysfs.display()
    )]
    NotVfioBound {
        /// The function's address.
        bdf: String,
        /// Its current driver, if any.
        driver: Option<String>,
        /// Its sysfs directory.
        sysfs: PathBuf,
    },
    /// The function has no IOMMU group.
    #[error("{bdf} has no IOMMU group: enable the IOMMU (intel_iommu=on)")]
    NoIommuGroup {
        /// The function's address.
        bdf: String,
    },
    /// The function has no such BAR (or it is empty).
    #[error("{bdf}: no BAR {bar}")]
    NoBar {
        /// The function's address.
        bdf: String,
        /// The BAR index.
        bar: u8,
    },
    /// An access reaches past the end of a BAR.
    #[error("BAR{bar} {access} at {offset:#x} beyond its size")]
    BeyondBar {
        /// The BAR index.
        bar: u8,
        /// `read` or `write`.
        access: &'static str,
        /// Offset in the BAR.
        offset: u64,
    },
    /// A read of the device fd returned fewer bytes than asked.
    #[error("{bdf}: {what}: read {done} of {len} bytes")]
    ShortRead {
        /// The function's address.
        bdf: String,
        /// What was read.
        what: String,
        /// Bytes read.
        done: usize,
        /// Bytes asked for.
        len: usize,
    },
    /// A write to the device fd took fewer bytes than given.
    #[error("{bdf}: {what}: wrote {done} of {len} bytes")]
    ShortWrite {
        /// The function's address.
        bdf: String,
        /// What was written.
        what: String,
        /// Bytes written.
        done: usize,
        /// Bytes given.
        len: usize,
    },
    /// No mapping of that range in the VM's container.
    #[error("no DMA mapping at iova {iova:#x} size {size:#x}")]
    NotMapped {
        /// Start of the range.
        iova: u64,
        /// Its length.
        size: u64,
    },
    /// This function did not map that range.
    #[error("{bdf}: no DMA mapping at iova {iova:#x} size {size:#x}")]
    NotMappedHere {
        /// The function's address.
        bdf: String,
        /// Start of the range.
        iova: u64,
        /// Its length.
        size: u64,
    },
    /// More eventfds than the function has MSI-X vectors.
    #[error("{bdf}: {fds} eventfds for {vectors} MSI-X vectors")]
    TooManyVectors {
        /// The function's address.
        bdf: String,
        /// Eventfds given.
        fds: usize,
        /// Vectors the function has.
        vectors: u16,
    },
}

/// `error`, followed by its cause when it has one (the crate's errors often keep the
/// errno there).
fn chain(error: &vfio_ioctls::VfioError) -> String {
    match std::error::Error::source(error) {
        Some(src) => format!("{error}: {src}"),
        None => error.to_string(),
    }
}

impl VfioError {
    /// The `io::ErrorKind` this error travels as.
    pub(crate) fn kind(&self) -> io::ErrorKind {
        match self {
            Self::NoVfio | Self::NoFunction { .. } => io::ErrorKind::NotFound,
            Self::NotMapped { .. } | Self::NotMappedHere { .. } => io::ErrorKind::NotFound,
            Self::Crate { .. } => io::ErrorKind::Other,
            Self::Ioctl { os, .. } => os.kind(),
            Self::Memlock { .. } => io::ErrorKind::OutOfMemory,
            Self::NotVfioBound { .. }
            | Self::NoIommuGroup { .. }
            | Self::NoBar { .. }
            | Self::BeyondBar { .. }
            | Self::TooManyVectors { .. } => io::ErrorKind::InvalidInput,
            Self::ShortRead { .. } => io::ErrorKind::UnexpectedEof,
            Self::ShortWrite { .. } => io::ErrorKind::WriteZero,
        }
    }
}

impl From<VfioError> for io::Error {
    fn from(e: VfioError) -> Self {
        io::Error::new(e.kind(), e)
    }
}
