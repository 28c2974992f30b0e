//! The simulated NIC's behaviour: the virtio common-configuration state machine
//! (reset, features, queues, status) and the device thread that processes queues when
//! their doorbell rings, moving frames between the guest's rings and the link.
//!
//! One lock ([`Shared::state`]) covers registers and queue processing: the device
//! thread holds it for one bounded burst at a time, and a register write (a reset, a
//! queue reset) takes it too — so once such a write returns, the device no longer
//! touches the rings, exactly the guarantee a driver gets from real hardware after
//! reading back the reset.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::dma::Dma;
use super::doorbell_pages::DoorbellPages;
use super::layout;
use super::link::Link;
use super::multiqueue;
use super::ring::{Seg, SimRingError, SplitRing};
use super::SimConfig;
use crate::spec::{common as cc, status, NO_VECTOR};
use vdpa::virtio::features::{
    VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_RING_F_EVENT_IDX,
};
use vdpa::virtio::net_config::{NetConfigSpace, VIRTIO_NET_S_LINK_UP};
use vdpa::virtio::net_hdr::{rx_header, NET_HDR_LEN};

/// Chains processed per queue per burst before the lock is released.
const BURST: usize = 256;
/// Frames waiting for RX buffers per queue pair before the NIC drops.
const BACKLOG_LIMIT: usize = 1024;
/// Largest frame the simulated port carries.
const MAX_FRAME: usize = 65536;
/// How long the device thread sleeps without doorbells (picks up injected frames).
const TICK: Duration = Duration::from_millis(20);
/// How often it looks at its doorbell pages once one was handed out.
const PAGE_WATCH: Duration = Duration::from_micros(200);

/// Counters of the simulated NIC.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub doorbells: AtomicU64,
    pub page_doorbells: AtomicU64,
    pub tx_frames: AtomicU64,
    pub rx_frames: AtomicU64,
    pub rx_dropped: AtomicU64,
    pub function_resets: AtomicU64,
    pub device_resets: AtomicU64,
    pub control_commands: AtomicU64,
    pub msix_routings: AtomicU64,
}

/// Registers of one virtqueue.
#[derive(Clone, Debug)]
pub(crate) struct QueueRegs {
    pub size: u16,
    pub msix: u16,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    /// The running ring, while enabled.
    pub ring: Option<SplitRing>,
    /// `queue_reset` reads 1 after a per-queue reset until the queue is re-enabled.
    pub reset: bool,
    /// Ring state (last_avail, last_used): preset by the driver while the queue is
    /// disabled, the device's live indices while it runs.
    pub state: (u16, u16),
}

impl QueueRegs {
    fn new(max: u16) -> Self {
        QueueRegs {
            size: max,
            msix: NO_VECTOR,
            desc: 0,
            driver: 0,
            device: 0,
            ring: None,
            reset: false,
            state: (0, 0),
        }
    }
}

/// Registers and queue state, under one lock.
pub(crate) struct State {
    pub config: Vec<u8>,
    pub dev_feature_select: u32,
    pub drv_feature_select: u32,
    pub driver_features: u64,
    pub msix_config: u16,
    pub status: u8,
    pub generation: u8,
    pub queue_select: u16,
    pub isr: u8,
    pub queues: Vec<QueueRegs>,
    pub backlog: Vec<VecDeque<Vec<u8>>>,
    pub link: Box<dyn Link>,
    /// Queue pairs set by VQ_PAIRS_SET (used with MQ and CTRL_VQ negotiated).
    pub active_pairs: u16,
}

/// Everything the device thread and the register interface share.
pub(crate) struct Shared {
    pub cfg: SimConfig,
    pub state: Mutex<State>,
    pub dma: Dma,
    pub msix: Mutex<Vec<EventFd>>,
    pub fired: Vec<AtomicU64>,
    pub pending: AtomicU64,
    pub wake: EventFd,
    pub stop: AtomicBool,
    pub counters: Counters,
    /// The mappable doorbell pages, with [`SimConfig::doorbell_pages`].
    pub pages: Option<DoorbellPages>,
    /// The port's link, as the device config's `status` reports it.
    pub link_up: AtomicBool,
}

pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(cfg: SimConfig, link: Box<dyn Link>) -> std::io::Result<Self> {
        let nq = usize::from(cfg.num_queues());
        let cfg_pages = cfg.doorbell_pages;
        let link_up = cfg.link_up;
        let state = State {
            config: layout::config_space(&cfg),
            dev_feature_select: 0,
            drv_feature_select: 0,
            driver_features: 0,
            msix_config: NO_VECTOR,
            status: 0,
            generation: 0,
            queue_select: 0,
            isr: 0,
            queues: (0..nq)
                .map(|_| QueueRegs::new(cfg.queue_max_size))
                .collect(),
            backlog: (0..cfg.max_pairs).map(|_| VecDeque::new()).collect(),
            link,
            active_pairs: 1,
        };
        Ok(Shared {
            fired: (0..cfg.msix_vectors).map(|_| AtomicU64::new(0)).collect(),
            cfg,
            state: Mutex::new(state),
            dma: Dma::default(),
            msix: Mutex::new(Vec::new()),
            pending: AtomicU64::new(0),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            link_up: AtomicBool::new(link_up),
            pages: if cfg_pages {
                Some(DoorbellPages::new(nq)?)
            } else {
                None
            },
        })
    }

    /// Fires MSI-X vector `v` (if routed).
    pub(crate) fn fire(&self, v: u16) {
        if v == NO_VECTOR {
            return;
        }
        let table = lock(&self.msix);
        if let Some(fd) = table.get(usize::from(v)) {
            // Like the kernel's irqfd, never blocks on a frontend's full eventfd.
            if matches!(
                vdpa::notify::signal(std::os::fd::AsRawFd::as_raw_fd(fd)),
                vdpa::notify::Signal::Sent
            ) {
                if let Some(c) = self.fired.get(usize::from(v)) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The port's link went up or down: the config's `status` changes, its generation
    /// moves on and the config vector fires, as a virtio-pci NIC does.
    pub(crate) fn set_link(&self, up: bool) {
        if self.link_up.swap(up, Ordering::SeqCst) == up {
            return;
        }
        let vector = {
            let mut st = lock(&self.state);
            st.generation = st.generation.wrapping_add(1);
            st.isr |= 2;
            st.msix_config
        };
        self.fire(vector);
    }

    /// A doorbell write: the device thread will look at queue `q`.
    pub(crate) fn doorbell(&self, q: u16) {
        if u32::from(q) >= u32::from(self.cfg.num_queues()) {
            return;
        }
        self.counters.doorbells.fetch_add(1, Ordering::Relaxed);
        self.pending.fetch_or(1 << q, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }

    /// Device reset (device_status = 0, or a function-level reset).
    pub(crate) fn device_reset(&self, st: &mut State) {
        let max = self.cfg.queue_max_size;
        st.dev_feature_select = 0;
        st.drv_feature_select = 0;
        st.driver_features = 0;
        st.msix_config = NO_VECTOR;
        st.status = 0;
        st.queue_select = 0;
        st.isr = 0;
        for q in st.queues.iter_mut() {
            *q = QueueRegs::new(max);
        }
        for b in st.backlog.iter_mut() {
            b.clear();
        }
        st.active_pairs = 1;
        self.pending.store(0, Ordering::SeqCst);
        self.counters.device_resets.fetch_add(1, Ordering::Relaxed);
    }

    fn needs_reset(&self, st: &mut State, why: &str) {
        tracing::warn!(why, "sim: device error, DEVICE_NEEDS_RESET");
        st.status |= status::DEVICE_NEEDS_RESET;
        for q in st.queues.iter_mut() {
            q.ring = None;
        }
        self.fire(st.msix_config);
    }

    /// Reads a common-configuration register.
    pub(crate) fn common_read(&self, st: &State, off: u64, len: usize) -> u32 {
        let qs = usize::from(st.queue_select);
        let q = st.queues.get(qs);
        let v: u64 = match off {
            cc::DEVICE_FEATURE_SELECT => u64::from(st.dev_feature_select),
            cc::DEVICE_FEATURE => match st.dev_feature_select {
                0 => self.cfg.features & 0xffff_ffff,
                1 => self.cfg.features >> 32,
                _ => 0,
            },
            cc::DRIVER_FEATURE_SELECT => u64::from(st.drv_feature_select),
            cc::DRIVER_FEATURE => match st.drv_feature_select {
                0 => st.driver_features & 0xffff_ffff,
                1 => st.driver_features >> 32,
                _ => 0,
            },
            cc::MSIX_CONFIG => u64::from(st.msix_config),
            cc::NUM_QUEUES => u64::from(self.cfg.num_queues()),
            cc::DEVICE_STATUS => u64::from(st.status),
            cc::CONFIG_GENERATION => u64::from(st.generation),
            cc::QUEUE_SELECT => u64::from(st.queue_select),
            cc::QUEUE_SIZE => q.map_or(0, |q| u64::from(q.size)),
            cc::QUEUE_MSIX_VECTOR => q.map_or(u64::from(NO_VECTOR), |q| u64::from(q.msix)),
            cc::QUEUE_ENABLE => q.map_or(0, |q| u64::from(q.ring.is_some())),
            cc::QUEUE_NOTIFY_OFF => qs as u64,
            cc::QUEUE_DESC => q.map_or(0, |q| q.desc),
            0x24 => q.map_or(0, |q| q.desc >> 32),
            cc::QUEUE_DRIVER => q.map_or(0, |q| q.driver),
            0x2c => q.map_or(0, |q| q.driver >> 32),
            cc::QUEUE_DEVICE => q.map_or(0, |q| q.device),
            0x34 => q.map_or(0, |q| q.device >> 32),
            cc::QUEUE_NOTIFY_DATA => qs as u64,
            cc::QUEUE_RESET => q.map_or(0, |q| u64::from(q.reset)),
            _ => 0,
        };
        let mask = if len >= 4 {
            0xffff_ffff
        } else {
            (1u64 << (8 * len)) - 1
        };
        (v & mask) as u32
    }

    /// Writes a common-configuration register.
    pub(crate) fn common_write(&self, st: &mut State, off: u64, v: u32) {
        let qs = usize::from(st.queue_select);
        let nvec = self.cfg.msix_vectors;
        let vector = |v: u32| {
            if v < u32::from(nvec) {
                v as u16
            } else {
                NO_VECTOR
            }
        };
        let running = st.status & status::DRIVER_OK != 0;
        match off {
            cc::DEVICE_FEATURE_SELECT => st.dev_feature_select = v,
            cc::DRIVER_FEATURE_SELECT => st.drv_feature_select = v,
            cc::DRIVER_FEATURE if st.status & status::FEATURES_OK == 0 => {
                match st.drv_feature_select {
                    0 => st.driver_features = (st.driver_features & !0xffff_ffff) | u64::from(v),
                    1 => {
                        st.driver_features =
                            (st.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            cc::MSIX_CONFIG => st.msix_config = vector(v),
            cc::DEVICE_STATUS => self.write_status(st, v as u8),
            cc::QUEUE_SELECT => st.queue_select = v as u16,
            _ => {
                let Some(q) = st.queues.get_mut(qs) else {
                    return;
                };
                let idle = q.ring.is_none();
                match off {
                    cc::QUEUE_SIZE if idle => q.size = v as u16,
                    cc::QUEUE_MSIX_VECTOR => q.msix = vector(v),
                    cc::QUEUE_DESC if idle => q.desc = (q.desc & !0xffff_ffff) | u64::from(v),
                    0x24 if idle => q.desc = (q.desc & 0xffff_ffff) | (u64::from(v) << 32),
                    cc::QUEUE_DRIVER if idle => q.driver = (q.driver & !0xffff_ffff) | u64::from(v),
                    0x2c if idle => q.driver = (q.driver & 0xffff_ffff) | (u64::from(v) << 32),
                    cc::QUEUE_DEVICE if idle => q.device = (q.device & !0xffff_ffff) | u64::from(v),
                    0x34 if idle => q.device = (q.device & 0xffff_ffff) | (u64::from(v) << 32),
                    cc::QUEUE_ENABLE => self.write_queue_enable(st, qs, v as u16, running),
                    cc::QUEUE_RESET if v & 1 == 1 => {
                        if st.driver_features & VIRTIO_F_RING_RESET == 0 {
                            self.needs_reset(st, "queue_reset without VIRTIO_F_RING_RESET");
                            return;
                        }
                        let q = &mut st.queues[qs];
                        let state = q.ring.map_or(q.state, |r| (r.last_avail, r.used_idx));
                        *q = QueueRegs::new(self.cfg.queue_max_size);
                        q.reset = true;
                        q.state = state;
                    }
                    _ => {}
                }
            }
        }
    }

    fn write_queue_enable(&self, st: &mut State, qs: usize, v: u16, running: bool) {
        if v == 0 {
            // Not allowed for a spec driver; accepted like ifcvf does when the vendor
            // ring-state block exists (the driver then reads the state back).
            if self.cfg.ring_state {
                let q = &mut st.queues[qs];
                if let Some(r) = q.ring.take() {
                    q.state = (r.last_avail, r.used_idx);
                }
            } else {
                self.needs_reset(st, "queue_enable = 0 on a device without ring state");
            }
            return;
        }
        if st.status & status::FEATURES_OK == 0 {
            self.needs_reset(st, "queue enabled before FEATURES_OK");
            return;
        }
        if running && st.driver_features & VIRTIO_F_RING_RESET == 0 {
            self.needs_reset(
                st,
                "queue enabled after DRIVER_OK without VIRTIO_F_RING_RESET",
            );
            return;
        }
        let event_idx = st.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let q = &mut st.queues[qs];
        if q.ring.is_some() {
            return;
        }
        if !q.size.is_power_of_two() || q.size > self.cfg.queue_max_size {
            let why = format!("queue {qs}: invalid size {}", q.size);
            self.needs_reset(st, &why);
            return;
        }
        q.reset = false;
        q.ring = Some(SplitRing {
            size: q.size,
            desc: q.desc,
            avail: q.driver,
            used: q.device,
            event_idx,
            last_avail: q.state.0,
            used_idx: q.state.1,
            signalled: q.state.1,
        });
    }

    fn write_status(&self, st: &mut State, v: u8) {
        if v == 0 {
            self.device_reset(st);
            return;
        }
        let new = v & !st.status;
        if new & status::FEATURES_OK != 0 {
            let f = st.driver_features;
            let ok = f & !self.cfg.features == 0
                && f & VIRTIO_F_VERSION_1 != 0
                && (self.cfg.features & VIRTIO_F_ACCESS_PLATFORM == 0
                    || f & VIRTIO_F_ACCESS_PLATFORM != 0);
            if !ok {
                st.status |= v & !status::FEATURES_OK;
                return;
            }
        }
        st.status |= v;
    }

    /// Reads the device-specific configuration (virtio_net_config).
    pub(crate) fn device_cfg_read(&self, off: u64, buf: &mut [u8]) {
        let c = NetConfigSpace {
            mac: self.cfg.mac,
            status: if self.link_up.load(Ordering::SeqCst) {
                VIRTIO_NET_S_LINK_UP
            } else {
                0
            },
            max_pairs: self.cfg.max_pairs,
            mtu: self.cfg.mtu,
        }
        .to_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = c.get(off as usize + i).copied().unwrap_or(0);
        }
    }

    /// Reads the ring state word of queue `q`.
    pub(crate) fn ring_state_read(&self, st: &State, q: usize) -> u32 {
        st.queues.get(q).map_or(0, |q| {
            let (a, u) = q.ring.map_or(q.state, |r| (r.last_avail, r.used_idx));
            u32::from(a) | (u32::from(u) << 16)
        })
    }

    /// Presets the ring state of a disabled queue `q`.
    pub(crate) fn ring_state_write(&self, st: &mut State, q: usize, v: u32) {
        if let Some(q) = st.queues.get_mut(q) {
            if q.ring.is_none() {
                q.state = (v as u16, (v >> 16) as u16);
            }
        }
    }
}

/// The device thread: sleeps on the doorbell eventfd (and the link's fd), then
/// processes the queues whose doorbells rang and the frames that arrived.
pub(crate) fn run(shared: Arc<Shared>) {
    let link_fd = lock(&shared.state).link.poll_fd();
    let mut scratch = vec![0u8; MAX_FRAME];
    let mut segs = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let mut fds = vec![libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&shared.wake),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(fd) = link_fd {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let watch = shared.pages.as_ref().filter(|p| p.watched());
        let wait = if watch.is_some() { PAGE_WATCH } else { TICK };
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: wait.as_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a valid array of pollfd of the given length and `ts` a valid
        // timespec, both alive for the call; no signal mask is passed.
        unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let _ = shared.wake.read();
        let mut bits = shared.pending.swap(0, Ordering::SeqCst);
        if let Some(pages) = watch {
            let rung = pages.take_rung();
            let n = u64::from(rung.count_ones());
            shared
                .counters
                .page_doorbells
                .fetch_add(n, Ordering::Relaxed);
            shared.counters.doorbells.fetch_add(n, Ordering::Relaxed);
            bits |= rung;
        }
        let mut st = lock(&shared.state);
        let mut again = 0u64;
        pull_wire(&shared, &mut st, &mut scratch);
        if st.status & status::DRIVER_OK != 0 && st.status & status::DEVICE_NEEDS_RESET == 0 {
            let control = 2 * usize::from(shared.cfg.max_pairs);
            if shared.cfg.control_queue && bits & (1 << control) != 0 {
                multiqueue::process_control(&shared, &mut st, control, &mut segs);
            }
            let in_use = usize::from(multiqueue::pairs_in_use(&shared, &st));
            for q in 0..st.queues.len().min(2 * in_use) {
                if bits & (1 << q) != 0
                    && q % 2 == 1
                    && process_tx(&shared, &mut st, q, &mut scratch, &mut segs)
                {
                    again |= 1 << q;
                }
            }
            pull_wire(&shared, &mut st, &mut scratch);
            for p in 0..in_use {
                if !st.backlog[p].is_empty() {
                    process_rx(&shared, &mut st, p, &mut scratch, &mut segs);
                }
            }
        }
        drop(st);
        if again != 0 {
            shared.pending.fetch_or(again, Ordering::SeqCst);
            let _ = shared.wake.write(1);
        }
    }
}

/// Moves frames from the link into the per-pair RX backlogs.
fn pull_wire(shared: &Shared, st: &mut State, scratch: &mut [u8]) {
    // The pairs cannot change while this holds the state: reckoned once per burst.
    let receiving = multiqueue::receiving_pairs(shared, st);
    for _ in 0..BURST {
        let got = match st.link.receive(scratch) {
            Ok(Some(g)) => g,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "sim: link receive failed");
                return;
            }
        };
        let (pair, len) = got;
        let chosen = st.link.chooses_pair().then_some(pair);
        let pair = usize::from(multiqueue::steer(chosen, &scratch[..len], &receiving));
        if st.status & status::DRIVER_OK == 0 || st.backlog[pair].len() >= BACKLOG_LIMIT {
            shared.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        st.backlog[pair].push_back(scratch[..len].to_vec());
    }
}

pub(crate) fn ring_failed(shared: &Shared, st: &mut State, q: usize, e: SimRingError) {
    match e {
        SimRingError::Dma(f) => {
            let why = format!("queue {q}: ring not reachable by DMA at {:#x}", f.iova);
            shared.needs_reset(st, &why);
        }
        SimRingError::Malformed(why) => {
            let why = format!("queue {q}: {why}");
            shared.needs_reset(st, &why);
        }
    }
}

/// Transmits up to one burst from TX queue `q`. Returns true if chains remain.
fn process_tx(
    shared: &Shared,
    st: &mut State,
    q: usize,
    scratch: &mut [u8],
    segs: &mut Vec<Seg>,
) -> bool {
    let Some(mut ring) = st.queues[q].ring else {
        return false;
    };
    let pair = (q / 2) as u16;
    let mut more = false;
    let mut done = 0;
    let result: Result<(), SimRingError> = (|| {
        loop {
            if ring.pending(&shared.dma)? == 0 && !ring.arm_kick(&shared.dma)? {
                break;
            }
            if done == BURST {
                more = true;
                break;
            }
            let head = ring.pop(&shared.dma, segs)?;
            done += 1;
            let mut len = 0usize;
            let mut ok = true;
            for s in segs.iter().filter(|s| !s.writable) {
                let n = s.len as usize;
                if len + n > scratch.len() {
                    ok = false;
                    break;
                }
                if shared.dma.read(s.addr, &mut scratch[len..len + n]).is_err() {
                    ok = false;
                    break;
                }
                len += n;
            }
            if ok && len > NET_HDR_LEN {
                match st.link.transmit(pair, &scratch[NET_HDR_LEN..len]) {
                    Ok(()) => {
                        shared.counters.tx_frames.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, "sim: link transmit failed"),
                }
            }
            ring.add_used(&shared.dma, head, 0)?;
        }
        ring.publish(&shared.dma)?;
        if ring.should_interrupt(&shared.dma)? {
            shared.fire(st.queues[q].msix);
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            st.queues[q].ring = Some(ring);
            more
        }
        Err(e) => {
            ring_failed(shared, st, q, e);
            false
        }
    }
}

/// Writes `data` across the writable buffers of `segs`, starting `skip` bytes in.
/// Returns the bytes written, or None when a buffer faulted.
fn scatter(dma: &Dma, segs: &[Seg], data: &[u8]) -> Option<usize> {
    let mut off = 0;
    for s in segs.iter().filter(|s| s.writable) {
        if off == data.len() {
            break;
        }
        let n = (s.len as usize).min(data.len() - off);
        dma.write(s.addr, &data[off..off + n]).ok()?;
        off += n;
    }
    Some(off)
}

fn capacity(segs: &[Seg]) -> usize {
    segs.iter()
        .filter(|s| s.writable)
        .map(|s| s.len as usize)
        .sum()
}

/// Delivers backlog frames of pair `p` into its RX queue while buffers last.
fn process_rx(shared: &Shared, st: &mut State, p: usize, scratch: &mut [u8], segs: &mut Vec<Seg>) {
    let q = 2 * p;
    let Some(mut ring) = st.queues[q].ring else {
        return;
    };
    let mrg = st.driver_features & VIRTIO_NET_F_MRG_RXBUF != 0;
    let mut delivered = 0;
    let result: Result<(), SimRingError> = (|| {
        while delivered < BURST {
            let Some(frame) = st.backlog[p].front() else {
                break;
            };
            let total = NET_HDR_LEN + frame.len();
            if total > scratch.len() {
                st.backlog[p].pop_front();
                shared.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            scratch[NET_HDR_LEN..total].copy_from_slice(frame);
            // Collect enough chains for the frame (one without mergeable buffers).
            let mut chains: Vec<(u16, Vec<Seg>)> = Vec::new();
            let mut room = 0;
            while room < total && (mrg || chains.is_empty()) {
                if ring.pending(&shared.dma)? == 0 && !ring.arm_kick(&shared.dma)? {
                    break;
                }
                let head = ring.pop(&shared.dma, segs)?;
                room += capacity(segs);
                chains.push((head, segs.clone()));
            }
            if room < total && (mrg || chains.is_empty()) {
                // Not enough buffers yet: give them back and wait for a kick.
                for _ in 0..chains.len() {
                    ring.unpop();
                }
                break;
            }
            st.backlog[p].pop_front();
            if room < total {
                // A single buffer too small without mergeable buffers: drop the frame
                // and return the buffer untouched.
                shared.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
                ring.add_used(&shared.dma, chains[0].0, 0)?;
                continue;
            }
            scratch[..NET_HDR_LEN].copy_from_slice(&rx_header(chains.len() as u16));
            let mut off = 0;
            for (head, chain) in &chains {
                let take = capacity(chain).min(total - off);
                let written = scatter(&shared.dma, chain, &scratch[off..off + take]).unwrap_or(0);
                ring.add_used(&shared.dma, *head, written as u32)?;
                off += take;
            }
            shared.counters.rx_frames.fetch_add(1, Ordering::Relaxed);
            delivered += 1;
        }
        ring.publish(&shared.dma)?;
        if ring.should_interrupt(&shared.dma)? {
            shared.fire(st.queues[q].msix);
        }
        Ok(())
    })();
    match result {
        Ok(()) => st.queues[q].ring = Some(ring),
        Err(e) => ring_failed(shared, st, q, e),
    }
}
