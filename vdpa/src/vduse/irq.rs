//! Interrupts for a VDUSE device. The datapaths signal an eventfd per ring, as they do
//! for vhost-user (the offload datapath has its NIC's MSI-X vectors write them); VDUSE
//! takes interrupts only as an ioctl, so one relay thread per device waits on those
//! eventfds and turns each signal into `VDUSE_VQ_INJECT_IRQ`.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use tracing::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use super::control::IrqHandle;

/// A running interrupt relay; stopped (and joined) when dropped.
pub struct IrqRelay {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl IrqRelay {
    /// Relays `calls[i]` to virtqueue `i` of the device behind `irq`.
    pub fn start(name: &str, irq: IrqHandle, calls: Vec<Arc<EventFd>>) -> io::Result<Self> {
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let s = stop.clone();
        let device = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-irq"))
            .spawn(move || relay(&device, &irq, &calls, &s))?;
        Ok(IrqRelay {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for IrqRelay {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay(device: &str, irq: &IrqHandle, calls: &[Arc<EventFd>], stop: &EventFd) {
    let mut fds: Vec<libc::pollfd> = calls
        .iter()
        .map(|c| c.as_raw_fd())
        .chain(std::iter::once(stop.as_raw_fd()))
        .map(|fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut injected = 0u64;
    loop {
        // SAFETY: `fds` is a valid array of pollfd structs for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            warn!(device, error = %e, "VDUSE interrupt relay: poll failed; relay stops");
            return;
        }
        if fds[calls.len()].revents != 0 {
            debug!(device, injected, "VDUSE interrupt relay stopped");
            return;
        }
        for (i, call) in calls.iter().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            // Non-blocking eventfd: reading resets its counter; one injection covers
            // every signal since the last one, as an eventfd irqfd would.
            let _ = call.read();
            match irq.inject(i as u32) {
                Ok(()) => injected += 1,
                Err(e) => debug!(device, vq = i, error = %e, "VDUSE interrupt not injected"),
            }
        }
    }
}
