//! The loopback mover against an independent driver: virtio-queue's
//! `MockSplitQueue` (rust-vmm) builds the rings in a memfd that both it (through
//! vm-memory) and our device side (through vdpa's GuestMemory) map.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use swpath::engine::{Engine, Progress, RxState, TxState};
use swpath::interrupt::Interrupt;
use swpath::loopback::Loopback;
use swpath::queue::Queue;
use swpath::ring::{Chain, DeviceRing};
use swpath::rxq::RxQueue;
use swpath::txq::{TxNext, TxQueue};
use vdpa::features::Negotiated;
use vdpa::virtio::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF};
use vdpa::virtio::ring::{VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE};
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

struct Fixture {
    vm: GuestMemoryMmap<()>,
    ours: Arc<GuestMemory>,
}

fn memfd(len: usize) -> File {
    let name = std::ffi::CString::new("swpath-test").unwrap();
    // SAFETY: valid NUL-terminated name; the result is checked and owned at once.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len as u64).unwrap();
    f
}

fn fixture() -> Fixture {
    let f = memfd(SIZE);
    let vm = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(BASE),
        SIZE,
        Some(FileOffset::new(f.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    let region = MemoryRegion::map(BASE, SIZE as u64, 0x7000_0000_0000, 0, f).unwrap();
    let ours = Arc::new(GuestMemory::from_regions(vec![region]).unwrap());
    Fixture { vm, ours }
}

fn ring_config(index: u16, q: &MockSplitQueue<GuestMemoryMmap<()>>, size: u16) -> RingConfig {
    RingConfig {
        index,
        size,
        addrs: RingAddrs {
            desc: q.desc_table_addr().0,
            avail: q.avail_addr().0,
            used: q.used_addr().0,
        },
        base: 0,
        events: RingEvents {
            kick: Arc::new(EventFd::new(0).unwrap()),
            call: Some(Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
        },
        counters: Arc::default(),
        log_used: None,
    }
}

fn queue(cfg: &RingConfig, mem: &Arc<GuestMemory>) -> Queue {
    Queue::new(
        DeviceRing::new(cfg, mem.clone(), false).unwrap(),
        Arc::new(Interrupt::new(cfg.events.call.clone())),
        Arc::new(QueueCounters::default()),
    )
}

fn pair(rc: &RingConfig, tc: &RingConfig, mem: &Arc<GuestMemory>, f: Negotiated) -> Loopback {
    let hdr = f.net_header_len();
    Loopback::new(
        RxQueue::new(queue(rc, mem), hdr, f.mrg_rxbuf()),
        TxQueue::new(queue(tc, mem), hdr),
    )
}

const IDLE: Progress = Progress {
    tx: TxState::Idle,
    rx: RxState::Idle,
};
const STARVED: Progress = Progress {
    tx: TxState::Idle,
    rx: RxState::Starved,
};

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// A TX frame: 12-byte zero header + `len` bytes of a pattern.
fn write_frame(vm: &GuestMemoryMmap<()>, at: u64, len: usize, seed: u8) -> Vec<u8> {
    let frame: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    vm.write_slice(&[0u8; 12], GuestAddress(at)).unwrap();
    vm.write_slice(&frame, GuestAddress(at + 12)).unwrap();
    frame
}

fn used_entry(q: &MockSplitQueue<GuestMemoryMmap<()>>, i: usize) -> (u32, u32) {
    let e = q.used().ring().ref_at(i).unwrap().load();
    (e.id(), e.len())
}

const F_V1: u64 = VIRTIO_F_VERSION_1;

#[test]
fn frame_comes_back_with_header_and_one_buffer() {
    let fx = fixture();
    let rxq = MockSplitQueue::create(&fx.vm, GuestAddress(BASE), 16);
    let txq = MockSplitQueue::create(&fx.vm, GuestAddress(BASE + 0x1000), 16);
    rxq.add_desc_chains(&[desc(BASE + 0x10000, 2048, WRITE, 0)], 0)
        .unwrap();
    let frame = write_frame(&fx.vm, BASE + 0x20000, 100, 1);
    txq.add_desc_chains(
        &[
            desc(BASE + 0x20000, 12, NEXT, 1),
            desc(BASE + 0x2000c, 100, 0, 0),
        ],
        0,
    )
    .unwrap();
    let (rc, tc) = (ring_config(0, &rxq, 16), ring_config(1, &txq, 16));
    let mut lp = pair(&rc, &tc, &fx.ours, Negotiated { bits: F_V1 });
    assert_eq!(lp.process(64), IDLE);
    lp.flush();
    assert_eq!(rxq.used().idx().load(), 1);
    assert_eq!(txq.used().idx().load(), 1);
    assert_eq!(used_entry(&rxq, 0), (0, 112));
    assert_eq!(used_entry(&txq, 0), (0, 0));
    let mut got = vec![0u8; 112];
    fx.vm
        .read_slice(&mut got, GuestAddress(BASE + 0x10000))
        .unwrap();
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers");
    assert_eq!(&got[12..], &frame[..]);
    // Without EVENT_IDX and without NO_INTERRUPT, both rings interrupt once.
    assert_eq!(rc.events.call.as_ref().unwrap().read().unwrap(), 1);
    assert_eq!(tc.events.call.as_ref().unwrap().read().unwrap(), 1);
    let (rx_base, tx_base) = lp.finish();
    assert_eq!((rx_base, tx_base), (1, 1));
}

#[test]
fn mergeable_buffers_carry_num_buffers_and_lengths() {
    let fx = fixture();
    let rxq = MockSplitQueue::create(&fx.vm, GuestAddress(BASE), 16);
    let txq = MockSplitQueue::create(&fx.vm, GuestAddress(BASE + 0x1000), 16);
    // Four 40-byte RX buffers, a 100-byte frame: 112 bytes need three of them.
    let rx: Vec<_> = (0..4)
        .map(|i| desc(BASE + 0x10000 + 64 * i, 40, WRITE, 0))
        .collect();
    rxq.add_desc_chains(&rx, 0).unwrap();
    let frame = write_frame(&fx.vm, BASE + 0x20000, 100, 9);
    txq.add_desc_chains(&[desc(BASE + 0x20000, 112, 0, 0)], 0)
        .unwrap();
    let (rc, tc) = (ring_config(0, &rxq, 16), ring_config(1, &txq, 16));
    let features = Negotiated {
        bits: F_V1 | VIRTIO_NET_F_MRG_RXBUF,
    };
    let mut lp = pair(&rc, &tc, &fx.ours, features);
    assert_eq!(lp.process(64), IDLE);
    lp.flush();
    assert_eq!(rxq.used().idx().load(), 3);
    assert_eq!(used_entry(&rxq, 0), (0, 40));
    assert_eq!(used_entry(&rxq, 1), (1, 40));
    assert_eq!(used_entry(&rxq, 2), (2, 32));
    let mut got = Vec::new();
    for i in 0..3u64 {
        let mut b = vec![0u8; 40];
        fx.vm
            .read_slice(&mut b, GuestAddress(BASE + 0x10000 + 64 * i))
            .unwrap();
        got.extend_from_slice(&b);
    }
    assert_eq!(&got[10..12], &3u16.to_le_bytes());
    assert_eq!(&got[12..112], &frame[..]);
    // The fourth buffer is handed back by rewinding: the RX ring stops at 3.
    assert_eq!(lp.finish(), (3, 1));
}

#[test]
fn frame_waits_for_rx_buffers_instead_of_dropping() {
    let fx = fixture();
    let rxq = MockSplitQueue::create(&fx.vm, GuestAddress(BASE), 16);
    let txq = MockSplitQueue::create(&fx.vm, GuestAddress(BASE + 0x1000), 16);
    write_frame(&fx.vm, BASE + 0x20000, 60, 3);
    txq.add_desc_chains(&[desc(BASE + 0x20000, 72, 0, 0)], 0)
        .unwrap();
    let (rc, tc) = (ring_config(0, &rxq, 16), ring_config(1, &txq, 16));
    let mut lp = pair(&rc, &tc, &fx.ours, Negotiated { bits: F_V1 });
    assert_eq!(lp.process(64), STARVED);
    lp.flush();
    assert_eq!(txq.used().idx().load(), 0, "the frame stays on the TX ring");
    rxq.add_desc_chains(&[desc(BASE + 0x10000, 2048, WRITE, 0)], 0)
        .unwrap();
    assert_eq!(lp.process(64), IDLE);
    lp.flush();
    assert_eq!(txq.used().idx().load(), 1);
    assert_eq!(rxq.used().idx().load(), 1);
    let s = lp.rx.q.counters.snapshot(0);
    assert_eq!(s.rx_no_buffer, 1);
    assert_eq!(s.total_drops(), 0);
}

#[test]
fn hostile_tx_chains_are_counted_and_skipped() {
    let fx = fixture();
    let rxq = MockSplitQueue::create(&fx.vm, GuestAddress(BASE), 16);
    let txq = MockSplitQueue::create(&fx.vm, GuestAddress(BASE + 0x1000), 16);
    let rx: Vec<_> = (0..4)
        .map(|i| desc(BASE + 0x10000 + 0x1000 * i, 2048, WRITE, 0))
        .collect();
    rxq.add_desc_chains(&rx, 0).unwrap();
    let frame = write_frame(&fx.vm, BASE + 0x20000, 64, 5);
    // One chain per call: the mock starts a new chain only after a descriptor
    // without NEXT, so each bad chain is placed at its own table offset.
    let chains: [(&[RawDescriptor], u16); 5] = [
        // Outside guest memory.
        (&[desc(0x10, 100, 0, 0)], 0),
        // A loop: 1 -> 2 -> 1.
        (
            &[
                desc(BASE + 0x20000, 12, NEXT, 2),
                desc(BASE + 0x20000, 12, NEXT, 1),
            ],
            1,
        ),
        // A device-writable buffer on TX.
        (&[desc(BASE + 0x20000, 76, WRITE, 0)], 3),
        // Zero length.
        (&[desc(BASE + 0x20000, 0, 0, 0)], 4),
        // The good frame.
        (&[desc(BASE + 0x20000, 76, 0, 0)], 5),
    ];
    for (c, at) in chains {
        txq.add_desc_chains(c, at).unwrap();
    }
    let (rc, tc) = (ring_config(0, &rxq, 16), ring_config(1, &txq, 16));
    let mut lp = pair(&rc, &tc, &fx.ours, Negotiated { bits: F_V1 });
    assert_eq!(lp.process(64), IDLE);
    lp.flush();
    let s = lp.tx.q.counters.snapshot(1);
    assert_eq!(s.bad(BadDescriptor::Address), 1);
    assert_eq!(s.bad(BadDescriptor::ChainTooLong), 1);
    assert_eq!(s.bad(BadDescriptor::WrongDirection), 1);
    assert_eq!(s.bad(BadDescriptor::ZeroLength), 1);
    assert_eq!(s.packets, 1);
    // Every chain was returned to the guest; only the good one reached RX.
    assert_eq!(txq.used().idx().load(), 5);
    assert_eq!(rxq.used().idx().load(), 1);
    let mut got = vec![0u8; 64];
    fx.vm
        .read_slice(&mut got, GuestAddress(BASE + 0x10000 + 12))
        .unwrap();
    assert_eq!(got, frame);
}

#[test]
fn a_batch_stops_before_a_bad_chain_so_completions_stay_in_ring_order() {
    let fx = fixture();
    let txq = MockSplitQueue::create(&fx.vm, GuestAddress(BASE + 0x1000), 16);
    write_frame(&fx.vm, BASE + 0x20000, 64, 1);
    let chains: [(&[RawDescriptor], u16); 3] = [
        (&[desc(BASE + 0x20000, 76, 0, 0)], 0),
        // Outside guest memory.
        (&[desc(0x10, 100, 0, 0)], 1),
        (&[desc(BASE + 0x20000, 76, 0, 0)], 2),
    ];
    for (c, at) in chains {
        txq.add_desc_chains(c, at).unwrap();
    }
    let tc = ring_config(1, &txq, 16);
    let mut tx = TxQueue::new(queue(&tc, &fx.ours), 12);
    let (mut first, mut chain) = (Chain::with_capacity(4), Chain::with_capacity(4));
    assert_eq!(tx.take_into(&mut first, false), TxNext::Frame);
    // The bad chain would complete ahead of `first`: it stays on the ring.
    assert_eq!(tx.take_into(&mut chain, true), TxNext::Later);
    assert_eq!(tx.q.ring.next_avail(), 1);
    tx.complete_chain(&first);
    // With the batch closed it is taken, counted and completed; then the good one.
    assert_eq!(tx.take_into(&mut chain, false), TxNext::Skipped);
    assert_eq!(tx.take_into(&mut chain, false), TxNext::Frame);
    tx.complete_chain(&chain);
    tx.q.flush();
    let s = tx.q.counters.snapshot(1);
    assert_eq!((s.packets, s.bad(BadDescriptor::Address)), (2, 1));
    assert_eq!(txq.used().idx().load(), 3);
    let ids: Vec<u32> = (0..3).map(|i| used_entry(&txq, i).0).collect();
    assert_eq!(ids, [0, 1, 2]);
}

#[test]
fn too_small_rx_buffer_without_mergeable_is_a_counted_drop() {
    let fx = fixture();
    let rxq = MockSplitQueue::create(&fx.vm, GuestAddress(BASE), 16);
    let txq = MockSplitQueue::create(&fx.vm, GuestAddress(BASE + 0x1000), 16);
    rxq.add_desc_chains(&[desc(BASE + 0x10000, 50, WRITE, 0)], 0)
        .unwrap();
    write_frame(&fx.vm, BASE + 0x20000, 100, 2);
    txq.add_desc_chains(&[desc(BASE + 0x20000, 112, 0, 0)], 0)
        .unwrap();
    let (rc, tc) = (ring_config(0, &rxq, 16), ring_config(1, &txq, 16));
    let mut lp = pair(&rc, &tc, &fx.ours, Negotiated { bits: F_V1 });
    assert_eq!(lp.process(64), IDLE);
    lp.flush();
    assert_eq!(
        lp.rx
            .q
            .counters
            .snapshot(0)
            .dropped(DropReason::RxBufferTooSmall),
        1
    );
    assert_eq!(txq.used().idx().load(), 1);
    assert_eq!(
        rxq.used().idx().load(),
        0,
        "the small buffer stays available"
    );
}

#[test]
fn corrupt_avail_index_breaks_only_that_ring() {
    let fx = fixture();
    let rxq = MockSplitQueue::create(&fx.vm, GuestAddress(BASE), 16);
    let txq = MockSplitQueue::create(&fx.vm, GuestAddress(BASE + 0x1000), 16);
    txq.avail().idx().store(1000);
    let (rc, tc) = (ring_config(0, &rxq, 16), ring_config(1, &txq, 16));
    let mut lp = pair(&rc, &tc, &fx.ours, Negotiated { bits: F_V1 });
    assert_eq!(lp.process(64), IDLE);
    lp.flush();
    assert_eq!(
        lp.tx
            .q
            .counters
            .snapshot(1)
            .bad(BadDescriptor::AvailIndexJump),
        1
    );
    assert!(lp.tx.q.ring.is_broken());
    assert_eq!(lp.process(64), IDLE);
    lp.flush();
    assert_eq!(
        lp.tx
            .q
            .counters
            .snapshot(1)
            .bad(BadDescriptor::AvailIndexJump),
        1,
        "reported once"
    );
}
