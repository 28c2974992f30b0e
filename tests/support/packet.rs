//! Raw Ethernet on the host side of a test wire: AF_PACKET sockets opened inside a test
//! network namespace, a [`Reflector`] that sends every frame arriving on an interface
//! back out of it, and an injector for known frames.
//!
//! The sockets are opened on threads that entered the namespace with `setns(2)`
//! ([`run_in`]); a socket stays bound to its namespace's interface whichever thread
//! uses it later, so the test's own threads never leave the host namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::Netns;

/// Runs `f` on a new thread that first entered network namespace `ns`.
pub fn run_in<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/var/run/netns/{}", ns.name());
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns(2) with a namespace descriptor we own; it changes only the
        // calling thread's network namespace, and this thread is ours.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
        f()
    })
}

/// Where a received frame came from, as AF_PACKET reports it (`sll_pkttype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketDirection {
    /// Sent towards this host by the interface's peer (for a tap: written by the
    /// program that holds it, e.g. QEMU transmitting for the guest's NIC).
    Incoming,
    /// Sent out of the interface by this host (by another socket, or the stack).
    Outgoing,
}

/// An AF_PACKET socket bound to one interface, all ethertypes.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
    ifname: String,
}

impl PacketSocket {
    /// Opens a socket on `ifname` in the calling thread's network namespace, with 8 MiB
    /// buffers both ways (a slow test thread must not be where frames are lost).
    pub fn open(ifname: &str) -> io::Result<PacketSocket> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let cname = std::ffi::CString::new(ifname)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
        // SAFETY: `cname` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("interface {ifname}: {e}")));
        }
        let mut sll = Self::address(ifindex as i32);
        sll.sll_protocol = proto;
        // SAFETY: binding with a fully initialised sockaddr_ll of its exact size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let big: libc::c_int = 8 << 20;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            // SAFETY: an int socket option passed with its exact size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&big as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                );
            }
        }
        Ok(PacketSocket {
            fd,
            ifindex: ifindex as i32,
            ifname: ifname.to_string(),
        })
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    fn address(ifindex: i32) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data for which all-zero bytes are valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex;
        sll
    }

    /// Sends one complete Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let sll = Self::address(self.ifindex);
        // SAFETY: the buffer and the address are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != frame.len() {
            return Err(io::Error::other(format!(
                "sent {n} of {} bytes on {}",
                frame.len(),
                self.ifname
            )));
        }
        Ok(())
    }

    /// Receives one frame into `buf`, waiting at most `timeout`; `None` on timeout.
    pub fn recv(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> io::Result<Option<(usize, PacketDirection)>> {
        if !self.readable(timeout)? {
            return Ok(None);
        }
        let mut from = Self::address(0);
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: the buffer and the address are valid for the sizes given.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            return nothing_on(io::ErrorKind::WouldBlock);
        }
        let dir = if from.sll_pkttype == libc::PACKET_OUTGOING {
            PacketDirection::Outgoing
        } else {
            PacketDirection::Incoming
        };
        Ok(Some((n as usize, dir)))
    }
}

/// The last OS error as `Ok(None)` when it is of `kind` (nothing to read now),
/// else as the error.
fn nothing_on<T>(kind: io::ErrorKind) -> io::Result<Option<T>> {
    let e = io::Error::last_os_error();
    if e.kind() == kind {
        Ok(None)
    } else {
        Err(e)
    }
}

