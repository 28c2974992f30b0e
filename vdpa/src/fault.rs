//! Containment of faults on guest memory.
//!
//! A frontend owns the files its guest memory is mapped from. If it shrinks one
//! (`ftruncate`) under our mapping, the next access to the lost pages raises SIGBUS,
//! whose default action kills the whole daemon and every other device with it. Sealing
//! the file against shrinking prevents that, but memfds created without
//! `MFD_ALLOW_SEALING` and hugetlbfs files cannot be sealed.
//!
//! So every guest mapping registers its address range here, in a fixed table of slots
//! read lock-free by a process-wide SIGBUS handler. When a fault hits a registered
//! range, the handler replaces that whole range with anonymous zero memory
//! (`mmap(MAP_FIXED | MAP_ANONYMOUS)`, which is async-signal-safe), records the
//! faulting address in the slot and returns: the faulting access is restarted, now
//! completes on zeroes, and the owner of the mapping finds out through
//! [`Registration::fault`] (the datapath looks once per burst, through
//! [`GuestMemory::fault`](crate::GuestMemory::fault)) and stops the device that owns
//! the memory. A SIGBUS anywhere else goes to the handler that was installed before
//! ours (Rust's own, which reports stack overflows), or kills the process as it
//! always would.
//!
//! The only cost on the hot path is one relaxed load of a process-wide counter
//! ([`contained`]) per check, which stays zero until a fault was contained.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

use tracing::warn;

/// Slots in the registry: enough for 64 devices with 64 regions each.
const SLOTS: usize = 4096;

const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const ACTIVE: u8 = 2;

/// One registered mapping. Only the registering thread writes `start`/`end` (while
/// the slot is CLAIMED, before it becomes ACTIVE); the handler writes `faulted_at`.
struct Slot {
    state: AtomicU8,
    start: AtomicUsize,
    end: AtomicUsize,
    /// The address whose access faulted, 0 if none did.
    faulted_at: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    state: AtomicU8::new(FREE),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    faulted_at: AtomicUsize::new(0),
};

static REGISTRY: [Slot; SLOTS] = [EMPTY; SLOTS];

/// Faults contained since the process started.
static CONTAINED: AtomicU64 = AtomicU64::new(0);

/// The SIGBUS disposition before ours, to pass on faults that are not ours.
static PREVIOUS: OnceLock<Result<libc::sigaction, i32>> = OnceLock::new();

/// Number of guest-memory faults contained since the process started. Zero in a
/// healthy process: a caller checks this before looking at its own mappings.
#[inline]
pub fn contained() -> u64 {
    CONTAINED.load(Ordering::Relaxed)
}

/// Installs the SIGBUS handler (once per process; later calls return the first
/// outcome).
pub fn install() -> std::io::Result<()> {
    let r = PREVIOUS.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid value; we fill in the handler, the
        // flags and an empty mask before passing it. `old` is written by the kernel.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &act, &mut old) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            Ok(old)
        }
    });
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(std::io::Error::from_raw_os_error(*e)),
    }
}

/// A guest mapping's place in the registry; leaves it when dropped. Drop it *before*
/// unmapping the range.
#[derive(Debug)]
pub struct Registration {
    slot: usize,
}

impl Registration {
    /// Registers `[start, start + len)`, a mapping of guest memory, installing the
    /// handler if needed. `None` if the handler cannot be installed or every slot is
    /// taken: the mapping then is not protected (logged).
    pub fn new(start: *mut u8, len: usize) -> Option<Self> {
        if let Err(e) = install() {
            warn!(error = %e, "cannot install the SIGBUS handler; a frontend truncating its memory can crash the daemon");
            return None;
        }
        for (i, s) in REGISTRY.iter().enumerate() {
            if s.state
                .compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                s.start.store(start as usize, Ordering::Relaxed);
                s.end
                    .store((start as usize).saturating_add(len), Ordering::Relaxed);
                s.faulted_at.store(0, Ordering::Relaxed);
                s.state.store(ACTIVE, Ordering::Release);
                return Some(Registration { slot: i });
            }
        }
        warn!(
            slots = SLOTS,
            "guest memory registry full; a frontend truncating this region can crash the daemon"
        );
        None
    }

    /// The host address whose access faulted, if one did: the mapping now reads as
    /// zeroes and no longer shows the guest's memory.
    #[inline]
    pub fn fault(&self) -> Option<usize> {
        match REGISTRY[self.slot].faulted_at.load(Ordering::Acquire) {
            0 => None,
            a => Some(a),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let s = &REGISTRY[self.slot];
        s.state.store(CLAIMED, Ordering::Release);
        s.start.store(0, Ordering::Relaxed);
        s.end.store(0, Ordering::Relaxed);
        s.state.store(FREE, Ordering::Release);
    }
}

/// The SIGBUS handler. Only async-signal-safe work: atomics, mmap, sigaction, raise.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // si_code <= 0: sent by a process (kill, tgkill), not raised by an access.
    if code > 0 && contain(addr) {
        return;
    }
    pass_on(sig, info, ctx);
}

/// If `addr` lies in a registered mapping, replaces the mapping with anonymous zero
/// memory, records the fault and returns true.
fn contain(addr: usize) -> bool {
    for s in REGISTRY.iter() {
        if s.state.load(Ordering::Acquire) != ACTIVE {
            continue;
        }
        let (start, end) = (
            s.start.load(Ordering::Relaxed),
            s.end.load(Ordering::Relaxed),
        );
        if addr < start || addr >= end {
            continue;
        }
        // SAFETY: [start, end) is a live mapping of guest memory: it is registered
        // (ACTIVE) and a registration is dropped before its mapping is unmapped; and
        // the faulting thread holds the memory table it is accessing, so the mapping
        // cannot go away while we replace it. Replacing guest memory with zeroes
        // breaks nothing of ours: every reader of guest memory treats it as hostile.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                end - start,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return false;
        }
        let _ = s
            .faulted_at
            .compare_exchange(0, addr, Ordering::AcqRel, Ordering::Relaxed);
        CONTAINED.fetch_add(1, Ordering::Release);
        return true;
    }
    false
}

/// A SIGBUS that is not ours: hand it to the previous handler, or die of it.
fn pass_on(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if let Some(Ok(old)) = PREVIOUS.get() {
        let h = old.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            if old.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with SA_SIGINFO, so it
                // has this signature and expects exactly these arguments.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(h) };
                f(sig, info, ctx);
            } else {
                // SAFETY: a handler installed without SA_SIGINFO takes the signal only.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
            return;
        }
    }
    // SAFETY: sigaction and raise are async-signal-safe; the default action of SIGBUS
    // terminates the process (with a core dump). The signal is blocked while we run,
    // so it is delivered as soon as this handler returns.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
        libc::raise(libc::SIGBUS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_after_drop() {
        let mut buf = vec![0u8; 64];
        let a = Registration::new(buf.as_mut_ptr(), 64).unwrap();
        let slot = a.slot;
        assert_eq!(a.fault(), None);
        drop(a);
        // Another registration may take the same slot; it starts without a fault.
        let b = Registration::new(buf.as_mut_ptr(), 64).unwrap();
        assert_eq!(b.fault(), None);
        let _ = slot;
    }
}
