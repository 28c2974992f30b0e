//! A ring's interrupt line: the call eventfd a worker writes, replaceable while the
//! worker runs (the frontend may re-send SET_VRING_CALL at any time).

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// The call eventfd of one ring, shared by its worker and the control plane.
#[derive(Debug, Default)]
pub struct Interrupt {
    call: Mutex<Option<Arc<EventFd>>>,
}

impl Interrupt {
    /// An interrupt line signalling `call` (`None`: the frontend polls).
    pub fn new(call: Option<Arc<EventFd>>) -> Self {
        Interrupt {
            call: Mutex::new(call),
        }
    }

    /// Interrupts the guest. The lock is uncontended except during a switch, and this
    /// runs at most once per burst.
    pub fn signal(&self) {
        let call = self.call.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = call.as_ref() {
            // A saturated counter still reads as "interrupt pending".
            let _ = fd.write(1);
        }
    }

    /// Switches to `call` and signals it once, so that an interrupt sent to the old
    /// eventfd during the switch is not lost (a spurious one is harmless).
    pub fn replace(&self, call: Option<Arc<EventFd>>) {
        *self.call.lock().unwrap_or_else(|e| e.into_inner()) = call;
        self.signal();
    }
}
