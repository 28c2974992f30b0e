//! One guest cannot hurt another, end to end: two vdpa-rig frontends, each with its own
//! device served over vhost-user in this process. One frontend truncates its guest
//! memory (the rig's memfd is created without MFD_ALLOW_SEALING, so vdpad cannot seal
//! it) and kicks: without containment the worker's next look at the ring kills this
//! whole process with SIGBUS. With it, only that device's pair stops, counted, and the
//! other frontend's frames keep coming back.

mod support;

use std::time::{Duration, Instant};

use support::Served;
use swpath::{Backend, SoftwareDatapath, Tuning};
use vdpa::stats::QueueFault;
use vdpa_rig::Rig;
use vdpad_config::Backend as CfgBackend;

fn served() -> Served {
    Served::start("contain", CfgBackend::Loopback, 1, 256, |name| {
        SoftwareDatapath::new(name, Backend::Loopback, 1500, Tuning::default())
    })
}

fn faults(d: &Served, kind: QueueFault) -> u64 {
    d.handle.stats().iter().map(|s| s.faulted(kind)).sum()
}

#[test]
fn a_frontend_truncating_its_memory_stops_only_its_own_device() {
    let (a, b) = (served(), served());
    let mut ra = Rig::connect(a.options()).unwrap();
    let mut rb = Rig::connect(b.options()).unwrap();
    let frame = vec![0x5au8; 80];
    let wait = Duration::from_secs(10);
    ra.send_and_wait(0, &frame, wait).unwrap();
    rb.send_and_wait(0, &frame, wait).unwrap();

    // Frontend A takes its memory away and kicks TX (the eventfd only: the rig must
    // not touch the memory itself any more).
    ra.memory().memfd().set_len(0).unwrap();
    ra.pair_mut(0).tx.kick().unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while faults(&a, QueueFault::GuestMemory) == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        faults(&a, QueueFault::GuestMemory),
        1,
        "{:#?}",
        a.handle.stats()
    );

    // B never noticed.
    for _ in 0..100 {
        rb.send_and_wait(0, &frame, wait).unwrap();
    }
    assert_eq!(faults(&b, QueueFault::GuestMemory), 0);
    // A's rig holds a mapping of the truncated file: it must never touch it again.
    std::mem::forget(ra);
}
