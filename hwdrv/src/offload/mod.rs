//! The offload [`Datapath`]: the guest's virtqueues are programmed into a virtio-net
//! NIC, which moves packets by DMA straight between guest memory and the wire.
//!
//! Bring-up (docs/offload.md, "Bring-up": the order of DPDK's ifcvf driver): DMA-map
//! every guest region (IOVA = GPA) → reset, ACK, DRIVER, features, FEATURES_OK → route
//! MSI-X (vector 0 = config, vector i+1 = call eventfd of ring i, the full list every
//! time) → program and enable the queues → DRIVER_OK → kick relay → one kick and one
//! call per ring so that nothing raised during the switch is lost.
//!
//! Pairs start one at a time. A pair added while others run is enabled live when the
//! NIC negotiated VIRTIO_F_RING_RESET; otherwise the NIC is reset and every running
//! pair is reprogrammed with it, which needs either the ring-state registers (resume
//! at any index) or rings that have not completed anything yet. A ring that must
//! resume at a nonzero index on a NIC without ring-state registers is refused with a
//! [`DatapathError`] (the daemon then falls back to software).

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::{error, info, warn};
use vdpa::virtio::features::{VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ, VIRTIO_NET_F_STATUS};
use vdpa::virtio::net_config::VIRTIO_NET_S_LINK_UP;
use vdpa::{
    CountProbe, Datapath, DatapathError, GuestMemory, NotifyArea, PairPosition, QueueCounters,
    QueuePairConfig, RingConfig, StartFailure,
};
use vdpad_config::{DeviceConfig, Frontend};
use vmm_sys_util::eventfd::EventFd;

mod control_queue;
mod dma;
mod rings;
mod vectors;

use crate::capabilities::{NicCapabilities, Unsuitable};
use crate::kick_relay::{KickRelay, KickTarget, MemoryWatch, RingSet};
use crate::pci::PciFunction;
use crate::used_tally::UsedTally;
use crate::virtio_pci::{QueueSetup, VirtioError, VirtioPci};
use control_queue::ControlQueue;
use dma::DmaMapping;
use rings::RingRecord;
use vectors::{vector_of, Vectors};

/// Why an offload datapath could not be created for a NIC.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    /// The function is not a usable virtio-net device, or talking to it failed.
    #[error("probing {pci}")]
    Probe {
        /// The function.
        pci: String,
        /// What failed.
        #[source]
        source: VirtioError,
    },
    /// The NIC cannot serve the requested configuration.
    #[error("{pci} cannot offload device {device}: {}", join(reasons))]
    Unsuitable {
        /// The function.
        pci: String,
        /// The device name.
        device: String,
        /// Every reason.
        reasons: Vec<Unsuitable>,
    },
    /// Enabling DMA (bus mastering) failed.
    #[error("enabling bus mastering on {pci}")]
    BusMaster {
        /// The function.
        pci: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The reasons, separated by "; ".
fn join(reasons: &[Unsuitable]) -> String {
    let all: Vec<String> = reasons.iter().map(ToString::to_string).collect();
    all.join("; ")
}

fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> DatapathError {
    DatapathError::backend("offload NIC", e)
}

/// The hardware datapath of one device.
pub struct OffloadDatapath {
    name: String,
    pci: Arc<dyn PciFunction>,
    nic: VirtioPci,
    caps: NicCapabilities,
    pairs: u16,
    /// The NIC's MSI-X vectors: the config interrupt and a spare per ring.
    vectors: Vectors,
    running: BTreeMap<u16, QueuePairConfig>,
    /// Call eventfd and doorbell of every ring of a running pair.
    rings: BTreeMap<u16, RingRecord>,
    nic_features: u64,
    /// The guest memory DMA-mapped for the NIC (unmapped when dropped).
    mapped: Option<DmaMapping>,
    relay: Option<KickRelay>,
    /// Counters whose interrupt count this NIC's vectors provide, until reset.
    probed: BTreeMap<u16, Arc<QueueCounters>>,
    /// The NIC was programmed (or memory mapped) since the last reset.
    active: bool,
    /// What the addresses in the rings and the memory table are.
    addresses: Addresses,
    /// Whether each doorbell is alone on a page a frontend may map (host notifiers),
    /// or why not.
    doorbell_pages: Result<(), String>,
    /// Why a doorbell page could not be handed out was logged (once per datapath).
    page_refusal_logged: AtomicBool,
    /// vdpad's own control queue on the NIC, while pairs run on a NIC that switches
    /// pairs on through it (MQ and CTRL_VQ negotiated); dropped after every NIC reset.
    control: Option<ControlQueue>,
}

/// What the frontend's ring and buffer addresses are, and so the IOVAs the NIC uses:
/// the NIC sees exactly the addresses the driver wrote into the rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// Guest-physical addresses (vhost-user: the memory table is keyed by GPA).
    GuestPhysical,
    /// The driver's IOVAs (VDUSE: the memory table is the device's IOTLB, each entry
    /// a piece of the vhost-vdpa frontend's memory at the IOVA the driver gave it).
    DriverIova,
}

