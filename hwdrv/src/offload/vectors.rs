//! The NIC's MSI-X vectors as the datapath routes them: vector 0 is the configuration
//! interrupt (link changes), vector i + 1 is ring i's interrupt, which goes to the
//! ring's call eventfd or, while the ring has none (polled) or its pair does not run,
//! to a spare eventfd nobody reads. The whole table is routed once per bring-up;
//! after that every change is one vector ([`PciFunction::set_msix_vector`]), so the
//! interrupts of the other rings never pass through a moment without a route.

use std::io;
use std::sync::Arc;

use tracing::info;
use vdpa::DatapathError;
use vmm_sys_util::eventfd::EventFd;

use crate::pci::PciFunction;

/// The vector of ring `ring`.
pub(super) fn vector_of(ring: u16) -> u16 {
    ring + 1
}

/// The eventfds behind the NIC's vectors that belong to the datapath itself.
pub(super) struct Vectors {
    device: String,
    pci: Arc<dyn PciFunction>,
    /// Vector 0: the NIC's configuration interrupt.
    config: EventFd,
    /// One per ring: where its vector points while it has no call eventfd.
    spares: Vec<EventFd>,
}

impl Vectors {
    /// The config eventfd and a spare for each of `rings` rings.
    pub(super) fn new(device: &str, pci: Arc<dyn PciFunction>, rings: u16) -> io::Result<Self> {
        Ok(Vectors {
            device: device.to_owned(),
            pci,
            config: EventFd::new(libc::EFD_NONBLOCK)?,
            spares: (0..rings)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<io::Result<_>>()?,
        })
    }

    /// The configuration interrupt's eventfd.
    pub(super) fn config(&self) -> &EventFd {
        &self.config
    }

    /// Routes the whole table: 0 = config, i + 1 = `call(i)` or ring i's spare.
    pub(super) fn route_all<'a>(
        &'a self,
        call: impl Fn(u16) -> Option<&'a EventFd>,
    ) -> Result<(), DatapathError> {
        let mut fds: Vec<&EventFd> = vec![&self.config];
        for (ring, spare) in (0u16..).zip(&self.spares) {
            fds.push(call(ring).unwrap_or(spare));
        }
        self.pci.set_msix(&fds).map_err(|e| {
            DatapathError::backend(format!("routing {} MSI-X vectors", fds.len()), e)
        })?;
        info!(device = %self.device, vectors = fds.len(), "offload: MSI-X routed (0 = config, i+1 = ring i)");
        Ok(())
    }

    /// Routes ring `ring`'s vector alone, to `call` or to its spare.
    pub(super) fn route_ring(
        &self,
        ring: u16,
        call: Option<&EventFd>,
    ) -> Result<(), DatapathError> {
        let spare = self
            .spares
            .get(usize::from(ring))
            .ok_or_else(|| DatapathError::Ring {
                ring,
                what: format!("this offload has {} rings", self.spares.len()),
            })?;
        let vector = vector_of(ring);
        self.pci
            .set_msix_vector(vector, call.unwrap_or(spare))
            .map_err(|e| DatapathError::backend(format!("routing MSI-X vector {vector}"), e))
    }
}
