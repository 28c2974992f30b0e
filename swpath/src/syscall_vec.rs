//! Scratch vectors of system-call descriptors (`iovec`, `mmsghdr`).
//!
//! A backend builds iovecs pointing into guest memory (and message headers pointing at
//! those iovecs) before each `readv`/`sendmmsg`-style call, and keeps the vectors to
//! reuse their allocation. The raw pointers inside make such a vector `!Send`, which
//! would make every port and queue holding one `!Send` too. [`SyscallVec`] is the one
//! place that says why moving one between threads is sound.

use std::ops::{Deref, DerefMut};

/// A descriptor the kernel reads during a system call, holding addresses only.
pub trait SyscallDesc: sealed::Sealed {}

impl SyscallDesc for libc::iovec {}
impl SyscallDesc for libc::mmsghdr {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for libc::iovec {}
    impl Sealed for libc::mmsghdr {}
}

/// A reusable vector of system-call descriptors.
#[derive(Debug)]
pub struct SyscallVec<T: SyscallDesc>(Vec<T>);

// SAFETY: the descriptors are plain addresses and lengths. Rust code never reads or
// writes through them; the owner rebuilds them before each system call and the
// kernel uses them only during that call, on the owner's thread. Moving the vector to
// another thread moves numbers, not access to anything.
unsafe impl<T: SyscallDesc> Send for SyscallVec<T> {}

impl<T: SyscallDesc> SyscallVec<T> {
    /// An empty vector with room for `n` descriptors.
    pub fn with_capacity(n: usize) -> Self {
        SyscallVec(Vec::with_capacity(n))
    }

    /// A vector holding `v`.
    pub fn from_vec(v: Vec<T>) -> Self {
        SyscallVec(v)
    }
}

impl<T: SyscallDesc> Default for SyscallVec<T> {
    fn default() -> Self {
        SyscallVec(Vec::new())
    }
}

impl<T: SyscallDesc> Deref for SyscallVec<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T: SyscallDesc> DerefMut for SyscallVec<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.0
    }
}
