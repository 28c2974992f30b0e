//! A loopback virtio-net *device* for tests: the device side of the rig's rings, built on
//! virtio-queue (an implementation independent of the rig) for the avail/used/EVENT_IDX
//! machinery, with its own strict descriptor-chain validation, so hostile chains are
//! counted and completed with length 0 (or skipped when the head is out of range).

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vdpa::virtio::net_hdr::NET_HDR_LEN;
use vdpa::virtio::ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vdpa_rig::RingLayout;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Counters of the fake device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DevStats {
    pub tx_frames: u64,
    pub rx_frames: u64,
    pub rx_buffers: u64,
    pub bad_tx_chains: u64,
    pub bad_rx_chains: u64,
    pub skipped_heads: u64,
    pub tx_signals: u64,
    pub rx_signals: u64,
    pub kicks_seen: u64,
}

/// Device side of one ring.
pub struct DevRing {
    pub queue: Queue,
    pub kick: EventFd,
    pub call: EventFd,
}

impl DevRing {
    /// A ready virtio-queue for the ring at `l` (GPAs), starting at index `base`.
    pub fn new(l: &RingLayout, base: u16, event_idx: bool, kick: EventFd, call: EventFd) -> Self {
        let size = l.size;
        let mut q = Queue::new(size).expect("queue");
        q.set_size(size);
        q.try_set_desc_table_address(GuestAddress(l.desc)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(l.avail)).unwrap();
        q.try_set_used_ring_address(GuestAddress(l.used)).unwrap();
        q.set_event_idx(event_idx);
        q.set_next_avail(base);
        q.set_next_used(base);
        q.set_ready(true);
        Self {
            queue: q,
            kick,
            call,
        }
    }
}

/// One pair: RX ring, TX ring, frames read from TX waiting for RX buffers.
pub struct DevPair {
    pub rx: DevRing,
    pub tx: DevRing,
    pending: VecDeque<Vec<u8>>,
}

/// The loopback device: every TX frame goes back out on the same pair's RX ring.
pub struct LoopbackDevice {
    mem: GuestMemoryMmap,
    pairs: Vec<DevPair>,
    mrg: bool,
    pub stats: Arc<Mutex<DevStats>>,
}

/// Walks a chain strictly: head and next in range, at most `size` descriptors, no
/// INDIRECT, no zero length, every buffer inside guest memory, all writable (RX) or all
/// readable (TX). Returns the (GPA, len) list.
fn walk(mem: &GuestMemoryMmap, q: &Queue, head: u16, writable: bool) -> Option<Vec<(u64, u32)>> {
    let size = q.size();
    if head >= size {
        return None;
    }
    let mut out = Vec::new();
    let mut idx = head;
    for _ in 0..size {
        let mut d = [0u8; 16];
        mem.read_slice(&mut d, GuestAddress(q.desc_table() + 16 * u64::from(idx)))
            .ok()?;
        let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
        let flags = u16::from_le_bytes([d[12], d[13]]);
        let next = u16::from_le_bytes([d[14], d[15]]);
        if flags & VRING_DESC_F_INDIRECT != 0
            || len == 0
            || (flags & VRING_DESC_F_WRITE != 0) != writable
            || addr.checked_add(u64::from(len)).is_none()
            || !GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize)
        {
            return None;
        }
        out.push((addr, len));
        if flags & VRING_DESC_F_NEXT == 0 {
            return Some(out);
        }
        if next >= size {
            return None;
        }
        idx = next;
    }
    None
}

impl LoopbackDevice {
    pub fn new(mem: GuestMemoryMmap, rings: Vec<(DevRing, DevRing)>, mrg: bool) -> Self {
        Self {
            mem,
            pairs: rings
                .into_iter()
                .map(|(rx, tx)| DevPair {
                    rx,
                    tx,
                    pending: VecDeque::new(),
                })
                .collect(),
            mrg,
            stats: Arc::new(Mutex::new(DevStats::default())),
        }
    }

    /// Next avail index of every ring, in vhost-user ring order (RX0, TX0, RX1, ...).
    pub fn next_avail(&self) -> Vec<u16> {
        self.pairs
            .iter()
            .flat_map(|p| [p.rx.queue.next_avail(), p.tx.queue.next_avail()])
            .collect()
    }

    fn tx(&mut self, i: usize, st: &mut DevStats) -> bool {
        let mem = &self.mem;
        let p = &mut self.pairs[i];
        let mut progress = false;
        loop {
            p.tx.queue.disable_notification(mem).unwrap();
            while p.pending.len() < 512 {
                let Some(chain) = p.tx.queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                progress = true;
                match walk(mem, &p.tx.queue, head, false) {
                    Some(bufs) => {
                        let mut frame = Vec::new();
                        for (a, l) in bufs {
                            let at = frame.len();
                            frame.resize(at + l as usize, 0);
                            mem.read_slice(&mut frame[at..], GuestAddress(a)).unwrap();
                        }
                        st.tx_frames += 1;
                        p.pending.push_back(frame);
                    }
                    None => st.bad_tx_chains += 1,
                }
                if head < p.tx.queue.size() {
                    p.tx.queue.add_used(mem, head, 0).unwrap();
                } else {
                    st.skipped_heads += 1;
                }
            }
            if p.pending.len() >= 512 || !p.tx.queue.enable_notification(mem).unwrap() {
                break;
            }
        }
        if progress && p.tx.queue.needs_notification(mem).unwrap() {
            p.tx.call.write(1).unwrap();
            st.tx_signals += 1;
        }
        progress
    }

