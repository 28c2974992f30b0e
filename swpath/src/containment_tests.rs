//! One guest cannot hurt another: faults injected into one software device (its
//! memory truncated, its worker panicking, hostile kick and call descriptors) stop or
//! degrade that device only, and never wedge its worker; also when the devices' pairs
//! share one worker thread (`workers = "per-cpu"`).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdpa::features::Negotiated;
use vdpa::stats::QueueFault;
use vdpa::virtio::features::VIRTIO_F_VERSION_1;
use vdpa::{
    Datapath, GuestMemory, MemoryRegion, PairPosition, QueuePairConfig, RingAddrs, RingConfig,
    RingEvents,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::{Backend, SoftwareDatapath, Tuning, Workers};

const BASE: u64 = 0x10_0000;
const SIZE: usize = 0x10_0000;
const WRITE: u16 = 2;
const QSIZE: u16 = 16;

/// One frontend's view of a device: its memory and its two rings.
struct Frontend {
    file: File,
    rxq: MockSplitQueue<'static, GuestMemoryMmap<()>>,
    txq: MockSplitQueue<'static, GuestMemoryMmap<()>>,
    mem: Arc<GuestMemory>,
    rx: RingConfig,
    tx: RingConfig,
    ended: Arc<EventFd>,
    sent: u16,
}

fn memfd(len: usize) -> File {
    let name = std::ffi::CString::new("swpath-containment").unwrap();
    // SAFETY: valid NUL-terminated name; the result is checked and owned at once.
    // No MFD_ALLOW_SEALING: the daemon cannot seal this memory against shrinking.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len as u64).unwrap();
    f
}

fn ring(
    index: u16,
    q: &MockSplitQueue<GuestMemoryMmap<()>>,
    kick: EventFd,
    call: EventFd,
) -> RingConfig {
    RingConfig {
        index,
        size: QSIZE,
        addrs: RingAddrs {
            desc: q.desc_table_addr().0,
            avail: q.avail_addr().0,
            used: q.used_addr().0,
        },
        base: 0,
        events: RingEvents {
            kick: Arc::new(kick),
            call: Some(Arc::new(call)),
        },
        counters: Arc::default(),
        log_used: None,
    }
}

impl Frontend {
    /// A frontend with non-blocking eventfds except as `tx_call` / `tx_kick` say.
    fn with(tx_kick: EventFd, tx_call: EventFd) -> Self {
        let file = memfd(SIZE);
        let vm = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(BASE),
            SIZE,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        let vm: &'static GuestMemoryMmap<()> = Box::leak(Box::new(vm));
        let region = MemoryRegion::map(
            BASE,
            SIZE as u64,
            0x7000_0000_0000,
            0,
            file.try_clone().unwrap(),
        )
        .unwrap();
        let mem = Arc::new(GuestMemory::from_regions(vec![region]).unwrap());
        let rxq = MockSplitQueue::create(vm, GuestAddress(BASE), QSIZE);
        let txq = MockSplitQueue::create(vm, GuestAddress(BASE + 0x1000), QSIZE);
        let efd = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let rx = ring(0, &rxq, efd(), efd());
        let tx = ring(1, &txq, tx_kick, tx_call);
        Frontend {
            file,
            rxq,
            txq,
            mem,
            rx,
            tx,
            ended: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            sent: 0,
        }
    }

    fn new() -> Self {
        let efd = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Self::with(efd(), efd())
    }

    fn config(&self) -> QueuePairConfig {
        QueuePairConfig {
            pair: 0,
            rx: self.rx.clone(),
            tx: self.tx.clone(),
            features: Negotiated {
                bits: VIRTIO_F_VERSION_1,
            },
            mem: self.mem.clone(),
            ended: self.ended.clone(),
            log: None,
        }
    }

    /// Posts one RX buffer and one 64-byte TX frame, and kicks TX.
    fn send(&mut self) {
        let i = self.sent;
        let d = |addr: u64, len: u32, flags: u16| {
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
        };
        let slot = u64::from(i) * 0x800;
        self.rxq
            .add_desc_chains(&[d(BASE + 0x10000 + slot, 2048, WRITE)], i)
            .unwrap();
        self.txq
            .add_desc_chains(&[d(BASE + 0x40000 + slot, 76, 0)], i)
            .unwrap();
        self.sent += 1;
        let _ = self.tx.events.kick.write(1);
    }

    /// Frames that came back on the RX ring.
    fn received(&self) -> u16 {
        self.rxq.used().idx().load()
    }
}

/// Waits (up to a generous bound, never asserting on time) until `cond` holds.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

fn started(name: &str, fe: &Frontend) -> SoftwareDatapath {
    let mut dp = SoftwareDatapath::loopback(name);
    dp.start(fe.config()).unwrap();
    dp
}

fn fault_count(fe: &Frontend, kind: QueueFault) -> u64 {
    [&fe.rx, &fe.tx]
        .iter()
        .map(|r| r.counters.snapshot(r.index).faulted(kind))
        .sum()
}

/// Pairs the datapath reaps once it signalled that one ended on its own.
fn reaped(dp: &mut SoftwareDatapath, fe: &Frontend) -> Vec<PairPosition> {
    let mut out = Vec::new();
    assert!(eventually(|| {
        if fe.ended.read().is_ok() {
            out.extend(dp.reap());
        }
        !out.is_empty()
    }));
    out
}

#[test]
fn truncated_memory_stops_only_its_own_device() {
    let mut a = Frontend::new();
    let mut b = Frontend::new();
    let mut da = started("trunc-a", &a);
    let mut db = started("trunc-b", &b);
    a.send();
    b.send();
    assert!(eventually(|| a.received() == 1 && b.received() == 1));
    // Frontend A takes its memory away and kicks: without containment the worker's
    // next look at the ring kills the whole process with SIGBUS.
    a.file.set_len(0).unwrap();
    let _ = a.tx.events.kick.write(1);
    assert!(eventually(|| a.mem.fault().is_some()));
    // A's pair stops on its own, says so (the ended eventfd), is reaped, and counted.
    let lost = reaped(&mut da, &a);
    assert_eq!(lost.iter().map(|p| p.pair).collect::<Vec<_>>(), vec![0]);
    assert_eq!(fault_count(&a, QueueFault::GuestMemory), 1);
    // A restart on the same memory table is refused.
    let e = da.start(a.config()).unwrap_err();
    assert!(e.to_string().contains("faulted"), "{e}");
    // B keeps forwarding.
    assert!(b.mem.fault().is_none());
    b.send();
    assert!(eventually(|| b.received() == 2));
    assert!(b.ended.read().is_err(), "B's pair did not end");
    assert!(db.reap().is_empty());
    assert_eq!(fault_count(&b, QueueFault::GuestMemory), 0);
    db.stop(0);
}

#[test]
fn a_panicking_worker_is_reported_lost_and_restarts() {
    let mut a = Frontend::new();
    let mut b = Frontend::new();
    let mut da = started("panic-a", &a);
    let mut db = started("panic-b", &b);
    a.send();
    assert!(eventually(|| a.received() == 1));
    crate::worker::PANIC_IN
        .lock()
        .unwrap()
        .push("panic-a-q0".to_owned());
    a.send();
    let lost = reaped(&mut da, &a);
    assert_eq!(lost.len(), 1);
    assert_eq!(fault_count(&a, QueueFault::WorkerPanic), 1);
    // The rings resume where the guest saw completions stop.
    assert_eq!(lost[0].rx, a.received());
    assert_eq!(lost[0].tx, a.txq.used().idx().load());
    // The control plane restarts the pair from there, and it forwards again.
    let mut cfg = a.config();
    cfg.rx.base = lost[0].rx;
    cfg.tx.base = lost[0].tx;
    da.start(cfg).unwrap();
    let _ = a.tx.events.kick.write(1);
    assert!(eventually(|| a.received() == 2));
    // The other device never noticed.
    b.send();
    assert!(eventually(|| b.received() == 1));
    assert_eq!(fault_count(&b, QueueFault::WorkerPanic), 0);
    da.stop(0);
    db.stop(0);
}

#[test]
fn a_full_blocking_call_eventfd_does_not_wedge_the_worker() {
    // A blocking eventfd whose counter is one below its maximum: write(2) of 1 would
    // block until someone reads it, and the frontend never does.
    let call = EventFd::new(0).unwrap();
    call.write(0xffff_ffff_ffff_fffe).unwrap();
    let mut a = Frontend::with(EventFd::new(libc::EFD_NONBLOCK).unwrap(), call);
    let mut da = started("call-a", &a);
    a.send();
    assert!(eventually(|| a.received() == 1));
    // Stopping joins the worker: it must not be stuck in a write.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        da.stop(0);
        let _ = tx.send(da);
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(20)).is_ok(),
        "the worker is stuck writing the call eventfd"
    );
}

