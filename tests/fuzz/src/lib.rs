//! Helpers shared by vdpad's fuzz targets: a little-endian byte cursor over the fuzz
//! input, and the real file descriptors (memfds, eventfds, pipes) some targets pass to
//! the code under test.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

/// Reads fixed-size little-endian fields from the front of the fuzz input. Past the end
/// every field reads as zero, so every input is a valid one.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    /// The next `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    /// A byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// A memfd of `len` bytes, the kind of file QEMU shares guest memory in.
pub fn memfd(len: u64) -> File {
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"vdpad-fuzz".as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).expect("ftruncate on a memfd");
    f
}

/// An eventfd, the kind of fd SET_VRING_KICK/CALL carry.
pub fn eventfd() -> File {
    // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    unsafe { File::from_raw_fd(fd) }
}

/// The read end of a pipe (the write end is closed): an fd that is neither a regular
/// file nor an eventfd.
pub fn pipe_end() -> File {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert!(rc == 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned by nothing else.
    let (read, write) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(write);
    read
}

/// `n` descriptors of kinds chosen by `kinds` (two bits each, cycling): a 16 KiB memfd,
/// an eventfd, a pipe, or an empty memfd.
pub fn fds(n: usize, kinds: u16) -> Vec<File> {
    (0..n)
        .map(|i| match (kinds >> ((2 * i) % 16)) & 3 {
            0 => memfd(0x4000),
            1 => eventfd(),
            2 => pipe_end(),
            _ => memfd(0),
        })
        .collect()
}
