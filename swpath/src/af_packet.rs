//! The AF_PACKET backend: raw packet sockets bound to an existing network interface
//! (the kernel netdev of a NIC without virtio rings), with `PACKET_VNET_HDR` so that
//! offloaded frames keep their virtio-net header, `PACKET_FANOUT` to spread flows over
//! one socket per queue pair, and batches: `sendmmsg` from the guest's TX buffers and
//! `recvmmsg` straight into the guest's RX buffers.
//!
//! Port security (see [`crate::portsec`]): with a MAC to filter on, a socket is not
//! promiscuous; it joins the device's MAC (`PACKET_MR_UNICAST`, so the NIC accepts it
//! without going promiscuous where it has unicast filters) and the multicast groups
//! (`PACKET_MR_ALLMULTI` or one `PACKET_MR_MULTICAST` each), and a classic BPF program
//! attached before the socket is bound drops everything else in the kernel. TX frames
//! are checked (and, on an access VLAN, tagged) before they go into a batch.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::Arc;

use vdpa::virtio::features::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
};
use vdpa::virtio::net_hdr::{VirtioNetHdr, LEGACY_NET_HDR_LEN, NET_HDR_F_NEEDS_CSUM};
use vdpa::DropReason;

use crate::csum::{self, Bytes};
use crate::engine::{RxState, TxState};
use crate::port::{FirstError, Port, IOV_MAX};
use crate::portsec::{self, PortSecurity, TxGuard};
use crate::ring::{Chain, Segment};
use crate::rxq::{Reserve, RxQueue};
use crate::syscall_vec::SyscallVec;
use crate::tap::TAP_OFFLOADS;
use crate::trunk::{self, Trunk};
use crate::txq::{TxNext, TxQueue};

const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_MR_MULTICAST: libc::c_ushort = 0;
const PACKET_MR_PROMISC: libc::c_ushort = 1;
const PACKET_MR_ALLMULTI: libc::c_ushort = 2;
const PACKET_MR_UNICAST: libc::c_ushort = 3;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_FANOUT_HASH: libc::c_int = 0;
/// The offloads a packet socket with a vnet header can serve (the same as a tap).
pub const AF_PACKET_OFFLOADS: u64 = TAP_OFFLOADS;
/// Frames per `sendmmsg`/`recvmmsg`.
pub const BATCH: usize = 32;
/// Receive buffer asked for each socket.
const SOCKET_BUFFER: libc::c_int = 4 << 20;
const PACKET_STATISTICS: libc::c_int = 6;

