//! The QEMU command line that attaches a VM to a vdpad device.
//!
//! One option depends on the QEMU release: the chardev's reconnect interval is
//! `reconnect-ms=` (milliseconds) from QEMU 9.2 on, and `reconnect=` (seconds) before;
//! 9.2 deprecated `reconnect=` and older releases reject `reconnect-ms=`. Everything
//! else works from QEMU 7.2 (Debian 12) on.

use std::fmt;

use vdpad_config::{DeviceConfig, SocketRole};

/// The `-chardev` option's value: for a server device QEMU connects and reconnects
/// (about every second, with the option `qemu` knows) after vdpad restarts; for a
/// client device QEMU is the server — it owns the socket and listens, `wait=off` so
/// that QEMU starts without waiting for vdpad, and vdpad connects (and reconnects) to it.
fn chardev(dev: &DeviceConfig, id: &str, qemu: QemuVersion) -> String {
    let path = dev.socket.display();
    match dev.socket_role {
        SocketRole::Server => format!("socket,id=chr_{id},path={path},{}", qemu.reconnect_option()),
        SocketRole::Client => format!("socket,id=chr_{id},path={path},server=on,wait=off"),
    }
}

/// A QEMU release (`major.minor`), as `qemu-system-x86_64 --version` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    /// The major version (`10` in 10.0.2).
    pub major: u32,
    /// The minor version (`0` in 10.0.2).
    pub minor: u32,
}

impl QemuVersion {
    /// The first release whose socket chardev takes `reconnect-ms=`.
    pub const RECONNECT_MS: QemuVersion = QemuVersion { major: 9, minor: 2 };

    /// Parses the first line of `qemu-system-x86_64 --version`
    /// (`QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)`).
    pub fn parse(version_output: &str) -> Option<QemuVersion> {
        let rest = version_output.split("version ").nth(1)?;
        let number = rest.split_whitespace().next()?;
        let mut parts = number.split('.').map(|p| p.parse::<u32>().ok());
        Some(QemuVersion {
            major: parts.next()??,
            minor: parts.next()??,
        })
    }

    /// The chardev option that makes QEMU reconnect to vdpad's socket about every
    /// second: `reconnect-ms=1000` from 9.2 on, `reconnect=1` before.
    pub fn reconnect_option(self) -> &'static str {
        if self >= QemuVersion::RECONNECT_MS {
            "reconnect-ms=1000"
        } else {
            "reconnect=1"
        }
    }
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The QEMU options that give a VM a virtio-net NIC served by `dev` (chardev, netdev
/// and device, one option and its value per element), for QEMU release `qemu`.
pub fn nic_options(dev: &DeviceConfig, qemu: QemuVersion) -> Vec<String> {
    let id = dev.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let mut device = format!("virtio-net-pci,netdev=net_{id}");
    if let Some(mac) = dev.mac {
        device.push_str(&format!(",mac={mac}"));
    }
    if dev.queue_pairs > 1 {
        // One vector per queue plus config and control queue.
        device.push_str(&format!(",mq=on,vectors={}", 2 * dev.queue_pairs + 2));
    }
    if !dev.mrg_rxbuf {
        device.push_str(",mrg_rxbuf=off");
    }
    if !dev.event_idx {
        device.push_str(",event_idx=off");
    }
    if let Some(mtu) = dev.mtu {
        device.push_str(&format!(",host_mtu={mtu}"));
    }
    vec![
        "-chardev".to_owned(),
        chardev(dev, &id, qemu),
        "-netdev".to_owned(),
        format!(
            "vhost-user,id=net_{id},chardev=chr_{id},queues={}",
            dev.queue_pairs
        ),
        "-device".to_owned(),
        device,
    ]
}

/// QEMU options (one per line, ready to paste after `qemu-system-x86_64`) that give a
/// VM a virtio-net NIC served by `dev`, for QEMU release `qemu`. Guest memory must be
/// shared (memfd, `share=on`) for any vhost-user device.
pub fn command_line(dev: &DeviceConfig, mem_size: &str, qemu: QemuVersion) -> String {
    let mut lines = vec![
        format!("-object memory-backend-memfd,id=mem,size={mem_size},share=on"),
        "-machine q35,memory-backend=mem".to_owned(),
    ];
    lines.extend(nic_options(dev, qemu).chunks(2).map(|pair| pair.join(" ")));
    lines.join(" \\\n  ")
}

/// What to change in [`command_line`]'s output (made for QEMU 9.2 and later) for an
/// older QEMU.
pub fn older_qemu_note() -> String {
    format!(
        "QEMU older than {}, e.g. Debian 12's 7.2: {} instead of {}",
        QemuVersion::RECONNECT_MS,
        QemuVersion { major: 7, minor: 2 }.reconnect_option(),
        QemuVersion::RECONNECT_MS.reconnect_option()
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn versions_parse_from_qemu_output() {
        let v = QemuVersion::parse(
            "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright",
        );
        assert_eq!(v, Some(QemuVersion { major: 7, minor: 2 }));
        let v = QemuVersion::parse("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)");
        assert_eq!(
            v,
            Some(QemuVersion {
                major: 10,
                minor: 0
            })
        );
        assert_eq!(QemuVersion::parse("qemu: command not found"), None);
        assert_eq!(QemuVersion::parse("QEMU emulator version x.y"), None);
    }

    #[test]
    fn reconnect_option_follows_the_release() {
        let v = |major, minor| QemuVersion { major, minor };
        assert_eq!(v(7, 2).reconnect_option(), "reconnect=1");
        assert_eq!(v(8, 2).reconnect_option(), "reconnect=1");
        assert_eq!(v(9, 1).reconnect_option(), "reconnect=1");
        assert_eq!(v(9, 2).reconnect_option(), "reconnect-ms=1000");
        assert_eq!(v(10, 0).reconnect_option(), "reconnect-ms=1000");
        assert!(older_qemu_note().contains("reconnect=1 instead of reconnect-ms=1000"));
    }

    #[test]
    fn a_client_device_makes_qemu_the_server() {
        let mut dev = DeviceConfig::software_loopback("vm-1", PathBuf::from("/q/vm-1.sock"));
        let server = command_line(&dev, "1G", QemuVersion::RECONNECT_MS);
        assert!(
            server.contains("-chardev socket,id=chr_vm_1,path=/q/vm-1.sock,reconnect-ms=1000"),
            "{server}"
        );
        assert!(!server.contains("server=on"), "{server}");
        dev.socket_role = SocketRole::Client;
        let client = command_line(&dev, "1G", QemuVersion::RECONNECT_MS);
        assert!(
            client.contains("-chardev socket,id=chr_vm_1,path=/q/vm-1.sock,server=on,wait=off"),
            "{client}"
        );
        assert!(!client.contains("reconnect"), "{client}");
        assert!(client.contains("-netdev vhost-user,id=net_vm_1,chardev=chr_vm_1,queues=1"));
    }
}
