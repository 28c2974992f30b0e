//! The guest side for offload tests: memfd guest memory as `vdpa::GuestMemory`, a
//! minimal split-ring driver writing descriptors, avail and used_event the way a
//! guest driver does, and a harness wiring one or more queue pairs to an
//! `OffloadDatapath` over a simulated NIC.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hwdrv::{OffloadDatapath, SimConfig, SimNic};
use vdpa::features::Negotiated;
use vdpa::virtio::features::{VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1};
use vdpa::virtio::net_hdr::{NET_HDR_LEN, NUM_BUFFERS_OFFSET};
use vdpa::virtio::ring::{self, DESC_SIZE, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vdpa::{
    GuestMemory, MemoryRegion, QueueCounters, QueuePairConfig, QueueStats, RingAddrs, RingConfig,
    RingEvents,
};
use vmm_sys_util::eventfd::EventFd;

/// Guest-physical base of test memory.
pub const GPA_BASE: u64 = 0x10_0000;
/// Bytes of a packet buffer slot.
pub const SLOT: u64 = 2048;
/// Bound on every wait.
pub const WAIT: Duration = Duration::from_secs(5);

/// Guest memory: one memfd region with a bump allocator.
pub struct Guest {
    pub mem: Arc<GuestMemory>,
    /// The memfd behind `mem` (a second descriptor), for tests that take it away.
    pub file: File,
    next: u64,
    end: u64,
}

pub fn memfd(len: u64) -> File {
    let name = std::ffi::CString::new("hwdrv-test").unwrap();
    // SAFETY: valid NUL-terminated name; the result is checked and owned at once.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fd is fresh and owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}

impl Guest {
    pub fn new(size: u64) -> Self {
        Self::at(GPA_BASE, size)
    }

    pub fn at(gpa: u64, size: u64) -> Self {
        let file = memfd(size);
        let region = MemoryRegion::map(
            gpa,
            size,
            0x7f00_0000_0000 + gpa,
            0,
            file.try_clone().unwrap(),
        )
        .unwrap();
        Guest {
            mem: Arc::new(GuestMemory::from_regions(vec![region]).unwrap()),
            file,
            next: gpa,
            end: gpa + size,
        }
    }

    pub fn alloc(&mut self, len: u64, align: u64) -> u64 {
        let a = self.next.div_ceil(align) * align;
        assert!(a + len <= self.end, "test guest memory exhausted");
        self.next = a + len;
        a
    }

    fn ptr(&self, gpa: u64, len: u64) -> *mut u8 {
        self.mem.translate(gpa, len).expect("gpa in guest memory")
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        // SAFETY: translate checked the range; guest memory is accessed by copy only.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr(gpa, data.len() as u64),
                data.len(),
            )
        };
    }

    pub fn read(&self, gpa: u64, buf: &mut [u8]) {
        // SAFETY: as in write.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr(gpa, buf.len() as u64),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
    }

    pub fn write_u16(&self, gpa: u64, v: u16) {
        // SAFETY: 2 mapped bytes, aligned by ring layout.
        unsafe { std::ptr::write_volatile(self.ptr(gpa, 2) as *mut u16, v.to_le()) };
    }

    pub fn read_u16(&self, gpa: u64) -> u16 {
        // SAFETY: as in write_u16.
        u16::from_le(unsafe { std::ptr::read_volatile(self.ptr(gpa, 2) as *const u16) })
    }

    pub fn read_u32(&self, gpa: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b);
        u32::from_le_bytes(b)
    }
}

/// Driver side of one split ring.
/// The guest address `off` bytes into the ring area at `area`.
fn at(area: u64, off: usize) -> u64 {
    area + off as u64
}

/// The guest address of descriptor `i` of the table at `table`.
fn desc_at(table: u64, i: u16) -> u64 {
    at(table, ring::desc_offset(usize::from(i)))
}

pub struct DriverRing {
    pub size: u16,
    pub addrs: RingAddrs,
    pub avail_idx: u16,
    pub last_used: u16,
    free: Vec<u16>,
    chain_len: Vec<u16>,
    pub event_idx: bool,
}