/// A worker whose kick descriptor can no longer deliver kicks must not wake for it
/// again and again: it drops it from its wait set.
fn dead_kick_is_dropped(kick: EventFd, name: &str) {
    let mut a = Frontend::with(kick, EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let mut da = started(name, &a);
    assert!(eventually(|| fault_count(&a, QueueFault::KickFd) == 1));
    let before = crate::worker::wakeups(name);
    std::thread::sleep(Duration::from_millis(300));
    let after = crate::worker::wakeups(name);
    // Spinning makes hundreds of thousands of wakeups in that time.
    assert!(after - before < 50, "worker woke {} times", after - before);
    // The RX kick still works, so does the ring itself.
    a.send();
    let _ = a.rx.events.kick.write(1);
    da.stop(0);
}

/// Turns a descriptor of another kind into an `EventFd` value (the control plane
/// receives any descriptor as one).
fn as_eventfd(fd: i32) -> EventFd {
    // SAFETY: `fd` is a fresh descriptor we own; EventFd only reads and writes it.
    unsafe { EventFd::from_raw_fd(fd) }
}

#[test]
fn a_hung_up_pipe_as_kick_is_not_spun_on() {
    let mut p = [0; 2];
    // SAFETY: pipe fills two descriptors we own.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    // SAFETY: closing the write end we own: the read end now polls as hung up.
    unsafe { libc::close(p[1]) };
    dead_kick_is_dropped(as_eventfd(p[0]), "hup-kick");
}

#[test]
fn a_regular_file_as_kick_is_not_spun_on() {
    let f = File::open("/proc/self/status").unwrap();
    // SAFETY: dup of a descriptor we own; the copy is owned by the EventFd.
    let fd = unsafe { libc::dup(f.as_raw_fd()) };
    assert!(fd >= 0);
    dead_kick_is_dropped(as_eventfd(fd), "file-kick");
}

/// Tuning that puts a device's pair on the shared thread of `cpu` (a CPU number this
/// machine may not have: the thread then runs unpinned, and is still the one thread of
/// that number).
fn per_cpu(cpu: usize) -> Tuning {
    Tuning {
        cpus: vec![cpu],
        workers: Workers::PerCpu,
        ..Tuning::default()
    }
}

fn started_with(name: &str, fe: &Frontend, tuning: Tuning) -> SoftwareDatapath {
    let mut dp = SoftwareDatapath::new(name, Backend::Loopback, 1500, tuning);
    dp.start(fe.config()).unwrap();
    dp
}

/// Threads of this process named `name`.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[test]
fn pairs_sharing_a_cpus_thread_fault_alone() {
    let (mut a, mut b, mut c) = (Frontend::new(), Frontend::new(), Frontend::new());
    let mut da = started_with("shr-a", &a, per_cpu(901));
    let mut db = started_with("shr-b", &b, per_cpu(901));
    let mut dc = started_with("shr-c", &c, per_cpu(901));
    for fe in [&mut a, &mut b, &mut c] {
        fe.send();
    }
    assert!(eventually(|| a.received() == 1
        && b.received() == 1
        && c.received() == 1));
    // One thread serves the three devices' pairs; none has a thread of its own.
    assert_eq!(threads_named("vdpad-cpu901"), 1);
    assert_eq!(threads_named("shr-a-q0"), 0);

    // A's pair panics: it alone is lost, and restarts on the same thread.
    crate::worker::PANIC_IN
        .lock()
        .unwrap()
        .push("shr-a-q0".to_owned());
    a.send();
    let lost = reaped(&mut da, &a);
    assert_eq!(fault_count(&a, QueueFault::WorkerPanic), 1);
    assert_eq!(lost[0].rx, a.received());
    b.send();
    c.send();
    assert!(eventually(|| b.received() == 2 && c.received() == 2));
    let mut cfg = a.config();
    cfg.rx.base = lost[0].rx;
    cfg.tx.base = lost[0].tx;
    da.start(cfg).unwrap();
    let _ = a.tx.events.kick.write(1);
    assert!(eventually(|| a.received() == 2));

    // B's frontend takes its memory away: B's pair stops, A and C go on.
    b.file.set_len(0).unwrap();
    let _ = b.tx.events.kick.write(1);
    let lost = reaped(&mut db, &b);
    assert_eq!(lost.len(), 1);
    assert_eq!(fault_count(&b, QueueFault::GuestMemory), 1);
    a.send();
    c.send();
    assert!(eventually(|| a.received() == 3 && c.received() == 3));
    for fe in [&a, &c] {
        assert_eq!(fault_count(fe, QueueFault::GuestMemory), 0);
        assert!(fe.ended.read().is_err(), "a healthy pair ended");
    }
    assert_eq!(fault_count(&c, QueueFault::WorkerPanic), 0);

    // Stopping one pair leaves the others served; the thread ends with its last pair.
    assert_eq!(da.stop(0).len(), 1);
    c.send();
    assert!(eventually(|| c.received() == 4));
    assert_eq!(dc.stop(0)[0].rx, 4);
    assert!(eventually(|| threads_named("vdpad-cpu901") == 0));
}

#[test]
fn a_pair_that_panics_while_stopping_leaves_its_shared_thread_serving() {
    let (a, mut b) = (Frontend::new(), Frontend::new());
    let mut da = started_with("shr2-a", &a, per_cpu(902));
    let mut db = started_with("shr2-b", &b, per_cpu(902));
    b.send();
    assert!(eventually(|| b.received() == 1));
    crate::worker::PANIC_IN
        .lock()
        .unwrap()
        .push("shr2-a-q0:finish".to_owned());
    // The stop still says where A's rings resume (where the guest saw them stop).
    let stopped = da.stop(0);
    assert_eq!(stopped.len(), 1);
    assert_eq!((stopped[0].rx, stopped[0].tx), (0, 0));
    assert_eq!(fault_count(&a, QueueFault::WorkerPanic), 1);
    b.send();
    assert!(eventually(|| b.received() == 2));
    assert_eq!(threads_named("vdpad-cpu902"), 1);
    db.stop(0);
    assert!(eventually(|| threads_named("vdpad-cpu902") == 0));
}
