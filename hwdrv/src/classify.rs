//! Auto mode: decide from a PCI function's configuration space whether it can be
//! offloaded (a virtio-net function with the virtio 1.x modern capabilities) or must
//! be served in software on its kernel netdev — with a human-readable reason, and the
//! device's name from the PCI ID database.
//!
//! Classification reads only configuration space (sysfs `config`, no VFIO, no BAR
//! access, nothing written), so it can run on a function a kernel driver owns. The
//! feature bits live in a BAR and reading them needs a register write, so VERSION_1
//! is inferred here (the spec requires every device exposing the modern interface to
//! offer it) and confirmed when the offload datapath probes the function through VFIO;
//! a function failing that probe falls back like any other offload failure.

use std::io;
use std::path::{Path, PathBuf};

use pci_ids::FromId;

use crate::pci::ConfigSnapshot;
use crate::spec::{self, cap};

/// Where sysfs lists PCI functions.
pub const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// The datapath auto mode chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The NIC consumes virtio rings: offload through VFIO.
    Offload,
    /// The NIC has no virtio rings: software datapath on its netdev.
    Software,
}

impl Decision {
    /// "offload" or "software".
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Offload => "offload",
            Decision::Software => "software",
        }
    }
}

/// What auto mode found out about a function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    /// PCI address.
    pub bdf: String,
    /// Vendor and device id.
    pub ids: (u16, u16),
    /// 24-bit class code.
    pub class_code: u32,
    /// Human name: vendor and device from the PCI ID database, or the ids.
    pub name: String,
    /// The decision.
    pub decision: Decision,
    /// Why, in words an operator understands.
    pub reason: String,
    /// Kernel driver bound to the function, if known.
    pub driver: Option<String>,
    /// Network interface of the function, if it has one (software fallback target).
    pub netdev: Option<String>,
}

/// Vendor and device names from the PCI ID database, or hex ids.
pub(crate) fn pci_name(vendor: u16, device: u16) -> String {
    let v = pci_ids::Vendor::from_id(vendor).map(|v| v.name());
    let d = pci_ids::Device::from_vid_pid(vendor, device).map(|d| d.name());
    match (v, d) {
        (Some(v), Some(d)) => format!("{v} {d} [{vendor:04x}:{device:04x}]"),
        (Some(v), None) => format!("{v} device [{vendor:04x}:{device:04x}]"),
        _ => format!("PCI device [{vendor:04x}:{device:04x}]"),
    }
}

fn class_name(code: u32) -> String {
    let (c, s) = ((code >> 16) as u8, (code >> 8) as u8);
    pci_ids::Subclass::from_cid_sid(c, s)
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| format!("class {code:06x}"))
}

/// The virtio device type of a virtio PCI device id (1 = network), if it is one.
pub fn virtio_device_type(device_id: u16) -> Option<u16> {
    match device_id {
        0x1000..=0x103f => Some(match device_id {
            0x1000 => 1,
            0x1001 => 2,
            0x1002 => 5,
            0x1003 => 3,
            0x1004 => 8,
            0x1005 => 4,
            0x1009 => 9,
            _ => 0,
        }),
        0x1040..=0x107f => Some(device_id - 0x1040),
        _ => None,
    }
}

/// Classifies a function from its configuration space alone.
pub(crate) fn classify_config(bdf: &str, snap: &ConfigSnapshot) -> Classification {
    let ids = (snap.vendor_id(), snap.device_id());
    let class_code = snap.class_code();
    let name = pci_name(ids.0, ids.1);
    let software = |reason: String| (Decision::Software, reason);
    let (decision, reason) = if ids.0 != spec::VIRTIO_VENDOR_ID {
        software(format!(
            "{} ({}) is not a virtio device: its rings are its own, so the software datapath \
             serves it on its netdev",
            name,
            class_name(class_code)
        ))
    } else if virtio_device_type(ids.1) != Some(1) {
        software(format!(
            "virtio device type {:?} is not a network device",
            virtio_device_type(ids.1)
        ))
    } else if !snap.is_complete() {
        software(
            "only the first 64 bytes of configuration space are readable (not root?): the \
             virtio capabilities cannot be checked"
                .into(),
        )
    } else {
        let caps = snap.virtio_caps();
        let has = |t: u8| caps.iter().any(|c| c.cfg_type == t && c.bar < 6);
        let missing: Vec<&str> = [
            (cap::COMMON, "COMMON_CFG"),
            (cap::NOTIFY, "NOTIFY_CFG"),
            (cap::ISR, "ISR_CFG"),
            (cap::DEVICE, "DEVICE_CFG"),
        ]
        .iter()
        .filter(|(t, _)| !has(*t))
        .map(|(_, n)| *n)
        .collect();
        if !missing.is_empty() {
            software(format!(
                "virtio-net without the modern (virtio 1.x) interface: missing {}",
                missing.join(", ")
            ))
        } else if snap.msix_table_size().is_none() {
            software("virtio-net without MSI-X: interrupts cannot be routed to the guest".into())
        } else {
            let multiplier = caps
                .iter()
                .find(|c| c.cfg_type == cap::NOTIFY)
                .map_or(0, |c| c.notify_off_multiplier);
            (
                Decision::Offload,
                format!(
                    "virtio-net modern function (virtio 1.x capabilities, notify multiplier \
                     {multiplier}, {} MSI-X vectors): its hardware consumes virtio rings",
                    snap.msix_table_size().unwrap_or(0)
                ),
            )
        }
    };
    Classification {
        bdf: bdf.into(),
        ids,
        class_code,
        name,
        decision,
        reason,
        driver: None,
        netdev: None,
    }
}

