//! The rig as a vhost-vdpa frontend: the same guest memory, rings and traffic as over
//! vhost-user, but the device is `/dev/vhost-vdpa-N` (a vDPA device of the kernel, for
//! example vdpad's VDUSE device bound to `vhost_vdpa`), driven with the `vhost` crate's
//! vhost-vdpa ioctls the way QEMU drives it: owner, backend features, device status
//! (ACKNOWLEDGE, DRIVER, FEATURES_OK), the rig's memory mapped into the device's IOTLB
//! with IOVA = GPA, each ring's size, base, addresses (IOVAs) and eventfds, the rings
//! enabled, then DRIVER_OK.

use std::path::Path;

use vhost::vdpa::VhostVdpa;
use vhost::vhost_kern::vdpa::VhostKernVdpa;
use vhost::vhost_kern::VhostKernFeatures;
use vhost::VhostBackend;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::error::RigError;
use crate::options::RigOptions;
use crate::rig::{program_kernel_ring, Negotiation, Rig, RigParts, Transport};
use crate::setup::RigSetup;
use vdpa::virtio::features::{
    VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS,
    VIRTIO_RING_F_EVENT_IDX,
};

/// virtio device status bits.
const ACKNOWLEDGE: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
/// `VHOST_BACKEND_F_IOTLB_MSG_V2`: the IOTLB messages vhost-vdpa takes.
const BACKEND_IOTLB_MSG_V2: u64 = 1 << 0;

/// The vhost-vdpa device handle (the address space parameter is unused: vhost-vdpa
/// takes memory through IOTLB messages, not a memory table).
pub type VdpaHandle = VhostKernVdpa<GuestMemoryAtomic<GuestMemoryMmap<()>>>;

fn failed(step: &str, source: vhost::Error) -> RigError {
    RigError::Vdpa {
        step: step.to_owned(),
        source,
    }
}

/// Opens `path` and sets the device up for `opts` (whose `socket` is not used).
pub fn connect(path: &Path, opts: RigOptions) -> Result<Rig, RigError> {
    let setup = RigSetup::new(opts)?;
    let (opts, mem, mut rings, areas, scratch) = setup.into_parts();
    let path_str = path.to_string_lossy();
    let mut dev = VdpaHandle::new(&path_str, GuestMemoryAtomic::new(GuestMemoryMmap::new()))
        .map_err(|e| failed(&format!("opening {path_str}"), e))?;
    dev.set_owner().map_err(|e| failed("VHOST_SET_OWNER", e))?;
    let backend = dev
        .get_backend_features()
        .map_err(|e| failed("VHOST_GET_BACKEND_FEATURES", e))?;
    dev.set_backend_features(backend & BACKEND_IOTLB_MSG_V2)
        .map_err(|e| failed("VHOST_SET_BACKEND_FEATURES", e))?;
    dev.set_backend_features_acked(backend & BACKEND_IOTLB_MSG_V2);
    dev.set_status(0).map_err(|e| failed("reset", e))?;
    dev.set_status(ACKNOWLEDGE | DRIVER)
        .map_err(|e| failed("status DRIVER", e))?;
    let offered = dev
        .get_features()
        .map_err(|e| failed("VHOST_GET_FEATURES", e))?;
    if offered & VIRTIO_F_VERSION_1 == 0 {
        return Err(RigError::Unsupported(format!(
            "VIRTIO_F_VERSION_1 (offered {offered:#x})"
        )));
    }
    let mut ack = VIRTIO_F_VERSION_1 | (offered & VIRTIO_F_ACCESS_PLATFORM);
    if opts.event_idx {
        ack |= offered & VIRTIO_RING_F_EVENT_IDX;
    }
    if opts.mrg_rxbuf {
        ack |= offered & VIRTIO_NET_F_MRG_RXBUF;
    }
    // As a virtio-net driver: the link status in config space is read when offered.
    ack |= offered & VIRTIO_NET_F_STATUS;
    dev.set_features(ack)
        .map_err(|e| failed("VHOST_SET_FEATURES", e))?;
    dev.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK)
        .map_err(|e| failed("status FEATURES_OK", e))?;
    let status = dev.get_status().map_err(|e| failed("status", e))?;
    if status & FEATURES_OK == 0 {
        return Err(RigError::Unsupported(format!(
            "features {ack:#x} (the device cleared FEATURES_OK)"
        )));
    }
    for r in mem.regions() {
        dev.dma_map(r.gpa(), r.len(), r.user_addr() as *const u8, false)
            .map_err(|e| failed(&format!("IOTLB map of {:#x}+{:#x}", r.gpa(), r.len()), e))?;
    }
    let neg = Negotiation {
        offered_features: offered,
        acked_features: ack,
        ..Default::default()
    };
    for (i, r) in rings.iter_mut().enumerate() {
        program_kernel_ring(
            &dev,
            |i, c| dev.set_vring_addr(i, c),
            i,
            r,
            &opts,
            neg.event_idx(),
        )
        .map_err(|(step, e)| failed(&step, e))?;
        dev.set_vring_enable(i, true)
            .map_err(|e| failed(&format!("VHOST_VDPA_SET_VRING_ENABLE (ring {i})"), e))?;
    }
    dev.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
        .map_err(|e| failed("status DRIVER_OK", e))?;
    Ok(Rig::from_parts(RigParts {
        opts,
        mem,
        conn: Transport::VhostVdpa(Box::new(dev)),
        neg,
        rings,
        areas,
        scratch,
        backend: None,
    }))
}