impl PacketSocket {
    /// Waits at most `timeout` for a frame to read; false on timeout (or a signal).
    fn readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut p, 1, ms) };
        if rc < 0 {
            return nothing_on(io::ErrorKind::Interrupted).map(|n: Option<()>| n.is_some());
        }
        Ok(rc > 0)
    }

    /// Reports each received frame's VLAN tag from now on (`PACKET_AUXDATA`): the
    /// kernel takes 802.1Q tags off frames before a packet socket sees them.
    pub fn report_vlans(&self) -> io::Result<()> {
        let one: libc::c_int = 1;
        // SAFETY: an int socket option passed with its exact size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one frame into `buf` within `timeout` with its VLAN id (after
    /// [`report_vlans`](Self::report_vlans)); `None` on timeout.
    pub fn recv_vlan(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> io::Result<Option<(usize, Option<u16>)>> {
        if !self.readable(timeout)? {
            return Ok(None);
        }
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is valid; its pointers are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: `msg` points at `buf` and `control`, both live for the call.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return nothing_on(io::ErrorKind::WouldBlock);
        }
        let mut vlan = None;
        // SAFETY: the CMSG macros walk the control buffer the kernel filled, bounded by
        // msg_controllen; PACKET_AUXDATA carries a tpacket_auxdata, read unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                    let aux: libc::tpacket_auxdata =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    // TP_STATUS_VLAN_VALID
                    if aux.tp_status & (1 << 4) != 0 {
                        vlan = Some(aux.tp_vlan_tci & 0x0fff);
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok(Some((n as usize, vlan)))
    }
}

/// What a [`Reflector`] saw.
#[derive(Clone, Debug, Default)]
pub struct ReflectorLog {
    /// Frames sent back.
    pub reflected: u64,
    /// Frames that could not be sent back (the error of the last one).
    pub send_errors: u64,
    /// The last send error.
    pub last_error: Option<String>,
    /// The first frames reflected (up to the capacity given at start), for inspection.
    pub kept: Vec<Vec<u8>>,
}

/// Sends every frame that arrives on an interface (from its peer: QEMU behind a tap,
/// the other end of a veth) back out of the same interface, until dropped.
pub struct Reflector {
    ifname: String,
    stop: Arc<AtomicBool>,
    reflected: Arc<AtomicU64>,
    log: Arc<Mutex<ReflectorLog>>,
    thread: Option<JoinHandle<()>>,
}

impl Reflector {
    /// Starts reflecting on `ifname` in `ns`, keeping copies of the first `keep`
    /// reflected frames. Returns once the socket is bound.
    pub fn start(ns: &Netns, ifname: &str, keep: usize) -> Reflector {
        let stop = Arc::new(AtomicBool::new(false));
        let reflected = Arc::new(AtomicU64::new(0));
        let log = Arc::new(Mutex::new(ReflectorLog::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s, r, l, name) = (
            stop.clone(),
            reflected.clone(),
            log.clone(),
            ifname.to_string(),
        );
        let thread = run_in(ns, move || {
            let sock = match PacketSocket::open(&name) {
                Ok(sock) => {
                    let _ = ready_tx.send(Ok(()));
                    sock
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                let got = match sock.recv(&mut buf, Duration::from_millis(50)) {
                    Ok(Some((n, PacketDirection::Incoming))) => n,
                    Ok(_) => continue,
                    Err(e) => {
                        let mut log = l.lock().unwrap_or_else(|p| p.into_inner());
                        log.last_error = Some(format!("recv: {e}"));
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let frame = &buf[..got];
                let res = sock.send(frame);
                let mut log = l.lock().unwrap_or_else(|p| p.into_inner());
                match res {
                    Ok(()) => {
                        log.reflected += 1;
                        r.fetch_add(1, Ordering::Relaxed);
                        if log.kept.len() < keep {
                            log.kept.push(frame.to_vec());
                        }
                    }
                    Err(e) => {
                        log.send_errors += 1;
                        log.last_error = Some(format!("send: {e}"));
                    }
                }
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("reflector on {ifname} in {}: {e}", ns.name()),
            Err(e) => panic!("reflector on {ifname} did not start: {e}"),
        }
        Reflector {
            ifname: ifname.to_string(),
            stop,
            reflected,
            log,
            thread: Some(thread),
        }
    }

    /// The interface it reflects on.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Frames reflected so far.
    pub fn reflected(&self) -> u64 {
        self.reflected.load(Ordering::Relaxed)
    }

    /// A copy of what it saw so far.
    pub fn log(&self) -> ReflectorLog {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the thread and returns what it saw.
    pub fn stop(mut self) -> ReflectorLog {
        self.halt();
        self.log()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Opens a packet socket on `ifname` inside `ns` (on a short-lived thread) and
/// returns it; the socket can then be used from any thread.
pub fn socket_in(ns: &Netns, ifname: &str) -> io::Result<PacketSocket> {
    let name = ifname.to_string();
    run_in(ns, move || PacketSocket::open(&name))
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Sends `frames` out of `sock` in rounds (all of them, then a pause of `every`) until
/// `done()` returns true or `timeout` passes; returns the number of rounds sent.
/// Repeating covers a receiver that was not listening yet when a round went out.
pub fn inject_until(
    sock: &PacketSocket,
    frames: &[Vec<u8>],
    every: Duration,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> io::Result<u64> {
    let deadline = Instant::now() + timeout;
    let mut rounds = 0;
    while !done() && Instant::now() < deadline {
        for f in frames {
            sock.send(f)?;
        }
        rounds += 1;
        std::thread::sleep(every);
    }
    Ok(rounds)
}