impl OffloadDatapath {
    /// An offload datapath for device `name` serving `pairs` queue pairs on `pci`.
    /// Probes the NIC, checks queue pairs and MSI-X vectors, enables bus mastering and
    /// leaves the NIC reset (status 0).
    pub fn new(name: &str, pci: Arc<dyn PciFunction>, pairs: u16) -> Result<Self, OffloadError> {
        let pci_name = pci.describe();
        let probe = |source| OffloadError::Probe {
            pci: pci_name.clone(),
            source,
        };
        let mut nic = VirtioPci::probe(pci.clone()).map_err(probe)?;
        let caps = NicCapabilities::probe(&nic).map_err(probe)?;
        let mut reasons = Vec::new();
        if pairs == 0 || pairs > caps.max_pairs {
            reasons.push(Unsuitable::PairsRequested {
                requested: pairs,
                usable: caps.max_pairs,
                why: caps.pairs_limit(),
            });
        }
        if let Err(e) = caps.check_vectors(pairs) {
            reasons.push(e);
        }
        if !reasons.is_empty() {
            return Err(OffloadError::Unsuitable {
                pci: pci_name,
                device: name.into(),
                reasons,
            });
        }
        pci.set_bus_master(true)
            .map_err(|source| OffloadError::BusMaster {
                pci: pci_name.clone(),
                source,
            })?;
        nic.reset().map_err(probe)?;
        let vectors = Vectors::new(name, pci.clone(), 2 * pairs).map_err(|e| {
            probe(VirtioError::Io {
                what: "creating eventfds".into(),
                source: e,
            })
        })?;
        info!(device = name, pci = %pci_name, features = format_args!("{:#x}", caps.features),
              max_pairs = caps.max_pairs, vectors = caps.msix_vectors,
              queue_max = caps.queue_max_size, ring_state = caps.ring_state,
              ring_reset = caps.ring_reset, "offload: NIC ready");
        let doorbell_pages = nic.doorbells_on_own_pages();
        match &doorbell_pages {
            Ok(()) => info!(device = name, pci = %pci_name,
                "offload: each doorbell is alone on its page: host notifiers offered"),
            Err(why) => info!(device = name, pci = %pci_name, why = %why,
                "offload: no host notifiers; every kick goes through the kick relay"),
        }
        Ok(OffloadDatapath {
            name: name.into(),
            pci,
            nic,
            caps,
            pairs,
            vectors,
            running: BTreeMap::new(),
            rings: BTreeMap::new(),
            nic_features: 0,
            mapped: None,
            relay: None,
            probed: BTreeMap::new(),
            active: false,
            addresses: Addresses::GuestPhysical,
            doorbell_pages,
            page_refusal_logged: AtomicBool::new(false),
            control: None,
        })
    }

