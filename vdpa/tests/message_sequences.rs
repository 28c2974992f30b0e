//! The control plane against the exact message sequences real frontends send
//! (recorded from QEMU 10.0 and DPDK 22.11 virtio-user; docs/architecture.md, "When a
//! queue pair runs", describes how the two orders differ),
//! driven over a real socket by a raw frontend, with a datapath that records what the
//! control plane asks of it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{device_config, Event, Recorder};
use vdpa::client::{RECONNECT_MAX, STABLE_SESSION};
use vdpa::server::{DeviceServer, Shutdown};
use vdpa::virtio::features::{
    VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MQ, VIRTIO_RING_F_EVENT_IDX,
};
use vdpa::{Datapath, Device, DeviceHandle, FallbackDatapath};
use vdpad_config::{DeviceConfig, SocketRole};
use vhost::vhost_user::message::FrontendReq as R;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

mod support;

struct Harness {
    _dir: TempDir,
    socket: PathBuf,
    rec: Recorder,
    handle: DeviceHandle,
    shutdown: Shutdown,
    server: Option<DeviceServer>,
}

impl Harness {
    fn new(pairs: u16) -> Self {
        Self::with(pairs, true)
    }

    fn with(pairs: u16, live_call: bool) -> Self {
        Self::configured(pairs, live_call, |_| {})
    }

    fn configured(pairs: u16, live_call: bool, edit: impl FnOnce(&mut DeviceConfig)) -> Self {
        let dir = TempDir::new();
        let socket = dir.0.join("t0.sock");
        let rec = Recorder {
            live_call,
            ..Default::default()
        };
        let mut cfg = device_config(socket.clone(), pairs);
        edit(&mut cfg);
        let device = Device::new(cfg, Box::new(rec.clone()));
        let shutdown = Shutdown::new().unwrap();
        let server = DeviceServer::start(device, shutdown.clone()).unwrap();
        let handle = server.handle().clone();
        Harness {
            _dir: dir,
            socket,
            rec,
            handle,
            shutdown,
            server: Some(server),
        }
    }

    fn connect(&self) -> Frontend {
        Frontend::connect(&self.socket)
    }