impl DriverRing {
    pub fn new(g: &mut Guest, size: u16, event_idx: bool, start: u16) -> Self {
        let (desc_len, avail_len, used_len) = ring::area_sizes(size);
        let desc = g.alloc(desc_len, 4096);
        let avail = g.alloc(avail_len, 64);
        let used = g.alloc(used_len, 4096);
        g.write_u16(at(avail, ring::AVAIL_IDX_OFFSET), start);
        g.write_u16(at(used, ring::USED_IDX_OFFSET), start);
        DriverRing {
            size,
            addrs: RingAddrs { desc, avail, used },
            avail_idx: start,
            last_used: start,
            free: (0..size).rev().collect(),
            chain_len: vec![0; usize::from(size)],
            event_idx,
        }
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Queues a chain of (gpa, len, writable) buffers; returns its head.
    pub fn add(&mut self, g: &Guest, bufs: &[(u64, u32, bool)]) -> u16 {
        assert!(bufs.len() <= self.free.len(), "ring full");
        let idx: Vec<u16> = (0..bufs.len()).map(|_| self.free.pop().unwrap()).collect();
        for (i, (gpa, len, w)) in bufs.iter().enumerate() {
            let mut flags = if *w { VRING_DESC_F_WRITE } else { 0 };
            let next = if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
                idx[i + 1]
            } else {
                0
            };
            let mut d = [0u8; DESC_SIZE];
            d[..8].copy_from_slice(&gpa.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&next.to_le_bytes());
            g.write(desc_at(self.addrs.desc, idx[i]), &d);
        }
        let head = idx[0];
        self.chain_len[usize::from(head)] = bufs.len() as u16;
        let slot = at(
            self.addrs.avail,
            ring::avail_slot_offset(usize::from(self.avail_idx % self.size)),
        );
        g.write_u16(slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Next descriptor indices are remembered through the table itself.
        head
    }

    /// Publishes queued chains (Release).
    pub fn publish(&self, g: &Guest) {
        fence(Ordering::Release);
        g.write_u16(at(self.addrs.avail, ring::AVAIL_IDX_OFFSET), self.avail_idx);
        fence(Ordering::SeqCst);
    }

    /// Asks for an interrupt at the next used element (EVENT_IDX used_event).
    pub fn want_interrupt(&self, g: &Guest) {
        if self.event_idx {
            let used_event = ring::used_event_offset(usize::from(self.size));
            g.write_u16(at(self.addrs.avail, used_event), self.last_used);
            fence(Ordering::SeqCst);
        }
    }

    pub fn device_used(&self, g: &Guest) -> u16 {
        let v = g.read_u16(at(self.addrs.used, ring::USED_IDX_OFFSET));
        fence(Ordering::Acquire);
        v
    }

    /// Takes the next used element (head, len), returning its descriptors.
    pub fn pop_used(&mut self, g: &Guest) -> Option<(u16, u32)> {
        if self.device_used(g) == self.last_used {
            return None;
        }
        let e = at(
            self.addrs.used,
            ring::used_slot_offset(usize::from(self.last_used % self.size)),
        );
        let id = g.read_u32(e) as u16;
        let len = g.read_u32(e + 4);
        self.last_used = self.last_used.wrapping_add(1);
        // Walk the chain to free every descriptor.
        let mut d = id;
        for _ in 0..self.chain_len[usize::from(id)] {
            self.free.push(d);
            let mut flags = [0u8; 4];
            g.read(desc_at(self.addrs.desc, d) + 12, &mut flags);
            d = u16::from_le_bytes([flags[2], flags[3]]);
        }
        self.chain_len[usize::from(id)] = 0;
        self.want_interrupt(g);
        Some((id, len))
    }
}

/// Waits until `fd` is signalled (consuming it) or the timeout passes.
pub fn wait_fd(fd: &EventFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    if n > 0 {
        let _ = fd.read();
        true
    } else {
        false
    }
}

pub fn efd() -> Arc<EventFd> {
    Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
}

/// One queue pair, guest side.
pub struct PairRig {
    pub pair: u16,
    pub rx: DriverRing,
    pub tx: DriverRing,
    pub rx_kick: Arc<EventFd>,
    pub tx_kick: Arc<EventFd>,
    pub rx_call: Arc<EventFd>,
    pub tx_call: Arc<EventFd>,
    /// Buffer slots: slot i of a ring at base + i * SLOT.
    pub rx_bufs: u64,
    pub tx_bufs: u64,
    pub rx_buf_len: u32,
    /// Times `recv` was woken by the RX call eventfd (an interrupt).
    pub rx_irqs: u64,
    /// The counters the datapath adds to, RX then TX (the device core's, in vdpad).
    pub counters: [Arc<QueueCounters>; 2],
}

impl PairRig {
    pub fn new(g: &mut Guest, pair: u16, size: u16, event_idx: bool, rx_buf_len: u32) -> Self {
        Self::with_start(g, pair, size, event_idx, rx_buf_len, 0)
    }

