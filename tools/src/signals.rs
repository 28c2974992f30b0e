//! Signal handling without async handlers: the daemon blocks its signals in every
//! thread and the main thread waits for them synchronously with `sigwaitinfo`.

use std::io;

/// What the main thread should do about a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: shut down cleanly.
    Terminate,
    /// SIGUSR1: log every queue's counters.
    DumpStats,
    /// SIGHUP: re-read the configuration.
    Reload,
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the daemon's signals in the calling thread and every thread it starts
/// afterwards. Call first thing in `main`, before any thread exists.
pub fn block() -> io::Result<()> {
    let set = signal_set();
    // SAFETY: `set` is an initialised signal set; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Waits for the next signal of interest.
pub fn wait() -> io::Result<Signal> {
    let set = signal_set();
    loop {
        // SAFETY: `set` is initialised; a null siginfo pointer is allowed.
        let s = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        match s {
            libc::SIGTERM | libc::SIGINT => return Ok(Signal::Terminate),
            libc::SIGUSR1 => return Ok(Signal::DumpStats),
            libc::SIGHUP => return Ok(Signal::Reload),
            -1 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            _ => {}
        }
    }
}
