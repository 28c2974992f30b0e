//! The device core driven without any socket, the way a second frontend (VDUSE) drives
//! it: ring addresses in the memory table's own address space, enables from the
//! frontend's own notion of "ready", positions read back when a ring stops. Nothing
//! here goes through vhost-user.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::PathBuf;

use support::{device_config, Event, Recorder};
use vdpa::virtio::features::VHOST_F_LOG_ALL;
use vdpa::virtio::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_MQ, VIRTIO_RING_F_EVENT_IDX};
use vdpa::vring::{AddrSpace, RingLocation};
use vdpa::{
    ConnectionState, Datapath, Device, DirtyLog, FallbackDatapath, GuestMemory, MemoryRegion,
    RingAddrs,
};
use vmm_sys_util::eventfd::EventFd;

mod support;

const GUEST_BASE: u64 = 0x10_0000;
const MEM: u64 = 1 << 20;

/// A minimal frontend: memory as a memfd at `GUEST_BASE`, rings laid out after it.
struct DirectFrontend {
    dev: Device,
}

impl DirectFrontend {
    fn new(pairs: u16, datapath: Box<dyn Datapath>) -> Self {
        let mut dev = Device::new(
            device_config(PathBuf::from("/nonexistent"), pairs),
            datapath,
        );
        dev.connected();
        DirectFrontend { dev }
    }

