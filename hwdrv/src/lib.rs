//! hwdrv: the hardware datapath of vdpad. A NIC whose hardware consumes virtio rings
//! (a virtio-pci function, an IFC-style VF) is driven through VFIO; the guest's rings
//! are programmed into it and its interrupts routed straight to the guest's call
//! eventfds. See `docs/offload.md`.
//!
//! - [`pci`]: the PCI function trait, with two implementations: [`vfio`] (real
//!   hardware; raw calls in `vfio_sys`, errors in [`vfio_error`]) and `sim` (a
//!   simulated virtio-net function for tests, only with the `test-utils` feature).
//! - [`spec`]: PCI and virtio constants.
//! - [`virtio_pci`]: the virtio 1.x modern PCI driver over a PCI function.
//! - [`capabilities`]: what a NIC can serve and which features to negotiate with it.
//! - [`dma_share`]: sharing DMA mappings between functions of one VM only for the same memory.
//! - [`kick_relay`]: the thread that turns guest kicks into NIC doorbell writes.
//! - [`offload`]: [`OffloadDatapath`], the [`vdpa::Datapath`] implementation.
//! - [`mod@classify`]: auto-mode classification of a PCI function (offload or software).

pub mod capabilities;
pub mod classify;
pub mod dma_share;
pub mod kick_relay;
pub mod offload;
pub mod pci;
#[cfg(any(test, feature = "test-utils"))]
pub mod sim;
pub mod spec;
pub mod used_tally;
pub mod vfio;
pub mod vfio_error;
pub(crate) mod vfio_sys;
pub mod virtio_pci;

pub use capabilities::{NicCapabilities, Unsuitable};
pub use classify::{classify, Classification, Decision};
pub use offload::{Addresses, OffloadDatapath, OffloadError};
pub use pci::{PciFunction, ResetOutcome};
#[cfg(any(test, feature = "test-utils"))]
pub use sim::{SimConfig, SimNic};
pub use vfio::{VfioFunction, VfioVm};
pub use vfio_error::VfioError;
pub use virtio_pci::{VirtioError, VirtioPci};
