//! VDUSE: vdpad as a vDPA device of the kernel (`/dev/vduse/<name>`), the second
//! frontend of the device core. The kernel's vDPA bus then serves the device to QEMU
//! (`-netdev vhost-vdpa` through `vhost_vdpa`) or to its own virtio-net driver
//! (`virtio_vdpa`). Addresses are IOVAs, translated through the device's IOTLB
//! ([`iotlb`]); interrupts are an ioctl ([`irq`]); the datapaths are the same.

pub mod control;
pub mod frontend;
pub mod iotlb;
pub mod irq;
pub mod sys;

use tracing::{error, info};

use crate::device::Device;
use crate::server::{poll_readable, Shutdown};
use crate::virtio::features::VIRTIO_F_ACCESS_PLATFORM;
use crate::virtio::net_config::STATUS_OFFSET;
use control::{DeviceSpec, VduseDevice, VduseError};
use frontend::VduseFrontend;

/// Creates the VDUSE device for `device` (in the caller's thread, so that an error is
/// reported at once).
pub fn create(device: &Device) -> Result<VduseDevice, VduseError> {
    let features = device.offered_features();
    debug_assert!(features & VIRTIO_F_ACCESS_PLATFORM != 0);
    VduseDevice::create(&DeviceSpec {
        name: device.name().to_owned(),
        features,
        queues: u32::from(device.ring_count()),
        max_queue_size: device.config().queue_size,
        config: device.config_space().to_vec(),
    })
}

/// Tells the driver the link changed: the config space's `status` and a config
/// interrupt, as a virtio-pci device would.
fn tell_link(frontend: &VduseFrontend, device: &Device, up: bool) {
    let status = &device.config_space()[STATUS_OFFSET..STATUS_OFFSET + 2];
    match frontend
        .vduse()
        .config_changed(STATUS_OFFSET as u32, status)
    {
        Ok(()) => info!(
            device = device.name(),
            up, "VDUSE: the driver was told the link changed"
        ),
        Err(e) => {
            error!(device = device.name(), error = %e, "VDUSE: telling the driver the link changed failed")
        }
    }
}

/// Serves `vduse` for `device` until `shutdown`, then stops the device; the VDUSE
/// device is destroyed when `vduse` is dropped at the end.
pub fn serve(mut device: Device, vduse: VduseDevice, shutdown: Shutdown) {
    device.connected();
    let mut frontend = VduseFrontend::new(vduse);
    let attention = device.attention_fd();
    let reason = loop {
        let fd = frontend.vduse().raw_fd();
        let mut fds = vec![fd, shutdown.as_raw_fd(), attention];
        fds.extend(device.link_event_fd());
        match poll_readable(&fds, -1) {
            Ok(r) if r[1] => break "daemon shutting down".to_owned(),
            Ok(r) if r.get(3) == Some(&true) => {
                if let Some(up) = device.poll_link() {
                    tell_link(&frontend, &device, up);
                }
                continue;
            }
            Ok(r) if r[2] => {
                // A pair stopped on its own. With faulted memory nothing can run until
                // the driver resets the device (VDUSE cannot ask it to); say so.
                if let Some(why) = device.attend() {
                    error!(device = device.name(), %why, "VDUSE device stopped until the driver resets it");
                }
                continue;
            }
            Ok(r) if r[0] => {}
            Ok(_) => continue,
            Err(e) => break format!("poll failed: {e}"),
        }
        if let Err(e) = frontend.serve_pending(&mut device) {
            error!(device = device.name(), error = %e, "VDUSE device fd failed");
            break format!("device fd failed: {e}");
        }
    };
    frontend.reset(&mut device);
    device.disconnected();
    info!(device = device.name(), %reason, "VDUSE device stopped");
}