    /// [`new`](Self::new) plus the up-front check of a device configuration: the
    /// guest-visible features it offers (minus PROTOCOL_FEATURES), queue pairs,
    /// vectors and ring size. The daemon calls this before any frontend connects, to
    /// decide offload or fallback.
    /// A VDUSE device's addresses are the driver's IOVAs ([`Addresses::DriverIova`]).
    pub fn for_device(pci: Arc<dyn PciFunction>, cfg: &DeviceConfig) -> Result<Self, OffloadError> {
        let mut dp = Self::new(&cfg.name, pci, cfg.queue_pairs)?;
        dp.addresses = match cfg.frontend {
            Frontend::VhostUser => Addresses::GuestPhysical,
            Frontend::Vduse { .. } => Addresses::DriverIova,
        };
        dp.caps
            .can_serve(cfg)
            .map_err(|reasons| OffloadError::Unsuitable {
                pci: dp.pci.describe(),
                device: cfg.name.clone(),
                reasons,
            })?;
        Ok(dp)
    }

    /// What the NIC offers.
    pub fn capabilities(&self) -> &NicCapabilities {
        &self.caps
    }

    /// Queue pairs running on the NIC now.
    pub fn running_pairs(&self) -> Vec<u16> {
        self.running.keys().copied().collect()
    }

    /// Counts a ring's interrupts through the NIC's own count of its vector, where
    /// the PCI function keeps one (the simulated NIC does).
    fn probe_interrupts(&mut self, r: &RingConfig) {
        let vector = vector_of(r.index);
        if self.pci.vector_fired(vector).is_some() {
            let pci = self.pci.clone();
            r.counters
                .set_interrupt_probe(Some(CountProbe::new(move || pci.vector_fired(vector))));
            self.probed.insert(r.index, r.counters.clone());
        }
    }

    fn check_pair(&self, qp: &QueuePairConfig) -> Result<(), DatapathError> {
        if qp.pair >= self.pairs {
            return Err(DatapathError::Pair {
                pair: qp.pair,
                why: format!("this offload serves {} queue pairs", self.pairs),
            });
        }
        self.caps
            .nic_features_for(qp.features.bits, self.pairs)
            .map_err(|why| DatapathError::Pair {
                pair: qp.pair,
                why: why.to_string(),
            })?;
        rings::plan(&self.caps, qp, &qp.rx)?;
        rings::plan(&self.caps, qp, &qp.tx)?;
        Ok(())
    }