    /// A memfd of `size` bytes.
    fn memfd(size: u64) -> File {
        // SAFETY: a valid NUL-terminated name; the returned fd is new and ours.
        let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).unwrap();
        file
    }

    fn memory() -> GuestMemory {
        let file = Self::memfd(MEM);
        // An IOVA-keyed table: the frontend's "virtual address" is never used.
        let region = MemoryRegion::map(GUEST_BASE, MEM, 0, 0, file).unwrap();
        GuestMemory::from_regions(vec![region]).unwrap()
    }

    fn ring_at(ring: u16) -> RingAddrs {
        let base = GUEST_BASE + 0x1_0000 * u64::from(ring + 1);
        RingAddrs {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
        }
    }

    /// What a VDUSE-like frontend does at DRIVER_OK for one ring.
    fn ring_ready(&mut self, ring: u16, base: u16) {
        let r = usize::from(ring);
        self.dev.set_ring_size(r, 256);
        self.dev.set_ring_location(
            r,
            RingLocation {
                addrs: Self::ring_at(ring),
                space: AddrSpace::Guest,
                log_used: None,
            },
        );
        self.dev.set_ring_base(r, base);
        self.dev
            .set_kick(r, EventFd::new(libc::EFD_NONBLOCK).unwrap());
        self.dev
            .set_call(r, Some(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        self.dev.enable_ring(r, true);
        self.dev.reconcile();
    }
}

fn start(pair: u16, rx_base: u16, tx_base: u16) -> Event {
    Event::Start {
        pair,
        rx_base,
        tx_base,
        rx_desc: DirectFrontend::ring_at(2 * pair).desc,
    }
}

#[test]
fn a_frontend_without_a_socket_starts_stops_and_resumes_a_pair() {
    let rec = Recorder::default();
    let mut f = DirectFrontend::new(1, Box::new(rec.clone()));
    let handle = f.dev.handle();
    f.dev.set_features(VIRTIO_F_VERSION_1).unwrap();
    f.dev.set_rings_need_enable(true);
    f.dev.set_memory(DirectFrontend::memory());
    f.ring_ready(0, 3);
    assert!(rec.events().is_empty(), "one ring of the pair is not ready");
    f.ring_ready(1, 4);
    assert_eq!(rec.events(), vec![start(0, 3, 4)]);
    assert_eq!(handle.status().state, ConnectionState::Running);
    assert_eq!(handle.datapath_description(), "recorder");
    // Stopping a ring reports where it resumes (the recorder moves rings by 5).
    assert_eq!(f.dev.stop_ring(1), 9);
    assert_eq!(f.dev.stop_ring(0), 8);
    assert_eq!(handle.status().running_pairs, Vec::<u16>::new());
    // A new kick fd lets the pair resume where it stopped.
    f.ring_ready(0, 8);
    f.ring_ready(1, 9);
    assert_eq!(rec.events().last(), Some(&start(0, 8, 9)));
    // Both rings ran: observers see their counters without asking the datapath.
    assert_eq!(handle.stats().len(), 2);
    f.dev.disconnected();
    assert_eq!(handle.status().state, ConnectionState::Waiting);
    assert_eq!(rec.events().last(), Some(&Event::Reset));
}

#[test]
fn rings_outside_memory_or_not_enabled_do_not_start() {
    let rec = Recorder::default();
    let mut f = DirectFrontend::new(1, Box::new(rec.clone()));
    f.dev.set_features(VIRTIO_F_VERSION_1).unwrap();
    f.dev.set_rings_need_enable(true);
    f.dev.set_memory(DirectFrontend::memory());
    f.ring_ready(0, 0);
    f.dev.set_ring_size(1, 256);
    f.dev.set_ring_location(
        1,
        RingLocation {
            addrs: RingAddrs {
                desc: GUEST_BASE + MEM - 0x800,
                avail: GUEST_BASE,
                used: GUEST_BASE + 0x1000,
            },
            space: AddrSpace::Guest,
            log_used: None,
        },
    );
    f.dev.set_kick(1, EventFd::new(0).unwrap());
    f.dev.set_call(1, None);
    f.dev.enable_ring(1, true);
    f.dev.reconcile();
    assert!(rec.events().is_empty(), "descriptor table runs past memory");
    f.ring_ready(1, 0);
    assert_eq!(rec.events(), vec![start(0, 0, 0)]);
    f.dev.enable_ring(1, false);
    f.dev.reconcile();
    assert_eq!(rec.events().last(), Some(&Event::Stop(0)));
}

#[test]
fn features_that_were_not_offered_are_refused() {
    let mut f = DirectFrontend::new(1, Box::new(Recorder::default()));
    let offered = f.dev.offered_features();
    assert!(offered & VIRTIO_RING_F_EVENT_IDX != 0);
    let e = f.dev.set_features(offered | VIRTIO_NET_F_MQ).unwrap_err();
    assert!(e.to_string().contains("not offered"), "{e}");
    assert_eq!(f.dev.negotiated().bits, 0);
}

/// A two-pair device served by `datapath`, every ring made ready at `bases`.
fn two_pairs_ready(
    datapath: FallbackDatapath,
    bases: [u16; 4],
) -> (DirectFrontend, vdpa::DeviceHandle) {
    let mut f = DirectFrontend::new(2, Box::new(datapath));
    let handle = f.dev.handle();
    session(&mut f, bases);
    (f, handle)
}

/// `primary` with `second` behind it, as the daemon wires an offload device.
fn behind(primary: &Recorder, second: &Recorder) -> FallbackDatapath {
    let s2 = second.clone();
    FallbackDatapath::new(
        Box::new(primary.clone()),
        Box::new(move || Ok(Box::new(s2) as Box<dyn Datapath>)),
        0,
    )
}

/// A migration starts as QEMU starts it: the log first, then the features with
/// LOG_ALL. Returns the features without LOG_ALL.
fn start_logging(f: &mut DirectFrontend) -> u64 {
    let log = DirtyLog::map(DirectFrontend::memfd(4096), 4096, 0, f.dev.memory()).unwrap();
    f.dev.set_log(log);
    let features = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MQ;
    f.dev.set_features(features | VHOST_F_LOG_ALL).unwrap();
    f.dev.reconcile();
    features
}

/// A session of a two-pair frontend: features, memory, every ring made ready at `bases`.
fn session(f: &mut DirectFrontend, bases: [u16; 4]) {
    f.dev
        .set_features(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MQ)
        .unwrap();
    f.dev.set_memory(DirectFrontend::memory());
    for (ring, base) in bases.into_iter().enumerate() {
        f.ring_ready(ring as u16, base);
    }
}

#[test]
fn the_fallback_wrapper_moves_running_pairs_where_they_are() {
    let primary = Recorder {
        refuse: vec![1],
        ..Default::default()
    };
    let second = Recorder::default();
    let wrapper = behind(&primary, &second);
    let (_f, handle) = two_pairs_ready(wrapper, [1, 2, 0, 0]);
    assert_eq!(
        primary.events(),
        vec![start(0, 1, 2), Event::Stop(0), Event::Reset]
    );
    assert_eq!(second.events(), vec![start(0, 6, 7), start(1, 0, 0)]);
    assert_eq!(handle.status().running_pairs, vec![0, 1]);
    let why = handle.status().fallback_reason.unwrap();
    assert!(why.contains("refused by the test"), "{why}");
}

/// Falling back lasts until the device is reset: the next session starts on the first
/// datapath again, which serves if it can (and falls back again if it cannot).
#[test]
fn a_device_that_fell_back_tries_the_first_datapath_again_after_a_reset() {
    let primary = Recorder {
        refuse: vec![1],
        heal_on_reset: true,
        ..Default::default()
    };
    let second = Recorder::default();
    let wrapper = behind(&primary, &second);
    let (mut f, handle) = two_pairs_ready(wrapper, [1, 2, 0, 0]);
    assert_eq!(second.starts(), 2);
    assert!(handle.status().fallback_reason.is_some());

    f.dev.disconnected();
    assert_eq!(second.events().last(), Some(&Event::Reset));
    assert_eq!(
        handle.status().fallback_reason,
        None,
        "cleared at the reset"
    );
    assert_eq!(handle.datapath_description(), "recorder");
    session(&mut f, [0; 4]);
    let back: Vec<Event> = primary.events().into_iter().skip(3).collect();
    assert!(
        back.contains(&start(0, 0, 0)) && back.contains(&start(1, 0, 0)),
        "{back:?}"
    );
    assert_eq!(second.starts(), 2, "the fallback is parked");
    assert_eq!(handle.status().running_pairs, vec![0, 1]);
    assert_eq!(handle.status().fallback_reason, None);
}

#[test]
fn a_fallback_that_cannot_be_built_leaves_the_pairs_stopped_and_says_why() {
    let primary = Recorder {
        refuse: vec![1],
        ..Default::default()
    };
    let wrapper = FallbackDatapath::new(
        Box::new(primary.clone()),
        Box::new(|| Err("no network interface".into())),
        0,
    );
    let (_f, handle) = two_pairs_ready(wrapper, [0; 4]);
    let status = handle.status();
    assert!(status.running_pairs.is_empty(), "{status:?}");
    let err = status.last_error.unwrap();
    assert!(
        err.contains("refused by the test") && err.contains("fallback could not be built"),
        "{err}"
    );
}

/// A first datapath that cannot log (an offload NIC) hands the device to a fallback
/// that can while a migration logs, and takes it back when the migration ends
/// without the VM leaving (cancelled): the rings move where they are, both ways.
#[test]
fn a_migration_is_relayed_by_the_fallback_and_the_first_datapath_resumes_after() {
    let primary = Recorder::default();
    let second = Recorder {
        logs: true,
        ..Default::default()
    };
    let wrapper = behind(&primary, &second).relays_migrations();
    let (mut f, handle) = two_pairs_ready(wrapper, [1, 2, 3, 4]);
    assert!(f.dev.offered_features() & VHOST_F_LOG_ALL != 0);
    assert_eq!(primary.starts(), 2);

    let features = start_logging(&mut f);
    assert_eq!(second.events(), vec![start(0, 6, 7), start(1, 8, 9)]);
    assert_eq!(handle.status().running_pairs, vec![0, 1]);
    let how = handle.status();
    assert!(how.logging, "{how:?}");
    let described = handle.datapath_description();
    assert!(described.contains("while a migration logs"), "{described}");
    assert_eq!(how.fallback_reason, None, "a relay is not a fallback");
    let relay = how.relay.expect("a relaying device reports its relays");
    assert_eq!(relay.relays, 1, "{relay:?}");
    assert!(relay.since.is_some(), "the relay runs: {relay:?}");

    // Cancelled: the features come back without LOG_ALL, the first datapath resumes.
    std::thread::sleep(std::time::Duration::from_millis(20));
    f.dev.set_features(features).unwrap();
    f.dev.reconcile();
    let back: Vec<Event> = primary.events().into_iter().skip(4).collect();
    assert!(back.contains(&start(0, 11, 12)), "{back:?}");
    assert!(back.contains(&start(1, 13, 14)), "{back:?}");
    assert_eq!(handle.datapath_description(), "recorder");
    assert_eq!(handle.status().running_pairs, vec![0, 1]);
    let relay = handle
        .status()
        .relay
        .expect("still reported after the relay");
    assert_eq!((relay.relays, relay.since), (1, None), "{relay:?}");
    assert!(
        relay.completed >= std::time::Duration::from_millis(20),
        "the relay's time is kept: {relay:?}"
    );
}

/// The same migration, cancelled, with a first datapath that can only start rings at
/// 0 (a NIC without ring-state registers): the relay keeps serving, logging off,
/// until the device is reset; the next session starts on the first datapath again.
#[test]
fn a_first_datapath_that_cannot_resume_gets_the_device_back_at_the_next_reset() {
    let primary = Recorder {
        zero_only: true,
        ..Default::default()
    };
    let second = Recorder {
        logs: true,
        ..Default::default()
    };
    let wrapper = behind(&primary, &second).relays_migrations();
    let (mut f, handle) = two_pairs_ready(wrapper, [0, 0, 0, 0]);
    let features = start_logging(&mut f);
    assert_eq!(second.events(), vec![start(0, 5, 5), start(1, 5, 5)]);

    f.dev.set_features(features).unwrap();
    f.dev.reconcile();
    assert_eq!(
        primary.starts(),
        2,
        "the first datapath cannot take rings at 10"
    );
    assert!(
        second.events().contains(&start(0, 10, 10)),
        "{:?}",
        second.events()
    );
    let described = handle.datapath_description();
    assert!(
        described.contains("until the device is reset"),
        "{described}"
    );
    assert!(!handle.status().logging);
    assert_eq!(handle.status().fallback_reason, None, "not a fallback");

    // The driver resets the device (here: the frontend reconnects).
    f.dev.disconnected();
    session(&mut f, [0; 4]);
    assert_eq!(primary.starts(), 4, "{:?}", primary.events());
    assert_eq!(handle.datapath_description(), "recorder");
    let relay = handle.status().relay.expect("reported");
    assert_eq!((relay.relays, relay.since), (1, None), "{relay:?}");
}

/// A frontend that kept its rings across a reconnect but sends base 0 (DPDK
/// virtio-user as the socket's server): the ring resumes at the used index in guest
/// memory. A frontend that names a position (QEMU) is taken at its word.
#[test]
fn a_zero_base_over_a_used_ring_resumes_at_the_used_index() {
    let rec = Recorder::default();
    let mut f = DirectFrontend::new(1, Box::new(rec.clone()));
    f.dev.set_features(VIRTIO_F_VERSION_1).unwrap();
    f.dev.set_memory(DirectFrontend::memory());
    let used_idx = |ring: u16| {
        let at = DirectFrontend::ring_at(ring).used + 2;
        f.dev.memory().translate(at, 2).unwrap() as *mut u16
    };
    // SAFETY: two aligned bytes inside the test's own guest memory.
    unsafe { used_idx(0).write(4242) };
    f.ring_ready(0, 0);
    f.ring_ready(1, 0);
    assert_eq!(rec.events(), vec![start(0, 4242, 0)]);
    assert_eq!(f.dev.stop_ring(0), 4247);
    f.dev.stop_ring(1);
    // A base the frontend gives is used as given.
    f.ring_ready(0, 7);
    f.ring_ready(1, 9);
    assert_eq!(rec.events().last(), Some(&start(0, 7, 9)));
}
