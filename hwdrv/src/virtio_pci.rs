//! The virtio 1.x modern PCI transport, driver side (virtio 1.3 section 4.1), over a
//! [`PciFunction`]: the same code drives the simulated NIC and a VFIO function.
//!
//! The driver only knows registers; what goes into them (guest ring addresses, which
//! vector serves which queue) is the offload datapath's business.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::pci::{ConfigSnapshot, PciFunction, VirtioCap};
use crate::spec::{self, cap, common as cc, status};
use vdpa::features::feature_names;
use vdpa::virtio::features::{
    VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS,
};
use vdpa::virtio::net_config as net_cfg;

/// How long a device may take to complete a reset (QEMU under TCG behind VFIO
/// needed ~115 ms for an FLR; a virtio reset is usually immediate).
pub(crate) const RESET_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the driver could not do what it was asked.
#[derive(Debug, Error)]
pub enum VirtioError {
    /// A register or configuration access failed.
    #[error("{what}")]
    Io {
        /// Which access.
        what: String,
        /// The error of the PCI function.
        #[source]
        source: io::Error,
    },
    /// The function is not a virtio 1.x modern device, or lacks a required structure.
    #[error("not a usable virtio 1.x modern device: {0}")]
    NotModern(NotModern),
    /// The device status did not read 0 within `RESET_TIMEOUT` (2 s).
    #[error("device did not complete reset within {timeout:?} (status reads {status:#x})")]
    ResetTimeout {
        /// The bound waited.
        timeout: Duration,
        /// The last status read.
        status: u8,
    },
    /// FEATURES_OK did not stick: the device refused the feature set.
    #[error("device refused features {bits:#x} {names:?} (FEATURES_OK not set on read-back)")]
    FeaturesRejected {
        /// The bits written.
        bits: u64,
        /// Their names.
        names: Vec<&'static str>,
    },
    /// An MSI-X vector assignment read back as something else (0xffff: refused).
    #[error("device refused MSI-X vector {vector} for {what} (read back {read:#x})")]
    VectorRejected {
        /// The configuration change or a queue.
        what: VectorFor,
        /// The vector written.
        vector: u16,
        /// The value read back.
        read: u16,
    },
    /// A queue-level problem (missing, too small, reset not completing).
    #[error("queue {queue}: {what}")]
    Queue {
        /// Device queue index.
        queue: u16,
        /// What went wrong.
        what: QueueProblem,
    },
    /// The device raised DEVICE_NEEDS_RESET or FAILED.
    #[error("device reports an error (status {0:#x}: DEVICE_NEEDS_RESET)")]
    NeedsReset(u8),
    /// The device cannot do what was asked (e.g. stop one queue).
    #[error("{0}")]
    Unsupported(Unsupported),
}

/// Why a function is not a usable virtio 1.x modern device.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NotModern {
    /// The vendor is not virtio's.
    #[error("vendor {found:#06x} is not virtio ({expected:#06x})")]
    Vendor {
        /// The function's vendor id.
        found: u16,
        /// The virtio vendor id.
        expected: u16,
    },
    /// A virtio capability the driver needs is missing.
    #[error("no {0} capability")]
    MissingCapability(&'static str),
    /// The common configuration structure is shorter than virtio 1.x's.
    #[error("common configuration is {0} bytes, needs 56")]
    CommonTooShort(u32),
    /// The device does not offer VIRTIO_F_VERSION_1.
    #[error("VERSION_1 is not offered")]
    NoVersion1,
}

/// Whose MSI-X vector was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorFor {
    /// The configuration-change vector (`msix_config`).
    Config,
    /// A queue's vector (`queue_msix_vector`).
    Queue(u16),
}

impl std::fmt::Display for VectorFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config => write!(f, "config"),
            Self::Queue(q) => write!(f, "queue {q}"),
        }
    }
}

