//! What the simulated NIC's port is plugged into: an in-process loopback (every frame
//! sent comes back on the same queue pair), a channel a test can inject into and read
//! from, or a tap device (for end-to-end tests in a network namespace).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

/// Frames a loopback or channel link holds before it drops (a switch port buffer).
pub const LINK_QUEUE_LIMIT: usize = 4096;

/// The far side of the simulated NIC's port. Frames are Ethernet frames without the
/// virtio-net header.
pub trait Link: Send {
    /// Short description for logs.
    fn describe(&self) -> String;

    /// Sends a frame that queue pair `pair` transmitted.
    fn transmit(&mut self, pair: u16, frame: &[u8]) -> io::Result<()>;

    /// Takes one received frame into `buf`, returning the queue pair it is for and its
    /// length; `None` when nothing is waiting. Never blocks.
    fn receive(&mut self, buf: &mut [u8]) -> io::Result<Option<(u16, usize)>>;

    /// A descriptor that becomes readable when frames arrive from outside, if the link
    /// has one (the device thread polls it).
    fn poll_fd(&self) -> Option<RawFd> {
        None
    }

    /// Whether the link names each received frame's queue pair (a loopback returns a
    /// frame to the pair that sent it). A link that does not (a tap) leaves the choice
    /// to the NIC, which spreads flows over the pairs in use by hashing addresses and
    /// ports, as a multiqueue NIC does.
    fn chooses_pair(&self) -> bool {
        true
    }
}

/// Every frame transmitted on pair p is received on pair p.
#[derive(Debug, Default)]
pub struct LoopbackLink {
    queue: VecDeque<(u16, Vec<u8>)>,
    dropped: u64,
}

impl LoopbackLink {
    /// An empty loopback link.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Link for LoopbackLink {
    fn describe(&self) -> String {
        "loopback".into()
    }

    fn transmit(&mut self, pair: u16, frame: &[u8]) -> io::Result<()> {
        if self.queue.len() >= LINK_QUEUE_LIMIT {
            self.dropped += 1;
            return Ok(());
        }
        self.queue.push_back((pair, frame.to_vec()));
        Ok(())
    }

    fn receive(&mut self, buf: &mut [u8]) -> io::Result<Option<(u16, usize)>> {
        Ok(self.queue.pop_front().map(|(pair, f)| {
            let n = f.len().min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            (pair, n)
        }))
    }
}

#[derive(Debug, Default)]
struct ChannelState {
    to_device: VecDeque<(u16, Vec<u8>)>,
    from_device: VecDeque<(u16, Vec<u8>)>,
}

/// A link whose other end is a test: it injects frames towards the device and reads
/// what the device sent. Injected frames are picked up the next time the device
/// thread wakes (a doorbell, or its periodic tick).
#[derive(Clone, Debug, Default)]
pub struct ChannelLink {
    state: Arc<Mutex<ChannelState>>,
}

impl ChannelLink {
    /// A new channel; clone it to keep a handle after giving one to the NIC.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a frame for the device to receive on queue pair `pair`.
    pub fn inject(&self, pair: u16, frame: &[u8]) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.to_device.len() < LINK_QUEUE_LIMIT {
            s.to_device.push_back((pair, frame.to_vec()));
        }
    }

    /// Takes every frame the device transmitted so far, with its queue pair.
    pub fn take_transmitted(&self) -> Vec<(u16, Vec<u8>)> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.from_device.drain(..).collect()
    }
}

impl Link for ChannelLink {
    fn describe(&self) -> String {
        "channel".into()
    }

    fn transmit(&mut self, pair: u16, frame: &[u8]) -> io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.from_device.len() < LINK_QUEUE_LIMIT {
            s.from_device.push_back((pair, frame.to_vec()));
        }
        Ok(())
    }

    fn receive(&mut self, buf: &mut [u8]) -> io::Result<Option<(u16, usize)>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(s.to_device.pop_front().map(|(pair, f)| {
            let n = f.len().min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            (pair, n)
        }))
    }
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A tap interface (IFF_TAP | IFF_NO_PI, non-blocking): frames the NIC transmits
/// appear on the interface; frames sent to the interface are spread over the queue
/// pairs in use by the NIC (by flow).
#[derive(Debug)]
pub struct TapLink {
    file: File,
    name: String,
}

impl TapLink {
    /// Opens (creating if needed) tap interface `name` in the current network
    /// namespace. Needs CAP_NET_ADMIN. The interface is left down: bring it up with
    /// `ip link set NAME up` as the test requires.
    pub fn open(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?}"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/net/tun: {e}")))?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which IfReq matches in
        // size (40 bytes) and layout for the name and flags fields; the fd is ours.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
        }
        Ok(TapLink {
            file,
            name: name.to_owned(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Link for TapLink {
    fn describe(&self) -> String {
        format!("tap {}", self.name)
    }

    fn transmit(&mut self, _pair: u16, frame: &[u8]) -> io::Result<()> {
        match self.file.write(frame) {
            Ok(_) => Ok(()),
            // A full tap queue or a down interface drops the frame, as a link would.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn receive(&mut self, buf: &mut [u8]) -> io::Result<Option<(u16, usize)>> {
        match self.file.read(buf) {
            Ok(n) => Ok(Some((0, n))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn chooses_pair(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_returns_frames_to_their_pair() {
        let mut w = LoopbackLink::new();
        w.transmit(3, b"abc").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(w.receive(&mut buf).unwrap(), Some((3, 3)));
        assert_eq!(&buf[..3], b"abc");
        assert_eq!(w.receive(&mut buf).unwrap(), None);
    }

    #[test]
    fn ifreq_has_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
