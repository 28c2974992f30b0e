//! The QEMU command line that attaches a VM to a vdpad device.

use vdpad_config::DeviceConfig;

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
        format!(
            "-chardev socket,id=chr_{id},path={},reconnect-ms=1000",
            dev.socket.display()
        ),
        format!(
            "-netdev vhost-user,id=net_{id},chardev=chr_{id},queues={}",
            dev.queue_pairs
        ),
        format!("-device {device}"),
    ]
    .join(" \\\n  ")
}