    /// Maps `mem` for DMA at the addresses it is keyed by (IOVA = GPA for vhost-user,
    /// the driver's IOVA for VDUSE), replacing (and so unmapping) whatever was mapped.
    fn map_memory(&mut self, mem: &Arc<GuestMemory>) -> Result<(), DatapathError> {
        if self
            .mapped
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(m.memory(), mem))
        {
            return Ok(());
        }
        self.mapped = None;
        self.mapped = Some(DmaMapping::map(
            &self.name,
            self.pci.clone(),
            mem,
            self.addresses,
        )?);
        Ok(())
    }

    /// Routes every vector (at bring-up): each ring's to its call eventfd.
    fn route_all_vectors(&self) -> Result<(), DatapathError> {
        self.vectors
            .route_all(|ring| self.rings.get(&ring).and_then(|r| r.call.as_deref()))
    }

    /// Routes the vector of each of `rings` to its call eventfd, or to its spare when
    /// it has none (or is not running), one vector at a time.
    fn route_ring_vectors(&self, rings: &[u16]) -> Result<(), DatapathError> {
        for &ring in rings {
            let call = self.rings.get(&ring).and_then(|r| r.call.as_deref());
            self.vectors.route_ring(ring, call)?;
        }
        Ok(())
    }

    fn program_ring(&mut self, qp: &QueuePairConfig, r: &RingConfig) -> Result<(), DatapathError> {
        let resume = rings::plan(&self.caps, qp, r)?;
        let setup = QueueSetup {
            size: r.size,
            desc: r.addrs.desc,
            driver: r.addrs.avail,
            device: r.addrs.used,
            vector: vector_of(r.index),
            resume,
        };
        let db = self
            .nic
            .program_queue(r.index, &setup)
            .and_then(|db| self.nic.enable_queue(r.index).map(|()| db))
            .map_err(|e| DatapathError::backend(format!("programming ring {}", r.index), e))?;
        info!(device = %self.name, ring = r.index, size = r.size,
              desc = format_args!("{:#x}", r.addrs.desc), avail = format_args!("{:#x}", r.addrs.avail),
              used = format_args!("{:#x}", r.addrs.used), vector = vector_of(r.index), ?resume,
              doorbell = format_args!("bar{}+{:#x}", db.bar, db.offset), "offload: queue enabled");
        self.rings.entry(r.index).or_default().doorbell = Some(db);
        Ok(())
    }

    /// Sets up vdpad's control queue when the negotiated features make the NIC use
    /// pair 0 only until told otherwise (MQ with CTRL_VQ). Between FEATURES_OK and
    /// DRIVER_OK; `mem` is the memory mapped for the NIC, which the page keeps clear of.
    fn start_control_queue(&mut self, mem: &GuestMemory) -> Result<(), DatapathError> {
        let both = VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ;
        if self.nic_features & both != both {
            return Ok(());
        }
        let queue = self.caps.control_queue_index();
        let cq = ControlQueue::start(&self.name, self.pci.clone(), &self.nic, queue, mem)
            .map_err(backend)?;
        self.control = Some(cq);
        Ok(())
    }

    /// Tells the NIC how many pairs to use, `running` being the pairs that will run
    /// (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET with the highest plus one), when the NIC has
    /// a control queue and the count changes.
    fn tell_pairs(&mut self, running: impl Iterator<Item = u16>) -> Result<(), DatapathError> {
        let Some(cq) = self.control.as_mut() else {
            return Ok(());
        };
        let n = running.max().map_or(1, |p| p + 1);
        if cq.pairs() == n {
            return Ok(());
        }
        cq.set_pairs(n).map_err(backend)?;
        info!(device = %self.name, pairs = n, "offload: the NIC uses {n} queue pair(s) (VQ_PAIRS_SET on its control queue)");
        Ok(())
    }

    /// Ends the relay thread (at reset).
    fn stop_relay(&mut self) {
        if let Some(r) = self.relay.take() {
            r.stop();
        }
    }

    /// Has the relay serve no ring until [`start_relay`](Self::start_relay): no doorbell
    /// is written while the NIC is reprogrammed.
    fn pause_relay(&mut self) {
        let Some(r) = self.relay.as_mut() else {
            return;
        };
        if let Err(e) = r.serve(RingSet::default()) {
            error!(device = %self.name, error = %e, "offload: kick relay did not pause; ending it");
            self.stop_relay();
        }
    }

    /// The rings of every running pair, for the relay.
    fn ring_set(&self) -> RingSet {
        let mut set = RingSet::default();
        for qp in self.running.values() {
            for r in [&qp.rx, &qp.tx] {
                let Some(doorbell) = self.rings.get(&r.index).and_then(|x| x.doorbell) else {
                    continue;
                };
                set.targets.push(KickTarget {
                    ring: r.index,
                    kick: r.events.kick.clone(),
                    doorbell,
                    counters: r.counters.clone(),
                });
                set.tallies
                    .push(UsedTally::new(qp.mem.clone(), r, qp.features.bits));
            }
        }
        set.watch = self.running.values().next().map(|qp| MemoryWatch {
            mem: qp.mem.clone(),
            ended: qp.ended.clone(),
        });
        set
    }

    /// Has the relay serve every running ring: the same thread from the first pair
    /// start to the reset, its rings changed in place.
    fn start_relay(&mut self) -> Result<(), DatapathError> {
        let set = self.ring_set();
        if let Some(r) = self.relay.as_mut() {
            match r.serve(set) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    error!(device = %self.name, error = %e, "offload: kick relay did not take its rings; starting another");
                    self.stop_relay();
                }
            }
        }
        let set = self.ring_set();
        if set.targets.is_empty() {
            return Ok(());
        }
        let relay = KickRelay::start(&self.name, self.pci.clone(), set)
            .map_err(|source| DatapathError::Spawn { pair: 0, source })?;
        self.relay = Some(relay);
        Ok(())
    }

    /// One doorbell and one call per ring of `pairs`, so that a kick or an interrupt
    /// raised while the rings changed hands is not lost.
    fn nudge(&self, pairs: &[u16]) {
        for p in pairs {
            for ring in [2 * p, 2 * p + 1] {
                let Some(rec) = self.rings.get(&ring) else {
                    continue;
                };
                if let Some(db) = rec.doorbell {
                    if let Err(e) = db.ring(&*self.pci) {
                        warn!(device = %self.name, ring, error = %e, "offload: doorbell failed");
                    }
                }
                if let Some(call) = &rec.call {
                    raise_once(call);
                }
            }
        }
    }

    /// Full bring-up of `pairs` on a reset NIC.
    fn bring_up(&mut self, pairs: Vec<QueuePairConfig>) -> Result<(), DatapathError> {
        self.pause_relay();
        let Some(first) = pairs.first() else {
            return Ok(());
        };
        let (mem, guest) = (first.mem.clone(), first.features.bits);
        let wanted = self
            .caps
            .nic_features_for(guest, self.pairs)
            .map_err(|why| DatapathError::Pair {
                pair: first.pair,
                why: why.to_string(),
            })?;
        self.active = true;
        self.map_memory(&mem)?;
        let result = (|| {
            self.pci.set_bus_master(true).map_err(backend)?;
            self.nic_features = self.nic.initialize(wanted).map_err(backend)?;
            for qp in &pairs {
                for r in [&qp.rx, &qp.tx] {
                    self.rings.entry(r.index).or_default().call = r.events.call.clone();
                    self.probe_interrupts(r);
                }
            }
            self.route_all_vectors()?;
            self.nic.set_config_vector(0).map_err(backend)?;
            for qp in &pairs {
                self.program_ring(qp, &qp.rx)?;
                self.program_ring(qp, &qp.tx)?;
            }
            self.start_control_queue(&mem)?;
            self.nic.driver_ok().map_err(backend)?;
            info!(device = %self.name, features = format_args!("{:#x}", self.nic_features),
                  pairs = ?pairs.iter().map(|p| p.pair).collect::<Vec<_>>(), "offload: DRIVER_OK");
            self.tell_pairs(pairs.iter().map(|p| p.pair))
        })();
        if let Err(e) = result {
            let _ = self.nic.reset();
            self.control = None;
            self.running.clear();
            self.rings.clear();
            return Err(e);
        }
        let ids: Vec<u16> = pairs.iter().map(|p| p.pair).collect();
        for qp in pairs {
            self.running.insert(qp.pair, qp);
        }
        self.start_relay()?;
        self.nudge(&ids);
        // The link may have changed while the NIC was down: have it read again.
        raise_once(self.vectors.config());
        Ok(())
    }

    /// Adds a pair while others run, with per-queue control (VIRTIO_F_RING_RESET).
    fn add_live(&mut self, qp: QueuePairConfig) -> Result<(), DatapathError> {
        self.pause_relay();
        let its_rings = [qp.rx.index, qp.tx.index];
        for r in [&qp.rx, &qp.tx] {
            self.rings.entry(r.index).or_default().call = r.events.call.clone();
            self.probe_interrupts(r);
        }
        let with_it: Vec<u16> = self.running.keys().copied().chain([qp.pair]).collect();
        let result = self
            .route_ring_vectors(&its_rings)
            .and_then(|()| self.program_ring(&qp, &qp.rx))
            .and_then(|()| self.program_ring(&qp, &qp.tx))
            .and_then(|()| self.tell_pairs(with_it.into_iter()));
        if let Err(e) = result {
            for ring in its_rings {
                let _ = self.nic.stop_queue(ring);
                self.rings.remove(&ring);
            }
            let _ = self.route_ring_vectors(&its_rings);
            self.start_relay()?;
            return Err(e);
        }
        let pair = qp.pair;
        self.running.insert(pair, qp);
        self.start_relay()?;
        self.nudge(&[pair]);
        Ok(())
    }

    /// Resets the NIC, records where every running pair stopped and returns their
    /// configurations with `base` set to that position.
    fn quiesce_all(&mut self) -> Vec<QueuePairConfig> {
        self.pause_relay();
        if let Err(e) = self.nic.reset() {
            error!(device = %self.name, error = %e, "offload: NIC reset failed");
        }
        self.control = None;
        let mut out = Vec::new();
        for (_, mut qp) in std::mem::take(&mut self.running) {
            let at = rings::position(&qp);
            qp.rx.base = at.rx;
            qp.tx.base = at.tx;
            out.push(qp);
        }
        for r in self.rings.values_mut() {
            r.doorbell = None;
        }
        out
    }
}

