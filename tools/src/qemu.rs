//! The QEMU command line that attaches a VM to a vdpad device.

use vdpad_config::{DeviceConfig, SocketRole};

/// The `-chardev` option: for a server device QEMU connects and reconnects (every
/// second) after vdpad restarts; for a client device QEMU is the server — it owns the
/// socket and listens, `wait=off` so that QEMU starts without waiting for vdpad, and
/// vdpad connects (and reconnects) to it.
fn chardev(dev: &DeviceConfig, id: &str) -> String {
    let path = dev.socket.display();
    match dev.socket_role {
        SocketRole::Server => format!("-chardev socket,id=chr_{id},path={path},reconnect-ms=1000"),
        SocketRole::Client => format!("-chardev socket,id=chr_{id},path={path},server=on,wait=off"),
    }
}

/// QEMU options (one per line, ready to paste after `qemu-system-x86_64`) that give a
/// VM a virtio-net NIC served by `dev`. Guest memory must be shared (memfd,
/// `share=on`) for any vhost-user device.
pub fn command_line(dev: &DeviceConfig, mem_size: &str) -> String {
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
    [
        format!("-object memory-backend-memfd,id=mem,size={mem_size},share=on"),
        "-machine q35,memory-backend=mem".to_owned(),
        chardev(dev, &id),
        format!(
            "-netdev vhost-user,id=net_{id},chardev=chr_{id},queues={}",
            dev.queue_pairs
        ),
        format!("-device {device}"),
    ]
    .join(" \\\n  ")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_client_device_makes_qemu_the_server() {
        let mut dev = DeviceConfig::software_loopback("vm-1", PathBuf::from("/q/vm-1.sock"));
        let server = command_line(&dev, "1G");
        assert!(
            server.contains("-chardev socket,id=chr_vm_1,path=/q/vm-1.sock,reconnect-ms=1000"),
            "{server}"
        );
        assert!(!server.contains("server=on"), "{server}");
        dev.socket_role = SocketRole::Client;
        let client = command_line(&dev, "1G");
        assert!(
            client.contains("-chardev socket,id=chr_vm_1,path=/q/vm-1.sock,server=on,wait=off"),
            "{client}"
        );
        assert!(!client.contains("reconnect"), "{client}");
        assert!(client.contains("-netdev vhost-user,id=net_vm_1,chardev=chr_vm_1,queues=1"));
    }
}
