//! Discovery (`vdpactl nics`): the host's PCI network functions and what vdpad would do
//! with each in `mode = "auto"` — offload, software on which interface, or neither and
//! why — using auto mode's own classification (`hwdrv::classify`), plus what
//! classification does not look at: the IOMMU group, the MSI-X vectors (how many queue
//! pairs offload could route), and whether VFIO is there.

use std::io;
use std::path::{Path, PathBuf};

use hwdrv::classify::{classify_in, virtio_device_type, Decision, SYSFS_PCI_DEVICES};
use hwdrv::pci::ConfigSnapshot;
use serde::Serialize;

/// The PCI vendor id of virtio devices.
const VIRTIO_VENDOR: u16 = 0x1af4;

/// One PCI network function and vdpad's plan for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NicReport {
    /// PCI address, `DDDD:BB:DD.F`.
    pub pci: String,
    /// Vendor and device name (PCI ID database).
    pub name: String,
    /// Kernel driver bound to it, if any.
    pub driver: Option<String>,
    /// Its network interface as auto mode finds it (`<sysfs>/<pci>/net/*`).
    pub netdev: Option<String>,
    /// Interfaces that belong to it but that auto mode does not find (under a virtio
    /// child device, `<sysfs>/<pci>/virtioN/net/*`): usable with an explicit `netdev`.
    pub other_netdevs: Vec<String>,
    /// IOMMU group number; offload through VFIO needs one.
    pub iommu_group: Option<u32>,
    /// MSI-X table size, if the function has MSI-X.
    pub msix_vectors: Option<u16>,
    /// Auto mode's classification: `offload` or `software`.
    pub classification: &'static str,
    /// Why, as auto mode logs it.
    pub reason: String,
    /// What vdpad would do with `pci = "<pci>"` and nothing else set: `offload`,
    /// `software`, `fallback` (offload is blocked, software serves it), `none`.
    pub plan: &'static str,
    /// The plan in words: the interface, the queue-pair limit, what blocks offload.
    pub detail: String,
}

