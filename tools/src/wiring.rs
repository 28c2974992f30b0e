//! Choosing and building the datapath of a device. Every decision about which
//! datapath serves a device — and why — is made here: the configured mode, auto-mode
//! classification of the PCI function, and the software fallback when offload cannot
//! serve.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hwdrv::classify::netdev_of;
use hwdrv::{classify, Decision, OffloadDatapath, VfioFunction, VfioVm};
use swpath::af_packet::AfPacket;
use swpath::portsec::{IpPrefix, PortSecurity};
use swpath::ratelimit::{Rate, RateControl, Rates};
use swpath::tap::Tap;
use swpath::{Backend as SwBackend, SoftwareDatapath, Tuning};
use thiserror::Error;
use tracing::warn;
use vdpa::{Datapath, Device, FallbackDatapath};
use vdpad_config::{Backend, DeviceConfig, Mode};

/// A device that cannot be served.
#[derive(Debug, Error)]
#[error("device {device}: {cause}")]
pub struct WiringError {
    /// Device name.
    pub device: String,
    /// What went wrong.
    #[source]
    pub cause: BuildError,
}

/// Why a datapath could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The mode needs a PCI function and the device names none.
    #[error("this mode needs `pci`")]
    NoPci,
    /// Auto mode could not read the PCI function.
    #[error("auto mode cannot read {bdf}")]
    Classify {
        /// The function.
        bdf: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The PCI function could not be opened through VFIO.
    #[error("VFIO on {bdf}")]
    Vfio {
        /// The function.
        bdf: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The NIC cannot take the device's rings.
    #[error(transparent)]
    Offload(#[from] hwdrv::OffloadError),
    /// Offload failed and so did the software fallback.
    #[error("offload failed ({}) and so did the fallback", vdpa::server::error_chain(offload.as_ref()))]
    FallbackFailed {
        /// Why offload failed.
        offload: Box<BuildError>,
        /// Why the fallback failed.
        #[source]
        fallback: Box<BuildError>,
    },
    /// Offload failed and no fallback is configured.
    #[error("offload failed (set fallback = true to use software instead)")]
    OffloadOnly(#[source] Box<BuildError>),
    /// The tap device could not be opened.
    #[error("tap")]
    Tap(#[source] std::io::Error),
    /// The af_packet backend has no interface to use.
    #[error("backend af_packet needs netdev or pci")]
    NoNetdev,
    /// The PCI function's network interface could not be found.
    #[error("finding the netdev of {pci}")]
    FindNetdev {
        /// The function.
        pci: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The PCI function has no network interface.
    #[error("{pci} has no network interface (is it bound to a kernel NIC driver, not vfio-pci?); set netdev")]
    NoInterface {
        /// The function.
        pci: String,
    },
    /// The backend's kernel filter could not be set up.
    #[error("port security")]
    PortSecurity(#[source] std::io::Error),
    /// The packet sockets could not be opened.
    #[error("AF_PACKET on {ifname}")]
    AfPacket {
        /// The interface.
        ifname: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A device ready to serve, and why it is served the way it is.
pub struct Wired {
    /// The device.
    pub device: Device,
    /// `offload` or `software`.
    pub mode: &'static str,
    /// Why this datapath was chosen, for logs and `vdpactl`.
    pub reason: String,
    /// The device's rate limits, as the software datapath (or the fallback) follows
    /// them; `None` for an offloaded device without fallback.
    pub rates: Option<Arc<RateControl>>,
}

/// IOMMU containers by VM: the devices of one VM share one, so its memory is mapped
/// once; devices of different VMs never do.
#[derive(Default)]
pub struct Containers {
    by_vm: HashMap<String, Arc<VfioVm>>,
}

impl Containers {
    fn for_device(&mut self, dev: &DeviceConfig) -> std::io::Result<Arc<VfioVm>> {
        match &dev.vm {
            Some(vm) => {
                if let Some(c) = self.by_vm.get(vm) {
                    return Ok(c.clone());
                }
                let c = VfioVm::new(vm)?;
                self.by_vm.insert(vm.clone(), c.clone());
                Ok(c)
            }
            // No VM given: a container of its own (safe; memory is pinned per device).
            None => VfioVm::new(&dev.name),
        }
    }
}

/// The software knobs of a device, in the datapath's terms.
pub fn tuning(dev: &DeviceConfig) -> Tuning {
    let t = &dev.tuning;
    if let Some(weight) = t.weight {
        warn!(device = %dev.name, weight,
              "weight is obsolete and has no effect (workers no longer yield the CPU); remove it");
    }
    Tuning {
        burst: usize::from(t.burst),
        polling: {
            let budget = Duration::from_micros(u64::from(t.busy_poll_us));
            match t.polling {
                vdpad_config::Polling::Adaptive => swpath::Polling::Adaptive { ceiling: budget },
                vdpad_config::Polling::Fixed => swpath::Polling::Fixed(budget),
            }
        },
        rx_coalesce_frames: t.rx_coalesce_frames,
        rx_coalesce_time: Duration::from_micros(u64::from(t.rx_coalesce_usecs)),
        cpus: t.cpus.iter().map(|&c| usize::from(c)).collect(),
        workers: match t.workers {
            vdpad_config::Workers::PerPair => swpath::Workers::PerPair,
            vdpad_config::Workers::PerCpu => swpath::Workers::PerCpu,
        },
    }
}

/// The rate limits of `dev`, in the datapath's terms.
pub fn rates(dev: &DeviceConfig) -> Rates {
    let r = &dev.rates;
    Rates {
        tx: Rate {
            pps: r.tx_pps,
            bps: r.tx_bps,
        },
        rx: Rate {
            pps: r.rx_pps,
            bps: r.rx_bps,
        },
        burst: Duration::from_micros(u64::from(r.burst_us)),
    }
}

/// The port security of `dev`, in the datapath's terms (nothing for loopback: it has
/// no wire).
pub fn port_security(dev: &DeviceConfig) -> PortSecurity {
    if dev.backend == Backend::Loopback {
        return PortSecurity::default();
    }
    let s = &dev.security;
    PortSecurity {
        mac: dev.mac.map(|m| m.0),
        promiscuous: s.promiscuous,
        spoof_check: s.spoof_check,
        allowed_ips: s
            .allowed_ips
            .iter()
            .map(|p| IpPrefix {
                addr: p.addr,
                len: p.len,
            })
            .collect(),
        multicast: s
            .multicast
            .as_ref()
            .map(|g| g.iter().map(|m| m.0).collect()),
        vlan: s.vlan,
        trunk: s.trunk_vlans.clone(),
    }
}

/// Builds `dev` with the datapath its configuration asks for.
pub fn build(dev: &DeviceConfig, containers: &mut Containers) -> Result<Wired, WiringError> {
    let control = RateControl::new(rates(dev));
    let mut wired = build_with(dev, containers, &control)?;
    if wired.mode == "software" || dev.fallback {
        wired.rates = Some(control);
    }
    Ok(wired)
}

fn build_with(
    dev: &DeviceConfig,
    containers: &mut Containers,
    control: &Arc<RateControl>,
) -> Result<Wired, WiringError> {
    let err = |cause: BuildError| WiringError {
        device: dev.name.clone(),
        cause,
    };
    match dev.mode {
        Mode::Software => {
            let dp = software(dev, control).map_err(err)?;
            let reason = format!(
                "mode = \"software\", backend = \"{}\"",
                dev.backend.keyword()
            );
            Ok(Wired {
                device: Device::new(dev.clone(), Box::new(dp)),
                mode: "software",
                reason,
                rates: None,
            })
        }
        Mode::Offload => offload(dev, containers, "mode = \"offload\"".into(), control),
        Mode::Auto => {
            let bdf = pci_of(dev).map_err(err)?;
            let c = classify(&bdf).map_err(|source| {
                err(BuildError::Classify {
                    bdf: bdf.clone(),
                    source,
                })
            })?;
            match c.decision {
                Decision::Offload => {
                    offload(dev, containers, format!("auto: {}", c.reason), control)
                }
                Decision::Software => {
                    let dp = software(dev, control).map_err(err)?;
                    Ok(Wired {
                        device: Device::new(dev.clone(), Box::new(dp)),
                        mode: "software",
                        reason: format!("auto: {}", c.reason),
                        rates: None,
                    })
                }
            }
        }
    }
}

fn pci_of(dev: &DeviceConfig) -> Result<String, BuildError> {
    dev.pci.map(|p| p.to_string()).ok_or(BuildError::NoPci)
}

/// The offload datapath on the device's PCI function, with the software fallback
/// behind it when `fallback = true`.
fn offload(
    dev: &DeviceConfig,
    containers: &mut Containers,
    why: String,
    control: &Arc<RateControl>,
) -> Result<Wired, WiringError> {
    let err = |cause: BuildError| WiringError {
        device: dev.name.clone(),
        cause,
    };
    let bdf = pci_of(dev).map_err(err)?;
    let primary = containers
        .for_device(dev)
        .and_then(|vm| VfioFunction::open(&vm, &bdf))
        .map(|f| f.serving(&dev.name))
        .map_err(|source| BuildError::Vfio {
            bdf: bdf.clone(),
            source,
        })
        .and_then(|f| Ok(OffloadDatapath::for_device(Arc::new(f), dev)?));
    match primary {
        Ok(dp) if dev.fallback => {
            let cfg = dev.clone();
            let control = control.clone();
            let make = Box::new(move || {
                software(&cfg, &control)
                    .map(|d| Box::new(d) as Box<dyn Datapath>)
                    .map_err(Into::into)
            });
            // The software fallback logs dirty pages: it serves while a VM migrates.
            let wrapper = FallbackDatapath::new(Box::new(dp), make, fallback_offloads(dev))
                .relays_migrations();
            Ok(Wired {
                device: Device::new(dev.clone(), Box::new(wrapper)),
                mode: "offload",
                reason: format!("{why}; software fallback ready"),
                rates: None,
            })
        }
        Ok(dp) => Ok(Wired {
            device: Device::new(dev.clone(), Box::new(dp)),
            mode: "offload",
            reason: why,
            rates: None,
        }),
        Err(e) if dev.fallback => {
            let e_text = vdpa::server::error_chain(&e);
            warn!(device = %dev.name, error = %e_text, "offload unavailable; falling back to software");
            let dp = software(dev, control).map_err(|f| {
                err(BuildError::FallbackFailed {
                    offload: Box::new(e),
                    fallback: Box::new(f),
                })
            })?;
            let device = Device::new(dev.clone(), Box::new(dp));
            Ok(Wired {
                device,
                mode: "software",
                reason: format!("fallback: offload failed: {e_text}"),
                rates: None,
            })
        }
        Err(e) => Err(err(BuildError::OffloadOnly(Box::new(e)))),
    }
}

/// Datapath features the software fallback would offer (its offloads; IN_ORDER needs
/// no entry, no NIC path offers it), so both datapaths offer the same.
fn fallback_offloads(dev: &DeviceConfig) -> u64 {
    if !dev.offloads {
        return 0;
    }
    match dev.backend {
        Backend::Loopback => 0,
        Backend::Tap { .. } => swpath::tap::TAP_OFFLOADS,
        Backend::AfPacket { .. } => swpath::af_packet::AF_PACKET_OFFLOADS,
    }
}

/// The software datapath with the configured backend, port security and rate limits
/// (following `control`).
pub fn software(
    dev: &DeviceConfig,
    control: &Arc<RateControl>,
) -> Result<SoftwareDatapath, BuildError> {
    let security = Arc::new(port_security(dev));
    let backend = match &dev.backend {
        Backend::Loopback => SwBackend::Loopback,
        Backend::Tap { name } => {
            SwBackend::Tap(Tap::open(name.as_deref(), dev.queue_pairs).map_err(BuildError::Tap)?)
        }
        Backend::AfPacket { netdev } => {
            let ifname = match (netdev, dev.pci) {
                (Some(n), _) => n.clone(),
                (None, Some(pci)) => {
                    let pci = pci.to_string();
                    netdev_of(&pci)
                        .map_err(|source| BuildError::FindNetdev {
                            pci: pci.clone(),
                            source,
                        })?
                        .ok_or(BuildError::NoInterface { pci })?
                }
                (None, None) => return Err(BuildError::NoNetdev),
            };
            let sockets = AfPacket::open_secured(&ifname, dev.queue_pairs, security.clone())
                .map_err(|source| BuildError::AfPacket { ifname, source })?;
            SwBackend::AfPacket(sockets)
        }
    };
    let dp = SoftwareDatapath::new(&dev.name, backend, dev.mtu.unwrap_or(1500), tuning(dev))
        .with_port_security(security)
        .map_err(BuildError::PortSecurity)?
        .with_rates(control.clone());
    Ok(if dev.offloads {
        dp
    } else {
        dp.without_offloads()
    })
}