/// Signals `call` once: an interrupt the NIC raised while a ring's vector or eventfd
/// changed hands would otherwise be lost (a spurious one costs the guest a look at its
/// used ring). Never blocks: a full counter already means an interrupt is pending, and
/// the frontend may have handed over a blocking eventfd.
fn raise_once(call: &EventFd) {
    let _ = vdpa::notify::signal(call.as_raw_fd());
}

impl Datapath for OffloadDatapath {
    fn describe(&self) -> String {
        format!("offload/{}", self.pci.describe())
    }

    fn resumes_anywhere(&self) -> bool {
        self.caps.ring_state
    }

    fn reports_link(&self) -> bool {
        self.caps.features & VIRTIO_NET_F_STATUS != 0
    }

    /// The NIC's config interrupt (vector 0), while pairs run on a NIC that reports
    /// its link (VIRTIO_NET_F_STATUS negotiated).
    fn link_event(&self) -> Option<std::os::fd::RawFd> {
        let reports = self.nic_features & VIRTIO_NET_F_STATUS != 0;
        (reports && !self.running.is_empty()).then(|| self.vectors.config().as_raw_fd())
    }

    /// Consumes the config interrupt and reads the NIC's `status`.
    fn link_up(&mut self) -> Option<bool> {
        let _ = self.vectors.config().read();
        match self.nic.net_config() {
            Ok(c) => c.status.map(|s| s & VIRTIO_NET_S_LINK_UP != 0),
            Err(e) => {
                warn!(device = %self.name, error = %e, "offload: reading the NIC's link status failed");
                None
            }
        }
    }

