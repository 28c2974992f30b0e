//! Chains a guest may legally or hostilely build that the kernel or our memory cannot
//! take: more buffers than one system call accepts (IOV_MAX), and descriptor chains
//! linked into each other so that every pending RX slot holds a ring-long chain.
//! Each is dropped and counted, never retried; scratch memory stays bounded.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use swpath::af_packet::AfPacketPort;
use swpath::engine::{RxState, TxState};
use swpath::interrupt::Interrupt;
use swpath::port::{Port, IOV_MAX};
use swpath::queue::Queue;
use swpath::ring::{DeviceRing, KEEP_SEGMENTS};
use swpath::rxq::{Reserve, RxQueue};
use swpath::tap::TapPort;
use swpath::txq::TxQueue;
use vdpa::{
    BadDescriptor, DropReason, GuestMemory, MemoryRegion, QueueCounters, RingAddrs, RingConfig,
    RingEvents,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const BASE: u64 = 0x10_0000;
const SIZE: usize = 0x40_0000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
/// Buffers of the over-long chains: more than IOV_MAX.
const LONG: u16 = 1100;
const QSIZE: u16 = 2048;
/// Where frame and buffer bytes live (after the rings).
const DATA: u64 = BASE + 0x20_0000;

struct Fixture {
    vm: &'static GuestMemoryMmap<()>,
    ours: Arc<GuestMemory>,
}

fn fixture() -> Fixture {
    let name = std::ffi::CString::new("swpath-limits").unwrap();
    // SAFETY: valid NUL-terminated name; the result is checked and owned at once.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(SIZE as u64).unwrap();
    let vm = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(BASE),
        SIZE,
        Some(FileOffset::new(f.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    let region = MemoryRegion::map(BASE, SIZE as u64, 0x7000_0000_0000, 0, f).unwrap();
    Fixture {
        vm: Box::leak(Box::new(vm)),
        ours: Arc::new(GuestMemory::from_regions(vec![region]).unwrap()),
    }
}

fn queue(
    index: u16,
    q: &MockSplitQueue<GuestMemoryMmap<()>>,
    size: u16,
    mem: &Arc<GuestMemory>,
) -> Queue {
    let cfg = RingConfig {
        index,
        size,
        addrs: RingAddrs {
            desc: q.desc_table_addr().0,
            avail: q.avail_addr().0,
            used: q.used_addr().0,
        },
        base: 0,
        events: RingEvents {
            kick: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            call: None,
        },
        counters: Arc::default(),
        log_used: None,
    };
    Queue::new(
        DeviceRing::new(&cfg, mem.clone(), false).unwrap(),
        Arc::new(Interrupt::new(None)),
        Arc::new(QueueCounters::default()),
    )
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// One chain of `n` buffers of `len` bytes each (descriptors `first..first + n`).
fn long_chain(first: u16, n: u16, len: u32, flags: u16) -> Vec<RawDescriptor> {
    (0..n)
        .map(|i| {
            let last = i + 1 == n;
            let addr = DATA + u64::from(first + i) * 64;
            let f = flags | if last { 0 } else { NEXT };
            desc(addr, len, f, if last { 0 } else { first + i + 1 })
        })
        .collect()
}

/// A connected pair of datagram sockets: one stands in for the tap / packet socket.
fn socketpair() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two descriptors, owned at once below.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: fresh descriptors nobody else owns.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

fn send_datagram(to: &File, len: usize) {
    use std::io::Write;
    let mut f = to;
    f.write_all(&vec![0u8; len]).unwrap();
}

/// A TX frame of LONG buffers (12-byte header, then one byte per buffer) followed by
/// an ordinary one-buffer frame.
fn tx_ring(fx: &Fixture) -> TxQueue {
    let txq = MockSplitQueue::create(fx.vm, GuestAddress(BASE), QSIZE);
    let mut chain = long_chain(0, LONG, 1, 0);
    chain[0] = desc(DATA, 12, NEXT, 1);
    txq.add_desc_chains(&chain, 0).unwrap();
    fx.vm
        .write_slice(&[0u8; 12], GuestAddress(DATA + 0x10_0000))
        .unwrap();
    txq.add_desc_chains(&[desc(DATA + 0x10_0000, 72, 0, 0)], LONG)
        .unwrap();
    TxQueue::new(queue(1, &txq, QSIZE, &fx.ours), 12)
}

/// An RX chain of LONG two-byte buffers followed by an ordinary 2 KiB buffer.
fn rx_ring(fx: &Fixture) -> RxQueue {
    let rxq = MockSplitQueue::create(fx.vm, GuestAddress(BASE + 0x10_0000), QSIZE);
    rxq.add_desc_chains(&long_chain(0, LONG, 2, WRITE), 0)
        .unwrap();
    rxq.add_desc_chains(&[desc(DATA + 0x10_0000, 2048, WRITE, 0)], LONG)
        .unwrap();
    RxQueue::new(queue(0, &rxq, QSIZE, &fx.ours), 12, true)
}

fn drops(q: &Queue, r: DropReason) -> u64 {
    q.counters.snapshot(q.ring.index()).dropped(r)
}

#[test]
fn tap_drops_frames_and_buffers_beyond_iov_max() {
    let fx = fixture();
    let (ours, peer) = socketpair();
    let mut port = TapPort::new(ours, 12 + 1518, true);
    let mut tx = tx_ring(&fx);
    assert_eq!(port.transmit(&mut tx, 16), TxState::Idle);
    tx.q.flush();
    assert_eq!(drops(&tx.q, DropReason::TooManySegments), 1);
    assert_eq!(drops(&tx.q, DropReason::Backend), 0);
    assert_eq!(
        tx.q.counters.snapshot(1).packets,
        1,
        "the next frame went out"
    );

    let mut rx = rx_ring(&fx);
    send_datagram(&peer, 12 + 100);
    // readv over the long chain fails with EINVAL whenever it is tried: it must be
    // given back and counted, and the frame go into the next buffer.
    port.receive(&mut rx, 16);
    rx.q.flush();
    assert_eq!(drops(&rx.q, DropReason::TooManySegments), 1);
    assert_eq!(drops(&rx.q, DropReason::Backend), 0);
    assert_eq!(rx.q.counters.snapshot(0).packets, 1);
    assert_eq!(port.receive(&mut rx, 16), RxState::Starved);
}

#[test]
fn af_packet_drops_frames_and_buffers_beyond_iov_max() {
    let fx = fixture();
    let (ours, peer) = socketpair();
    let mut port = AfPacketPort::new(ours, 12 + 1518, 0);
    let mut tx = tx_ring(&fx);
    // With the over-long frame on the ring, a sendmmsg that sends nothing used to
    // look like a full socket: wait for POLLOUT, which is always there, and retry.
    assert_eq!(port.transmit(&mut tx, 16), TxState::Idle);
    tx.q.flush();
    assert_eq!(drops(&tx.q, DropReason::TooManySegments), 1);
    assert_eq!(tx.q.counters.snapshot(1).packets, 1);

    let mut rx = rx_ring(&fx);
    send_datagram(&peer, 10 + 100);
    port.receive(&mut rx, 16);
    rx.q.flush();
    assert_eq!(drops(&rx.q, DropReason::TooManySegments), 1);
    assert_eq!(rx.q.counters.snapshot(0).packets, 1);
}

#[test]
fn rx_chains_linked_into_each_other_do_not_pin_scratch_memory() {
    let fx = fixture();
    let size: u16 = 256;
    let rxq = MockSplitQueue::create(fx.vm, GuestAddress(BASE), size);
    // One ring-long chain, and every avail entry pointing at its head: each pending
    // slot would hold `size` buffers (size² × 16 bytes per queue).
    let chain = long_chain(0, size, 64, WRITE);
    for (i, d) in chain.iter().enumerate() {
        rxq.desc_table().store(i as u16, *d).unwrap();
    }
    let avail = rxq.avail_addr().0;
    for k in 0..u64::from(size) {
        fx.vm
            .write_obj(0u16, GuestAddress(avail + 4 + 2 * k))
            .unwrap();
    }
    fx.vm.write_obj(size, GuestAddress(avail + 2)).unwrap();
    let mut rx = RxQueue::new(queue(0, &rxq, size, &fx.ours), 12, true);
    // Ask for more than the ring holds: every chain is taken.
    assert_eq!(rx.reserve(u64::MAX), Reserve::Starved);
    let bound = usize::from(size) * (KEEP_SEGMENTS + 1);
    assert!(
        rx.scratch_segments() <= bound,
        "{} buffers of scratch memory, bound {bound}",
        rx.scratch_segments()
    );
    rx.q.flush();
    let s = rx.q.counters.snapshot(0);
    assert_eq!(s.bad(BadDescriptor::ChainTooLong), u64::from(size) - 1);
    assert!(IOV_MAX < usize::from(LONG));
}
