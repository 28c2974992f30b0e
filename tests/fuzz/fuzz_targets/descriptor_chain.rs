//! Differential test of the split-ring reader: the same descriptor table and avail
//! ring in guest memory, read by vdpad's `swpath::ring::DeviceRing` and by
//! `virtio-queue`'s `Queue` (the rust-vmm implementation) as the oracle.
//!
//! Checked, for every chain the driver made available:
//! - both agree on how many chains are available, or both find the avail index
//!   corrupt (it ran more than the ring size ahead);
//! - both see the same head index;
//! - every chain vdpad accepts is exactly the oracle's chain: same buffers (guest
//!   address and length) in the same order, ending where the oracle's does;
//! - every chain the oracle reads completely is accepted by vdpad, except for the
//!   intentional differences below;
//! - `peek_single` offers a chain exactly when `read_chain` reads it as one buffer.
//!
//! Intentional differences (excluded from "must accept"):
//! - indirect descriptors: vdpad does not offer VIRTIO_RING_F_INDIRECT_DESC, so a chain
//!   that uses one is refused (the oracle follows the table);
//! - zero-length buffers: refused by vdpad, which moves packets and has no use for
//!   them (the spec lets a device treat them as an error);
//! - mixed directions: a virtio-net queue's chains are all device-readable (TX) or all
//!   device-writable (RX); vdpad refuses a chain that mixes them;
//! - buffers outside guest memory: the oracle's iterator does not check buffer
//!   addresses (its Reader/Writer do later), vdpad refuses them while reading.
//!
//! Input: a config byte (bits 0-2: log2 of the ring size, at most 5), the avail index
//! to start from u16, the avail idx field u16, then 16 bytes per descriptor and 2 per
//! avail entry; missing bytes are zero.
#![no_main]

use std::io::Write;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use swpath::ring::{Chain, DeviceRing, Direction};
use vdpa::memory::{GuestMemory, MemoryRegion};
use vdpa::stats::QueueCounters;
use vdpa::{RingAddrs, RingConfig, RingEvents};
use vdpad_fuzz::{memfd, Cursor};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory: one region at guest-physical 0.
const MEM: u64 = 0x4000;
/// Where the ring parts are.
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x400;
const USED: u64 = 0x800;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Buf {
    addr: u64,
    len: u32,
    write: bool,
}

/// A raw descriptor from the image.
fn raw_desc(image: &[u8], i: u16) -> (u64, u32, u16, u16) {
    let d = &image[(DESC + 16 * u64::from(i)) as usize..][..16];
    (
        u64::from_le_bytes(d[0..8].try_into().unwrap()),
        u32::from_le_bytes(d[8..12].try_into().unwrap()),
        u16::from_le_bytes(d[12..14].try_into().unwrap()),
        u16::from_le_bytes(d[14..16].try_into().unwrap()),
    )
}

