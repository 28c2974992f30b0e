//! A ring's interrupt line: the call eventfd a worker writes, replaceable while the
//! worker runs (the frontend may re-send SET_VRING_CALL at any time).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vdpa::notify::{self, Signal};

use vmm_sys_util::eventfd::EventFd;

/// The call eventfd of one ring, shared by its worker and the control plane.
#[derive(Debug, Default)]
pub struct Interrupt {
    call: Mutex<Option<Arc<EventFd>>>,
    /// A failed write was logged (once per line).
    logged: AtomicBool,
    /// A full counter was logged (once per line).
    full_logged: AtomicBool,
}

impl Interrupt {
    /// An interrupt line signalling `call` (`None`: the frontend polls).
    pub fn new(call: Option<Arc<EventFd>>) -> Self {
        Interrupt {
            call: Mutex::new(call),
            logged: AtomicBool::new(false),
            full_logged: AtomicBool::new(false),
        }
    }

    /// Interrupts the guest, never blocking (the frontend may hand us a blocking
    /// eventfd and fill its counter). The lock is uncontended except during a switch,
    /// and this runs at most once per burst.
    pub fn signal(&self) {
        let call = self.call.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = call.as_ref() {
            match notify::signal(fd.as_raw_fd()) {
                Signal::Sent => {}
                // A saturated counter still reads as "interrupt pending". Only a
                // frontend that never reads its eventfd (or hands over a blocking one
                // it filled) gets here: said once, then skipped without a word.
                Signal::Full => {
                    if !self.full_logged.swap(true, Ordering::Relaxed) {
                        tracing::warn!("the call eventfd's counter is full (the frontend does not read it); interrupts are skipped while it stays full (logged once)");
                    }
                }
                Signal::Failed(e) => {
                    if !self.logged.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "cannot write the call eventfd; the guest misses interrupts (logged once)");
                    }
                }
            }
        }
    }

    /// Switches to `call` and signals it once, so that an interrupt sent to the old
    /// eventfd during the switch is not lost (a spurious one is harmless).
    pub fn replace(&self, call: Option<Arc<EventFd>>) {
        *self.call.lock().unwrap_or_else(|e| e.into_inner()) = call;
        self.signal();
    }
}
