//! The rig as a frontend of the kernel's vhost-net: the same guest memory, rings and
//! traffic as over vhost-user, but the device is `/dev/vhost-net` with a tap as its
//! backend, set up the way QEMU sets up `-netdev tap,vhost=on`: owner, features
//! (without `VHOST_NET_F_VIRTIO_NET_HDR`: the tap carries the 12-byte virtio-net
//! header itself), the memory table, each ring's size, base, addresses, eventfds, and
//! the tap as each ring's backend. This is the kernel's own software datapath beside
//! which vdpad's `tap` backend is measured (docs/performance.md).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use vhost::net::VhostNet;
use vhost::vhost_kern::net::Net;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap};

use crate::error::RigError;
use crate::options::RigOptions;
use crate::rig::{program_kernel_ring, Negotiation, Rig, RigParts, Transport};
use crate::setup::RigSetup;
use vdpa::virtio::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX};

/// The vhost-net handle; it translates ring addresses through a second mapping of the
/// rig's memfd.
pub type NetHandle = Net<GuestMemoryAtomic<GuestMemoryMmap<()>>>;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
/// The virtio 1.x net header (with `num_buffers`).
const VNET_HDR_LEN: libc::c_int = 12;

fn failed(step: &str, source: vhost::Error) -> RigError {
    RigError::VhostNet {
        step: step.to_owned(),
        source,
    }
}

/// Opens (or creates) tap `name` as vhost-net wants it: a multi-queue tap with the
/// virtio-net header, no offloads.
fn open_tap(name: &str) -> Result<File, RigError> {
    let fail = |what: &str, e: std::io::Error| RigError::Tap(format!("{what} {name}: {e}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| fail("opening /dev/net/tun for", e))?;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(RigError::Tap(format!("bad interface name {name:?}")));
    }
    // SAFETY: an all-zero ifreq is valid; the name fits (checked) with its NUL.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
    let fd = file.as_raw_fd();
    // SAFETY: TUNSETIFF reads and writes one ifreq, which lives across the call.
    if unsafe { libc::ioctl(fd, TUNSETIFF, &mut req) } < 0 {
        return Err(fail("TUNSETIFF", std::io::Error::last_os_error()));
    }
    // SAFETY: TUNSETVNETHDRSZ reads one int, which lives across the call.
    if unsafe { libc::ioctl(fd, TUNSETVNETHDRSZ, &VNET_HDR_LEN) } < 0 {
        return Err(fail("TUNSETVNETHDRSZ", std::io::Error::last_os_error()));
    }
    // SAFETY: TUNSETOFFLOAD takes its flags by value and touches no memory.
    if unsafe { libc::ioctl(fd, TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
        return Err(fail("TUNSETOFFLOAD", std::io::Error::last_os_error()));
    }
    Ok(file)
}

/// Sets `/dev/vhost-net` up for `opts` with tap `tap` as the backend of every ring.
pub fn connect(tap: &str, opts: RigOptions) -> Result<Rig, RigError> {
    if opts.queue_pairs != 1 {
        return Err(RigError::Options(format!(
            "vhost-net serves one queue pair per /dev/vhost-net open, not {}",
            opts.queue_pairs
        )));
    }
    if opts.host_notifiers || opts.listen || opts.dirty_log {
        return Err(RigError::Options(
            "host notifiers, --listen and --dirty-log are vhost-user only".into(),
        ));
    }
    let setup = RigSetup::new(opts)?;
    let (opts, mem, mut rings, areas, scratch) = setup.into_parts();
    let tap = open_tap(tap)?;
    // The kernel works with our virtual addresses; a second mapping of the memfd gives
    // the handle a GPA → address translation for the rings, and the memory table.
    let ranges: Vec<_> = mem
        .regions()
        .iter()
        .map(|r| {
            let file = mem.memfd().try_clone().map_err(|e| {
                RigError::Tap(format!("cannot duplicate the guest memory memfd: {e}"))
            })?;
            Ok((
                GuestAddress(r.gpa()),
                r.len() as usize,
                Some(FileOffset::new(file, r.file_offset())),
            ))
        })
        .collect::<Result<_, RigError>>()?;
    let view = GuestMemoryMmap::<()>::from_ranges_with_files(ranges)
        .map_err(|e| RigError::Tap(format!("cannot map guest memory for vhost-net: {e}")))?;
    let regions: Vec<VhostUserMemoryRegionInfo> = mem
        .regions()
        .iter()
        .map(|r| {
            let host = view
                .get_host_address(GuestAddress(r.gpa()))
                .map_err(|e| RigError::Tap(format!("guest memory view: {e}")))?;
            Ok(VhostUserMemoryRegionInfo {
                guest_phys_addr: r.gpa(),
                memory_size: r.len(),
                userspace_addr: host as u64,
                mmap_offset: 0,
                mmap_handle: -1,
            })
        })
        .collect::<Result<_, RigError>>()?;
    let dev = NetHandle::new(GuestMemoryAtomic::new(view))
        .map_err(|e| failed("opening /dev/vhost-net", e))?;
    dev.set_owner().map_err(|e| failed("VHOST_SET_OWNER", e))?;
    let offered = dev
        .get_features()
        .map_err(|e| failed("VHOST_GET_FEATURES", e))?;
    if offered & VIRTIO_F_VERSION_1 == 0 {
        return Err(RigError::Unsupported(format!(
            "VIRTIO_F_VERSION_1 (vhost-net offered {offered:#x})"
        )));
    }
    let mut ack = VIRTIO_F_VERSION_1;
    if opts.event_idx {
        ack |= offered & VIRTIO_RING_F_EVENT_IDX;
    }
    if opts.mrg_rxbuf {
        ack |= offered & VIRTIO_NET_F_MRG_RXBUF;
    }
    dev.set_features(ack)
        .map_err(|e| failed("VHOST_SET_FEATURES", e))?;
    dev.set_mem_table(&regions)
        .map_err(|e| failed("VHOST_SET_MEM_TABLE", e))?;
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
        dev.set_backend(i, Some(&tap))
            .map_err(|e| failed(&format!("VHOST_NET_SET_BACKEND (ring {i})"), e))?;
    }
    Ok(Rig::from_parts(RigParts {
        opts,
        mem,
        conn: Transport::VhostNet(Box::new((dev, tap))),
        neg,
        rings,
        areas,
        scratch,
        backend: None,
    }))
}
