//! A simulated virtio-net PCI function (in the spirit of Linux's `vdpa_sim`) for fast,
//! in-process tests of everything above the [`PciFunction`] trait.
//!
//! - [`layout`]: configuration space and BAR 4 layout (virtio 1.x modern).
//! - `device`: the register state machine and the device thread.
//! - `ring`: the device side of split rings, through the DMA engine.
//! - [`dma`]: the IOMMU-checked DMA engine; unmapped accesses are recorded faults.
//! - [`link`]: what the port is plugged into (loopback, channel, tap).
//!
//! The simulator is strict where a driver bug would matter on hardware: enabling a
//! queue after DRIVER_OK without VIRTIO_F_RING_RESET, a queue reset without that
//! feature, an invalid queue size, or an unreachable ring set DEVICE_NEEDS_RESET.

mod device;
pub mod dma;
mod doorbell_pages;
pub mod layout;
pub mod link;
mod multiqueue;
mod ring;

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vdpa::NotifyArea;
use vmm_sys_util::eventfd::EventFd;

use crate::pci::{check_width, PciFunction, ResetOutcome};
use crate::spec::cfg;
use device::{lock, Shared};
pub use dma::{DmaFault, FaultReason};
pub use link::{ChannelLink, Link, LoopbackLink, TapLink};
use vdpa::virtio::features::{
    VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1, VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_RING_F_EVENT_IDX,
};

/// Largest number of queue pairs the simulator models (doorbells are a 64-bit mask).
pub(crate) const SIM_MAX_PAIRS: u16 = 32;

/// What the simulated function looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Device feature bits offered.
    pub features: u64,
    /// Queue pairs (`max_virtqueue_pairs`); the device has two queues per pair.
    pub max_pairs: u16,
    /// MSI-X vectors.
    pub msix_vectors: u16,
    /// Largest queue size per queue.
    pub queue_max_size: u16,
    /// MAC address in the device configuration.
    pub mac: [u8; 6],
    /// MTU in the device configuration.
    pub mtu: u16,
    /// Link status reported.
    pub link_up: bool,
    /// Present the vdpad ring-state extension (queues can resume at any index).
    pub ring_state: bool,
    /// Support function-level reset (VFIO_DEVICE_RESET).
    pub flr: bool,
    /// Give every queue's doorbell a page of its own, which a frontend can map as a
    /// host notifier (the device then watches those pages); otherwise doorbells are
    /// packed 4 bytes apart and cannot be handed out.
    pub doorbell_pages: bool,
    /// Offer VIRTIO_NET_F_CTRL_VQ with a control queue (the last queue) that takes
    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: with MQ and CTRL_VQ negotiated only pair 0
    /// runs until the driver sets the pair count, as on a spec virtio-net NIC.
    /// Without it every enabled pair runs (a vendor multiqueue register, as ifcvf's).
    pub control_queue: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            features: VIRTIO_F_VERSION_1
                | VIRTIO_F_ACCESS_PLATFORM
                | VIRTIO_F_RING_RESET
                | VIRTIO_NET_F_MAC
                | VIRTIO_NET_F_STATUS
                | VIRTIO_NET_F_MTU
                | VIRTIO_NET_F_MQ
                | VIRTIO_NET_F_MRG_RXBUF
                | VIRTIO_RING_F_EVENT_IDX,
            max_pairs: 4,
            msix_vectors: 9,
            queue_max_size: 1024,
            mac: [0x02, 0x00, 0x00, 0x00, 0x5e, 0x01],
            mtu: 1500,
            link_up: true,
            ring_state: true,
            flr: true,
            doorbell_pages: true,
            control_queue: false,
        }
    }
}

impl SimConfig {
    /// Number of virtqueues: two per pair, and the control queue if there is one.
    pub(crate) fn num_queues(&self) -> u16 {
        2 * self.max_pairs + u16::from(self.control_queue)
    }