    pub fn with_start(
        g: &mut Guest,
        pair: u16,
        size: u16,
        event_idx: bool,
        rx_buf_len: u32,
        start: u16,
    ) -> Self {
        let rx = DriverRing::new(g, size, event_idx, start);
        let tx = DriverRing::new(g, size, event_idx, start);
        let rx_bufs = g.alloc(SLOT * u64::from(size), 4096);
        let tx_bufs = g.alloc(SLOT * u64::from(size), 4096);
        let p = PairRig {
            pair,
            rx,
            tx,
            rx_kick: efd(),
            tx_kick: efd(),
            rx_call: efd(),
            tx_call: efd(),
            rx_bufs,
            tx_bufs,
            rx_buf_len,
            rx_irqs: 0,
            counters: Default::default(),
        };
        p.rx.want_interrupt(g);
        p.tx.want_interrupt(g);
        p
    }

    /// Snapshots of this pair's counters, RX then TX.
    pub fn stats(&self) -> Vec<QueueStats> {
        vec![
            self.counters[0].snapshot(2 * self.pair),
            self.counters[1].snapshot(2 * self.pair + 1),
        ]
    }

    pub fn config(&self, g: &Guest, features: u64) -> QueuePairConfig {
        let ring =
            |index: u16, r: &DriverRing, kick: &Arc<EventFd>, call: &Arc<EventFd>, base: u16| {
                RingConfig {
                    index,
                    size: r.size,
                    addrs: r.addrs,
                    base,
                    events: RingEvents {
                        kick: kick.clone(),
                        call: Some(call.clone()),
                    },
                    counters: self.counters[usize::from(index % 2)].clone(),
                    log_used: None,
                }
            };
        QueuePairConfig {
            pair: self.pair,
            rx: ring(
                2 * self.pair,
                &self.rx,
                &self.rx_kick,
                &self.rx_call,
                self.rx.last_used,
            ),
            tx: ring(
                2 * self.pair + 1,
                &self.tx,
                &self.tx_kick,
                &self.tx_call,
                self.tx.last_used,
            ),
            features: Negotiated { bits: features },
            mem: g.mem.clone(),
            ended: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            log: None,
        }
    }

    /// Posts RX buffers into every free descriptor and kicks.
    pub fn fill_rx(&mut self, g: &Guest) {
        while self.rx.num_free() > 0 {
            let d = *self.rx_free_peek();
            let gpa = self.rx_bufs + SLOT * u64::from(d);
            self.rx.add(g, &[(gpa, self.rx_buf_len, true)]);
        }
        self.rx.publish(g);
        self.rx_kick.write(1).unwrap();
    }

    fn rx_free_peek(&self) -> &u16 {
        self.rx.free.last().unwrap()
    }

    /// Sends one frame (header + frame in one descriptor) and kicks.
    pub fn send(&mut self, g: &Guest, frame: &[u8]) {
        let start = Instant::now();
        while self.tx.num_free() == 0 {
            self.reap_tx(g);
            assert!(start.elapsed() < WAIT, "TX ring never drained");
            if self.tx.num_free() == 0 {
                wait_fd(&self.tx_call, Duration::from_millis(20));
            }
        }
        let d = *self.tx.free.last().unwrap();
        let gpa = self.tx_bufs + SLOT * u64::from(d);
        let mut pkt = vec![0u8; NET_HDR_LEN];
        pkt.extend_from_slice(frame);
        g.write(gpa, &pkt);
        self.tx.add(g, &[(gpa, pkt.len() as u32, false)]);
        self.tx.publish(g);
        self.tx_kick.write(1).unwrap();
    }

