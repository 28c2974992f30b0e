//! A lab guest for hardware-in-the-loop tests: QEMU emulates an IOMMU (VT-d with
//! interrupt remapping and device IOTLB) and real NICs, so that vdpad inside the guest
//! drives a virtio-net function through VFIO exactly as it would a vDPA-capable VF on
//! a host.
//!
//! The machine (see docs/testing.md, "Hardware in the loop"):
//!
//! * `-machine kernel-irqchip=split` and `-device intel-iommu,intremap=on,
//!   caching-mode=on,device-iotlb=on`; kernel command line `intel_iommu=on iommu=pt`;
//! * `virtio-net-pci,disable-legacy=on,iommu_platform=on,ats=on` behind a
//!   `pcie-root-port` (a PCIe function, so VFIO_DEVICE_RESET can do an FLR);
//! * an `e1000e`, and an `igb` when this QEMU has one: NICs without virtio rings, for
//!   auto mode's software choice;
//! * every NIC backed by a tap that the test creates beforehand in its network
//!   namespace, where QEMU runs too; the host side of each NIC is that tap.

use std::process::Command;

use super::guest::GuestConfig;
use super::lab::Lab;
use super::netns::Netns;

/// Vendor:device of QEMU's modern-only virtio-net function.
pub const VIRTIO_NET_ID: &str = "0x1af4:0x1041";
/// Vendor:device of QEMU's e1000e (Intel 82574L).
pub const E1000E_ID: &str = "0x8086:0x10d3";
/// Vendor:device of QEMU's igb (Intel 82576).
pub const IGB_ID: &str = "0x8086:0x10c9";

/// One emulated NIC of a [`NestedGuest`] and the tap behind it.
#[derive(Clone, Debug)]
pub struct Nic {
    /// QEMU device model (`virtio-net-pci`, `e1000e`, `igb`).
    pub model: &'static str,
    /// `0xVVVV:0xDDDD` as sysfs prints vendor and device, to find it in the guest.
    pub id: &'static str,
    /// The tap in the test's namespace.
    pub tap: String,
    /// The NIC's MAC address.
    pub mac: String,
    /// Queue pairs (more than one: a multi_queue tap and `mq=on`, so the function has
    /// MQ and a control queue, VIRTIO_NET_F_CTRL_VQ).
    pub queues: u16,
}

/// The NICs of a nested-VFIO guest and how to boot it.
#[derive(Clone, Debug)]
pub struct NestedGuest {
    /// The virtio-net function that gets bound to vfio-pci.
    pub virtio: Nic,
    /// A second one, behind its own root port (two devices of one VM's container).
    pub virtio2: Nic,
    /// The e1000e.
    pub e1000e: Nic,
    /// The igb, if QEMU has the model (QEMU >= 8.0).
    pub igb: Option<Nic>,
}

/// Whether `qemu -device help` lists device model `model`.
pub fn qemu_has_device(lab: &Lab, model: &str) -> bool {
    Command::new(&lab.qemu)
        .args(["-device", "help"])
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.contains(&format!("name \"{model}\""))
        })
        .unwrap_or(false)
}

impl NestedGuest {
    /// The standard machine; taps are named with `prefix` (at most 10 bytes), e.g.
    /// `<prefix>v` for the virtio NIC.
    pub fn new(lab: &Lab, prefix: &str) -> NestedGuest {
        assert!(prefix.len() <= 10, "tap prefix {prefix:?} too long");
        let nic = |model, id, suffix: &str, mac: &str| Nic {
            model,
            id,
            tap: format!("{prefix}{suffix}"),
            mac: mac.to_string(),
            queues: 1,
        };
        NestedGuest {
            virtio: nic("virtio-net-pci", VIRTIO_NET_ID, "v", "52:54:00:00:04:01"),
            virtio2: Nic {
                queues: 2,
                ..nic("virtio-net-pci", VIRTIO_NET_ID, "w", "52:54:00:00:04:04")
            },
            e1000e: nic("e1000e", E1000E_ID, "e", "52:54:00:00:04:02"),
            igb: qemu_has_device(lab, "igb").then(|| nic("igb", IGB_ID, "i", "52:54:00:00:04:03")),
        }
    }

    /// Every NIC: the first virtio function, the Intel ones, the second virtio one.
    pub fn nics(&self) -> Vec<&Nic> {
        let mut v = vec![&self.virtio, &self.e1000e];
        v.extend(self.igb.as_ref());
        v.push(&self.virtio2);
        v
    }

    /// Creates every NIC's tap in `ns` and sets it up (QEMU attaches to them).
    pub fn create_taps(&self, ns: &Netns) {
        for nic in self.nics() {
            if nic.queues > 1 {
                ns.ip(&[
                    "tuntap",
                    "add",
                    "dev",
                    &nic.tap,
                    "mode",
                    "tap",
                    "multi_queue",
                ]);
            } else {
                ns.tap(&nic.tap);
            }
            ns.up(&nic.tap);
        }
    }