    /// Pops one valid writable chain; bad ones are completed with length 0 and counted.
    fn pop_rx(
        mem: &GuestMemoryMmap,
        q: &mut Queue,
        st: &mut DevStats,
    ) -> Option<(u16, Vec<(u64, u32)>)> {
        loop {
            let chain = q.pop_descriptor_chain(mem)?;
            let head = chain.head_index();
            match walk(mem, q, head, true) {
                Some(bufs) => return Some((head, bufs)),
                None => {
                    st.bad_rx_chains += 1;
                    if head < q.size() {
                        q.add_used(mem, head, 0).unwrap();
                    } else {
                        st.skipped_heads += 1;
                    }
                }
            }
        }
    }

    fn rx(&mut self, i: usize, st: &mut DevStats) -> bool {
        let mem = &self.mem;
        let mrg = self.mrg;
        let p = &mut self.pairs[i];
        let mut progress = false;
        while let Some(frame) = p.pending.front() {
            // Gather enough chains for the frame (one chain without MRG_RXBUF).
            let mut chains: Vec<(u16, Vec<(u64, u32)>)> = Vec::new();
            let mut room = 0usize;
            let mut starved = false;
            while room < frame.len() && (mrg || chains.is_empty()) {
                match Self::pop_rx(mem, &mut p.rx.queue, st) {
                    Some((h, bufs)) => {
                        room += bufs.iter().map(|b| b.1 as usize).sum::<usize>();
                        chains.push((h, bufs));
                    }
                    None => {
                        starved = true;
                        break;
                    }
                }
            }
            if starved {
                for _ in &chains {
                    p.rx.queue.go_to_previous_position();
                }
                // Out of buffers: ask for a kick; retry at once if some arrived meanwhile.
                if p.rx.queue.enable_notification(mem).unwrap() {
                    continue;
                }
                break;
            }
            let mut data = frame.clone();
            if room < data.len() {
                // Without MRG the chain is too small: truncate (the rig will see it).
                data.truncate(room);
            }
            if mrg {
                let n = chains.len() as u16;
                data[NET_HDR_LEN - 2..NET_HDR_LEN].copy_from_slice(&n.to_le_bytes());
            } else {
                data[NET_HDR_LEN - 2..NET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            }
            let mut off = 0;
            let mut used = Vec::new();
            for (h, bufs) in &chains {
                let mut written = 0u32;
                for &(a, l) in bufs {
                    let n = (data.len() - off).min(l as usize);
                    mem.write_slice(&data[off..off + n], GuestAddress(a))
                        .unwrap();
                    off += n;
                    written += n as u32;
                }
                used.push((*h, written));
            }
            for (h, w) in used {
                p.rx.queue.add_used(mem, h, w).unwrap();
                st.rx_buffers += 1;
            }
            st.rx_frames += 1;
            p.pending.pop_front();
            progress = true;
        }
        if progress && p.rx.queue.needs_notification(mem).unwrap() {
            p.rx.call.write(1).unwrap();
            st.rx_signals += 1;
        }
        progress
    }

    /// One pass over every pair. Returns whether anything moved.
    pub fn process(&mut self) -> bool {
        let stats = self.stats.clone();
        let mut st = stats.lock().unwrap();
        let mut progress = false;
        for i in 0..self.pairs.len() {
            progress |= self.tx(i, &mut st);
            progress |= self.rx(i, &mut st);
        }
        progress
    }

    /// Serves until `stop` is set: processes, then sleeps on the kick eventfds (at most
    /// 5 ms, so that a missed kick only slows things down). Returns the device.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Self {
        while !stop.load(Ordering::Acquire) {
            if self.process() {
                continue;
            }
            let mut fds: Vec<libc::pollfd> = self
                .pairs
                .iter()
                .flat_map(|p| [p.rx.kick.as_raw_fd(), p.tx.kick.as_raw_fd()])
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 5) };
            for p in &self.pairs {
                for k in [&p.rx.kick, &p.tx.kick] {
                    if k.read().is_ok() {
                        self.stats.lock().unwrap().kicks_seen += 1;
                    }
                }
            }
        }
        self
    }
}

/// Runs `dev` on a thread; stop it with the returned flag and join to get it back.
pub fn spawn(dev: LoopbackDevice) -> (Arc<AtomicBool>, std::thread::JoinHandle<LoopbackDevice>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    (stop, std::thread::spawn(move || dev.run(s)))
}

/// Sleeps a little (polling helper for tests).
pub fn nap() {
    std::thread::sleep(Duration::from_millis(2));
}