    pub fn reap_tx(&mut self, g: &Guest) -> usize {
        let mut n = 0;
        while self.tx.pop_used(g).is_some() {
            n += 1;
        }
        n
    }

    /// Receives one frame (waiting on the call eventfd, bounded), re-posting the
    /// buffers. With mergeable buffers, joins `num_buffers` chains.
    pub fn recv(&mut self, g: &Guest) -> Option<Vec<u8>> {
        let start = Instant::now();
        let (head, len) = loop {
            if let Some(e) = self.rx.pop_used(g) {
                break e;
            }
            if start.elapsed() > WAIT {
                return None;
            }
            if wait_fd(&self.rx_call, Duration::from_millis(50)) {
                self.rx_irqs += 1;
            }
        };
        let mut data = vec![0u8; len as usize];
        g.read(self.rx_bufs + SLOT * u64::from(head), &mut data);
        let nbuf = u16::from_le_bytes([data[NUM_BUFFERS_OFFSET], data[NUM_BUFFERS_OFFSET + 1]]);
        let mut heads = vec![head];
        for _ in 1..nbuf {
            let (h, l) = loop {
                if let Some(e) = self.rx.pop_used(g) {
                    break e;
                }
                assert!(
                    start.elapsed() < WAIT,
                    "missing merged buffer: nbuf {nbuf} first len {len} used {} last {}",
                    self.rx.device_used(g),
                    self.rx.last_used
                );
                wait_fd(&self.rx_call, Duration::from_millis(20));
            };
            let mut more = vec![0u8; l as usize];
            g.read(self.rx_bufs + SLOT * u64::from(h), &mut more);
            data.extend_from_slice(&more);
            heads.push(h);
        }
        // Buffer slot i belongs to descriptor i: re-post one slot per freed descriptor.
        for _ in heads {
            let d = *self.rx_free_peek();
            self.rx.add(
                g,
                &[(self.rx_bufs + SLOT * u64::from(d), self.rx_buf_len, true)],
            );
        }
        self.rx.publish(g);
        self.rx_kick.write(1).unwrap();
        Some(data[NET_HDR_LEN..].to_vec())
    }
}

/// A deterministic test frame: broadcast Ethernet, ethertype 0x88b5, sequence number,
/// length 60..=1514 varying with `seq`.
pub fn frame(pair: u16, seq: u32) -> Vec<u8> {
    let len = 60 + (seq as usize * 37) % (1514 - 60 + 1);
    let mut f = vec![0u8; len];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, pair as u8, 1]);
    f[12] = 0x88;
    f[13] = 0xb5;
    f[14..18].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in f[18..].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    f
}

/// Guest features: VERSION_1 + PROTOCOL_FEATURES + `extra`.
pub fn features(extra: u64) -> u64 {
    VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES | extra
}

/// A simulated NIC and an offload datapath on it.
pub fn offload(cfg: SimConfig, pairs: u16) -> (Arc<SimNic>, OffloadDatapath) {
    let nic = Arc::new(SimNic::loopback(cfg).unwrap());
    let dp = OffloadDatapath::new("test", nic.clone(), pairs).unwrap();
    (nic, dp)
}

/// Sends `n` frames on `p` and checks each comes back byte for byte.
pub fn exchange(g: &Guest, p: &mut PairRig, first_seq: u32, n: u32) {
    for seq in first_seq..first_seq + n {
        let f = frame(p.pair, seq);
        p.send(g, &f);
        let got = p
            .recv(g)
            .unwrap_or_else(|| panic!("frame {seq} on pair {} never came back", p.pair));
        assert_eq!(got, f, "frame {seq} on pair {} corrupted", p.pair);
        p.reap_tx(g);
    }
}