/// Whether the chain at `head`, walked the way the oracle walks the main table, meets
/// a descriptor with the INDIRECT flag.
fn uses_indirect(image: &[u8], size: u16, head: u16) -> bool {
    let mut i = head;
    for _ in 0..size {
        if i >= size {
            return false;
        }
        let (_, _, flags, next) = raw_desc(image, i);
        if flags & F_INDIRECT != 0 {
            return true;
        }
        if flags & F_NEXT == 0 {
            return false;
        }
        i = next;
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let cfg = input.u8();
    let size: u16 = 1 << (cfg & 7).min(5);
    let base = input.u16();
    let avail_idx = input.u16();
    let mut image = vec![0u8; MEM as usize];
    let table = input.bytes(16 * usize::from(size));
    image[DESC as usize..][..table.len()].copy_from_slice(table);
    image[AVAIL as usize + 2..][..2].copy_from_slice(&avail_idx.to_le_bytes());
    let ring = input.bytes(2 * usize::from(size));
    image[AVAIL as usize + 4..][..ring.len()].copy_from_slice(ring);

    // vdpad's view: a memfd mapped as its guest memory.
    let mut file = memfd(MEM);
    file.write_all(&image).unwrap();
    let region = MemoryRegion::map(0, MEM, 0x7f00_0000_0000, 0, file).unwrap();
    let host = region.host_addr() as usize;
    let mem = Arc::new(GuestMemory::from_regions(vec![region]).unwrap());
    let cfg = RingConfig {
        index: 0,
        size,
        addrs: RingAddrs {
            desc: DESC,
            avail: AVAIL,
            used: USED,
        },
        base,
        events: RingEvents {
            kick: Arc::new(EventFd::new(0).unwrap()),
            call: None,
        },
        counters: Arc::new(QueueCounters::default()),
        log_used: None,
    };
    let mut dev = DeviceRing::new(&cfg, mem, false).unwrap();

    // The oracle's view: vm-memory guest memory holding the same bytes.
    let gm = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    gm.write_slice(&image, GuestAddress(0)).unwrap();
    let mut q = Queue::new(size).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_next_avail(base);
    q.set_ready(true);
    assert!(q.is_valid(&gm));

    let avail = dev.available();
    let mut iter = match q.iter(&gm) {
        Ok(it) => it,
        Err(_) => {
            assert!(
                avail.is_err(),
                "oracle refuses avail idx {avail_idx} base {base}, vdpad takes it"
            );
            return;
        }
    };
    let n = avail.expect("vdpad refuses an avail index the oracle takes");
    assert_eq!(n, avail_idx.wrapping_sub(base));
    let mut chain = Chain::with_capacity(usize::from(size));
    for _ in 0..n {
        let oracle = iter.next().expect("oracle has fewer chains");
        let dir = {
            let head = dev.peeked_head();
            if head < size && raw_desc(&image, head).2 & F_WRITE != 0 {
                Direction::DeviceWrites
            } else {
                Direction::DeviceReads
            }
        };
        let single = dev
            .peek_single(dir)
            .map(|(h, s)| (h, s.as_ptr(), s.len()));
        let head = dev.pop_head();
        assert_eq!(head, oracle.head_index());
        let got = dev.read_chain(head, dir, &mut chain);
        let descs: Vec<_> = oracle.collect();
        let theirs: Vec<Buf> = descs
            .iter()
            .map(|d| Buf {
                addr: d.addr().0,
                len: d.len(),
                write: d.is_write_only(),
            })
            .collect();
        let complete = descs.last().is_some_and(|d| !d.has_next());
        match got {
            Ok(()) => {
                let ours: Vec<Buf> = chain
                    .segs()
                    .iter()
                    .map(|s| Buf {
                        addr: (s.as_ptr() as usize - host) as u64,
                        len: s.len(),
                        write: dir == Direction::DeviceWrites,
                    })
                    .collect();
                assert_eq!(ours, theirs, "head {head}: chains differ");
                assert!(complete, "vdpad accepts a chain the oracle cut short");
                assert_eq!(
                    chain.total(),
                    ours.iter().map(|b| u64::from(b.len)).sum::<u64>()
                );
                if let Some((h, ptr, len)) = single {
                    let first = chain.segs()[0];
                    assert_eq!(ours.len(), 1);
                    assert_eq!((h, ptr, len), (head, first.as_ptr(), first.len()));
                } else {
                    assert!(ours.len() > 1, "peek_single missed a one-buffer chain");
                }
            }
            Err(why) => {
                assert!(
                    single.is_none(),
                    "peek_single offered a chain read_chain refuses"
                );
                let excluded = uses_indirect(&image, size, head)
                    || theirs.iter().any(|b| b.len == 0)
                    || theirs
                        .iter()
                        .any(|b| b.write != (dir == Direction::DeviceWrites))
                    || theirs
                        .iter()
                        .any(|b| b.addr.checked_add(u64::from(b.len)).is_none_or(|e| e > MEM));
                assert!(
                    !complete || excluded,
                    "head {head}: vdpad refuses ({why:?}) a valid chain {theirs:?}"
                );
            }
        }
    }
    assert!(iter.next().is_none(), "oracle has more chains");
});