/// What went wrong with one queue.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QueueProblem {
    /// The index is beyond the device's queues.
    #[error("no such queue (the device has {num_queues})")]
    NoSuchQueue {
        /// Queues the device has.
        num_queues: u16,
    },
    /// The queue's maximum size is 0.
    #[error("not available (size 0)")]
    NotAvailable,
    /// The ring size is not a power of two or above the queue's maximum.
    #[error("ring size {size} does not fit the device (maximum {max}, power of two)")]
    BadSize {
        /// The size asked for.
        size: u16,
        /// The queue's maximum.
        max: u16,
    },
    /// The queue is already enabled.
    #[error("already enabled")]
    AlreadyEnabled,
    /// The ring must resume at a nonzero index and the device has no ring state.
    #[error(
        "cannot resume at avail {avail} / used {used}: a virtio-pci device starts every \
         queue at index 0 and this one has no ring-state registers"
    )]
    CannotResume {
        /// Avail index to resume at.
        avail: u16,
        /// Used index to resume at.
        used: u16,
    },
    /// The queue's doorbell lies outside the notify structure.
    #[error("doorbell offset {offset:#x} outside the notify area ({length:#x} bytes)")]
    DoorbellOutside {
        /// Offset of the doorbell in the notify structure.
        offset: u64,
        /// Length of the notify structure.
        length: u32,
    },
    /// `queue_enable` did not read back 1.
    #[error("queue_enable did not read back 1")]
    NotEnabled,
    /// A queue stop did not complete in time.
    #[error("did not stop within {0:?}")]
    StopTimeout(Duration),
}

/// What a device cannot do.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Unsupported {
    /// Stopping one queue needs VIRTIO_F_RING_RESET or ring-state registers.
    #[error(
        "queue {0} cannot be stopped alone: the device has neither \
         VIRTIO_F_RING_RESET nor ring-state registers"
    )]
    StopOneQueue(u16),
}

type Result<T> = std::result::Result<T, VirtioError>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> VirtioError {
    let what = what.into();
    move |source| VirtioError::Io { what, source }
}

/// A virtio structure inside a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRegion {
    /// BAR index.
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u64,
    /// Length.
    pub length: u32,
}

impl From<&VirtioCap> for BarRegion {
    fn from(c: &VirtioCap) -> Self {
        BarRegion {
            bar: c.bar,
            offset: u64::from(c.offset),
            length: c.length,
        }
    }
}

/// Where to write to notify one queue: the queue index, as a 16-bit value, to
/// `notify.offset + queue_notify_off * notify_off_multiplier` in the notify BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Doorbell {
    /// Device queue index (the value written).
    pub queue: u16,
    /// BAR index.
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u64,
}

impl Doorbell {
    /// Rings it: the one way vdpad tells the NIC about new buffers (the kick relay per
    /// kick, the datapath once after the rings changed hands).
    pub fn ring(&self, pci: &dyn PciFunction) -> io::Result<()> {
        pci.bar_write16(self.bar, self.offset, self.queue)
    }
}

/// How to program one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSetup {
    /// Ring size (the frontend's; must not exceed the device maximum).
    pub size: u16,
    /// Descriptor table (device address = guest-physical).
    pub desc: u64,
    /// Driver (avail) ring.
    pub driver: u64,
    /// Device (used) ring.
    pub device: u64,
    /// MSI-X vector for this queue.
    pub vector: u16,
    /// Ring state to resume from (last avail, last used); needs the ring-state
    /// extension unless both are 0.
    pub resume: Option<(u16, u16)>,
}

/// The virtio-net device configuration (only fields whose feature is offered).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// MAC address (VIRTIO_NET_F_MAC).
    pub mac: Option<[u8; 6]>,
    /// Link status (VIRTIO_NET_F_STATUS).
    pub status: Option<u16>,
    /// Maximum queue pairs (VIRTIO_NET_F_MQ), else 1.
    pub max_pairs: u16,
    /// MTU (VIRTIO_NET_F_MTU).
    pub mtu: Option<u16>,
}

/// A virtio modern PCI device found on a function.
pub struct VirtioPci {
    pci: Arc<dyn PciFunction>,
    ids: (u16, u16),
    common: BarRegion,
    isr: BarRegion,
    notify: BarRegion,
    notify_multiplier: u32,
    device: Option<BarRegion>,
    ring_state: Option<BarRegion>,
    has_pci_cfg: bool,
    num_queues: u16,
    device_features: u64,
    negotiated: u64,
    msix_vectors: u16,
}

impl std::fmt::Debug for VirtioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("pci", &self.pci.describe())
            .field("num_queues", &self.num_queues)
            .field(
                "device_features",
                &format_args!("{:#x}", self.device_features),
            )
            .finish()
    }
}