    fn offers_notify_areas(&self) -> bool {
        self.doorbell_pages.is_ok()
    }

    /// The ring's doorbell page while its pair runs on the NIC. The kick relay keeps
    /// watching the kick eventfd: kicks sent before the frontend mapped the page (or
    /// after it dropped it) still arrive.
    fn notify_area(&self, ring: u16) -> Option<NotifyArea> {
        self.doorbell_pages.as_ref().ok()?;
        if !self.running.contains_key(&(ring / 2)) {
            return None;
        }
        let db = self.rings.get(&ring)?.doorbell?;
        // Asked only by a frontend that wants notifiers: handing the page out is what
        // makes the simulated NIC watch its pages, so nothing asks before that.
        match self.pci.doorbell_page(db.bar, db.offset) {
            Ok(area) => Some(area),
            Err(why) => {
                if !self.page_refusal_logged.swap(true, Ordering::Relaxed) {
                    warn!(device = %self.name, ring, why = %why,
                          "offload: a doorbell page cannot be handed out; kicks go through the kick relay");
                }
                None
            }
        }
    }

    fn start(&mut self, qp: QueuePairConfig) -> Result<(), StartFailure> {
        self.check_pair(&qp)?;
        if self.running.is_empty() {
            return Ok(self.bring_up(vec![qp])?);
        }
        let (mem, features) = {
            let any = self.running.values().next().expect("running is not empty");
            (any.mem.clone(), any.features.bits)
        };
        if !Arc::ptr_eq(&mem, &qp.mem) || features != qp.features.bits {
            return Err(DatapathError::Pair {
                pair: qp.pair,
                why: "running pairs use another memory table or feature set; stop them first"
                    .into(),
            }
            .into());
        }
        if self.nic.per_queue_control() {
            return Ok(self.add_live(qp)?);
        }
        // No per-queue control: reset the NIC and program every pair again. Refuse
        // before touching anything if a running ring could not resume.
        if !self.caps.ring_state {
            for p in self.running.values() {
                for r in [&p.rx, &p.tx] {
                    if rings::used_idx(&p.mem, r).unwrap_or(1) != 0 {
                        return Err(DatapathError::Pair {
                            pair: qp.pair,
                            why: format!(
                                "cannot add a queue pair while ring {} has traffic: the NIC has \
                                 neither VIRTIO_F_RING_RESET nor ring-state registers",
                                r.index
                            ),
                        }
                        .into());
                    }
                }
            }
        }
        let others = self.quiesce_all();
        let lost: Vec<PairPosition> = others.iter().map(rings::position).collect();
        let mut all = others;
        all.push(qp);
        self.bring_up(all)
            .map_err(|error| StartFailure { error, lost })
    }

