//! The driver ring against an independent device-side implementation (virtio-queue)
//! operating on a second mapping of the same memfd: layout, free list, wrap-around of the
//! 16-bit indices, EVENT_IDX both ways, the NO_INTERRUPT / NO_NOTIFY flags, and a
//! pipelined loopback on a device thread.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::device::{spawn, DevRing, LoopbackDevice};
use vdpa::virtio::ring::{VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vdpa_rig::driver_ring::DriverRingError;
use vdpa_rig::frame::{frame_len, write_frame, FrameChecker};
use vdpa_rig::kick_call::{raw, wait_readable, KickCall};
use vdpa_rig::rxq::DriverRxQueue;
use vdpa_rig::txq::{DriverTxQueue, SlotPool};
use vdpa_rig::{DriverRing, DriverSegment, MemoryLayout, RigMemory, RingLayout, UsedKind};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

/// Rig memory plus the device's own mapping of the same memfd.
fn memories(regions: usize) -> (Arc<RigMemory>, GuestMemoryMmap) {
    let mem = Arc::new(
        RigMemory::new(&MemoryLayout {
            size: 8 << 20,
            regions,
            ..Default::default()
        })
        .unwrap(),
    );
    let dev = GuestMemoryMmap::from_ranges_with_files(mem.regions().iter().map(|r| {
        (
            GuestAddress(r.gpa()),
            r.len() as usize,
            Some(FileOffset::new(
                mem.memfd().try_clone().unwrap(),
                r.file_offset(),
            )),
        )
    }))
    .unwrap();
    (mem, dev)
}

fn queue(l: &RingLayout, base: u16, event_idx: bool) -> Queue {
    let mut q = Queue::new(l.size).unwrap();
    q.set_size(l.size);
    q.try_set_desc_table_address(GuestAddress(l.desc)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(l.avail)).unwrap();
    q.try_set_used_ring_address(GuestAddress(l.used)).unwrap();
    q.set_event_idx(event_idx);
    q.set_next_avail(base);
    q.set_next_used(base);
    q.set_ready(true);
    q
}

fn seg(gpa: u64, len: u32) -> DriverSegment {
    DriverSegment {
        gpa,
        len,
        writable: false,
    }
}

#[test]
fn chains_layout_and_free_list() {
    let (mem, dev) = memories(1);
    let mut a = mem.allocator();
    let l = RingLayout::allocate(&mut a, 8).unwrap();
    let buf = a.alloc(4096, 64).unwrap();
    let mut ring = DriverRing::new(mem.clone(), l, 0).unwrap();
    let mut q = queue(&l, 0, false);

    // A 3-descriptor chain with a writable tail, as the device sees it.
    let h = ring
        .add_chain(&[
            seg(buf, 10),
            seg(buf + 10, 20),
            DriverSegment {
                gpa: buf + 30,
                len: 30,
                writable: true,
            },
        ])
        .unwrap();
    ring.publish();
    let chain = q.pop_descriptor_chain(&dev).unwrap();
    assert_eq!(chain.head_index(), h);
    let descs: Vec<(u64, u32, bool, bool)> = chain
        .map(|d| (d.addr().0, d.len(), d.is_write_only(), d.has_next()))
        .collect();
    assert_eq!(
        descs,
        [
            (buf, 10, false, true),
            (buf + 10, 20, false, true),
            (buf + 30, 30, true, false)
        ]
    );
    // Raw descriptor bytes: flags on the head are NEXT only.
    let mut raw = [0u8; 16];
    dev.read_slice(&mut raw, GuestAddress(l.desc + 16 * u64::from(h)))
        .unwrap();
    assert_eq!(u16::from_le_bytes([raw[12], raw[13]]), VRING_DESC_F_NEXT);
    assert_eq!(ring.num_free(), 5);

    // Fill the table, then complete out of order.
    let h2 = ring.add_chain(&[seg(buf, 1), seg(buf, 1)]).unwrap();
    let h3 = ring
        .add_chain(&[seg(buf, 1), seg(buf, 1), seg(buf, 1)])
        .unwrap();
    assert!(matches!(
        ring.add_chain(&[seg(buf, 1)]),
        Err(DriverRingError::Full { need: 1, have: 0 })
    ));
    assert!(matches!(
        ring.add_chain(&[]),
        Err(DriverRingError::EmptyChain)
    ));
    assert!(
        ring.add_chain(&[seg(0, 1)]).is_err(),
        "GPA 0 is not guest memory"
    );
    ring.publish();
    q.pop_descriptor_chain(&dev).unwrap();
    q.pop_descriptor_chain(&dev).unwrap();
    for (head, len) in [(h3, 3), (h, 60), (h2, 2)] {
        q.add_used(&dev, head, len).unwrap();
    }
    let got: Vec<(u16, u32, UsedKind)> = std::iter::from_fn(|| ring.pop_used().unwrap())
        .map(|u| (u.head, u.len, u.kind))
        .collect();
    assert_eq!(
        got,
        [
            (h3, 3, UsedKind::Chain(3)),
            (h, 60, UsedKind::Chain(3)),
            (h2, 2, UsedKind::Chain(2))
        ]
    );
    assert_eq!(ring.num_free(), 8);
    assert_eq!(ring.in_flight(), 0);

    // A device returning a head that is not in flight is reported, not trusted.
    let h4 = ring.add_chain(&[seg(buf, 1)]).unwrap();
    ring.publish();
    q.pop_descriptor_chain(&dev).unwrap();
    q.add_used(&dev, (h4 + 1) % 8, 1).unwrap();
    assert!(matches!(
        ring.pop_used(),
        Err(DriverRingError::BadUsedId { .. })
    ));
}

#[test]
fn a_descriptor_that_keeps_its_bytes_is_not_rewritten() {
    let (mem, dev) = memories(1);
    let mut a = mem.allocator();
    let l = RingLayout::allocate(&mut a, 4).unwrap();
    let buf = a.alloc(4096, 64).unwrap();
    let mut ring = DriverRing::new(mem, l, 0).unwrap();
    let mut q = queue(&l, 0, false);
    let len_at = |h: u16| GuestAddress(l.desc + 16 * u64::from(h) + 8);
    let mut cycle = |ring: &mut DriverRing, len: u32| {
        let h = ring.add_chain(&[seg(buf, len)]).unwrap();
        ring.publish();
        let c = q.pop_descriptor_chain(&dev).unwrap();
        q.add_used(&dev, c.head_index(), 0).unwrap();
        assert_eq!(ring.pop_used().unwrap().unwrap().head, h);
        h
    };
    let h = cycle(&mut ring, 100);
    assert_eq!(dev.read_obj::<u32>(len_at(h)).unwrap(), 100);
    // Mark the descriptor behind the driver's back (no device does: the table is the
    // driver's). The same buffer again leaves it alone...
    dev.write_obj(0xdeadu32, len_at(h)).unwrap();
    assert_eq!(cycle(&mut ring, 100), h);
    assert_eq!(dev.read_obj::<u32>(len_at(h)).unwrap(), 0xdead);
    // ...and a different one is written.
    assert_eq!(cycle(&mut ring, 200), h);
    assert_eq!(dev.read_obj::<u32>(len_at(h)).unwrap(), 200);
}

#[test]
fn used_idx_jump_is_reported() {
    let (mem, dev) = memories(1);
    let mut a = mem.allocator();
    let l = RingLayout::allocate(&mut a, 4).unwrap();
    let mut ring = DriverRing::new(mem, l, 0).unwrap();
    dev.write_obj(9u16, GuestAddress(l.used + 2)).unwrap();
    assert!(matches!(
        ring.pop_used(),
        Err(DriverRingError::UsedIdxJump { last: 0, now: 9 })
    ));
}

#[test]
fn kick_suppression_with_event_idx() {
    let (mem, dev) = memories(1);
    let mut a = mem.allocator();
    let l = RingLayout::allocate(&mut a, 8).unwrap();
    let buf = a.alloc(4096, 64).unwrap();
    let base = 65534; // wraps within the test
    let mut ring = DriverRing::new(mem, l, base).unwrap();
    ring.set_event_idx(true);
    let mut q = queue(&l, base, true);

    // Device wants a kick for the next entry (avail_event = 65534).
    assert!(!q.enable_notification(&dev).unwrap());
    assert_eq!(ring.device_avail_event(), base);
    for _ in 0..3 {
        ring.add_chain(&[seg(buf, 64)]).unwrap();
    }
    ring.publish();
    assert!(ring.kick_needed(), "avail_event in [old, new)");
    ring.add_chain(&[seg(buf, 64)]).unwrap();
    ring.publish();
    assert!(!ring.kick_needed(), "device already has a kick pending");
    assert!(!ring.kick_needed(), "nothing new");

    // The device drains everything and re-arms at the new index (2, after the wrap).
    let mut heads = Vec::new();
    while let Some(c) = q.pop_descriptor_chain(&dev) {
        heads.push(c.head_index());
    }
    assert_eq!(heads.len(), 4);
    assert!(!q.enable_notification(&dev).unwrap());
    assert_eq!(ring.device_avail_event(), base.wrapping_add(4));
    for h in heads {
        q.add_used(&dev, h, 0).unwrap();
    }
    while ring.pop_used().unwrap().is_some() {}
    ring.add_chain(&[seg(buf, 64)]).unwrap();
    ring.publish();
    assert!(ring.kick_needed());
    assert_eq!(ring.avail_idx(), 3);
}

#[test]
fn interrupt_suppression_with_event_idx() {
    let (mem, dev) = memories(1);
    let mut a = mem.allocator();
    let l = RingLayout::allocate(&mut a, 8).unwrap();
    let buf = a.alloc(4096, 64).unwrap();
    let base = 65533;
    let mut ring = DriverRing::new(mem, l, base).unwrap();
    ring.set_event_idx(true);
    let mut q = queue(&l, base, true);
    for _ in 0..6 {
        ring.add_chain(&[seg(buf, 64)]).unwrap();
    }
    ring.publish();
    let heads: Vec<u16> = std::iter::from_fn(|| q.pop_descriptor_chain(&dev))
        .map(|c| c.head_index())
        .collect();

    assert!(!ring.enable_interrupts(), "nothing pending yet");
    assert_eq!(ring.used_event(), base);
    q.add_used(&dev, heads[0], 0).unwrap();
    assert!(
        q.needs_notification(&dev).unwrap(),
        "first completion interrupts"
    );
    q.add_used(&dev, heads[1], 0).unwrap();
    assert!(
        !q.needs_notification(&dev).unwrap(),
        "driver has not consumed yet"
    );
    // Popping with interrupts on moves used_event along.
    assert!(ring.pop_used().unwrap().is_some());
    assert!(ring.pop_used().unwrap().is_some());
    assert_eq!(ring.used_event(), base.wrapping_add(2));
    q.add_used(&dev, heads[2], 0).unwrap();
    assert!(q.needs_notification(&dev).unwrap());

    // Disabled (NAPI polling): the device does not interrupt.
    ring.disable_interrupts();
    q.add_used(&dev, heads[3], 0).unwrap();
    assert!(!q.needs_notification(&dev).unwrap());
    // Re-enabling sees the entries that raced in and says "poll again".
    assert!(ring.enable_interrupts());
    while ring.pop_used().unwrap().is_some() {}
    assert!(!ring.enable_interrupts());

    // Delayed (TX style): with 2 in flight, used_event = last_used + 3/4 * 2, so only
    // the second completion interrupts.
    assert!(!ring.enable_interrupts_delayed());
    assert_eq!(ring.used_event(), ring.last_used().wrapping_add(1));
    q.add_used(&dev, heads[4], 0).unwrap();
    assert!(!q.needs_notification(&dev).unwrap());
    q.add_used(&dev, heads[5], 0).unwrap();
    assert!(q.needs_notification(&dev).unwrap());
}

#[test]
fn flags_without_event_idx() {
    let (mem, dev) = memories(1);
    let mut a = mem.allocator();
    let l = RingLayout::allocate(&mut a, 4).unwrap();
    let buf = a.alloc(4096, 64).unwrap();
    let mut ring = DriverRing::new(mem, l, 0).unwrap();
    let mut q = queue(&l, 0, false);

    q.disable_notification(&dev).unwrap(); // sets VRING_USED_F_NO_NOTIFY
    ring.add_chain(&[seg(buf, 8)]).unwrap();
    ring.publish();
    assert!(!ring.kick_needed());
    q.enable_notification(&dev).unwrap();
    ring.add_chain(&[seg(buf, 8)]).unwrap();
    ring.publish();
    assert!(ring.kick_needed());

    let flags = |dev: &GuestMemoryMmap| dev.read_obj::<u16>(GuestAddress(l.avail)).unwrap();
    ring.disable_interrupts();
    assert_eq!(flags(&dev), VRING_AVAIL_F_NO_INTERRUPT);
    assert_eq!(ring.avail_flags(), VRING_AVAIL_F_NO_INTERRUPT);
    ring.enable_interrupts();
    assert_eq!(flags(&dev), 0);
}

#[test]
fn raw_descriptors_are_written_verbatim() {
    let (mem, dev) = memories(1);
    let mut a = mem.allocator();
    let l = RingLayout::allocate(&mut a, 4).unwrap();
    let mut ring = DriverRing::new(mem, l, 0).unwrap();
    let ids = ring.reserve(2).unwrap();
    assert_eq!(ring.num_free(), 2);
    let d = vdpa_rig::RawDesc {
        addr: u64::MAX - 3,
        len: 0,
        flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
        next: ids[0],
    };
    ring.write_raw_desc(ids[1], d).unwrap();
    assert!(ring.write_raw_desc(4, d).is_err());
    ring.add_raw_head(ids[1], ids.clone()).unwrap();
    ring.publish();
    let mut raw = [0u8; 16];
    dev.read_slice(&mut raw, GuestAddress(l.desc + 16 * u64::from(ids[1])))
        .unwrap();
    assert_eq!(
        u64::from_le_bytes(raw[0..8].try_into().unwrap()),
        u64::MAX - 3
    );
    assert_eq!(u16::from_le_bytes([raw[14], raw[15]]), ids[0]);
    let avail0: u16 = dev.read_obj(GuestAddress(l.avail + 4)).unwrap();
    assert_eq!(avail0, ids[1]);
    // The device completing it returns the reserved descriptors.
    let mut q = queue(&l, 0, false);
    let c = q.pop_descriptor_chain(&dev).unwrap();
    q.add_used(&dev, c.head_index(), 0).unwrap();
    let u = ring.pop_used().unwrap().unwrap();
    assert_eq!(u.kind, UsedKind::Raw);
    assert_eq!(ring.num_free(), 4);
    assert_eq!(ring.raw_outstanding(), 0);
}

/// Pipelined loopback through the device thread: `frames` frames of varying size, at
/// most a window in flight; every frame must come back intact and in order.
fn loopback(
    size: u16,
    base: u16,
    event_idx: bool,
    mrg: bool,
    buf_size: u32,
    two_desc: bool,
    regions: usize,
) {
    let (mem, dev) = memories(regions);
    let mut a = mem.allocator();
    let max_frame = 1514usize;
    let k = if mrg {
        1
    } else {
        (12 + max_frame).div_ceil(buf_size as usize)
    };
    let rx_l = RingLayout::allocate(&mut a, size).unwrap();
    let tx_l = RingLayout::allocate(&mut a, size).unwrap();
    let tx_pool = SlotPool {
        gpa: a.alloc(u64::from(size) * 1536, 4096).unwrap(),
        stride: 1536,
        count: size,
    };
    let rx_pool = SlotPool {
        gpa: a
            .alloc(u64::from(size) * u64::from(buf_size), 4096)
            .unwrap(),
        stride: u64::from(buf_size) * k as u64,
        count: size / k as u16,
    };
    // The rings are initialised in guest memory before the device starts looking at
    // them (as the rig does before SET_VRING_ADDR).
    let mut rx_ring = DriverRing::new(mem.clone(), rx_l, base).unwrap();
    let mut tx_ring = DriverRing::new(mem.clone(), tx_l, base).unwrap();
    rx_ring.set_event_idx(event_idx);
    tx_ring.set_event_idx(event_idx);
    let (rx_n, tx_n) = (KickCall::new().unwrap(), KickCall::new().unwrap());
    let dev_ring = |l: &RingLayout, n: &KickCall| {
        DevRing::new(
            l,
            base,
            event_idx,
            n.kick_fd().try_clone().unwrap(),
            n.call_fd().try_clone().unwrap(),
        )
    };
    let device = LoopbackDevice::new(
        dev,
        vec![(dev_ring(&rx_l, &rx_n), dev_ring(&tx_l, &tx_n))],
        mrg,
    );
    let stats = device.stats.clone();
    let (stop, thread) = spawn(device);

    let mut rx = DriverRxQueue::new(rx_ring, rx_n, 0, rx_pool, buf_size, k, mrg);
    let mut tx = DriverTxQueue::new(tx_ring, tx_n, 1, tx_pool, two_desc);
    let frames = 3000u64;
    let window = rx.frames_capacity(max_frame) as u64;
    assert!(window > 0);
    let (mut sent, mut got) = (0u64, 0u64);
    let mut checker = FrameChecker::new();
    let mut buf = vec![0u8; max_frame];
    let deadline = Instant::now() + Duration::from_secs(20);
    rx.ring_mut().disable_interrupts();
    tx.ring_mut().disable_interrupts();
    while got < frames {
        assert!(Instant::now() < deadline, "stuck: sent {sent} got {got}");
        tx.reap().unwrap();
        let n = rx
            .poll(64, |f| {
                let id = checker.check(f.data).expect("intact frame");
                assert_eq!(id.seq, got, "in order");
                assert_eq!(f.len, frame_len(0, got, 60, max_frame));
                assert!(f.buffers as usize <= f.len.div_ceil(buf_size as usize) + 1);
                got += 1;
            })
            .unwrap();
        rx.refill().unwrap();
        rx.flush().unwrap();
        while sent < frames && sent - got < window && tx.can_send() {
            let len = frame_len(0, sent, 60, max_frame);
            write_frame(0, sent, &mut buf[..len]);
            assert!(tx.send(&buf[..len]).unwrap());
            sent += 1;
        }
        tx.flush().unwrap();
        if n == 0 {
            // NAPI-style sleep on the RX call eventfd.
            if !rx.ring_mut().enable_interrupts() {
                wait_readable(&[raw(rx.kick_call().call_fd())], Duration::from_millis(20)).unwrap();
            }
            rx.kick_call_mut().drain_call().unwrap();
            rx.ring_mut().disable_interrupts();
        }
    }
    tx.reap().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Release);
    thread.join().unwrap();
    let st = *stats.lock().unwrap();
    assert_eq!(st.rx_frames, frames);
    assert_eq!(st.bad_tx_chains + st.bad_rx_chains, 0);
    assert_eq!(tx.ring().avail_idx(), base.wrapping_add(frames as u16));
    assert_eq!(
        rx.stats().bad_num_buffers + rx.stats().bad_len + rx.stats().bad_hdr,
        0
    );
    if mrg && buf_size < 1500 {
        assert!(rx.stats().completions > frames, "frames were merged");
    }
    if event_idx {
        // Suppression works: far fewer kicks than frames.
        assert!(tx.stats().kicks < frames / 2, "{:?}", tx.stats());
    }
}

#[test]
fn loopback_wraps_small_queue_event_idx() {
    loopback(8, 65500, true, true, 1548, true, 1);
}

#[test]
fn loopback_wraps_small_queue_flags() {
    loopback(8, 65530, false, true, 1548, false, 2);
}

#[test]
fn loopback_merges_small_buffers() {
    loopback(64, 65000, true, true, 256, true, 2);
}

#[test]
fn loopback_chained_rx_without_mrg() {
    loopback(32, 1, true, false, 512, true, 1);
    loopback(16, 65535, false, false, 2048, true, 1);
}
