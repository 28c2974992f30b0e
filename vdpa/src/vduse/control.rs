//! A VDUSE device's life in the kernel: created on `/dev/vduse/control` with its
//! features and config space, its virtqueues declared, its fd (`/dev/vduse/<name>`)
//! opened; per-virtqueue ioctls; destroyed when dropped.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use thiserror::Error;
use tracing::{info, warn};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};

use super::sys::{
    self, DevConfig, DevRequest, DevResponse, IotlbEntry, VqConfig, VqEventFd, VqInfo,
};

/// Where the VDUSE control device lives.
pub const CONTROL_PATH: &str = "/dev/vduse/control";

/// Why a VDUSE device could not be set up.
#[derive(Debug, Error)]
pub enum VduseError {
    /// `/dev/vduse/control` cannot be opened.
    #[error("opening {CONTROL_PATH} (is the vduse module loaded? `modprobe vduse`, Linux >= 6.8 for net devices)")]
    Control(#[source] io::Error),
    /// The kernel refused an ioctl.
    #[error("{what}")]
    Ioctl {
        /// The ioctl and its argument.
        what: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The device name does not fit.
    #[error("device name {0:?} is too long for VDUSE")]
    Name(String),
}

fn ioctl_error(what: impl Into<String>) -> VduseError {
    VduseError::Ioctl {
        what: what.into(),
        source: io::Error::last_os_error(),
    }
}

/// What a VDUSE device is created with.
#[derive(Clone, Debug)]
pub struct DeviceSpec {
    /// Device name: `/dev/vduse/<name>` and the vdpa device name.
    pub name: String,
    /// Virtio features offered (must include VERSION_1 and ACCESS_PLATFORM).
    pub features: u64,
    /// Number of virtqueues.
    pub queues: u32,
    /// Largest size of each virtqueue.
    pub max_queue_size: u16,
    /// The virtio-net config space.
    pub config: Vec<u8>,
}

/// A created VDUSE device and its open fd.
#[derive(Debug)]
pub struct VduseDevice {
    name: String,
    control: File,
    dev: Option<File>,
}

impl VduseDevice {
    /// Creates the device and declares its virtqueues. A stale device of the same name
    /// (left by a previous vdpad that was killed) is destroyed first, when nothing
    /// holds it.
    pub fn create(spec: &DeviceSpec) -> Result<Self, VduseError> {
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(CONTROL_PATH)
            .map_err(VduseError::Control)?;
        let version = sys::VDUSE_API_VERSION;
        // SAFETY: SET_API_VERSION reads one u64, which `version` is.
        if unsafe { ioctl_with_ref(&control, sys::VDUSE_SET_API_VERSION(), &version) } < 0 {
            return Err(ioctl_error("VDUSE_SET_API_VERSION 0"));
        }
        let name = name_bytes(&spec.name)?;
        if PathBuf::from(format!("/dev/vduse/{}", spec.name)).exists() {
            // SAFETY: DESTROY_DEV reads a NUL-terminated name of VDUSE_NAME_MAX bytes.
            let r = unsafe { ioctl_with_ref(&control, sys::VDUSE_DESTROY_DEV(), &name) };
            let e = io::Error::last_os_error();
            if r >= 0 {
                info!(device = %spec.name, "destroyed a stale VDUSE device left by an earlier run");
            } else if e.raw_os_error() == Some(libc::EBUSY) {
                // Still on the vDPA bus: a vdpad that was killed left it there. Take it
                // over (VDUSE lets a new process open the device once the old fd is
                // gone); the daemon then rebinds its driver, which resets the device
                // and replays the driver's setup to us.
                let dev = open_device(&spec.name)?;
                warn!(device = %spec.name,
                      "taking over a VDUSE device that an earlier vdpad left on the vDPA bus");
                return Ok(VduseDevice {
                    name: spec.name.clone(),
                    control,
                    dev: Some(dev),
                });
            } else {
                warn!(device = %spec.name, error = %e, "a VDUSE device of this name exists and cannot be destroyed");
            }
        }
        create_dev(&control, &name, spec)?;
        let mut device = VduseDevice {
            name: spec.name.clone(),
            control,
            dev: None,
        };
        device.dev = Some(open_device(&spec.name)?);
        for index in 0..spec.queues {
            let vq = VqConfig {
                index,
                max_size: spec.max_queue_size,
                ..Default::default()
            };
            // SAFETY: VQ_SETUP reads one vduse_vq_config, which `vq` is.
            if unsafe { ioctl_with_ref(device.fd(), sys::VDUSE_VQ_SETUP(), &vq) } < 0 {
                return Err(ioctl_error(format!("VDUSE_VQ_SETUP {index}")));
            }
        }
        info!(device = %spec.name, features = format_args!("{:#x}", spec.features),
              queues = spec.queues, "VDUSE device created: /dev/vduse/{}", spec.name);
        Ok(device)
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn fd(&self) -> &File {
        self.dev.as_ref().expect("open until dropped")
    }

    /// The device fd, for polling.
    pub fn raw_fd(&self) -> RawFd {
        self.fd().as_raw_fd()
    }

    /// Reads one request, or `None` when none is pending.
    pub fn read_request(&self) -> io::Result<Option<DevRequest>> {
        let mut req = DevRequest::default();
        let want = std::mem::size_of::<DevRequest>();
        // SAFETY: `req` is a plain repr(C) struct of `want` bytes that any bytes may
        // fill; the kernel writes at most `want` bytes into it.
        let n = unsafe { libc::read(self.raw_fd(), (&mut req as *mut DevRequest).cast(), want) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        if n as usize != want {
            return Err(io::Error::other(format!("short VDUSE request: {n} bytes")));
        }
        Ok(Some(req))
    }

    /// Writes the response to a request.
    pub fn write_response(&self, resp: &DevResponse) -> io::Result<()> {
        let len = std::mem::size_of::<DevResponse>();
        // SAFETY: `resp` is a plain repr(C) struct of `len` bytes, read by the kernel.
        let n = unsafe { libc::write(self.raw_fd(), (resp as *const DevResponse).cast(), len) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The features the driver acked (valid from FEATURES_OK).
    pub fn driver_features(&self) -> io::Result<u64> {
        let mut f = 0u64;
        // SAFETY: DEV_GET_FEATURES writes one u64 into `f`.
        if unsafe { ioctl_with_mut_ref(self.fd(), sys::VDUSE_DEV_GET_FEATURES(), &mut f) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f)
    }

    /// Where the driver put virtqueue `index`.
    pub fn vq_info(&self, index: u32) -> io::Result<VqInfo> {
        let mut info = VqInfo {
            index,
            ..Default::default()
        };
        // SAFETY: VQ_GET_INFO reads the index and writes one vduse_vq_info into `info`.
        if unsafe { ioctl_with_mut_ref(self.fd(), sys::VDUSE_VQ_GET_INFO(), &mut info) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(info)
    }

    /// Makes the kernel signal `kick` (or nothing, with `None`) when the driver kicks
    /// virtqueue `index`.
    pub fn set_kick(&self, index: u32, kick: Option<RawFd>) -> io::Result<()> {
        let arg = VqEventFd {
            index,
            fd: kick.unwrap_or(-1),
        };
        // SAFETY: VQ_SETUP_KICKFD reads one vduse_vq_eventfd; the fd (if any) stays
        // open for the duration of the call, and the kernel takes its own reference.
        if unsafe { ioctl_with_ref(self.fd(), sys::VDUSE_VQ_SETUP_KICKFD(), &arg) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The IOTLB entry overlapping `[start, last]` and a new fd of the file behind it,
    /// or `None` when no entry overlaps.
    pub fn iotlb_entry(&self, start: u64, last: u64) -> io::Result<Option<(IotlbEntry, File)>> {
        let mut e = IotlbEntry {
            start,
            last,
            ..Default::default()
        };
        // SAFETY: IOTLB_GET_FD reads and writes one vduse_iotlb_entry; its return value
        // is a new descriptor that we own.
        let fd = unsafe { ioctl_with_mut_ref(self.fd(), sys::VDUSE_IOTLB_GET_FD(), &mut e) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EINVAL) => Ok(None),
                _ => Err(err),
            };
        }
        // SAFETY: the kernel just installed `fd` for us; nothing else owns it.
        Ok(Some((e, unsafe { File::from_raw_fd(fd) })))
    }

    /// Writes `bytes` into the kernel's copy of the device's config space at `offset`
    /// (VDUSE_DEV_SET_CONFIG) and interrupts the driver for the change
    /// (VDUSE_DEV_INJECT_CONFIG_IRQ).
    pub fn config_changed(&self, offset: u32, bytes: &[u8]) -> io::Result<()> {
        let header = sys::ConfigDataHeader {
            offset,
            length: bytes.len() as u32,
        };
        let mut arg =
            Vec::with_capacity(std::mem::size_of::<sys::ConfigDataHeader>() + bytes.len());
        arg.extend_from_slice(&header.offset.to_ne_bytes());
        arg.extend_from_slice(&header.length.to_ne_bytes());
        arg.extend_from_slice(bytes);
        // SAFETY: SET_CONFIG reads the 8-byte header and then `length` bytes after it,
        // all inside `arg`, which lives across the call; it writes nothing back.
        if unsafe {
            vmm_sys_util::ioctl::ioctl_with_ptr(
                self.fd(),
                sys::VDUSE_DEV_SET_CONFIG(),
                arg.as_ptr(),
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: INJECT_CONFIG_IRQ takes no argument.
        if unsafe { vmm_sys_util::ioctl::ioctl(self.fd(), sys::VDUSE_DEV_INJECT_CONFIG_IRQ()) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A second descriptor of the device, for the thread that injects interrupts
    /// (it must be closed before the device can be destroyed).
    pub fn irq_handle(&self) -> io::Result<IrqHandle> {
        Ok(IrqHandle(self.fd().try_clone()?))
    }
}

/// Raises virtqueue interrupts of one VDUSE device (`VDUSE_VQ_INJECT_IRQ`).
#[derive(Debug)]
pub struct IrqHandle(File);

impl IrqHandle {
    /// Interrupts the driver for virtqueue `index`.
    pub fn inject(&self, index: u32) -> io::Result<()> {
        // SAFETY: VQ_INJECT_IRQ reads one u32, which `index` is.
        if unsafe { ioctl_with_ref(&self.0, sys::VDUSE_VQ_INJECT_IRQ(), &index) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for VduseDevice {
    fn drop(&mut self) {
        // The device fd must be closed before the device can be destroyed.
        drop(self.dev.take());
        let Ok(name) = name_bytes(&self.name) else {
            return;
        };
        // SAFETY: DESTROY_DEV reads a NUL-terminated name of VDUSE_NAME_MAX bytes.
        if unsafe { ioctl_with_ref(&self.control, sys::VDUSE_DESTROY_DEV(), &name) } < 0 {
            let e = io::Error::last_os_error();
            warn!(device = %self.name, error = %e,
                  "VDUSE device not destroyed (still on the vDPA bus? `vdpa dev del {}`)", self.name);
        } else {
            info!(device = %self.name, "VDUSE device destroyed");
        }
    }
}

/// Opens `/dev/vduse/<name>` (one process at a time may hold it).
fn open_device(name: &str) -> Result<File, VduseError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(format!("/dev/vduse/{name}"))
        .map_err(|source| VduseError::Ioctl {
            what: format!("opening /dev/vduse/{name}"),
            source,
        })
}

fn name_bytes(name: &str) -> Result<[u8; sys::VDUSE_NAME_MAX], VduseError> {
    let mut out = [0u8; sys::VDUSE_NAME_MAX];
    if name.is_empty() || name.len() >= sys::VDUSE_NAME_MAX || name.contains('\0') {
        return Err(VduseError::Name(name.to_owned()));
    }
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

/// VDUSE_CREATE_DEV: the fixed config followed by the config space, in one buffer.
fn create_dev(
    control: &File,
    name: &[u8; sys::VDUSE_NAME_MAX],
    spec: &DeviceSpec,
) -> Result<(), VduseError> {
    let head = DevConfig {
        name: *name,
        vendor_id: 0,
        device_id: sys::VIRTIO_ID_NET,
        features: spec.features,
        vq_num: spec.queues,
        vq_align: 4096,
        reserved: [0; 13],
        config_size: spec.config.len() as u32,
    };
    let head_len = std::mem::size_of::<DevConfig>();
    // u64 words keep the buffer aligned for the struct at its start.
    let mut buf = vec![0u64; (head_len + spec.config.len()).div_ceil(8)];
    let bytes = buf.as_mut_ptr().cast::<u8>();
    // SAFETY: `buf` holds at least head_len + config.len() bytes, is 8-byte aligned
    // (enough for DevConfig), and the two copies do not overlap.
    unsafe {
        std::ptr::write(bytes.cast::<DevConfig>(), head);
        std::ptr::copy_nonoverlapping(spec.config.as_ptr(), bytes.add(head_len), spec.config.len());
    }
    // SAFETY: CREATE_DEV reads a vduse_dev_config followed by config_size bytes, all
    // inside `buf`, which outlives the call.
    let r = unsafe {
        libc::ioctl(
            control.as_raw_fd(),
            sys::VDUSE_CREATE_DEV() as _,
            buf.as_ptr(),
        )
    };
    if r < 0 {
        return Err(ioctl_error(format!(
            "VDUSE_CREATE_DEV {} (features {:#x})",
            spec.name, spec.features
        )));
    }
    Ok(())
}