    fn stop(&mut self, pair: u16) -> Vec<PairPosition> {
        let Some(qp) = self.running.get(&pair).cloned() else {
            return Vec::new();
        };
        self.pause_relay();
        let alone = self.running.len() == 1;
        let others: Vec<u16> = self
            .running
            .keys()
            .copied()
            .filter(|&p| p != pair)
            .collect();
        let per_queue = !alone
            && self
                .tell_pairs(others.into_iter())
                .inspect_err(
                    |e| warn!(device = %self.name, pair, error = %e, "offload: VQ_PAIRS_SET"),
                )
                .is_ok()
            && [qp.rx.index, qp.tx.index]
                .iter()
                .all(|&q| match self.nic.stop_queue(q) {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(device = %self.name, ring = q, error = %e, "offload: queue stop");
                        false
                    }
                });
        if per_queue {
            self.running.remove(&pair);
            let its_rings = [qp.rx.index, qp.tx.index];
            for ring in its_rings {
                self.rings.remove(&ring);
            }
            let rerouted = self.route_ring_vectors(&its_rings);
            if let Err(e) = rerouted.and_then(|()| self.start_relay()) {
                error!(device = %self.name, error = %e, "offload: restarting relay after stop");
            }
            info!(device = %self.name, pair, "offload: queue pair stopped (per-queue)");
            return vec![rings::position(&qp)];
        }
        let mut others = self.quiesce_all();
        others.retain(|p| p.pair != pair);
        for r in [&qp.rx, &qp.tx] {
            self.rings.remove(&r.index);
        }
        let stopped = rings::position(&qp);
        info!(device = %self.name, pair, rx_base = stopped.rx, tx_base = stopped.tx,
              "offload: queue pair stopped (NIC reset)");
        if others.is_empty() {
            return vec![stopped];
        }
        let lost: Vec<PairPosition> = others.iter().map(rings::position).collect();
        let ids: Vec<u16> = others.iter().map(|p| p.pair).collect();
        match self.bring_up(others) {
            Ok(()) => vec![stopped],
            Err(e) => {
                error!(device = %self.name, pairs = ?ids, error = %e,
                       "offload: pairs could not be restarted after a NIC reset; they are lost \
                        until the control plane restarts them");
                std::iter::once(stopped).chain(lost).collect()
            }
        }
    }

    fn set_call(&mut self, ring: u16, call: Option<Arc<EventFd>>) -> bool {
        if !self.running.contains_key(&(ring / 2)) {
            return false;
        }
        self.rings.entry(ring).or_default().call = call.clone();
        if let Err(e) = self.route_ring_vectors(&[ring]) {
            error!(device = %self.name, ring, error = %e, "offload: re-routing the ring's interrupt failed");
            return false;
        }
        if let Some(c) = &call {
            raise_once(c);
        }
        info!(device = %self.name, ring, vector = vector_of(ring), polled = call.is_none(),
              "offload: call eventfd switched (one MSI-X vector)");
        true
    }

    fn reset(&mut self) {
        self.stop_relay();
        if let Err(e) = self.nic.reset() {
            error!(device = %self.name, error = %e, "offload: NIC reset failed");
        }
        self.control = None;
        match self.pci.reset() {
            Ok(outcome) => info!(device = %self.name, ?outcome, "offload: function reset"),
            Err(e) => warn!(device = %self.name, error = %e, "offload: function reset failed"),
        }
        if let Err(e) = self.pci.clear_msix() {
            warn!(device = %self.name, error = %e, "offload: clearing MSI-X failed");
        }
        self.mapped = None;
        self.running.clear();
        self.rings.clear();
        for c in std::mem::take(&mut self.probed).into_values() {
            c.set_interrupt_probe(None);
        }
        self.active = false;
        info!(device = %self.name, "offload: reset (NIC status 0, MSI-X cleared, DMA unmapped)");
    }
}

impl Drop for OffloadDatapath {
    fn drop(&mut self) {
        if self.active {
            self.reset();
        }
    }
}