/// Packet sockets on one interface, one per queue pair.
///
/// With several pairs the sockets form a `PACKET_FANOUT` group, and the kernel spreads
/// received flows over its members. A packet socket cannot leave a fanout group, so
/// the socket of a pair that does not run is closed (`AfPacket::detach_queue`) and
/// a new one joins when the pair starts again (`AfPacket::attach_queue`); otherwise
/// the flows hashed to it would never be read.
#[derive(Debug)]
pub struct AfPacket {
    ifname: String,
    ifindex: u32,
    /// The fanout group id, with more than one pair.
    fanout: Option<u16>,
    /// The network namespace the interface was found in, where new sockets are made.
    netns: File,
    sockets: Vec<Option<File>>,
    /// What the device may receive and send.
    security: Arc<PortSecurity>,
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` points at a value of the type the option expects, of exactly
    // size_of::<T>() bytes, valid for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn membership(
    s: RawFd,
    ifindex: u32,
    kind: libc::c_ushort,
    addr: Option<[u8; 6]>,
) -> io::Result<()> {
    let mut mr = libc::packet_mreq {
        mr_ifindex: ifindex as i32,
        mr_type: kind,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    if let Some(a) = addr {
        mr.mr_alen = 6;
        mr.mr_address[..6].copy_from_slice(&a);
    }
    setsockopt(s, libc::SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr)
}

/// One packet socket on interface `ifindex`, with vnet headers, ignoring its own
/// outgoing frames, in fanout group `fanout` if given, receiving what `security` lets
/// through (promiscuous when it filters nothing). Made in the calling thread's network
/// namespace.
fn open_socket(ifindex: u32, fanout: Option<u16>, security: &PortSecurity) -> io::Result<File> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // Protocol 0: the socket receives nothing until it is bound, after its filter is
    // attached, so no unfiltered frame slips in between.
    // SAFETY: socket(2) with constant arguments; checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("AF_PACKET socket: {e} (needs CAP_NET_RAW)"),
        ));
    }
    // SAFETY: a fresh descriptor that nobody else owns.
    let sock = unsafe { File::from_raw_fd(fd) };
    let s = sock.as_raw_fd();
    setsockopt(s, libc::SOL_PACKET, PACKET_VNET_HDR, &1i32)?;
    setsockopt(s, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &1i32)?;
    // Best effort: skipping the qdisc is faster; not fatal where refused.
    let _ = setsockopt(s, libc::SOL_PACKET, PACKET_QDISC_BYPASS, &1i32);
    let program = portsec::rx_filter_program(security);
    if let Some(prog) = &program {
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr().cast_mut(),
        };
        setsockopt(s, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
            .map_err(|e| io::Error::new(e.kind(), format!("attaching the RX filter: {e}")))?;
    }
    if !security.trunk.is_empty() {
        // The VLAN of each frame, to tag it again for the guest.
        setsockopt(s, libc::SOL_PACKET, libc::PACKET_AUXDATA, &1i32)?;
    }
    // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: bind with a sockaddr_ll of the right size.
    let rc = unsafe {
        libc::bind(
            s,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    match (security.mac, security.promiscuous) {
        (Some(mac), false) => {
            membership(s, ifindex, PACKET_MR_UNICAST, Some(mac))?;
            match &security.multicast {
                None => membership(s, ifindex, PACKET_MR_ALLMULTI, None)?,
                Some(groups) => {
                    for g in groups {
                        membership(s, ifindex, PACKET_MR_MULTICAST, Some(*g))?;
                    }
                }
            }
        }
        _ => membership(s, ifindex, PACKET_MR_PROMISC, None)?,
    }
    // Room for bursts while the worker is descheduled; above rmem_max this
    // needs CAP_NET_ADMIN, else the system limit applies.
    let buf: libc::c_int = SOCKET_BUFFER;
    if setsockopt(s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &buf).is_err() {
        let _ = setsockopt(s, libc::SOL_SOCKET, libc::SO_RCVBUF, &buf);
    }
    if let Some(id) = fanout {
        let arg: libc::c_int = i32::from(id) | (PACKET_FANOUT_HASH << 16);
        setsockopt(s, libc::SOL_PACKET, PACKET_FANOUT, &arg)?;
    }
    Ok(sock)
}

/// The identity (device, inode) of a network namespace file.
fn netns_id(f: &File) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

impl AfPacket {
    /// Opens `queue_pairs` packet sockets on `ifname`, promiscuous, with vnet headers,
    /// ignoring their own outgoing frames, fanned out by flow hash.
    pub fn open(ifname: &str, queue_pairs: u16) -> io::Result<AfPacket> {
        Self::open_secured(ifname, queue_pairs, Arc::new(PortSecurity::default()))
    }

    /// Like [`open`](Self::open), the sockets receiving only what `security` lets
    /// through (see the module comment), and the ports checking what the guest sends.
    pub fn open_secured(
        ifname: &str,
        queue_pairs: u16,
        security: Arc<PortSecurity>,
    ) -> io::Result<AfPacket> {
        let cname = std::ffi::CString::new(ifname)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no network interface {ifname:?}"),
            ));
        }
        let netns = File::open("/proc/thread-self/ns/net")
            .map_err(|e| io::Error::new(e.kind(), format!("opening our network namespace: {e}")))?;
        let fanout = (queue_pairs > 1).then_some((std::process::id() ^ ifindex) as u16);
        let sockets = (0..queue_pairs)
            .map(|_| open_socket(ifindex, fanout, &security).map(Some))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(AfPacket {
            ifname: ifname.to_owned(),
            ifindex,
            fanout,
            netns,
            sockets,
            security,
        })
    }

    /// The interface name.
    pub(crate) fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Number of sockets (queue pairs).
    pub(crate) fn queues(&self) -> usize {
        self.sockets.len()
    }

    /// Gives pair `i` a socket again if it has none: a new one joins the fanout group,
    /// made in the namespace the interface was opened in.
    pub(crate) fn attach_queue(&mut self, i: usize) -> io::Result<()> {
        if self.sockets[i].is_some() {
            return Ok(());
        }
        let (ifindex, fanout) = (self.ifindex, self.fanout);
        let security = self.security.clone();
        let here = File::open("/proc/thread-self/ns/net").and_then(|f| netns_id(&f))?;
        let sock = if here == netns_id(&self.netns)? {
            open_socket(ifindex, fanout, &security)?
        } else {
            // This thread lives elsewhere: a short-lived thread enters the
            // interface's namespace to make the socket (setns affects only it).
            let ns = self.netns.try_clone()?;
            std::thread::scope(|scope| {
                scope
                    .spawn(move || {
                        // SAFETY: setns on a namespace descriptor we own; it changes
                        // only this helper thread's network namespace.
                        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        open_socket(ifindex, fanout, &security)
                    })
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("socket thread panicked")))
            })?
        };
        self.sockets[i] = Some(sock);
        Ok(())
    }

    /// Closes pair `i`'s socket so that it leaves the fanout group and the kernel
    /// spreads flows over the other pairs only. Once every duplicate (a worker's) is
    /// closed too, nothing is delivered to it. Only done with several pairs: a lone
    /// socket has no one to share with and keeps buffering for its pair.
    pub(crate) fn detach_queue(&mut self, i: usize) {
        if self.fanout.is_some() {
            self.sockets[i] = None;
        }
    }

    /// A socket to send a frame of the device's own on, if any is open.
    pub(crate) fn any_socket(&self) -> Option<&File> {
        self.sockets.iter().flatten().next()
    }

    /// A duplicate of socket `i`, for a worker.
    pub(crate) fn queue(&self, i: usize) -> io::Result<File> {
        match &self.sockets[i] {
            Some(s) => s.try_clone(),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("the socket of pair {i} is closed"),
            )),
        }
    }
}

/// The packet socket of one queue pair.
pub struct AfPacketPort {
    sock: File,
    max_rx: u64,
    guest_features: u64,
    tx_chains: Vec<Chain>,
    iov: SyscallVec<libc::iovec>,
    msgs: SyscallVec<libc::mmsghdr>,
    errors: FirstError,
    /// TX port security, if the device checks anything.
    guard: Option<TxGuard>,
    /// RX on a trunk: the VLANs tagged for the guest, and room for each message's
    /// `PACKET_AUXDATA`.
    trunk: Option<Trunk>,
}

impl AfPacketPort {
    /// A port on packet socket `sock`; `max_rx` bounds one received frame (the guest's
    /// header included); `guest_features` are the acked features.
    pub fn new(sock: File, max_rx: u64, guest_features: u64) -> Self {
        Self::secured(
            sock,
            max_rx,
            guest_features,
            &Arc::new(PortSecurity::default()),
        )
    }

    /// A port as [`new`](Self::new) makes, checking what the guest sends against
    /// `security` (the socket was opened with it).
    pub fn secured(
        sock: File,
        max_rx: u64,
        guest_features: u64,
        security: &Arc<PortSecurity>,
    ) -> Self {
        AfPacketPort {
            guard: TxGuard::new(security, BATCH),
            trunk: Trunk::new(security, BATCH),
            sock,
            max_rx,
            guest_features,
            tx_chains: (0..BATCH).map(|_| Chain::with_capacity(4)).collect(),
            iov: SyscallVec::with_capacity(BATCH * 4),
            // SAFETY: an all-zero mmsghdr is a valid (empty) value.
            msgs: SyscallVec::from_vec(vec![unsafe { std::mem::zeroed() }; BATCH]),
            errors: FirstError::new("AF_PACKET"),
        }
    }

    /// Points `msgs[i]` at the iovec ranges in `spans`.
    fn build_msgs(&mut self, spans: &[(usize, usize)]) {
        for (m, &(start, len)) in self.msgs.iter_mut().zip(spans) {
            // SAFETY: an all-zero mmsghdr is valid; the iovec pointer is set below.
            *m = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = self.iov[start..].as_mut_ptr();
            m.msg_hdr.msg_iovlen = len;
        }
    }

    fn send_batch(&mut self, tx: &mut TxQueue, budget: usize) -> TxState {
        let mut sent_total = 0;
        while sent_total < budget {
            // Gather a batch of good frames, with their iovecs.
            let mut n = 0;
            let mut empty = false;
            let mut spans = [(0usize, 0usize); BATCH];
            self.iov.clear();
            while n < BATCH.min(budget - sent_total) {
                let mut c = std::mem::replace(&mut self.tx_chains[n], Chain::with_capacity(0));
                let next = tx.take_into(&mut c, n > 0);
                let start = self.iov.len();
                let mut refused = None;
                if next == TxNext::Frame && c.segs().len() > IOV_MAX {
                    // The chain's shape first: no check of what it holds.
                    refused = Some(DropReason::TooManySegments);
                } else if next == TxNext::Frame {
                    match &mut self.guard {
                        None => tx.append_iovecs(&c, true, &mut self.iov),
                        Some(g) => refused = g.append(tx, &c, n, true, &mut self.iov).err(),
                    }
                }
                let iovs = self.iov.len() - start;
                // sendmmsg would refuse a message over IOV_MAX (EMSGSIZE) every time.
                let refused = refused.or((iovs > IOV_MAX).then_some(DropReason::TooManySegments));
                if let Some(reason) = refused {
                    self.iov.truncate(start);
                    if n == 0 {
                        tx.drop_chain(&c, reason);
                        c.trim();
                        self.tx_chains[n] = c;
                        sent_total += 1;
                        continue;
                    }
                    // Completions stay in ring order: send the batch first.
                    tx.unpop_n(1);
                    self.tx_chains[n] = c;
                    break;
                }
                self.tx_chains[n] = c;
                match next {
                    TxNext::Frame => {
                        spans[n] = (start, iovs);
                        n += 1;
                    }
                    TxNext::Skipped => {}
                    // Send what was gathered; the bad chain is taken by the next batch.
                    TxNext::Later => break,
                    TxNext::Empty => {
                        empty = true;
                        break;
                    }
                }
            }
            if n == 0 {
                if sent_total < budget && !empty {
                    // Only over-long frames were dropped: look again.
                    continue;
                }
                return if empty { TxState::Idle } else { TxState::Busy };
            }
            self.build_msgs(&spans[..n]);
            // SAFETY: `msgs[..n]` point at iovecs over translated guest buffers.
            let rc = unsafe {
                libc::sendmmsg(self.sock.as_raw_fd(), self.msgs.as_mut_ptr(), n as u32, 0)
            };
            let sent = if rc >= 0 { rc as usize } else { 0 };
            for i in 0..sent {
                let c = std::mem::replace(&mut self.tx_chains[i], Chain::with_capacity(0));
                tx.complete_chain(&c);
                self.tx_chains[i] = c;
            }
            sent_total += sent;
            if sent < n {
                let e = io::Error::last_os_error();
                if rc >= 0 || matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOBUFS)) {
                    // The rest stay on the ring until the socket is writable again.
                    tx.unpop_n((n - sent) as u16);
                    return TxState::Blocked;
                }
                // The first unsent frame is refused for good (bad header, too big):
                // drop it, put the others back.
                self.errors.note("send", &e);
                let c = std::mem::replace(&mut self.tx_chains[sent], Chain::with_capacity(0));
                tx.drop_chain(&c, DropReason::Backend);
                self.tx_chains[sent] = c;
                tx.unpop_n((n - sent - 1) as u16);
                sent_total += 1;
                continue;
            }
            if empty {
                return TxState::Idle;
            }
        }
        TxState::Busy
    }

    fn receive_batch(&mut self, rx: &mut RxQueue, budget: usize) -> RxState {
        let mut done = 0;
        while done < budget {
            // Whole frames per chain when the guest's buffers allow: receive a batch.
            let mut each = rx.reserve_each(self.max_rx, BATCH.min(budget - done));
            let n = if each > 0 {
                self.iov.clear();
                let mut spans = [(0usize, 0usize); BATCH];
                for (i, span) in spans.iter_mut().enumerate().take(each) {
                    let start = self.iov.len();
                    rx.append_iovecs(i..i + 1, true, &mut self.iov);
                    if self.iov.len() - start > IOV_MAX {
                        // recvmmsg would refuse this message (EMSGSIZE) every time.
                        self.iov.truncate(start);
                        each = i;
                        break;
                    }
                    *span = (start, self.iov.len() - start);
                }
                if each == 0 {
                    rx.discard_front(DropReason::TooManySegments);
                    done += 1;
                    continue;
                }
                self.build_msgs(&spans[..each]);
                each
            } else {
                // Otherwise one frame over as many chains as it needs.
                let nbufs = match rx.reserve(self.max_rx) {
                    Reserve::Ready(n) => n,
                    Reserve::TooSmall => 1,
                    Reserve::Starved => return RxState::Starved,
                };
                self.iov.clear();
                let mut iov = std::mem::take(&mut self.iov);
                rx.append_iovecs(0..nbufs, true, &mut iov);
                self.iov = iov;
                let len = self.iov.len();
                if len > IOV_MAX {
                    rx.discard_front(DropReason::TooManySegments);
                    done += 1;
                    continue;
                }
                self.build_msgs(&[(0, len)]);
                1
            };
            if let Some(t) = &mut self.trunk {
                t.attach(&mut self.msgs[..n]);
            }
            // SAFETY: `msgs[..n]` point at iovecs over translated guest buffers (and at
            // control buffers of ours on a trunk).
            let rc = unsafe {
                libc::recvmmsg(
                    self.sock.as_raw_fd(),
                    self.msgs.as_mut_ptr(),
                    n as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                    self.errors.note("receive", &e);
                }
                self.count_kernel_drops(rx);
                return RxState::Idle;
            }
            for i in 0..rc as usize {
                let len = self.msgs[i].msg_len as usize;
                let truncated = self.msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
                let tag = self.trunk.as_ref().and_then(|t| t.tag_of(&self.msgs[i]));
                if !self.deliver(rx, len, truncated, tag) && each > 0 {
                    // The next message's data is in the next chain: move this one away.
                    rx.requeue_front();
                }
            }
            done += rc as usize;
            if (rc as usize) < n {
                self.count_kernel_drops(rx);
                return RxState::Idle;
            }
        }
        RxState::Busy
    }

    /// Adds the frames the kernel dropped at this socket since the last look (its
    /// receive queue was full) to the drop counters.
    fn count_kernel_drops(&mut self, rx: &mut RxQueue) {
        let mut st = [0u32; 2];
        let mut len = std::mem::size_of_val(&st) as libc::socklen_t;
        // SAFETY: PACKET_STATISTICS fills a struct tpacket_stats (two u32) of `len` bytes;
        // reading it also resets the kernel's counters.
        let rc = unsafe {
            libc::getsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_STATISTICS,
                st.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            rx.q.counts
                .drop_n(DropReason::BackendQueue, u64::from(st[1]));
        }
    }

    /// One frame of `len` bytes (10-byte vnet header included) is in the front pending
    /// chains: fix up what the guest cannot take (on a trunk: put its VLAN `tag` back),
    /// then hand it over. Returns false if the frame was dropped (its buffers stay
    /// pending).
    fn deliver(&mut self, rx: &mut RxQueue, len: usize, truncated: bool, tag: Option<u16>) -> bool {
        if truncated || len < LEGACY_NET_HDR_LEN {
            rx.drop_frame(DropReason::RxBufferTooSmall);
            return false;
        }
        // A packet socket's vnet header is the 10-byte form.
        let hdr = VirtioNetHdr::from_legacy_bytes(&rx.peek_header());
        if hdr.gso_type != 0
            && self.guest_features & (VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6) == 0
        {
            // A GRO frame the guest cannot take (turn GRO off on the interface).
            rx.drop_frame(DropReason::Backend);
            return false;
        }
        if hdr.flags & NET_HDR_F_NEEDS_CSUM != 0
            && self.guest_features & VIRTIO_NET_F_GUEST_CSUM == 0
        {
            let start = usize::from(hdr.csum_start);
            let offset = usize::from(hdr.csum_offset);
            let hdr_len = rx.hdr_len();
            let total = len + hdr_len - LEGACY_NET_HDR_LEN;
            let mut frame = GuestFrame::new(rx, total, hdr_len);
            if csum::complete(&mut frame, start, offset) {
                GuestFrame::new(rx, total, 0).set(0, hdr.flags & !NET_HDR_F_NEEDS_CSUM);
            }
        }
        let len = match tag.map(|tci| trunk::insert_tag(rx, len, tci)) {
            None => len,
            Some(Some(tagged)) => tagged,
            Some(None) => {
                rx.drop_frame(DropReason::RxBufferTooSmall);
                return false;
            }
        };
        rx.complete_read(len, true);
        true
    }
}

/// A frame's bytes in the front pending RX chains, from `base` on, readable and
/// writable by offset (used only to complete a checksum or re-tag a trunk frame:
/// allocates). It borrows the queue whose chains hold the buffers.
pub(crate) struct GuestFrame<'a> {
    /// Each buffer, with how many of its bytes belong to the frame.
    segs: Vec<(Segment<'a>, usize)>,
    base: usize,
    len: usize,
}

impl<'a> GuestFrame<'a> {
    /// The first `total` bytes of the pending chains, offsets counted from `base`.
    pub(crate) fn new(rx: &'a RxQueue, total: usize, base: usize) -> Self {
        let mut segs = Vec::new();
        let mut have = 0;
        for s in rx.pending_segments() {
            if have >= total {
                break;
            }
            let l = (s.len() as usize).min(total - have);
            segs.push((*s, l));
            have += l;
        }
        GuestFrame {
            segs,
            base,
            len: have.saturating_sub(base),
        }
    }

    fn locate(&self, i: usize) -> *mut u8 {
        let mut i = i + self.base;
        for (s, l) in &self.segs {
            if i < *l {
                // SAFETY: i < l <= the segment's length: inside its buffer.
                return unsafe { s.as_ptr().add(i) };
            }
            i -= l;
        }
        unreachable!("offset checked against len")
    }
}

impl Bytes for GuestFrame<'_> {
    fn len(&self) -> usize {
        self.len
    }
    fn get(&self, i: usize) -> u8 {
        // SAFETY: locate returns a pointer inside guest memory for i < len.
        unsafe { self.locate(i).read_volatile() }
    }
    fn set(&mut self, i: usize, v: u8) {
        // SAFETY: as in get.
        unsafe { self.locate(i).write_volatile(v) }
    }
}

impl Port for AfPacketPort {
    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn transmit(&mut self, tx: &mut TxQueue, budget: usize) -> TxState {
        self.send_batch(tx, budget)
    }

    fn receive(&mut self, rx: &mut RxQueue, budget: usize) -> RxState {
        self.receive_batch(rx, budget)
    }
}
