//! What live migration needs from the software datapath, against an independent
//! driver (virtio-queue's `MockSplitQueue` in a memfd both sides map):
//!
//! * every page the device writes while a dirty log is given — RX buffers through each
//!   of the three delivery paths, and both used rings — is marked, and no other page;
//! * stopping a running pair (what GET_VRING_BASE does on the source) completes or
//!   hands back every chain it took, so the positions it returns equal the used
//!   indexes, and a second datapath started there (the destination) delivers every
//!   remaining frame exactly once, in order.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use swpath::engine::Engine;
use swpath::interrupt::Interrupt;
use swpath::loopback::Loopback;
use swpath::queue::Queue;
use swpath::ring::DeviceRing;
use swpath::rxq::RxQueue;
use swpath::txq::TxQueue;
use swpath::SoftwareDatapath;
use vdpa::dirty_log::{log_bytes_for, LOG_PAGE};
use vdpa::features::Negotiated;
use vdpa::virtio::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF};
use vdpa::virtio::ring::{area_sizes, VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE};
use vdpa::{
    Datapath, DirtyLog, GuestMemory, LogWriter, MemoryRegion, PairPosition, QueueCounters,
    QueuePairConfig, RingAddrs, RingConfig, RingEvents,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const BASE: u64 = 0x10_0000;
const SIZE: usize = 0x40_0000;
const MRG: Negotiated = Negotiated {
    bits: VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF,
};

fn memfd(len: u64) -> File {
    let name = std::ffi::CString::new("swpath-migration").unwrap();
    // SAFETY: valid NUL-terminated name; the result is checked and owned at once.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}

/// The driver's mapping and ours of the same memfd.
fn memory() -> (GuestMemoryMmap<()>, Arc<GuestMemory>) {
    let f = memfd(SIZE as u64);
    let vm = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(BASE),
        SIZE,
        Some(FileOffset::new(f.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    let region = MemoryRegion::map(BASE, SIZE as u64, 0x7000_0000_0000, 0, f).unwrap();
    (
        vm,
        Arc::new(GuestMemory::from_regions(vec![region]).unwrap()),
    )
}

/// The rings of `q`, with the used ring at `used` (the mock places its used ring
/// right behind `4 + size` bytes of avail ring, where avail entries beyond half the
/// ring would overwrite it).
fn ring_config(
    index: u16,
    q: &MockSplitQueue<GuestMemoryMmap<()>>,
    size: u16,
    used: u64,
) -> RingConfig {
    RingConfig {
        index,
        size,
        addrs: RingAddrs {
            desc: q.desc_table_addr().0,
            avail: q.avail_addr().0,
            used,
        },
        base: 0,
        events: RingEvents {
            kick: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            call: Some(Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
        },
        counters: Arc::default(),
        log_used: Some(used),
    }
}

/// The used index of the ring whose used ring is at `used`.
fn used_idx(vm: &GuestMemoryMmap<()>, used: u64) -> u16 {
    vm.read_obj(GuestAddress(used + 2)).unwrap()
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    linked(addr, len, flags, 0)
}

fn linked(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// A frame of `len` bytes behind a zero 12-byte header, written at `at`.
fn put_frame(vm: &GuestMemoryMmap<()>, at: u64, len: usize, seed: u8) -> Vec<u8> {
    let frame: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    vm.write_slice(&[0u8; 12], GuestAddress(at)).unwrap();
    vm.write_slice(&frame, GuestAddress(at + 12)).unwrap();
    frame
}

/// Guest pages marked in `log`, as page numbers.
fn marked(log: &DirtyLog) -> Vec<u64> {
    let end = BASE + SIZE as u64;
    (0..end / LOG_PAGE)
        .filter(|p| log.is_marked(p * LOG_PAGE))
        .collect()
}

fn page(gpa: u64) -> u64 {
    gpa / LOG_PAGE
}

#[test]
fn every_page_written_is_marked_and_no_other() {
    let (vm, mem) = memory();
    let log_len = log_bytes_for(BASE + SIZE as u64);
    let log = Arc::new(DirtyLog::map(memfd(log_len), log_len, 0, &mem).unwrap());
    let rxq = MockSplitQueue::create(&vm, GuestAddress(BASE), 16);
    let txq = MockSplitQueue::create(&vm, GuestAddress(BASE + 0x1000), 16);
    // RX: two big buffers, then four 40-byte ones for a frame that needs three; the
    // second of those straddles a page boundary, the fourth stays unused.
    let rx_bufs = [
        (BASE + 0x10000, 2048),
        (BASE + 0x12000, 2048),
        (BASE + 0x14000, 40),
        (BASE + 0x15fec, 40),
        (BASE + 0x18000, 40),
        (BASE + 0x19000, 40),
    ];
    let rx: Vec<_> = rx_bufs.iter().map(|&(a, l)| desc(a, l, WRITE)).collect();
    rxq.add_desc_chains(&rx, 0).unwrap();
    // TX: one frame in one buffer (the single-buffer path), one in two (the copy fast
    // path), one in one buffer that needs three RX buffers (the general path).
    let f1 = put_frame(&vm, BASE + 0x20000, 100, 1);
    let f2 = put_frame(&vm, BASE + 0x21000, 100, 2);
    let f3 = put_frame(&vm, BASE + 0x22000, 100, 3);
    txq.add_desc_chains(
        &[
            desc(BASE + 0x20000, 112, 0),
            linked(BASE + 0x21000, 12, NEXT, 2),
            desc(BASE + 0x2100c, 100, 0),
            desc(BASE + 0x22000, 112, 0),
        ],
        0,
    )
    .unwrap();
    let (rx_used, tx_used) = (BASE + 0x800, BASE + 0x1800);
    let (rc, tc) = (
        ring_config(0, &rxq, 16, rx_used),
        ring_config(1, &txq, 16, tx_used),
    );
    let queue = |cfg: &RingConfig| {
        let mut ring = DeviceRing::new(cfg, mem.clone(), false).unwrap();
        ring.log_used_at(log.clone(), cfg.log_used.unwrap());
        Queue::new(
            ring,
            Arc::new(Interrupt::new(None)),
            Arc::new(QueueCounters::default()),
        )
    };
    let mut rx = RxQueue::new(queue(&rc), 12, true);
    rx.set_log(Some(LogWriter::new(log.clone(), mem.clone())));
    let mut lp = Loopback::new(rx, TxQueue::new(queue(&tc), 12));
    lp.process(64);
    lp.flush();
    assert_eq!(used_idx(&vm, rx_used), 5);
    let (rx_base, _) = lp.finish();
    assert_eq!(rx_base, 5, "the unused sixth buffer is handed back");
    let mut got = vec![0u8; 100];
    vm.read_slice(&mut got, GuestAddress(BASE + 0x1000c))
        .unwrap();
    assert_eq!(got, f1);
    vm.read_slice(&mut got, GuestAddress(BASE + 0x1200c))
        .unwrap();
    assert_eq!(got, f2);
    vm.read_slice(&mut got[..28], GuestAddress(BASE + 0x1400c))
        .unwrap();
    assert_eq!(got[..28], f3[..28]);

    let used_pages = |used: u64| {
        let (_, _, len) = area_sizes(16);
        page(used)..=page(used + len - 1)
    };
    let mut want: Vec<u64> = used_pages(rx_used).chain(used_pages(tx_used)).collect();
    want.extend([0x10000, 0x12000, 0x14000, 0x15000, 0x16000, 0x18000].map(|o| page(BASE + o)));
    want.sort();
    want.dedup();
    assert_eq!(
        marked(&log),
        want,
        "pages marked (TX buffers and the unused RX buffer must not be)"
    );
    assert_eq!(log.pages_marked(), want.len() as u64);
    assert_eq!(log.outside(), 0);
}

/// A running loopback pair on `cfg`'s rings, started from `bases`.
fn start(dp: &mut SoftwareDatapath, rc: &RingConfig, tc: &RingConfig, mem: &Arc<GuestMemory>) {
    dp.start(QueuePairConfig {
        pair: 0,
        rx: rc.clone(),
        tx: tc.clone(),
        features: MRG,
        mem: mem.clone(),
        ended: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        log: None,
    })
    .unwrap();
}

fn wait_used(vm: &GuestMemoryMmap<()>, used: u64, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while used_idx(vm, used) != want {
        assert!(
            Instant::now() < deadline,
            "used index {} never reached {want}",
            used_idx(vm, used)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn stopped_pair_resumes_elsewhere_with_nothing_lost_or_repeated() {
    const FRAMES: u16 = 12;
    let (vm, mem) = memory();
    let rxq = MockSplitQueue::create(&vm, GuestAddress(BASE), 32);
    let txq = MockSplitQueue::create(&vm, GuestAddress(BASE + 0x1000), 32);
    let rx_buf = |i: u16| BASE + 0x10000 + 64 * u64::from(i);
    // Every 112-byte frame takes two 64-byte buffers. Seven buffers: three frames go
    // through, the fourth takes the seventh buffer and then waits for more.
    let first: Vec<_> = (0..7).map(|i| desc(rx_buf(i), 64, WRITE)).collect();
    rxq.add_desc_chains(&first, 0).unwrap();
    let frames: Vec<Vec<u8>> = (0..FRAMES)
        .map(|i| put_frame(&vm, BASE + 0x40000 + 128 * u64::from(i), 100, i as u8))
        .collect();
    let tx: Vec<_> = (0..FRAMES)
        .map(|i| desc(BASE + 0x40000 + 128 * u64::from(i), 112, 0))
        .collect();
    txq.add_desc_chains(&tx, 0).unwrap();
    let (rx_used, tx_used) = (BASE + 0x800, BASE + 0x1800);
    let (mut rc, mut tc) = (
        ring_config(0, &rxq, 32, rx_used),
        ring_config(1, &txq, 32, tx_used),
    );
    rc.log_used = None;
    tc.log_used = None;

    let mut source = SoftwareDatapath::loopback("mig-src");
    start(&mut source, &rc, &tc, &mem);
    wait_used(&vm, tx_used, 3);
    wait_used(&vm, rx_used, 6);
    // What GET_VRING_BASE does: the pair stops and says where each ring resumes.
    let stopped = source.stop(0);
    assert_eq!(
        stopped,
        vec![PairPosition {
            pair: 0,
            rx: 6,
            tx: 3
        }]
    );
    assert_eq!(
        (used_idx(&vm, rx_used), used_idx(&vm, tx_used)),
        (6, 3),
        "nothing completed after the stop"
    );

    // The destination starts where the source stopped; the driver posts the rest.
    rc.base = 6;
    tc.base = 3;
    let mut dest = SoftwareDatapath::loopback("mig-dst");
    start(&mut dest, &rc, &tc, &mem);
    let more: Vec<_> = (7..2 * FRAMES)
        .map(|i| desc(rx_buf(i), 64, WRITE))
        .collect();
    rxq.add_desc_chains(&more, 7).unwrap();
    rc.events.kick.write(1).unwrap();
    wait_used(&vm, tx_used, FRAMES);
    wait_used(&vm, rx_used, 2 * FRAMES);
    assert_eq!(
        dest.stop(0),
        vec![PairPosition {
            pair: 0,
            rx: 2 * FRAMES,
            tx: FRAMES
        }]
    );
    for (i, frame) in frames.iter().enumerate() {
        let mut got = vec![0u8; 128];
        vm.read_slice(&mut got, GuestAddress(rx_buf(2 * i as u16)))
            .unwrap();
        assert_eq!(&got[10..12], &2u16.to_le_bytes(), "frame {i}: num_buffers");
        assert_eq!(&got[12..64], &frame[..52], "frame {i}, first buffer");
        assert_eq!(&got[64..112], &frame[52..], "frame {i}, second buffer");
    }
}
