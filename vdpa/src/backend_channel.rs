//! The backend channel of a vhost-user connection: the socket the frontend handed over
//! with SET_BACKEND_REQ_FD, on which the device sends requests of its own. vdpad sends
//! one kind, VRING_HOST_NOTIFIER_MSG: "map this page of this file as ring n's notify
//! area" (a NIC doorbell page, so the guest's kicks reach the NIC without the daemon),
//! or, with the no-fd flag, "stop doing that".
//!
//! The frontend (QEMU) reads this socket from its main loop, which may at that moment
//! be blocked waiting for the device's reply to one of its own requests. So the device
//! never waits for the frontend here: it sends only after it replied to the request
//! that changed something, a full socket is an error instead of a wait, and the
//! frontend's acknowledgements are read when the socket becomes readable (the device
//! thread polls it with the connection). A refusal (QEMU's virtio-net-pci without
//! `page-per-vq=on`) is remembered, so the same page is not offered again until the
//! ring restarts; kicks then keep coming through the kick eventfd.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::datapath::NotifyArea;
use crate::wire::{Header, FLAG_NEED_REPLY, FLAG_REPLY, HEADER_LEN, VERSION_1};

/// Backend request code of VRING_HOST_NOTIFIER_MSG.
pub const VRING_HOST_NOTIFIER_MSG: u32 = 3;
/// Flag in the ring word: no descriptor, remove the notifier.
const NOFD: u64 = 0x100;
/// Body of VRING_HOST_NOTIFIER_MSG (`VhostUserVringArea`): ring word, size, offset.
const AREA_LEN: usize = 24;
/// A reply: header and a u64 (0 = done).
const REPLY_LEN: usize = HEADER_LEN + 8;
/// Acknowledgements owed before the channel counts the frontend as not reading it.
const MAX_UNACKED: usize = 256;

/// What the frontend does with a ring's notify area, as far as the device knows.
#[derive(Debug)]
enum Notifier {
    /// Sent; the frontend maps it (or will say it could not).
    Offered(NotifyArea),
    /// The frontend said it could not map it.
    Refused(NotifyArea),
}

/// One message the frontend still has to acknowledge.
#[derive(Debug, Clone, Copy)]
struct Pending {
    ring: u16,
    install: bool,
}

/// What the frontend answered to one notifier message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The ring.
    pub ring: u16,
    /// Whether the message installed a notifier (false: it removed one).
    pub install: bool,
    /// Whether the frontend did what was asked.
    pub done: bool,
}

/// The device's side of the backend channel.
#[derive(Debug)]
pub struct BackendChannel {
    stream: UnixStream,
    notifiers: BTreeMap<u16, Notifier>,
    unacked: VecDeque<Pending>,
    partial: Vec<u8>,
}

