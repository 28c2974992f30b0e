//! An offloaded device whose frontend takes its guest memory away: the memfd is not
//! sealed (created without MFD_ALLOW_SEALING, like hugetlbfs memory that cannot be
//! sealed), and truncating it makes the daemon's next read of that memory fault. The
//! kick relay reads the used rings every 10 ms for the counters, so it is the one that
//! faults; the SIGBUS is contained, the relay stops, counts the fault and tells the
//! device. Another offloaded device, on its own NIC, keeps moving frames throughout.

mod common;

use common::*;
use hwdrv::SimConfig;
use vdpa::stats::QueueFault;
use vdpa::Datapath;

#[test]
fn truncated_memory_stops_only_its_own_offloaded_device() {
    let (nic_a, mut a) = offload(SimConfig::default(), 1);
    let (nic_b, mut b) = offload(SimConfig::default(), 1);
    let (mut ga, mut gb) = (Guest::new(4 << 20), Guest::new(4 << 20));
    let mut pa = PairRig::new(&mut ga, 0, 64, false, 2048);
    let mut pb = PairRig::new(&mut gb, 0, 64, false, 2048);
    pa.fill_rx(&ga);
    pb.fill_rx(&gb);
    let ca = pa.config(&ga, features(0));
    let attention = ca.ended.clone();
    a.start(ca).unwrap();
    b.start(pb.config(&gb, features(0))).unwrap();
    exchange(&ga, &mut pa, 0, 100);
    exchange(&gb, &mut pb, 0, 100);

    ga.file.set_len(0).unwrap();
    assert!(
        wait_fd(&attention, WAIT),
        "the offloaded device was not told that its memory faulted"
    );
    let fault = ga.mem.fault().expect("a contained fault on A's memory");
    assert!(fault.region_gpa == GPA_BASE, "{fault}");
    let counted: u64 = pa
        .stats()
        .iter()
        .map(|s| s.faulted(QueueFault::GuestMemory))
        .sum();
    assert_eq!(counted, 1, "{:#?}", pa.stats());

    // B never noticed: a thousand more frames through its NIC.
    exchange(&gb, &mut pb, 100, 1000);
    assert_eq!(nic_b.dma_faults(), 0);
    assert!(gb.mem.fault().is_none());

    // What the device does next (it closes A's connection): the NIC is reset.
    a.reset();
    assert_eq!(nic_a.device_status(), 0);
    assert!(nic_a.dma_mappings().is_empty());
    // A's memory reads as zeroes now; the test must not use it as a guest any more.
    std::mem::forget(pa);
}