    /// The NOTIFY capability's `notify_off_multiplier`.
    pub fn notify_multiplier(&self) -> u32 {
        if self.doorbell_pages {
            layout::PAGE_MULTIPLIER
        } else {
            layout::PACKED_MULTIPLIER
        }
    }
}

/// A simulated virtio-net PCI function with its device thread.
pub struct SimNic {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    link_name: String,
}

impl SimNic {
    /// A function configured by `cfg` whose port is plugged into `link`.
    pub fn new(mut cfg: SimConfig, link: Box<dyn Link>) -> io::Result<Self> {
        let most = SIM_MAX_PAIRS - u16::from(cfg.control_queue);
        cfg.max_pairs = cfg.max_pairs.clamp(1, most);
        if cfg.control_queue {
            cfg.features |= VIRTIO_NET_F_CTRL_VQ;
        }
        cfg.msix_vectors = cfg.msix_vectors.min(2048);
        if !cfg.queue_max_size.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "queue_max_size must be a power of two",
            ));
        }
        let link_name = link.describe();
        let shared = Arc::new(Shared::new(cfg, link)?);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sim-nic".into())
            .spawn(move || device::run(s))?;
        Ok(SimNic {
            shared,
            thread: Mutex::new(Some(thread)),
            link_name,
        })
    }

    /// A function with the default configuration on a loopback link.
    pub fn loopback(cfg: SimConfig) -> io::Result<Self> {
        Self::new(cfg, Box::new(LoopbackLink::new()))
    }

    /// IOMMU faults recorded so far (DMA outside mapped memory or without bus master).
    pub fn dma_faults(&self) -> u64 {
        self.shared.dma.faults()
    }

    /// The last IOMMU fault.
    pub fn last_dma_fault(&self) -> Option<DmaFault> {
        self.shared.dma.last_fault()
    }

    /// DMA-mapped ranges (iova, size), sorted.
    pub fn dma_mappings(&self) -> Vec<(u64, u64)> {
        self.shared.dma.mappings()
    }

    /// The virtio device status register.
    pub fn device_status(&self) -> u8 {
        lock(&self.shared.state).status
    }

    /// Feature bits the driver wrote.
    pub fn driver_features(&self) -> u64 {
        lock(&self.shared.state).driver_features
    }

    /// Whether queue `q` is enabled (running).
    pub fn queue_enabled(&self, q: u16) -> bool {
        lock(&self.shared.state)
            .queues
            .get(usize::from(q))
            .is_some_and(|q| q.ring.is_some())
    }

    /// How many times the whole MSI-X table was routed (`set_msix`); single vectors
    /// changed with `set_msix_vector` do not count.
    pub fn msix_routings(&self) -> u64 {
        self.shared.counters.msix_routings.load(Ordering::Relaxed)
    }

    /// Number of MSI-X vectors currently routed to eventfds.
    pub fn msix_routed(&self) -> usize {
        lock(&self.shared.msix).len()
    }

    /// Frames transmitted onto the link.
    pub fn tx_frames(&self) -> u64 {
        self.shared.counters.tx_frames.load(Ordering::Relaxed)
    }

    /// Frames delivered into RX buffers.
    pub fn rx_frames(&self) -> u64 {
        self.shared.counters.rx_frames.load(Ordering::Relaxed)
    }

    /// Frames dropped on receive (no room, too large, device not running).
    pub fn rx_dropped(&self) -> u64 {
        self.shared.counters.rx_dropped.load(Ordering::Relaxed)
    }

    /// Doorbell writes seen (through the BAR and through mapped doorbell pages).
    pub fn doorbells(&self) -> u64 {
        self.shared.counters.doorbells.load(Ordering::Relaxed)
    }

    /// Whether a doorbell page was handed out, so that the device thread watches them.
    pub fn watching_doorbell_pages(&self) -> bool {
        self.shared
            .pages
            .as_ref()
            .is_some_and(|p| p.exported.load(Ordering::SeqCst))
    }

    /// Doorbell writes that came through a mapped doorbell page (a host notifier).
    pub fn page_doorbells(&self) -> u64 {
        self.shared.counters.page_doorbells.load(Ordering::Relaxed)
    }

    /// Takes the port's link down or up: the device config's `status` follows and the
    /// config interrupt (vector `msix_config`) fires on a change.
    pub fn set_link(&self, up: bool) {
        self.shared.set_link(up);
    }

    /// Queue pairs the device serves now: the count the driver set with
    /// VQ_PAIRS_SET while MQ and CTRL_VQ are negotiated, else every pair.
    pub fn pairs_in_use(&self) -> u16 {
        multiqueue::pairs_in_use(&self.shared, &lock(&self.shared.state))
    }

    /// Commands taken from the control queue.
    pub fn control_commands(&self) -> u64 {
        self.shared
            .counters
            .control_commands
            .load(Ordering::Relaxed)
    }

    /// Function-level resets performed.
    pub fn function_resets(&self) -> u64 {
        self.shared.counters.function_resets.load(Ordering::Relaxed)
    }

    /// Description of the link.
    pub fn link(&self) -> &str {
        &self.link_name
    }
}