impl BackendChannel {
    /// Takes over the frontend's socket; it is made non-blocking.
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(BackendChannel {
            stream,
            notifiers: BTreeMap::new(),
            unacked: VecDeque::new(),
            partial: Vec::new(),
        })
    }

    /// Makes ring `ring`'s notifier match `want`: offers a page the frontend does not
    /// have (unless it refused that very page), removes one it should no longer use.
    /// Returns whether a message was sent.
    pub fn sync(&mut self, ring: u16, want: Option<&NotifyArea>) -> io::Result<bool> {
        match (self.notifiers.get(&ring), want) {
            (Some(Notifier::Offered(have) | Notifier::Refused(have)), Some(w))
                if have.same_page(w) =>
            {
                Ok(false)
            }
            (Some(Notifier::Refused(_)), None) => {
                self.notifiers.remove(&ring);
                Ok(false)
            }
            (_, Some(w)) => {
                self.send(ring, Some(w))?;
                self.notifiers.insert(ring, Notifier::Offered(w.clone()));
                Ok(true)
            }
            (Some(Notifier::Offered(_)), None) => {
                self.notifiers.remove(&ring);
                self.send(ring, None)?;
                Ok(true)
            }
            (None, None) => Ok(false),
        }
    }

    /// The frontend dropped ring `ring`'s notifier on its own (QEMU does on every
    /// GET_VRING_BASE): it is offered again when the ring runs again.
    pub fn forget(&mut self, ring: u16) {
        self.notifiers.remove(&ring);
    }

    /// Whether the frontend has (or was just offered) ring `ring`'s notifier.
    pub fn offered(&self, ring: u16) -> bool {
        matches!(self.notifiers.get(&ring), Some(Notifier::Offered(_)))
    }

    /// Reads the acknowledgements that arrived, without waiting. An error means the
    /// channel is unusable (closed, or the frontend sent something else).
    pub fn read_answers(&mut self) -> io::Result<Vec<Answer>> {
        let mut buf = [0u8; 512];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the frontend closed the backend channel",
                    ))
                }
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let mut answers = Vec::new();
        while self.partial.len() >= REPLY_LEN {
            let rest = self.partial.split_off(REPLY_LEN);
            let reply = std::mem::replace(&mut self.partial, rest);
            let header = Header::from_bytes(reply[..HEADER_LEN].try_into().expect("12 bytes"));
            if header.request != VRING_HOST_NOTIFIER_MSG
                || header.flags & FLAG_REPLY == 0
                || header.size != 8
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "unexpected message on the backend channel: request {} flags {:#x} size {}",
                        header.request, header.flags, header.size
                    ),
                ));
            }
            let Some(sent) = self.unacked.pop_front() else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "an acknowledgement for nothing sent on the backend channel",
                ));
            };
            let value = u64::from_ne_bytes(reply[HEADER_LEN..].try_into().expect("8 bytes"));
            let done = value == 0;
            if sent.install && !done {
                if let Some(Notifier::Offered(area)) = self.notifiers.remove(&sent.ring) {
                    self.notifiers.insert(sent.ring, Notifier::Refused(area));
                }
            }
            answers.push(Answer {
                ring: sent.ring,
                install: sent.install,
                done,
            });
        }
        Ok(answers)
    }

    /// Sends one VRING_HOST_NOTIFIER_MSG, asking for an acknowledgement.
    fn send(&mut self, ring: u16, area: Option<&NotifyArea>) -> io::Result<()> {
        if self.unacked.len() >= MAX_UNACKED {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("the frontend left {MAX_UNACKED} notifier messages unanswered"),
            ));
        }
        let header = Header {
            request: VRING_HOST_NOTIFIER_MSG,
            flags: VERSION_1 | FLAG_NEED_REPLY,
            size: AREA_LEN as u32,
        };
        let (word, size, offset) = match area {
            Some(a) => (u64::from(ring), a.size, a.offset),
            None => (u64::from(ring) | NOFD, 0, 0),
        };
        let mut msg = Vec::with_capacity(HEADER_LEN + AREA_LEN);
        msg.extend_from_slice(&header.to_bytes());
        for v in [word, size, offset] {
            msg.extend_from_slice(&v.to_ne_bytes());
        }
        let fds: Vec<RawFd> = area.iter().map(|a| a.file.as_raw_fd()).collect();
        // The socket is non-blocking: a frontend that stopped reading gets an error,
        // not a device thread stuck in sendmsg.
        let sent = self
            .stream
            .send_with_fds(&[msg.as_slice()], &fds)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        if sent != msg.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("the backend channel took {sent} of {} bytes", msg.len()),
            ));
        }
        self.unacked.push_back(Pending {
            ring,
            install: area.is_some(),
        });
        Ok(())
    }
}

impl AsRawFd for BackendChannel {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    fn area(offset: u64) -> NotifyArea {
        NotifyArea {
            file: Arc::new(tempfile_like()),
            offset,
            size: 4096,
        }
    }

    fn tempfile_like() -> std::fs::File {
        std::fs::File::open("/dev/null").expect("/dev/null")
    }