impl VirtioPci {
    /// Walks the capabilities of `pci` and reads what the device offers. Does not
    /// change the device state.
    pub fn probe(pci: Arc<dyn PciFunction>) -> Result<Self> {
        let snap = ConfigSnapshot::read(pci.as_ref()).map_err(io_err("reading config space"))?;
        let ids = (snap.vendor_id(), snap.device_id());
        if ids.0 != spec::VIRTIO_VENDOR_ID {
            return Err(VirtioError::NotModern(NotModern::Vendor {
                found: ids.0,
                expected: spec::VIRTIO_VENDOR_ID,
            }));
        }
        let caps = snap.virtio_caps();
        let find = |t: u8| caps.iter().find(|c| c.cfg_type == t && c.bar < 6);
        let missing = |n| VirtioError::NotModern(NotModern::MissingCapability(n));
        let common = find(cap::COMMON).ok_or_else(|| missing("COMMON_CFG"))?;
        let notify = find(cap::NOTIFY).ok_or_else(|| missing("NOTIFY_CFG"))?;
        // Required of a modern device, though this driver never reads it (MSI-X only).
        let isr = find(cap::ISR).ok_or_else(|| missing("ISR_CFG"))?;
        if common.length < 0x38 {
            return Err(VirtioError::NotModern(NotModern::CommonTooShort(
                common.length,
            )));
        }
        let mut dev = VirtioPci {
            msix_vectors: pci.msix_vectors(),
            pci,
            ids,
            common: common.into(),
            isr: isr.into(),
            notify: notify.into(),
            notify_multiplier: notify.notify_off_multiplier,
            device: find(cap::DEVICE).map(Into::into),
            ring_state: find(cap::VDPAD_RING_STATE).map(Into::into),
            has_pci_cfg: find(cap::PCI_CFG).is_some(),
            num_queues: 0,
            device_features: 0,
            negotiated: 0,
        };
        dev.num_queues = dev.read16(cc::NUM_QUEUES, "num_queues")?;
        dev.device_features = dev.read_features(cc::DEVICE_FEATURE_SELECT, cc::DEVICE_FEATURE)?;
        if dev.device_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(VirtioError::NotModern(NotModern::NoVersion1));
        }
        tracing::debug!(pci = %dev.pci.describe(), num_queues = dev.num_queues,
            features = format_args!("{:#x}", dev.device_features),
            notify_multiplier = dev.notify_multiplier, ring_state = dev.ring_state.is_some(),
            "virtio-pci: probed");
        Ok(dev)
    }

    fn read8(&self, off: u64, what: &str) -> Result<u8> {
        self.pci
            .bar_read8(self.common.bar, self.common.offset + off)
            .map_err(io_err(format!("reading {what}")))
    }

    fn read16(&self, off: u64, what: &str) -> Result<u16> {
        self.pci
            .bar_read16(self.common.bar, self.common.offset + off)
            .map_err(io_err(format!("reading {what}")))
    }

    fn read32(&self, off: u64, what: &str) -> Result<u32> {
        self.pci
            .bar_read32(self.common.bar, self.common.offset + off)
            .map_err(io_err(format!("reading {what}")))
    }

    fn write8(&self, off: u64, v: u8, what: &str) -> Result<()> {
        self.pci
            .bar_write8(self.common.bar, self.common.offset + off, v)
            .map_err(io_err(format!("writing {what}")))
    }

    fn write16(&self, off: u64, v: u16, what: &str) -> Result<()> {
        self.pci
            .bar_write16(self.common.bar, self.common.offset + off, v)
            .map_err(io_err(format!("writing {what}")))
    }

    fn write32(&self, off: u64, v: u32, what: &str) -> Result<()> {
        self.pci
            .bar_write32(self.common.bar, self.common.offset + off, v)
            .map_err(io_err(format!("writing {what}")))
    }

    fn write64(&self, off: u64, v: u64, what: &str) -> Result<()> {
        self.write32(off, v as u32, what)?;
        self.write32(off + 4, (v >> 32) as u32, what)
    }

    fn read_features(&self, select: u64, window: u64) -> Result<u64> {
        self.write32(select, 0, "feature select")?;
        let lo = self.read32(window, "features 0..31")?;
        self.write32(select, 1, "feature select")?;
        let hi = self.read32(window, "features 32..63")?;
        Ok(u64::from(lo) | (u64::from(hi) << 32))
    }

    /// Vendor and device id.
    pub(crate) fn ids(&self) -> (u16, u16) {
        self.ids
    }

    /// Features the device offers.
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// Number of virtqueues.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// MSI-X vectors of the function.
    pub(crate) fn msix_vectors(&self) -> u16 {
        self.msix_vectors
    }

    /// Whether the vdpad ring-state extension is present (queues can resume at any
    /// index, and stop individually with queue_enable = 0).
    pub fn has_ring_state(&self) -> bool {
        self.ring_state.is_some()
    }

    /// Whether the PCI_CFG access window capability is present.
    pub fn has_pci_cfg(&self) -> bool {
        self.has_pci_cfg
    }

    /// `notify_off_multiplier` of the NOTIFY capability.
    pub fn notify_multiplier(&self) -> u32 {
        self.notify_multiplier
    }

    /// Whether every queue's doorbell sits alone on a page, so that the page can be
    /// mapped into a guest (a host notifier) without handing it anything else: the
    /// notify area page-aligned, `notify_off_multiplier` a multiple of the page size,
    /// and no other virtio structure on the notify area's pages. Otherwise, why not.
    pub fn doorbells_on_own_pages(&self) -> std::result::Result<(), String> {
        const PAGE: u64 = 4096;
        let mult = u64::from(self.notify_multiplier);
        if mult == 0 || !mult.is_multiple_of(PAGE) {
            return Err(format!(
                "notify_off_multiplier {mult} puts several doorbells on one page (QEMU's \
                 virtio-net-pci needs page-per-vq=on)"
            ));
        }
        if !self.notify.offset.is_multiple_of(PAGE) {
            return Err(format!(
                "the notify area at BAR{}+{:#x} is not page-aligned",
                self.notify.bar, self.notify.offset
            ));
        }
        let pages = |r: &BarRegion| {
            let start = r.offset / PAGE * PAGE;
            (
                start,
                (r.offset + u64::from(r.length)).div_ceil(PAGE) * PAGE,
            )
        };
        let (n0, n1) = pages(&self.notify);
        let others = [
            Some(self.common),
            Some(self.isr),
            self.device,
            self.ring_state,
        ];
        for r in others.into_iter().flatten() {
            let (o0, o1) = pages(&r);
            if r.bar == self.notify.bar && o0 < n1 && n0 < o1 {
                return Err(format!(
                    "another virtio structure (BAR{}+{:#x}) shares a page with the doorbells",
                    r.bar, r.offset
                ));
            }
        }
        Ok(())
    }

    /// The device status register.
    pub(crate) fn status(&self) -> Result<u8> {
        self.read8(cc::DEVICE_STATUS, "device_status")
    }

    fn add_status(&self, bits: u8) -> Result<u8> {
        let s = self.status()?;
        self.write8(cc::DEVICE_STATUS, s | bits, "device_status")?;
        self.status()
    }

    /// Resets the device: writes 0 and polls until the status reads 0, bounded by
    /// `RESET_TIMEOUT` (2 s). Afterwards the device does not touch memory any more.
    pub fn reset(&mut self) -> Result<()> {
        self.write8(cc::DEVICE_STATUS, 0, "device_status")?;
        let start = Instant::now();
        let mut pause = Duration::from_micros(100);
        loop {
            let s = self.status()?;
            if s == 0 {
                self.negotiated = 0;
                return Ok(());
            }
            if start.elapsed() > RESET_TIMEOUT {
                return Err(VirtioError::ResetTimeout {
                    timeout: RESET_TIMEOUT,
                    status: s,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// Resets the device, then ACKNOWLEDGE, DRIVER, feature negotiation and
    /// FEATURES_OK with read-back. Writes `wanted & device features`; returns the
    /// accepted set.
    pub fn initialize(&mut self, wanted: u64) -> Result<u64> {
        self.reset()?;
        self.add_status(status::ACKNOWLEDGE)?;
        self.add_status(status::DRIVER)?;
        let bits = wanted & self.device_features;
        self.write32(cc::DRIVER_FEATURE_SELECT, 0, "driver_feature_select")?;
        self.write32(cc::DRIVER_FEATURE, bits as u32, "driver_feature")?;
        self.write32(cc::DRIVER_FEATURE_SELECT, 1, "driver_feature_select")?;
        self.write32(cc::DRIVER_FEATURE, (bits >> 32) as u32, "driver_feature")?;
        let s = self.add_status(status::FEATURES_OK)?;
        if s & status::FEATURES_OK == 0 {
            return Err(VirtioError::FeaturesRejected {
                bits,
                names: feature_names(bits),
            });
        }
        self.negotiated = bits;
        // QEMU's virtio-net shows the queues of pairs beyond the first only once MQ
        // is negotiated (and drops them again at reset): count them again.
        self.num_queues = self.read16(cc::NUM_QUEUES, "num_queues")?;
        Ok(bits)
    }

    /// Assigns the configuration-change vector (read back; NO_VECTOR = refused).
    pub fn set_config_vector(&self, vector: u16) -> Result<()> {
        self.write16(cc::MSIX_CONFIG, vector, "msix_config")?;
        let read = self.read16(cc::MSIX_CONFIG, "msix_config")?;
        if read != vector {
            return Err(VirtioError::VectorRejected {
                what: VectorFor::Config,
                vector,
                read,
            });
        }
        Ok(())
    }

    fn select(&self, queue: u16) -> Result<()> {
        if queue >= self.num_queues {
            return Err(VirtioError::Queue {
                queue,
                what: QueueProblem::NoSuchQueue {
                    num_queues: self.num_queues,
                },
            });
        }
        self.write16(cc::QUEUE_SELECT, queue, "queue_select")
    }

    /// Largest ring size of `queue` (0: the queue is not available).
    pub fn queue_max_size(&self, queue: u16) -> Result<u16> {
        self.select(queue)?;
        self.read16(cc::QUEUE_SIZE, "queue_size")
    }

    /// Programs `queue` (size, ring addresses, vector with read-back, ring state) but
    /// does not enable it. Returns its doorbell.
    pub fn program_queue(&self, queue: u16, q: &QueueSetup) -> Result<Doorbell> {
        let max = self.queue_max_size(queue)?;
        let fail = |what| VirtioError::Queue { queue, what };
        if max == 0 {
            return Err(fail(QueueProblem::NotAvailable));
        }
        if !q.size.is_power_of_two() || q.size > max {
            return Err(fail(QueueProblem::BadSize { size: q.size, max }));
        }
        if self.read16(cc::QUEUE_ENABLE, "queue_enable")? != 0 {
            return Err(fail(QueueProblem::AlreadyEnabled));
        }
        self.write16(cc::QUEUE_SIZE, q.size, "queue_size")?;
        self.write64(cc::QUEUE_DESC, q.desc, "queue_desc")?;
        self.write64(cc::QUEUE_DRIVER, q.driver, "queue_driver")?;
        self.write64(cc::QUEUE_DEVICE, q.device, "queue_device")?;
        self.write16(cc::QUEUE_MSIX_VECTOR, q.vector, "queue_msix_vector")?;
        let read = self.read16(cc::QUEUE_MSIX_VECTOR, "queue_msix_vector")?;
        if read != q.vector {
            return Err(VirtioError::VectorRejected {
                what: VectorFor::Queue(queue),
                vector: q.vector,
                read,
            });
        }
        match (q.resume, self.ring_state) {
            (Some((avail, used)), Some(rs)) => {
                let word = u32::from(avail) | (u32::from(used) << 16);
                self.pci
                    .bar_write32(rs.bar, rs.offset + 4 * u64::from(queue), word)
                    .map_err(io_err(format!("writing ring state of queue {queue}")))?;
            }
            (Some((0, 0)), None) | (None, _) => {}
            (Some((avail, used)), None) => {
                return Err(fail(QueueProblem::CannotResume { avail, used }))
            }
        }
        let off = self.read16(cc::QUEUE_NOTIFY_OFF, "queue_notify_off")?;
        let offset = u64::from(off) * u64::from(self.notify_multiplier);
        if offset + 2 > u64::from(self.notify.length) {
            return Err(fail(QueueProblem::DoorbellOutside {
                offset,
                length: self.notify.length,
            }));
        }
        Ok(Doorbell {
            queue,
            bar: self.notify.bar,
            offset: self.notify.offset + offset,
        })
    }

    /// Enables a programmed queue.
    pub fn enable_queue(&self, queue: u16) -> Result<()> {
        self.select(queue)?;
        self.write16(cc::QUEUE_ENABLE, 1, "queue_enable")?;
        if self.read16(cc::QUEUE_ENABLE, "queue_enable")? != 1 {
            return Err(VirtioError::Queue {
                queue,
                what: QueueProblem::NotEnabled,
            });
        }
        Ok(())
    }

    /// Stops one queue while the device keeps running: a queue reset with
    /// VIRTIO_F_RING_RESET (poll until `queue_reset` reads 1), else queue_enable = 0
    /// on a device with ring-state registers (poll until it reads 0, as ifcvf does).
    /// A plain virtio-pci device cannot stop one queue: [`VirtioError::Unsupported`].
    pub fn stop_queue(&self, queue: u16) -> Result<()> {
        self.select(queue)?;
        let (reg, val, done) = if self.negotiated & VIRTIO_F_RING_RESET != 0 {
            (cc::QUEUE_RESET, 1, 1)
        } else if self.ring_state.is_some() {
            (cc::QUEUE_ENABLE, 0, 0)
        } else {
            return Err(VirtioError::Unsupported(Unsupported::StopOneQueue(queue)));
        };
        self.write16(reg, val, "queue stop")?;
        let start = Instant::now();
        while self.read16(reg, "queue stop")? != done {
            if start.elapsed() > RESET_TIMEOUT {
                return Err(VirtioError::Queue {
                    queue,
                    what: QueueProblem::StopTimeout(RESET_TIMEOUT),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Whether one queue can be enabled or stopped while the device runs.
    pub(crate) fn per_queue_control(&self) -> bool {
        self.negotiated & VIRTIO_F_RING_RESET != 0
    }

    /// Sets DRIVER_OK and checks that the device did not flag an error.
    pub fn driver_ok(&self) -> Result<()> {
        let s = self.add_status(status::DRIVER_OK)?;
        if s & (status::DEVICE_NEEDS_RESET | status::FAILED) != 0 || s & status::DRIVER_OK == 0 {
            return Err(VirtioError::NeedsReset(s));
        }
        Ok(())
    }

    /// Whether the device flagged DEVICE_NEEDS_RESET.
    pub fn needs_reset(&self) -> Result<bool> {
        Ok(self.status()? & status::DEVICE_NEEDS_RESET != 0)
    }

    /// Reads the virtio-net device configuration, retrying while
    /// `config_generation` changes underneath (at most 3 times).
    pub fn net_config(&self) -> Result<NetConfig> {
        let Some(dev) = self.device else {
            return Ok(NetConfig {
                max_pairs: 1,
                ..Default::default()
            });
        };
        let f = self.device_features;
        let rd8 = |o: usize| {
            self.pci
                .bar_read8(dev.bar, dev.offset + o as u64)
                .map_err(io_err("reading device config"))
        };
        let rd16 = |o: usize| {
            self.pci
                .bar_read16(dev.bar, dev.offset + o as u64)
                .map_err(io_err("reading device config"))
        };
        let mut last = NetConfig::default();
        for _ in 0..3 {
            let gen = self.read8(cc::CONFIG_GENERATION, "config_generation")?;
            let mut c = NetConfig {
                max_pairs: 1,
                ..Default::default()
            };
            if f & VIRTIO_NET_F_MAC != 0 {
                let mut mac = [0u8; 6];
                for (i, b) in mac.iter_mut().enumerate() {
                    *b = rd8(net_cfg::MAC_OFFSET + i)?;
                }
                c.mac = Some(mac);
            }
            if f & VIRTIO_NET_F_STATUS != 0 {
                c.status = Some(rd16(net_cfg::STATUS_OFFSET)?);
            }
            if f & VIRTIO_NET_F_MQ != 0 {
                c.max_pairs = rd16(net_cfg::MAX_PAIRS_OFFSET)?.max(1);
            }
            if f & VIRTIO_NET_F_MTU != 0 {
                c.mtu = Some(rd16(net_cfg::MTU_OFFSET)?);
            }
            last = c;
            if self.read8(cc::CONFIG_GENERATION, "config_generation")? == gen {
                return Ok(c);
            }
        }
        Ok(last)
    }
}