impl Drop for SimNic {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.shared.wake.write(1);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

fn out_of_range(what: &str, off: u64, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} access at {off:#x} of {len} bytes is out of range"),
    )
}

impl PciFunction for SimNic {
    fn describe(&self) -> String {
        format!("sim ({})", self.link_name)
    }

    fn config_read(&self, offset: u16, buf: &mut [u8]) -> io::Result<()> {
        let off = usize::from(offset);
        if off + buf.len() > layout::CONFIG_SIZE {
            return Err(out_of_range("config", off as u64, buf.len()));
        }
        let st = lock(&self.shared.state);
        buf.copy_from_slice(&st.config[off..off + buf.len()]);
        Ok(())
    }

    fn config_write(&self, offset: u16, data: &[u8]) -> io::Result<()> {
        let off = usize::from(offset);
        if off + data.len() > layout::CONFIG_SIZE {
            return Err(out_of_range("config", off as u64, data.len()));
        }
        let mut st = lock(&self.shared.state);
        for (i, b) in data.iter().enumerate() {
            if layout::config_writable(off + i) {
                st.config[off + i] = *b;
            }
        }
        let cmd = u16::from_le_bytes([st.config[4], st.config[5]]);
        self.shared
            .dma
            .set_bus_master(cmd & cfg::COMMAND_BUS_MASTER != 0);
        Ok(())
    }

