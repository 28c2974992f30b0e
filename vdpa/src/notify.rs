//! Reading kicks and writing interrupts on descriptors a frontend handed us, without
//! ever blocking and without spinning.
//!
//! The kick and call eventfds come from the frontend, which keeps its own copy: it can
//! pass a *blocking* eventfd and fill its counter (a write would then block until the
//! frontend reads it, forever), read our kick counter empty between our `poll` and our
//! `read`, hang up a pipe passed as a kick, or pass a regular file (always readable).
//! A datapath thread stuck in a system call cannot be stopped, and then the device
//! cannot be restarted or removed and the daemon cannot exit; a thread that keeps
//! waking for a descriptor that never stops being ready burns a core.
//!
//! So: on a blocking descriptor a read or write is only attempted after `poll` with a
//! zero timeout said it can proceed (the `O_NONBLOCK` flag is looked up every time,
//! because the frontend shares it and can change it); a full call counter is not
//! written (the guest has an interrupt pending anyway); and a kick descriptor that
//! hangs up, fails or reaches end of file is reported [`Kicks::Dead`] so its watcher
//! stops watching it.

use std::io;
use std::os::fd::RawFd;

/// Poll events that mean a descriptor will never deliver a kick again.
pub const DEAD_EVENTS: i16 = libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;

/// What writing an interrupt did.
#[derive(Debug)]
pub enum Signal {
    /// The counter was incremented.
    Sent,
    /// The counter is full (or a blocking descriptor is not writable now): the guest
    /// has an interrupt pending already. Nothing was written.
    Full,
    /// The write failed.
    Failed(io::Error),
}

/// What reading a kick descriptor found.
#[derive(Debug)]
pub enum Kicks {
    /// This many notifications (an eventfd's counter; 1 for other kinds of file).
    Some(u64),
    /// Nothing to read now.
    None,
    /// The descriptor hung up, failed or reached end of file: stop watching it.
    Dead(io::Error),
}

fn nonblocking(fd: RawFd) -> io::Result<bool> {
    // SAFETY: F_GETFL takes no argument and only reads the descriptor's flags.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl & libc::O_NONBLOCK != 0)
}

/// `poll`s `fd` for `events` without waiting; returns the events reported.
fn poll_now(fd: RawFd, events: i16) -> io::Result<i16> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n >= 0 {
            return Ok(p.revents);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Adds 1 to the call eventfd `fd`, never blocking.
pub fn signal(fd: RawFd) -> Signal {
    match nonblocking(fd) {
        Ok(true) => {}
        Ok(false) => match poll_now(fd, libc::POLLOUT) {
            Ok(ev) if ev & libc::POLLOUT != 0 => {}
            Ok(ev) if ev & DEAD_EVENTS != 0 => {
                return Signal::Failed(io::Error::from_raw_os_error(libc::EPIPE))
            }
            Ok(_) => return Signal::Full,
            Err(e) => return Signal::Failed(e),
        },
        Err(e) => return Signal::Failed(e),
    }
    let one = 1u64.to_ne_bytes();
    loop {
        // SAFETY: writes 8 bytes from a live local array.
        let n = unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
        if n >= 0 {
            return Signal::Sent;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Signal::Full,
            _ => return Signal::Failed(e),
        }
    }
}

/// Reads the kicks pending on `fd` (readiness `revents` from the caller's poll),
/// never blocking.
pub fn drain(fd: RawFd, revents: i16) -> Kicks {
    let readable = revents & libc::POLLIN != 0;
    if !readable && revents & DEAD_EVENTS != 0 {
        return Kicks::Dead(io::Error::other(format!(
            "kick descriptor hung up or failed (poll events {revents:#x})"
        )));
    }
    match nonblocking(fd) {
        Ok(true) => {}
        Ok(false) => match poll_now(fd, libc::POLLIN) {
            Ok(ev) if ev & libc::POLLIN != 0 => {}
            Ok(ev) if ev & DEAD_EVENTS != 0 => {
                return Kicks::Dead(io::Error::other("kick descriptor hung up"))
            }
            Ok(_) => return Kicks::None,
            Err(e) => return Kicks::Dead(e),
        },
        Err(e) => return Kicks::Dead(e),
    }
    let mut buf = [0u8; 8];
    loop {
        // SAFETY: reads at most 8 bytes into a live local array.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        return match n {
            8 => Kicks::Some(u64::from_ne_bytes(buf).max(1)),
            1..=7 => Kicks::Some(1),
            0 => Kicks::Dead(io::Error::other("kick descriptor reached end of file")),
            _ => {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => Kicks::None,
                    _ => Kicks::Dead(e),
                }
            }
        };
    }
}

/// Whether waiting for `fd` to become readable means anything: false for regular
/// files and directories, which `poll` always reports readable.
pub fn pollable(fd: RawFd) -> bool {
    // SAFETY: fstat fills a stat buffer we own; a zeroed stat is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    !matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn a_full_blocking_call_counter_is_skipped_not_waited_on() {
        let fd = EventFd::new(0).unwrap();
        fd.write(0xffff_ffff_ffff_fffe).unwrap();
        // A plain write(2) of 1 here blocks forever.
        assert!(matches!(signal(fd.as_raw_fd()), Signal::Full));
        assert_eq!(fd.read().unwrap(), 0xffff_ffff_ffff_fffe);
        assert!(matches!(signal(fd.as_raw_fd()), Signal::Sent));
        assert_eq!(fd.read().unwrap(), 1);
    }

    #[test]
    fn an_empty_blocking_kick_is_not_read() {
        let fd = EventFd::new(0).unwrap();
        // A caller that was told "readable" but lost the race reads nothing, at once.
        assert!(matches!(drain(fd.as_raw_fd(), libc::POLLIN), Kicks::None));
        fd.write(3).unwrap();
        assert!(matches!(
            drain(fd.as_raw_fd(), libc::POLLIN),
            Kicks::Some(3)
        ));
    }

    #[test]
    fn a_hung_up_pipe_is_dead_and_a_file_is_not_pollable() {
        let mut p = [0; 2];
        // SAFETY: pipe fills two descriptors we close below.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        // SAFETY: closing the write end we own.
        unsafe { libc::close(p[1]) };
        assert!(matches!(drain(p[0], libc::POLLHUP), Kicks::Dead(_)));
        assert!(matches!(drain(p[0], libc::POLLIN), Kicks::Dead(_)));
        // SAFETY: closing the read end we own.
        unsafe { libc::close(p[0]) };
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(!pollable(f.as_raw_fd()));
        assert!(pollable(EventFd::new(0).unwrap().as_raw_fd()));
    }
}
