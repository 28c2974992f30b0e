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
    }
}

/// Builds `dev` with the datapath its configuration asks for.
pub fn build(dev: &DeviceConfig, containers: &mut Containers) -> Result<Wired, WiringError> {
    let err = |cause: BuildError| WiringError {
        device: dev.name.clone(),
        cause,
    };
    match dev.mode {
        Mode::Software => {
            let dp = software(dev).map_err(err)?;
            let reason = format!(
                "mode = \"software\", backend = \"{}\"",
                dev.backend.keyword()
            );
            Ok(Wired {
                device: Device::new(dev.clone(), Box::new(dp)),
                mode: "software",
                reason,
            })
        }
        Mode::Offload => offload(dev, containers, "mode = \"offload\"".into()),
        Mode::Auto => {
            let bdf = pci_of(dev).map_err(err)?;
            let c = classify(&bdf).map_err(|source| {
                err(BuildError::Classify {
                    bdf: bdf.clone(),
                    source,
                })
            })?;
            match c.decision {
                Decision::Offload => offload(dev, containers, format!("auto: {}", c.reason)),
                Decision::Software => {
                    let dp = software(dev).map_err(err)?;
                    Ok(Wired {
                        device: Device::new(dev.clone(), Box::new(dp)),
                        mode: "software",
                        reason: format!("auto: {}", c.reason),
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
) -> Result<Wired, WiringError> {
    let err = |cause: BuildError| WiringError {
        device: dev.name.clone(),
        cause,
    };
    let bdf = pci_of(dev).map_err(err)?;
    let primary = containers
        .for_device(dev)
        .and_then(|vm| VfioFunction::open(&vm, &bdf))
        .map_err(|source| BuildError::Vfio {
            bdf: bdf.clone(),
            source,
        })
        .and_then(|f| Ok(OffloadDatapath::for_device(Arc::new(f), dev)?));
    match primary {
        Ok(dp) if dev.fallback => {
            let cfg = dev.clone();
            let make = Box::new(move || {
                software(&cfg)
                    .map(|d| Box::new(d) as Box<dyn Datapath>)
                    .map_err(Into::into)
            });
            let wrapper = FallbackDatapath::new(Box::new(dp), make, fallback_offloads(dev));
            Ok(Wired {
                device: Device::new(dev.clone(), Box::new(wrapper)),
                mode: "offload",
                reason: format!("{why}; software fallback ready"),
            })
        }
        Ok(dp) => Ok(Wired {
            device: Device::new(dev.clone(), Box::new(dp)),
            mode: "offload",
            reason: why,
        }),
        Err(e) if dev.fallback => {
            let e_text = vdpa::server::error_chain(&e);
            warn!(device = %dev.name, error = %e_text, "offload unavailable; falling back to software");
            let dp = software(dev).map_err(|f| {
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

/// The software datapath with the configured backend.
pub fn software(dev: &DeviceConfig) -> Result<SoftwareDatapath, BuildError> {
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
            let sockets = AfPacket::open(&ifname, dev.queue_pairs)
                .map_err(|source| BuildError::AfPacket { ifname, source })?;
            SwBackend::AfPacket(sockets)
        }
    };
    let dp = SoftwareDatapath::new(&dev.name, backend, dev.mtu.unwrap_or(1500), tuning(dev));
    Ok(if dev.offloads {
        dp
    } else {
        dp.without_offloads()
    })
}