    fn bar_read(&self, bar: u8, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_width(buf.len())?;
        if bar == layout::MSIX_BAR {
            buf.fill(0);
            return Ok(());
        }
        if bar != layout::VIRTIO_BAR || offset + buf.len() as u64 > layout::BAR4_SIZE {
            return Err(out_of_range(&format!("BAR{bar}"), offset, buf.len()));
        }
        let sh = &self.shared;
        let mut st = lock(&sh.state);
        let v: u32 = match offset {
            o if o < layout::ISR => sh.common_read(&st, o - layout::COMMON, buf.len()),
            o if o < layout::DEVICE => {
                let v = if o == layout::ISR {
                    u32::from(st.isr)
                } else {
                    0
                };
                st.isr = 0;
                v
            }
            o if o < layout::RING_STATE => {
                drop(st);
                sh.device_cfg_read(o - layout::DEVICE, buf);
                return Ok(());
            }
            o if o < layout::NOTIFY && sh.cfg.ring_state => {
                let rel = o - layout::RING_STATE;
                sh.ring_state_read(&st, (rel / 4) as usize) >> (8 * (rel % 4))
            }
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        buf.copy_from_slice(&bytes[..buf.len()]);
        Ok(())
    }

    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> io::Result<()> {
        check_width(data.len())?;
        if bar == layout::MSIX_BAR {
            return Ok(());
        }
        if bar != layout::VIRTIO_BAR || offset + data.len() as u64 > layout::BAR4_SIZE {
            return Err(out_of_range(&format!("BAR{bar}"), offset, data.len()));
        }
        let mut b = [0u8; 4];
        b[..data.len()].copy_from_slice(data);
        let v = u32::from_le_bytes(b);
        let sh = &self.shared;
        match offset {
            o if o >= layout::NOTIFY => {
                // Doorbells never wait for the device lock (the kick relay's hot path).
                let q = (o - layout::NOTIFY) / u64::from(sh.cfg.notify_multiplier());
                sh.doorbell(q as u16);
            }
            o if o < layout::ISR => {
                let mut st = lock(&sh.state);
                sh.common_write(&mut st, o - layout::COMMON, v);
            }
            o if o >= layout::RING_STATE && sh.cfg.ring_state && data.len() == 4 => {
                let mut st = lock(&sh.state);
                sh.ring_state_write(&mut st, ((o - layout::RING_STATE) / 4) as usize, v);
            }
            _ => {}
        }
        Ok(())
    }

    fn bar_mapped(&self, _bar: u8) -> bool {
        false
    }

    unsafe fn dma_map(&self, iova: u64, size: u64, host: *mut u8) -> io::Result<()> {
        self.shared.dma.map(iova, size, host)
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> io::Result<()> {
        self.shared.dma.unmap(iova, size)
    }

    fn msix_vectors(&self) -> u16 {
        self.shared.cfg.msix_vectors
    }

    fn set_msix(&self, fds: &[&EventFd]) -> io::Result<()> {
        if fds.len() > usize::from(self.shared.cfg.msix_vectors) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} eventfds for {} MSI-X vectors",
                    fds.len(),
                    self.shared.cfg.msix_vectors
                ),
            ));
        }
        let table = fds
            .iter()
            .map(|fd| fd.try_clone())
            .collect::<io::Result<Vec<_>>>()?;
        *lock(&self.shared.msix) = table;
        self.shared
            .counters
            .msix_routings
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn set_msix_vector(&self, vector: u16, fd: &EventFd) -> io::Result<()> {
        let mut table = lock(&self.shared.msix);
        let routed = table.len();
        let slot = table.get_mut(usize::from(vector)).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("MSI-X vector {vector} is not routed ({routed} are)"),
            )
        })?;
        *slot = fd.try_clone()?;
        Ok(())
    }

    fn clear_msix(&self) -> io::Result<()> {
        lock(&self.shared.msix).clear();
        Ok(())
    }

    fn reset(&self) -> io::Result<ResetOutcome> {
        if !self.shared.cfg.flr {
            return Ok(ResetOutcome::Unsupported);
        }
        let mut st = lock(&self.shared.state);
        self.shared.device_reset(&mut st);
        self.shared
            .counters
            .function_resets
            .fetch_add(1, Ordering::Relaxed);
        Ok(ResetOutcome::Done)
    }

    fn doorbell_page(&self, bar: u8, offset: u64) -> Result<NotifyArea, String> {
        let pages = self
            .shared
            .pages
            .as_ref()
            .ok_or("its doorbells share a page (notify_off_multiplier 4)")?;
        let page = u64::from(layout::PAGE_MULTIPLIER);
        if bar != layout::VIRTIO_BAR || offset < layout::NOTIFY || !offset.is_multiple_of(page) {
            return Err(format!(
                "BAR{bar} offset {offset:#x} is not a doorbell page"
            ));
        }
        let q = (offset - layout::NOTIFY) / page;
        if q >= u64::from(self.shared.cfg.num_queues()) {
            return Err(format!(
                "BAR{bar} offset {offset:#x} is past the last doorbell"
            ));
        }
        if !pages.exported.swap(true, Ordering::SeqCst) {
            let _ = self.shared.wake.write(1);
        }
        Ok(NotifyArea {
            file: pages.file.clone(),
            offset: q * page,
            size: page,
        })
    }

    fn vector_fired(&self, vector: u16) -> Option<u64> {
        Some(
            self.shared
                .fired
                .get(usize::from(vector))
                .map_or(0, |c| c.load(Ordering::Relaxed)),
        )
    }
}