    /// Reads one message from the frontend's end: header words, body words and
    /// whether a descriptor came with it.
    fn read_msg(peer: &UnixStream) -> ([u32; 3], [u64; 3], bool) {
        let mut buf = [0u8; HEADER_LEN + AREA_LEN];
        let mut fds = [0 as RawFd; 2];
        let mut iov = [libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        }];
        // SAFETY: the iovec points at `buf`, alive and exclusively borrowed for the call.
        let (n, nfds) = unsafe { peer.recv_with_fds(&mut iov, &mut fds) }.expect("recv");
        assert_eq!(n, buf.len());
        for fd in &fds[..nfds] {
            // SAFETY: a descriptor received just now and owned by nobody else.
            unsafe { libc::close(*fd) };
        }
        let w = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().unwrap());
        let q = |i: usize| u64::from_ne_bytes(buf[i..i + 8].try_into().unwrap());
        ([w(0), w(4), w(8)], [q(12), q(20), q(28)], nfds == 1)
    }

    fn answer(peer: &mut UnixStream, value: u64) {
        let h = Header {
            request: VRING_HOST_NOTIFIER_MSG,
            flags: VERSION_1 | FLAG_REPLY,
            size: 8,
        };
        let mut out = h.to_bytes().to_vec();
        out.extend_from_slice(&value.to_ne_bytes());
        peer.write_all(&out).unwrap();
    }

    #[test]
    fn offers_a_page_once_and_removes_it_without_a_descriptor() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let mut ch = BackendChannel::new(ours).unwrap();
        let a = area(0x3000);
        assert!(ch.sync(1, Some(&a)).unwrap());
        let (h, body, fd) = read_msg(&peer);
        assert_eq!(h, [3, VERSION_1 | FLAG_NEED_REPLY, 24]);
        assert_eq!(body, [1, 4096, 0x3000]);
        assert!(fd);
        assert!(
            !ch.sync(1, Some(&a)).unwrap(),
            "the same page is not sent twice"
        );
        assert!(ch.sync(1, None).unwrap());
        let (_, body, fd) = read_msg(&peer);
        assert_eq!(body[0], 1 | NOFD);
        assert!(!fd);
        assert!(!ch.sync(1, None).unwrap());
    }

    #[test]
    fn a_refused_page_is_not_offered_again_until_forgotten() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let mut ch = BackendChannel::new(ours).unwrap();
        let a = area(0);
        ch.sync(0, Some(&a)).unwrap();
        ch.sync(1, Some(&a)).unwrap();
        read_msg(&peer);
        read_msg(&peer);
        assert!(ch.read_answers().unwrap().is_empty());
        answer(&mut peer, 1);
        answer(&mut peer, 0);
        let answers = ch.read_answers().unwrap();
        assert_eq!(
            answers,
            vec![
                Answer {
                    ring: 0,
                    install: true,
                    done: false
                },
                Answer {
                    ring: 1,
                    install: true,
                    done: true
                }
            ]
        );
        assert!(!ch.offered(0) && ch.offered(1));
        assert!(!ch.sync(0, Some(&a)).unwrap(), "refused: not offered again");
        ch.forget(0);
        assert!(ch.sync(0, Some(&a)).unwrap(), "after a restart it is");
    }

    #[test]
    fn garbage_or_a_closed_channel_is_an_error() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let mut ch = BackendChannel::new(ours).unwrap();
        answer(&mut peer, 0);
        assert!(ch.read_answers().is_err(), "an answer to nothing");
        let (ours, peer) = UnixStream::pair().unwrap();
        let mut ch = BackendChannel::new(ours).unwrap();
        drop(peer);
        assert!(ch.read_answers().is_err());
        assert!(
            ch.sync(0, Some(&area(0))).is_err(),
            "sending to a closed peer fails"
        );
    }

    #[test]
    fn a_frontend_that_never_reads_never_blocks_the_device() {
        let (ours, _peer) = UnixStream::pair().unwrap();
        let mut ch = BackendChannel::new(ours).unwrap();
        let a = area(0);
        let mut failed = false;
        for i in 0..10_000u32 {
            ch.forget(0);
            if ch.sync(0, Some(&a)).is_err() {
                failed = true;
                assert!(i as usize <= MAX_UNACKED);
                break;
            }
        }
        assert!(failed, "an unread channel ends in an error, not a wait");
    }
}