    /// QEMU arguments for the IOMMU, the root port and the NICs.
    pub fn qemu_args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-machine",
            "kernel-irqchip=split",
            "-device",
            "intel-iommu,intremap=on,caching-mode=on,device-iotlb=on",
            "-device",
            "pcie-root-port,id=rp1,chassis=1,addr=0x4",
            "-device",
            "pcie-root-port,id=rp2,chassis=2,addr=0x5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let tap = |id: &str, nic: &Nic| {
            vec![
                "-netdev".to_string(),
                format!(
                    "tap,id={id},ifname={},script=no,downscript=no,queues={}",
                    nic.tap, nic.queues
                ),
            ]
        };
        // The first function has a doorbell page per queue (host notifiers can be
        // handed out), the second packs its doorbells on one page (they cannot) and
        // has two queue pairs, switched on through its control queue.
        for (id, bus, nic, pages) in [
            ("hwv", "rp1", &self.virtio, "on"),
            ("hww", "rp2", &self.virtio2, "off"),
        ] {
            let mq = if nic.queues > 1 {
                format!(",mq=on,vectors={}", 2 * nic.queues + 2)
            } else {
                String::new()
            };
            a.extend(tap(id, nic));
            a.extend([
                "-device".to_string(),
                format!(
                    "virtio-net-pci,netdev={id},bus={bus},disable-legacy=on,iommu_platform=on,\
                     ats=on,page-per-vq={pages},mac={}{mq},romfile=",
                    nic.mac
                ),
            ]);
        }
        a.extend(tap("hwe", &self.e1000e));
        a.extend([
            "-device".to_string(),
            format!(
                "e1000e,netdev=hwe,addr=0x6,mac={},romfile=",
                self.e1000e.mac
            ),
        ]);
        if let Some(igb) = &self.igb {
            a.extend(tap("hwi", igb));
            a.extend([
                "-device".to_string(),
                format!("igb,netdev=hwi,addr=0x7,mac={},romfile=", igb.mac),
            ]);
        }
        a
    }

    /// A guest configuration running `script` on this machine, with QEMU inside `ns`
    /// (where the taps are) and the IOMMU enabled on the kernel command line.
    pub fn guest_config(&self, script: &str, ns: &Netns) -> GuestConfig {
        let mut config = GuestConfig::new(script).qemu_args(self.qemu_args());
        config.append = format!("{} intel_iommu=on iommu=pt", config.append)
            .trim()
            .to_string();
        config.netns = Some(ns.name().to_string());
        config
    }
}

/// Shell functions for guest scripts on a [`NestedGuest`]:
///
/// * `bdf_of VENDOR:DEVICE` prints the first PCI function with that id (as sysfs
///   prints it, `0x1af4:0x1041`), `bdf_nth VENDOR:DEVICE N` the N-th (from 1);
/// * `bind_vfio BDF` unbinds the function from its driver, binds it to vfio-pci and
///   prints `VDPAD-HW-VFIO <bdf> driver=<driver> group=<n>`;
/// * `netdev_of BDF` prints the function's network interface;
/// * `wait_file PATH SECONDS` waits until PATH exists (returns 1 on timeout);
/// * `wait_grep TEXT FILE SECONDS` waits until FILE contains TEXT (1 on timeout).
pub const GUEST_FUNCTIONS: &str = r#"
bdf_nth() {
  n=0
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/vendor):$(cat $d/device)" = "$1" ] || continue
    n=$((n + 1)); [ $n -eq $2 ] && { echo ${d##*/}; return 0; }
  done
  return 1
}
bdf_of() { bdf_nth $1 1; }
bind_vfio() {
  d=/sys/bus/pci/devices/$1
  [ -e $d/driver ] && echo $1 > $d/driver/unbind
  echo vfio-pci > $d/driver_override
  echo $1 > /sys/bus/pci/drivers_probe
  drv=none; [ -e $d/driver ] && drv=$(basename $(readlink $d/driver))
  echo "VDPAD-HW-VFIO $1 driver=$drv group=$(basename $(readlink $d/iommu_group))"
  [ "$drv" = vfio-pci ]
}
netdev_of() { ls /sys/bus/pci/devices/$1/net 2>/dev/null | head -n 1; }
wait_file() {
  i=0
  while [ ! -e "$1" ]; do
    i=$((i + 1)); [ $i -gt $(($2 * 10)) ] && return 1
    sleep 0.1
  done
}
wait_grep() {
  i=0
  while ! grep -q "$1" "$2" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt $(($3 * 10)) ] && return 1
    sleep 0.1
  done
}
"#;