/// Every network function under `root` (a sysfs `bus/pci/devices` directory, or a fake
/// one in tests), in address order. `vfio_present` says whether `/dev/vfio/vfio`
/// exists (offload needs it).
pub fn scan(root: &Path, vfio_present: bool) -> io::Result<Vec<NicReport>> {
    let mut addresses: Vec<String> = std::fs::read_dir(root)
        .map_err(|e| io::Error::new(e.kind(), format!("listing {}: {e}", root.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    addresses.sort();
    let mut reports = Vec::new();
    for bdf in addresses {
        // A function whose configuration cannot be read is no candidate either way.
        let Ok(c) = classify_in(root, &bdf) else {
            continue;
        };
        let network = c.class_code >> 16 == 0x02
            || (c.ids.0 == VIRTIO_VENDOR && virtio_device_type(c.ids.1) == Some(1));
        if !network {
            continue;
        }
        let dir = root.join(&bdf);
        let msix_vectors = std::fs::read(dir.join("config"))
            .ok()
            .and_then(|b| ConfigSnapshot::from_bytes(b).msix_table_size());
        let iommu_group = std::fs::read_link(dir.join("iommu_group"))
            .ok()
            .and_then(|p| p.file_name()?.to_str()?.parse().ok());
        let other_netdevs = virtio_child_netdevs(&dir)
            .into_iter()
            .filter(|n| c.netdev.as_ref() != Some(n))
            .collect();
        let mut report = NicReport {
            pci: bdf,
            name: c.name,
            driver: c.driver,
            netdev: c.netdev,
            other_netdevs,
            iommu_group,
            msix_vectors,
            classification: c.decision.as_str(),
            reason: c.reason,
            plan: "none",
            detail: String::new(),
        };
        plan(&mut report, c.decision, vfio_present);
        reports.push(report);
    }
    Ok(reports)
}

/// [`scan`] of this host: `/sys/bus/pci/devices` and `/dev/vfio/vfio`.
pub fn scan_host() -> io::Result<Vec<NicReport>> {
    scan(
        Path::new(SYSFS_PCI_DEVICES),
        Path::new("/dev/vfio/vfio").exists(),
    )
}

/// Interfaces under the function's virtio child devices (`virtio*/net/*`).
fn virtio_child_netdevs(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    let children: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("virtio"))
        .map(|e| e.path().join("net"))
        .collect();
    for net in children {
        if let Ok(names) = std::fs::read_dir(net) {
            found.extend(
                names
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    found.sort();
    found
}

/// What auto mode would do, from the classification and what blocks offload. The
/// offload datapath gives each virtqueue a vector and the configuration one more, so
/// `v` MSI-X vectors carry `(v - 1) / 2` queue pairs.
fn plan(r: &mut NicReport, decision: Decision, vfio_present: bool) {
    let software_on = |r: &NicReport| -> Result<String, String> {
        match (&r.netdev, r.other_netdevs.first()) {
            (Some(n), _) => Ok(format!("af_packet on {n}")),
            (None, Some(other)) => Err(format!(
                "auto mode finds no interface of its own; its interface {other} sits under a \
                 virtio device: write mode = \"software\", netdev = \"{other}\""
            )),
            (None, None) => Err(format!(
                "no kernel interface (driver: {})",
                r.driver.as_deref().unwrap_or("none")
            )),
        }
    };
    match decision {
        Decision::Software => match software_on(r) {
            Ok(how) => {
                r.plan = "software";
                r.detail = how;
            }
            Err(why) => {
                r.plan = "none";
                r.detail = format!("not a virtio-net function, and {why}");
            }
        },
        Decision::Offload => {
            let mut blockers = Vec::new();
            if r.driver.as_deref() != Some("vfio-pci") {
                blockers.push(format!(
                    "bound to {}, not vfio-pci",
                    r.driver.as_deref().unwrap_or("no driver")
                ));
            }
            if r.iommu_group.is_none() {
                blockers.push(
                    "no IOMMU group (enable the IOMMU: intel_iommu=on / amd_iommu=on)".into(),
                );
            }
            if !vfio_present {
                blockers.push("/dev/vfio/vfio is missing (modprobe vfio-pci)".into());
            }
            let pairs = r.msix_vectors.map_or(0, |v| v.saturating_sub(1) / 2);
            if pairs == 0 {
                blockers.push("too few MSI-X vectors for one queue pair (needs 3)".into());
            }
            if blockers.is_empty() {
                r.plan = "offload";
                r.detail = format!(
                    "VFIO offload, up to {pairs} queue pair(s) ({} MSI-X vectors)",
                    r.msix_vectors.unwrap_or(0)
                );
                return;
            }
            let blocked = format!("offload blocked: {}", blockers.join("; "));
            match software_on(r) {
                Ok(how) => {
                    r.plan = "fallback";
                    r.detail = format!("{blocked}; falls back to software, {how}");
                }
                Err(why) => {
                    r.plan = "none";
                    r.detail = format!("{blocked}; no software fallback: {why}");
                }
            }
        }
    }
}

/// The table `vdpactl nics` prints.
pub fn render(reports: &[NicReport]) -> String {
    if reports.is_empty() {
        return "no PCI network functions found\n".to_owned();
    }
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let rows: Vec<[String; 6]> = reports
        .iter()
        .map(|r| {
            [
                r.pci.clone(),
                dash(r.driver.clone()),
                dash(
                    r.netdev
                        .clone()
                        .or_else(|| r.other_netdevs.first().map(|n| format!("({n})"))),
                ),
                dash(r.iommu_group.map(|g| g.to_string())),
                dash(r.msix_vectors.map(|v| v.to_string())),
                r.plan.to_owned(),
            ]
        })
        .collect();
    let header = ["PCI", "DRIVER", "NETDEV", "IOMMU", "MSI-X", "AUTO MODE"];
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 6]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s.push_str(&format!("{c:<w$}  ", w = widths[i]));
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header);
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
    }
    for r in reports {
        out.push_str(&format!(
            "\n{}  {}\n  auto mode   {}: {}\n  classified  {}: {}\n",
            r.pci, r.name, r.plan, r.detail, r.classification, r.reason
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hwdrv::sim::{layout, SimConfig};

    fn e1000e() -> Vec<u8> {
        let mut b = vec![0u8; 256];
        b[0..2].copy_from_slice(&0x8086u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x10d3u16.to_le_bytes());
        b[8..12].copy_from_slice(&0x0200_0000u32.to_le_bytes());
        b
    }

    fn function(
        root: &Path,
        bdf: &str,
        config: &[u8],
        driver: Option<&str>,
        group: Option<u32>,
    ) -> PathBuf {
        let dir = root.join(bdf);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config"), config).unwrap();
        if let Some(d) = driver {
            std::fs::create_dir_all(root.join("drivers").join(d)).unwrap();
            std::os::unix::fs::symlink(root.join("drivers").join(d), dir.join("driver")).unwrap();
        }
        if let Some(g) = group {
            std::fs::create_dir_all(root.join("groups").join(g.to_string())).unwrap();
            std::os::unix::fs::symlink(
                root.join("groups").join(g.to_string()),
                dir.join("iommu_group"),
            )
            .unwrap();
        }
        dir
    }

    /// A fake sysfs: an Intel NIC with its interface, a virtio-net function bound to
    /// vfio-pci, one still bound to virtio-pci (interface under virtio0), one without
    /// an IOMMU group or interface, and a disk controller that is no NIC.
    #[test]
    fn fake_sysfs_gives_each_function_its_plan() {
        let root = std::env::temp_dir().join(format!("vdpad-discover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let devices = root.join("devices");
        let virtio = layout::config_space(&SimConfig::default())[..256].to_vec();
        let intel = function(&devices, "0000:00:06.0", &e1000e(), Some("e1000e"), Some(5));
        std::fs::create_dir_all(intel.join("net/enp0s6")).unwrap();
        function(
            &devices,
            "0000:3b:00.2",
            &virtio,
            Some("vfio-pci"),
            Some(12),
        );
        let kernel = function(
            &devices,
            "0000:3b:00.3",
            &virtio,
            Some("virtio-pci"),
            Some(13),
        );
        std::fs::create_dir_all(kernel.join("virtio0/net/eth1")).unwrap();
        function(&devices, "0000:3b:00.4", &virtio, Some("vfio-pci"), None);
        let mut disk = e1000e();
        disk[8..12].copy_from_slice(&0x0106_0100u32.to_le_bytes());
        function(&devices, "0000:00:1f.2", &disk, Some("ahci"), Some(1));

        let r = scan(&devices, true).unwrap();
        let pcis: Vec<&str> = r.iter().map(|n| n.pci.as_str()).collect();
        assert_eq!(
            pcis,
            [
                "0000:00:06.0",
                "0000:3b:00.2",
                "0000:3b:00.3",
                "0000:3b:00.4"
            ]
        );

        assert_eq!((r[0].plan, r[0].classification), ("software", "software"));
        assert_eq!(r[0].detail, "af_packet on enp0s6");
        assert_eq!(r[0].iommu_group, Some(5));

        assert_eq!(r[1].plan, "offload", "{}", r[1].detail);
        let vectors = r[1].msix_vectors.unwrap();
        assert!(
            r[1].detail
                .contains(&format!("up to {} queue pair(s)", (vectors - 1) / 2)),
            "{}",
            r[1].detail
        );

        assert_eq!(r[2].plan, "none", "{}", r[2].detail);
        assert_eq!(r[2].other_netdevs, ["eth1"]);
        assert!(
            r[2].detail.contains("bound to virtio-pci, not vfio-pci"),
            "{}",
            r[2].detail
        );
        assert!(r[2].detail.contains("netdev = \"eth1\""), "{}", r[2].detail);

        assert_eq!(r[3].plan, "none");
        assert!(r[3].detail.contains("no IOMMU group"), "{}", r[3].detail);

        // Without /dev/vfio/vfio nothing is offloaded.
        let r = scan(&devices, false).unwrap();
        assert_eq!(r[1].plan, "none");
        assert!(
            r[1].detail.contains("/dev/vfio/vfio is missing"),
            "{}",
            r[1].detail
        );

        let table = render(&r);
        assert!(table.starts_with("PCI "), "{table}");
        assert!(
            table.contains("0000:3b:00.3  virtio-pci  (eth1)"),
            "{table}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