/// A function's configuration space could not be read from sysfs (travels inside an
/// `io::Error` of the same kind, as [`classify`] returns).
#[derive(Debug, thiserror::Error)]
#[error("reading {}: {error}", .path.display())]
pub struct ConfigUnreadable {
    /// The `config` file.
    pub path: PathBuf,
    /// Why it could not be read.
    pub error: io::Error,
}

/// Classifies function `bdf` through sysfs (`/sys/bus/pci/devices`).
pub fn classify(bdf: &str) -> io::Result<Classification> {
    classify_in(Path::new(SYSFS_PCI_DEVICES), bdf)
}

/// Classifies function `bdf` under a sysfs-like directory `root` (tests use a fake).
pub fn classify_in(root: &Path, bdf: &str) -> io::Result<Classification> {
    let dir = root.join(bdf);
    let config = dir.join("config");
    let bytes = std::fs::read(&config).map_err(|error| {
        io::Error::new(
            error.kind(),
            ConfigUnreadable {
                path: config.clone(),
                error,
            },
        )
    })?;
    let mut c = classify_config(bdf, &ConfigSnapshot::from_bytes(bytes));
    c.driver = std::fs::read_link(dir.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    c.netdev = netdev_in(root, bdf)?;
    if c.decision == Decision::Offload && c.driver.as_deref() != Some("vfio-pci") {
        c.reason.push_str(&format!(
            "; it is bound to {}, offload needs it bound to vfio-pci",
            c.driver.as_deref().unwrap_or("no driver")
        ));
    }
    Ok(c)
}

/// The network interface of function `bdf` (`/sys/bus/pci/devices/<bdf>/net/*`), if
/// it has one (the first in name order when it has several).
pub fn netdev_of(bdf: &str) -> io::Result<Option<String>> {
    netdev_in(Path::new(SYSFS_PCI_DEVICES), bdf)
}

fn netdev_in(root: &Path, bdf: &str) -> io::Result<Option<String>> {
    let dir: PathBuf = root.join(bdf).join("net");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{layout, SimConfig};

    fn e1000e() -> Vec<u8> {
        let mut b = vec![0u8; 256];
        b[0..2].copy_from_slice(&0x8086u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x10d3u16.to_le_bytes());
        b[8..12].copy_from_slice(&(0x0200_0000u32).to_le_bytes());
        b
    }

    #[test]
    fn virtio_net_modern_is_offloaded() {
        let snap =
            ConfigSnapshot::from_bytes(layout::config_space(&SimConfig::default())[..256].to_vec());
        let c = classify_config("0000:01:00.0", &snap);
        assert_eq!(c.decision, Decision::Offload, "{}", c.reason);
        assert!(c.name.contains("Red Hat"), "{}", c.name);
        assert!(c.reason.contains("notify multiplier 4"), "{}", c.reason);
    }

    #[test]
    fn intel_nic_goes_to_software_with_its_name() {
        let c = classify_config("0000:00:06.0", &ConfigSnapshot::from_bytes(e1000e()));
        assert_eq!(c.decision, Decision::Software);
        assert!(
            c.name.contains("Intel") && c.name.contains("82574L"),
            "{}",
            c.name
        );
        assert!(c.reason.contains("not a virtio device"), "{}", c.reason);
    }

    #[test]
    fn legacy_or_truncated_virtio_goes_to_software() {
        let mut b = layout::config_space(&SimConfig::default())[..256].to_vec();
        b[0x34] = 0; // no capabilities: legacy only
        let c = classify_config("x", &ConfigSnapshot::from_bytes(b.clone()));
        assert_eq!(c.decision, Decision::Software);
        assert!(c.reason.contains("missing COMMON_CFG"), "{}", c.reason);
        let c = classify_config("x", &ConfigSnapshot::from_bytes(b[..64].to_vec()));
        assert!(c.reason.contains("64 bytes"), "{}", c.reason);
        b[2..4].copy_from_slice(&0x1042u16.to_le_bytes()); // virtio-blk
        let c = classify_config("x", &ConfigSnapshot::from_bytes(b));
        assert!(c.reason.contains("not a network device"), "{}", c.reason);
    }

    #[test]
    fn sysfs_tree_gives_driver_and_netdev() {
        let root = std::env::temp_dir().join(format!("hwdrv-sysfs-{}", std::process::id()));
        let dev = root.join("0000:00:06.0");
        std::fs::create_dir_all(dev.join("net/enp0s6")).unwrap();
        std::fs::create_dir_all(root.join("drivers/e1000e")).unwrap();
        std::fs::write(dev.join("config"), e1000e()).unwrap();
        let _ = std::fs::remove_file(dev.join("driver"));
        std::os::unix::fs::symlink(root.join("drivers/e1000e"), dev.join("driver")).unwrap();
        let c = classify_in(&root, "0000:00:06.0").unwrap();
        assert_eq!(c.driver.as_deref(), Some("e1000e"));
        assert_eq!(c.netdev.as_deref(), Some("enp0s6"));
        assert_eq!(c.decision, Decision::Software);
        assert!(classify_in(&root, "0000:00:07.0").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