    /// Waits (bounded) until the recorder has seen `n` events.
    fn wait_events(&self, n: usize) -> Vec<Event> {
        let t = Instant::now();
        while self.rec.events().len() < n && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.rec.events()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.raise();
        if let Some(s) = self.server.take() {
            s.join();
        }
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("vdpa-seq-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const NEED_REPLY: u32 = 0x8;
const REPLY_ACK: u64 = 0x8;
const MQ: u64 = 0x1;
const CONFIGURE_MEM_SLOTS: u64 = 0x8000;
/// Where the frontend pretends guest memory is mapped in its address space.
const USER_ADDR: u64 = 0x7f00_0000_0000;
const MEM_SIZE: u64 = 0x10_0000;

/// A raw vhost-user frontend: writes exactly the messages a test asks for.
struct Frontend {
    s: UnixStream,
    mem: File,
    kicks: Vec<EventFd>,
}

impl Frontend {
    fn connect(path: &Path) -> Self {
        Self::on(UnixStream::connect(path).unwrap())
    }

    /// A frontend on a connection the device made to it (client mode).
    fn on(s: UnixStream) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let name = std::ffi::CString::new("seq").unwrap();
        // SAFETY: valid name; result checked and owned immediately.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: fresh descriptor, owned by nobody else.
        let mem = unsafe { File::from_raw_fd(fd) };
        mem.set_len(MEM_SIZE).unwrap();
        Frontend {
            s,
            mem,
            kicks: Vec::new(),
        }
    }

    fn send(&mut self, req: R, flags: u32, body: &[u8], fds: &[RawFd]) {
        let mut m = Vec::new();
        m.extend_from_slice(&(req as u32).to_ne_bytes());
        m.extend_from_slice(&(1 | flags).to_ne_bytes());
        m.extend_from_slice(&(body.len() as u32).to_ne_bytes());
        m.extend_from_slice(body);
        if fds.is_empty() {
            self.s.write_all(&m).unwrap();
        } else {
            self.s.send_with_fds(&[&m[..]], fds).unwrap();
        }
    }

    fn reply(&mut self, req: R) -> Vec<u8> {
        let mut h = [0u8; 12];
        self.s.read_exact(&mut h).unwrap();
        let code = u32::from_ne_bytes(h[0..4].try_into().unwrap());
        let flags = u32::from_ne_bytes(h[4..8].try_into().unwrap());
        let size = u32::from_ne_bytes(h[8..12].try_into().unwrap());
        assert_eq!(code, req as u32, "reply to the right request");
        assert_eq!(flags & 0x4, 0x4, "reply flag");
        let mut b = vec![0u8; size as usize];
        self.s.read_exact(&mut b).unwrap();
        b
    }

    fn get_u64(&mut self, req: R) -> u64 {
        self.send(req, 0, &[], &[]);
        u64::from_ne_bytes(self.reply(req)[..8].try_into().unwrap())
    }

    /// Sends with NEED_REPLY and returns the acknowledgement code.
    fn acked(&mut self, req: R, body: &[u8], fds: &[RawFd]) -> u64 {
        self.send(req, NEED_REPLY, body, fds);
        u64::from_ne_bytes(self.reply(req)[..8].try_into().unwrap())
    }

    fn u64_body(v: u64) -> Vec<u8> {
        v.to_ne_bytes().to_vec()
    }

    fn state(ring: u32, num: u32) -> Vec<u8> {
        let mut b = ring.to_ne_bytes().to_vec();
        b.extend_from_slice(&num.to_ne_bytes());
        b
    }

    fn negotiate(&mut self, protocol: u64) {
        self.send(R::SET_PROTOCOL_FEATURES, 0, &Self::u64_body(protocol), &[]);
    }

    fn set_features(&mut self, f: u64) -> u64 {
        self.acked(R::SET_FEATURES, &Self::u64_body(f), &[])
    }

    fn region(gpa: u64, size: u64, user: u64, off: u64) -> Vec<u8> {
        [gpa, size, user, off]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect()
    }

    fn add_mem_reg(&mut self, gpa: u64, size: u64, off: u64) -> u64 {
        let mut b = 0u64.to_ne_bytes().to_vec(); // padding
        b.extend(Self::region(gpa, size, USER_ADDR + gpa, off));
        let fd = self.mem.as_raw_fd();
        self.acked(R::ADD_MEM_REG, &b, &[fd])
    }

    fn set_mem_table(&mut self) -> u64 {
        let mut b = 1u32.to_ne_bytes().to_vec();
        b.extend(0u32.to_ne_bytes());
        b.extend(Self::region(0, MEM_SIZE, USER_ADDR, 0));
        let fd = self.mem.as_raw_fd();
        self.acked(R::SET_MEM_TABLE, &b, &[fd])
    }

    fn ring_va(ring: u32) -> (u64, u64, u64) {
        let base = USER_ADDR + 0x1_0000 * u64::from(ring + 1);
        (base, base + 0x1000, base + 0x2000)
    }

    fn vring_addr(&mut self, ring: u32) -> u64 {
        let (d, a, u) = Self::ring_va(ring);
        let mut b = ring.to_ne_bytes().to_vec();
        b.extend(0u32.to_ne_bytes());
        for v in [d, u, a, 0u64] {
            b.extend(v.to_ne_bytes());
        }
        self.acked(R::SET_VRING_ADDR, &b, &[])
    }

    fn vring_fd(&mut self, req: R, ring: u32) -> u64 {
        let e = EventFd::new(0).unwrap();
        let code = self.acked(req, &Self::u64_body(u64::from(ring)), &[e.as_raw_fd()]);
        if req == R::SET_VRING_KICK {
            self.kicks.push(e);
        }
        code
    }

    fn ring_setup(&mut self, ring: u32, base: u32, with_call: bool) {
        assert_eq!(
            self.acked(R::SET_VRING_NUM, &Self::state(ring, 256), &[]),
            0
        );
        assert_eq!(
            self.acked(R::SET_VRING_BASE, &Self::state(ring, base), &[]),
            0
        );
        assert_eq!(self.vring_addr(ring), 0);
        assert_eq!(self.vring_fd(R::SET_VRING_KICK, ring), 0);
        if with_call {
            assert_eq!(self.vring_fd(R::SET_VRING_CALL, ring), 0);
        }
    }

    fn enable(&mut self, ring: u32, on: bool) -> u64 {
        self.acked(R::SET_VRING_ENABLE, &Self::state(ring, on as u32), &[])
    }

    /// Whether the device closed the connection (within the 5 s read timeout) without
    /// sending anything more.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 12];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }

    fn get_vring_base(&mut self, ring: u32) -> u32 {
        self.send(R::GET_VRING_BASE, 0, &Self::state(ring, 0), &[]);
        let b = self.reply(R::GET_VRING_BASE);
        u32::from_ne_bytes(b[4..8].try_into().unwrap())
    }
}

const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VHOST_USER_F_PROTOCOL_FEATURES;

fn start_event(pair: u16, rx_base: u16, tx_base: u16) -> Event {
    Event::Start {
        pair,
        rx_base,
        tx_base,
        rx_desc: 0x1_0000,
    }
}

#[test]
fn qemu_10_sequence_enables_before_features_and_starts_without_a_later_enable() {
    let h = Harness::new(1);
    let mut f = h.connect();
    let offered = f.get_u64(R::GET_FEATURES);
    assert_eq!(offered & FEATURES, FEATURES);
    let proto = f.get_u64(R::GET_PROTOCOL_FEATURES);
    assert_ne!(proto & REPLY_ACK, 0);
    assert_eq!(proto & 0x10000, 0, "STATUS is not offered");
    f.negotiate(REPLY_ACK | MQ | CONFIGURE_MEM_SLOTS);
    assert!(f.get_u64(R::GET_MAX_MEM_SLOTS) >= 8);
    f.send(R::SET_OWNER, 0, &[], &[]);
    for ring in 0..2 {
        assert_eq!(f.vring_fd(R::SET_VRING_CALL, ring), 0);
        assert_eq!(f.vring_fd(R::SET_VRING_ERR, ring), 0);
    }
    // The early enable, before SET_FEATURES, must be acknowledged.
    assert_eq!(f.enable(0, true), 0);
    assert_eq!(f.enable(0, true), 0);
    assert_eq!(f.enable(1, true), 0);
    assert_eq!(f.set_features(FEATURES), 0);
    assert_eq!(f.add_mem_reg(0, 0xa0000, 0), 0);
    assert_eq!(f.add_mem_reg(0xc0000, MEM_SIZE - 0xc0000, 0xc0000), 0);
    f.ring_setup(0, 0, true);
    assert!(h.rec.events().is_empty(), "TX ring not set up yet");
    f.ring_setup(1, 0, true);
    // The TX kick completes the pair (its call fd came early); the call fd that
    // follows is switched in place.
    assert_eq!(h.wait_events(2), vec![start_event(0, 0, 0), Event::Call(1)]);
    assert_eq!(h.handle.status().running_pairs, vec![0]);
    // Stop the QEMU way: GET_VRING_BASE without a disable first.
    assert_eq!(f.get_vring_base(0), 5);
    assert_eq!(f.get_vring_base(1), 5);
    assert_eq!(h.rec.events()[2], Event::Stop(0));
    assert_eq!(f.enable(0, true), 0);
    assert_eq!(h.rec.starts(), 1, "no restart without a new kick fd");
    drop(f);
    let ev = h.wait_events(4);
    assert_eq!(ev[3], Event::Reset);
}

/// QEMU 10 when the guest resets its NIC (driver unbind/bind, reboot): both rings
/// stopped with GET_VRING_BASE, RESET_DEVICE, then features and rings again but no
/// memory table, since QEMU only sends regions that changed. Recorded from a Linux
/// guest rebinding virtio_net on vdpad (tests/offload_guest.rs).
#[test]
fn qemu_10_guest_reset_restarts_without_a_new_memory_table() {
    let h = Harness::new(1);
    let mut f = h.connect();
    f.negotiate(REPLY_ACK | MQ | CONFIGURE_MEM_SLOTS);
    f.send(R::SET_OWNER, 0, &[], &[]);
    // QEMU 10 enables the rings before SET_FEATURES.
    for ring in 0..2 {
        assert_eq!(f.enable(ring, true), 0);
    }
    assert_eq!(f.set_features(FEATURES), 0);
    assert_eq!(f.add_mem_reg(0, MEM_SIZE, 0), 0);
    f.ring_setup(0, 0, true);
    f.ring_setup(1, 0, true);
    assert_eq!(h.wait_events(1), vec![start_event(0, 0, 0)]);
    assert_eq!(f.get_vring_base(0), 5);
    assert_eq!(f.get_vring_base(1), 5);
    f.send(R::RESET_DEVICE, 0, &[], &[]);
    for ring in 0..2 {
        assert_eq!(f.enable(ring, false), 0);
    }
    for ring in 0..2 {
        assert_eq!(f.enable(ring, true), 0);
    }
    assert_eq!(f.set_features(FEATURES), 0);
    // The guest's driver set up fresh rings at index 0; no ADD_MEM_REG this time.
    f.ring_setup(0, 0, true);
    f.ring_setup(1, 0, true);
    let ev = h.wait_events(4);
    assert_eq!(
        ev,
        vec![
            start_event(0, 0, 0),
            Event::Stop(0),
            Event::Reset,
            start_event(0, 0, 0)
        ]
    );
    assert_eq!(h.handle.status().running_pairs, vec![0]);
}

#[test]
fn dpdk_virtio_user_sequence_starts_on_enable_and_stops_on_disable() {
    let h = Harness::new(1);
    let mut f = h.connect();
    f.send(R::SET_OWNER, 0, &[], &[]);
    f.get_u64(R::GET_FEATURES);
    f.get_u64(R::GET_PROTOCOL_FEATURES);
    f.negotiate(REPLY_ACK);
    // Calls before features and memory.
    assert_eq!(f.vring_fd(R::SET_VRING_CALL, 0), 0);
    assert_eq!(f.vring_fd(R::SET_VRING_CALL, 1), 0);
    assert_eq!(
        f.set_features(VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES),
        0
    );
    assert_eq!(f.set_mem_table(), 0);
    f.ring_setup(0, 0, false);
    f.ring_setup(1, 0, false);
    assert!(
        h.rec.events().is_empty(),
        "rings start disabled with PROTOCOL_FEATURES"
    );
    assert_eq!(f.enable(0, true), 0);
    assert_eq!(f.enable(1, true), 0);
    assert_eq!(h.wait_events(1), vec![start_event(0, 0, 0)]);
    assert_eq!(f.enable(0, false), 0);
    assert_eq!(h.rec.events()[1], Event::Stop(0));
    assert_eq!(f.enable(1, false), 0);
    assert_eq!(f.get_vring_base(0), 5);
    assert_eq!(f.get_vring_base(1), 5);
}

#[test]
fn call_change_while_running_restarts_from_where_the_pair_stopped() {
    // A datapath that cannot switch call eventfds in place.
    let h = Harness::with(1, false);
    let mut f = h.connect();
    f.negotiate(REPLY_ACK);
    assert_eq!(f.set_features(FEATURES), 0);
    assert_eq!(f.set_mem_table(), 0);
    f.ring_setup(0, 100, true);
    f.ring_setup(1, 200, true);
    assert_eq!(f.enable(0, true), 0);
    assert_eq!(f.enable(1, true), 0);
    assert_eq!(h.wait_events(1), vec![start_event(0, 100, 200)]);
    assert_eq!(f.vring_fd(R::SET_VRING_CALL, 1), 0);
    assert_eq!(
        h.wait_events(3)[1..],
        [Event::Stop(0), start_event(0, 105, 205)]
    );
    // A memory table change quiesces, remaps, restarts.
    assert_eq!(f.set_mem_table(), 0);
    assert_eq!(
        h.wait_events(5)[3..],
        [Event::Stop(0), start_event(0, 110, 210)]
    );
    // Repeating the same features changes nothing.
    assert_eq!(f.set_features(FEATURES), 0);
    assert_eq!(h.rec.events().len(), 5);
}

#[test]
fn disconnect_mid_setup_then_a_second_frontend_succeeds() {
    let h = Harness::new(1);
    {
        let mut f = h.connect();
        f.negotiate(REPLY_ACK);
        assert_eq!(f.set_features(FEATURES), 0);
        assert_eq!(f.set_mem_table(), 0);
        f.ring_setup(0, 0, true);
        // Gone before the TX ring is set up.
    }
    let mut f = h.connect();
    f.negotiate(REPLY_ACK);
    assert_eq!(f.set_features(FEATURES), 0);
    assert_eq!(f.set_mem_table(), 0);
    f.ring_setup(0, 0, true);
    f.ring_setup(1, 0, true);
    assert_eq!(f.enable(0, true), 0);
    assert_eq!(f.enable(1, true), 0);
    let ev = h.wait_events(2);
    assert_eq!(ev, vec![Event::Reset, start_event(0, 0, 0)]);
    assert_eq!(h.handle.status().connections, 2);
}

#[test]
fn a_panic_while_serving_costs_the_connection_not_the_device() {
    let h = Harness::new(1);
    h.rec
        .panic_next_start
        .store(true, std::sync::atomic::Ordering::SeqCst);
    {
        let mut f = h.connect();
        f.negotiate(REPLY_ACK);
        assert_eq!(f.set_features(FEATURES), 0);
        assert_eq!(f.set_mem_table(), 0);
        f.ring_setup(0, 0, true);
        f.ring_setup(1, 0, true);
        assert_eq!(f.enable(0, true), 0);
        // The pair starts with this enable, and the datapath panics: no reply comes,
        // the connection is closed.
        f.send(R::SET_VRING_ENABLE, NEED_REPLY, &Frontend::state(1, 1), &[]);
        assert!(f.closed(), "the connection stayed open");
    }
    // The connection closes while the panic unwinds; the status follows.
    let said = |st: &vdpa::DeviceStatus| {
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("panicked"))
    };
    let t = Instant::now();
    while !said(&h.handle.status()) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = h.handle.status();
    assert!(said(&st), "{:?}", st.last_error);
    // The device serves the next frontend as usual.
    let mut f = h.connect();
    f.negotiate(REPLY_ACK);
    assert_eq!(f.set_features(FEATURES), 0);
    assert_eq!(f.set_mem_table(), 0);
    f.ring_setup(0, 0, true);
    f.ring_setup(1, 0, true);
    assert_eq!(f.enable(0, true), 0);
    assert_eq!(f.enable(1, true), 0);
    // The panic's reset, then the second frontend's pair.
    assert_eq!(h.wait_events(2), vec![Event::Reset, start_event(0, 0, 0)]);
    assert_eq!(h.handle.status().connections, 2);
}

#[test]
fn bad_requests_are_refused_and_the_connection_stays_usable() {
    let h = Harness::new(1);
    let mut f = h.connect();
    f.negotiate(REPLY_ACK);
    // Unknown request code.
    f.s.write_all(&[200, 0, 0, 0, 1 | 8, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    assert_ne!(
        u64::from_ne_bytes(f.reply_raw(200)[..8].try_into().unwrap()),
        0
    );
    // Ring index out of range, size not a power of two, features not offered,
    // wrong body size.
    assert_ne!(f.acked(R::SET_VRING_NUM, &Frontend::state(7, 256), &[]), 0);
    assert_ne!(f.acked(R::SET_VRING_NUM, &Frontend::state(0, 300), &[]), 0);
    assert_ne!(f.set_features(1 << 60), 0);
    assert_ne!(f.acked(R::SET_FEATURES, &[1, 2, 3], &[]), 0);
    // A memory region larger than its file is refused, not mapped.
    assert_ne!(f.add_mem_reg(0, MEM_SIZE * 2, 0), 0);
    // Still serving.
    assert_eq!(f.set_features(FEATURES), 0);
    assert!(h.handle.status().last_error.is_some());
}

#[test]
fn guest_memory_beyond_max_guest_memory_is_refused() {
    let h = Harness::configured(1, true, |c| c.max_guest_memory = MEM_SIZE / 2);
    let mut f = h.connect();
    f.negotiate(REPLY_ACK);
    assert_eq!(f.set_features(FEATURES), 0);
    assert_ne!(f.set_mem_table(), 0, "a table over the limit is refused");
    let why = h.handle.status().last_error.unwrap_or_default();
    assert!(why.contains("max_guest_memory"), "{why}");
    // Within the limit (a region of half the memory) it is taken.
    assert_eq!(f.add_mem_reg(0, MEM_SIZE / 2, 0), 0);
}

#[test]
fn malformed_header_drops_only_that_connection() {
    let h = Harness::new(1);
    let mut f = h.connect();
    // Version 2 and an absurd size.
    f.s.write_all(&[1, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xff, 0, 0])
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(f.s.read(&mut b).unwrap_or(0), 0, "connection closed");
    let mut f = h.connect();
    assert_ne!(f.get_u64(R::GET_FEATURES), 0);
}

#[test]
fn get_config_reports_mac_and_queue_pairs() {
    let h = Harness::new(2);
    let mut f = h.connect();
    assert_eq!(f.get_u64(R::GET_QUEUE_NUM), 2);
    let mut body = 0u32.to_ne_bytes().to_vec();
    body.extend(12u32.to_ne_bytes());
    body.extend(0u32.to_ne_bytes());
    body.extend([0u8; 12]);
    f.send(R::GET_CONFIG, 0, &body, &[]);
    let r = f.reply(R::GET_CONFIG);
    assert_eq!(r.len(), 24);
    assert_eq!(&r[12..18], &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(u16::from_le_bytes([r[20], r[21]]), 2);
}

#[test]
fn second_pair_runs_independently() {
    let h = Harness::new(2);
    let mut f = h.connect();
    f.negotiate(REPLY_ACK | MQ);
    assert_eq!(f.set_features(FEATURES | VIRTIO_NET_F_MQ), 0);
    assert_eq!(f.set_mem_table(), 0);
    for ring in 0..4 {
        f.ring_setup(ring, 0, true);
        assert_eq!(f.enable(ring, true), 0);
    }
    assert_eq!(h.rec.starts(), 2);
    // ethtool -L combined 1: the second pair's rings are disabled.
    assert_eq!(f.enable(2, false), 0);
    assert_eq!(h.rec.events().last(), Some(&Event::Stop(1)));
    assert_eq!(h.handle.status().running_pairs, vec![0]);
    assert_eq!(f.enable(2, true), 0);
    assert_eq!(h.rec.starts(), 3);
}

impl Frontend {
    fn reply_raw(&mut self, code: u32) -> Vec<u8> {
        let mut h = [0u8; 12];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_ne_bytes(h[0..4].try_into().unwrap()), code);
        let size = u32::from_ne_bytes(h[8..12].try_into().unwrap());
        let mut b = vec![0u8; size as usize];
        self.s.read_exact(&mut b).unwrap();
        b
    }
}

#[test]
fn a_datapath_that_cannot_start_a_pair_hands_the_device_to_its_fallback() {
    let dir = TempDir::new();
    let socket = dir.0.join("t0.sock");
    // The first datapath runs pair 0 but refuses pair 1.
    let primary = Recorder {
        live_call: true,
        refuse: vec![1],
        ..Default::default()
    };
    let fallback = Recorder {
        live_call: true,
        ..Default::default()
    };
    let fb = fallback.clone();
    let device = Device::new(
        device_config(socket.clone(), 2),
        Box::new(FallbackDatapath::new(
            Box::new(primary.clone()),
            Box::new(move || Ok(Box::new(fb) as Box<dyn Datapath>)),
            0,
        )),
    );
    let shutdown = Shutdown::new().unwrap();
    let server = DeviceServer::start(device, shutdown.clone()).unwrap();
    let handle = server.handle().clone();
    let mut f = Frontend::connect(&socket);
    f.negotiate(REPLY_ACK | MQ);
    assert_eq!(f.set_features(FEATURES | VIRTIO_NET_F_MQ), 0);
    assert_eq!(f.set_mem_table(), 0);
    for ring in 0..2 {
        f.ring_setup(ring, 7, true);
        assert_eq!(f.enable(ring, true), 0);
    }
    assert_eq!(primary.events(), vec![start_event(0, 7, 7)]);
    assert!(handle.status().fallback_reason.is_none());
    for ring in 2..4 {
        f.ring_setup(ring, 0, true);
        assert_eq!(f.enable(ring, true), 0);
    }
    // Pair 0 left the first datapath where it was and resumed on the fallback.
    assert_eq!(
        primary.events(),
        vec![start_event(0, 7, 7), Event::Stop(0), Event::Reset]
    );
    let ev = fallback.events();
    assert!(ev.contains(&start_event(0, 12, 12)), "{ev:?}");
    assert!(
        ev.iter().any(|e| matches!(e, Event::Start { pair: 1, .. })),
        "{ev:?}"
    );
    let why = handle.status().fallback_reason.expect("reason recorded");
    assert!(why.contains("refused by the test"), "{why}");
    assert_eq!(handle.status().running_pairs, vec![0, 1]);
    drop(f);
    shutdown.raise();
    server.join();
}

#[test]
fn the_socket_is_private_and_goes_away_with_the_device() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new(1);
    let mode = std::fs::metadata(&h.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A second server cannot steal a socket that a live one accepts on.
    let again = DeviceServer::start(
        Device::new(
            device_config(h.socket.clone(), 1),
            Box::new(Recorder::default()),
        ),
        Shutdown::new().unwrap(),
    );
    assert!(matches!(again, Err(vdpa::server::ServerError::InUse(_))));
    let mut h = h;
    h.shutdown.raise();
    h.server.take().unwrap().join();
    assert!(!h.socket.exists(), "socket removed on shutdown");
}

/// Accepts the connection a client-mode device makes, waiting at most `within`.
fn accept_within(listener: &UnixListener, within: Duration) -> UnixStream {
    listener.set_nonblocking(true).unwrap();
    let t = Instant::now();
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && t.elapsed() < within => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("the device did not connect within {within:?}: {e}"),
        }
    }
}

/// The QEMU 10 ring setup after a (re)connect, from the positions it kept.
fn qemu_resume(f: &mut Frontend, rx_base: u32, tx_base: u32) {
    f.negotiate(REPLY_ACK | MQ | CONFIGURE_MEM_SLOTS);
    f.send(R::SET_OWNER, 0, &[], &[]);
    assert_eq!(f.set_features(FEATURES), 0);
    assert_eq!(f.add_mem_reg(0, MEM_SIZE, 0), 0);
    for (ring, base) in [(0, rx_base), (1, tx_base)] {
        assert_eq!(f.enable(ring, true), 0);
        f.ring_setup(ring, base, true);
    }
}

/// Client mode: the device waits for the frontend's socket (without creating it),
/// connects, is served like an accepted connection, reconnects at once when the
/// frontend closes, resumes its rings where the frontend says, and leaves the socket
/// alone when it stops.
#[test]
fn a_client_device_waits_connects_reconnects_and_resumes() {
    let h = Harness::configured(1, true, |c| c.socket_role = SocketRole::Client);
    let waiting = (0..200).find_map(|_| {
        std::thread::sleep(Duration::from_millis(10));
        h.handle.status().peer.filter(|p| p.failed_attempts >= 2)
    });
    let peer = waiting.expect("the device keeps trying while nothing listens");
    assert!(!peer.connected && peer.next_attempt.is_some(), "{peer:?}");
    let error = peer.last_error.unwrap_or_default();
    assert!(error.contains("no socket at the path yet"), "{error}");
    assert!(!h.socket.exists(), "a client never creates the socket");

    let listener = UnixListener::bind(&h.socket).unwrap();
    let mut f = Frontend::on(accept_within(&listener, RECONNECT_MAX * 2));
    assert_eq!(f.get_u64(R::GET_FEATURES) & FEATURES, FEATURES);
    qemu_resume(&mut f, 100, 200);
    assert_eq!(h.wait_events(1), vec![start_event(0, 100, 200)]);
    let peer = h.handle.status().peer.unwrap();
    assert!(peer.connected && peer.failed_attempts == 0, "{peer:?}");
    // A session long enough to count as good: the reconnect is immediate.
    std::thread::sleep(STABLE_SESSION);
    drop(f);
    let mut f = Frontend::on(accept_within(&listener, Duration::from_millis(500)));
    // The frontend replays its setup with the positions it kept.
    qemu_resume(&mut f, 105, 205);
    assert_eq!(
        h.wait_events(4)[1..],
        [Event::Stop(0), Event::Reset, start_event(0, 105, 205)]
    );
    assert_eq!(h.handle.status().connections, 2);
    drop(f);
    let mut h = h;
    h.shutdown.raise();
    h.server.take().unwrap().join();
    assert!(h.socket.exists(), "the frontend's socket is left in place");
}

/// A frontend that accepts and drops the connection at once gets attempts spaced by
/// the backoff (100, 200, 400, 800 ms ...), not a busy loop.
#[test]
fn a_client_device_backs_off_from_a_frontend_that_drops_it() {
    let h = Harness::configured(1, true, |c| c.socket_role = SocketRole::Client);
    let listener = UnixListener::bind(&h.socket).unwrap();
    let t = Instant::now();
    let mut accepted = 0;
    while t.elapsed() < Duration::from_millis(2000) {
        let left = Duration::from_millis(2000).saturating_sub(t.elapsed());
        listener.set_nonblocking(true).unwrap();
        if let Ok((s, _)) = listener.accept() {
            drop(s);
            accepted += 1;
        }
        std::thread::sleep(left.min(Duration::from_millis(5)));
    }
    assert!((3..=6).contains(&accepted), "{accepted} connections in 2 s");
    let peer = h.handle.status().peer.unwrap();
    assert!(peer.failed_attempts >= 3, "{peer:?}");
    let error = peer.last_error.unwrap_or_default();
    assert!(error.contains("closed by the frontend"), "{error}");
}
