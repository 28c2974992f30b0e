//! A client of the kernel's vDPA management interface: the generic netlink family
//! `"vdpa"` (`include/uapi/linux/vdpa.h`), what iproute2's `vdpa` tool speaks.
//!
//! A VDUSE device that vdpad creates on `/dev/vduse/control` is not on the vDPA bus
//! until someone asks the `vduse` management device for it: [`VdpaNetlink::dev_add`]
//! (`vdpa dev add name NAME mgmtdev vduse`). Then whichever vDPA bus driver is loaded
//! binds it — `virtio_vdpa` (a kernel virtio-net netdev) or `vhost_vdpa`
//! (`/dev/vhost-vdpa-N` for QEMU or DPDK) — which [`VdpaNetlink::dev_get`] reports from
//! sysfs ([`Binding`]). [`VdpaNetlink::dev_del`] takes it off the bus again.
//!
//! Raw netlink over a `libc` socket: the family id is resolved once with
//! `CTRL_CMD_GETFAMILY`; every receive has a timeout (`SO_RCVTIMEO`, set to what is left
//! of the request's time before each receive, so that a request ends within its
//! timeout); kernel errors carry the errno and the extended-ack message.
//!
//! Do not call this from a thread that services a VDUSE device's request channel:
//! adding the device makes the kernel probe it, and the probe waits for that thread.

pub mod wire;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wire::{Attr, Message};

/// The generic netlink family name (`VDPA_GENL_NAME`).
pub const VDPA_GENL_NAME: &str = "vdpa";
/// The family's version (`VDPA_GENL_VERSION`).
pub const VDPA_GENL_VERSION: u8 = 1;
/// The default timeout of one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// `enum vdpa_command`.
pub mod cmd {
    /// Reply command of management device queries.
    pub const MGMTDEV_NEW: u8 = 1;
    /// Query one management device, or dump all.
    pub const MGMTDEV_GET: u8 = 2;
    /// Create a vDPA device (also the reply command of device queries).
    pub const DEV_NEW: u8 = 3;
    /// Delete a vDPA device.
    pub const DEV_DEL: u8 = 4;
    /// Query one vDPA device, or dump all.
    pub const DEV_GET: u8 = 5;
}

/// `enum vdpa_attr` (the ones this client uses).
pub mod attr {
    /// Pad before 64-bit values (`VDPA_ATTR_PAD`).
    pub const PAD: u16 = 0;
    /// Management device's bus name, e.g. `pci` (string; absent for `vduse`).
    pub const MGMTDEV_BUS_NAME: u16 = 1;
    /// Management device's name, e.g. `vduse` or `0000:03:00.2` (string).
    pub const MGMTDEV_DEV_NAME: u16 = 2;
    /// Bit mask of virtio device ids the management device can create (u64).
    pub const MGMTDEV_SUPPORTED_CLASSES: u16 = 3;
    /// vDPA device name (string).
    pub const DEV_NAME: u16 = 4;
    /// Virtio device id, 1 = net (u32).
    pub const DEV_ID: u16 = 5;
    /// Virtio vendor id (u32).
    pub const DEV_VENDOR_ID: u16 = 6;
    /// Number of virtqueues (u32).
    pub const DEV_MAX_VQS: u16 = 7;
    /// Largest virtqueue size (u16).
    pub const DEV_MAX_VQ_SIZE: u16 = 8;
    /// Smallest virtqueue size (u16).
    pub const DEV_MIN_VQ_SIZE: u16 = 9;
    /// Most virtqueues a management device supports (u32).
    pub const DEV_MGMTDEV_MAX_VQS: u16 = 15;
    /// Virtio features a management device supports (u64).
    pub const DEV_SUPPORTED_FEATURES: u16 = 16;
}

/// Everything that can go wrong talking to the vdpa family.
#[derive(Debug, thiserror::Error)]
pub enum VdpaNetlinkError {
    /// A socket call failed.
    #[error("netlink socket: {op}: {source}")]
    Socket {
        /// The call (`socket`, `bind`, `send`, `recv`, ...).
        op: &'static str,
        /// Its error.
        source: io::Error,
    },
    /// The kernel did not answer in time.
    #[error("{op}: no answer from the kernel within {timeout:?}")]
    Timeout {
        /// The request.
        op: &'static str,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The kernel has no generic netlink family of this name; for `"vdpa"`: module
    /// `vdpa` not loaded, or a kernel without vDPA.
    #[error("the kernel has no {0:?} generic netlink family (for vdpa: modprobe vdpa, or vduse)")]
    FamilyNotFound(String),
    /// The kernel refused the request.
    #[error("{op}: {} ({}){}", io::Error::from_raw_os_error(*errno), errno_name(*errno), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kernel {
        /// The request (`VDPA_CMD_DEV_NEW`, ...).
        op: &'static str,
        /// The kernel's (positive) errno.
        errno: i32,
        /// The extended ack message, when the kernel gave one.
        message: Option<String>,
    },
    /// A reply did not parse, or lacked a required attribute.
    #[error("malformed netlink reply: {0}")]
    Malformed(String),
}

impl VdpaNetlinkError {
    /// The kernel's errno, for [`VdpaNetlinkError::Kernel`] (and the socket error's, if
    /// it has one).
    pub fn errno(&self) -> Option<i32> {
        match self {
            VdpaNetlinkError::Kernel { errno, .. } => Some(*errno),
            VdpaNetlinkError::Socket { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The symbolic name of the errnos the vdpa family returns (`errno N` for others).
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ENOMEM => "ENOMEM",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EAGAIN => "EAGAIN",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

/// A vDPA management device: something that can create vDPA devices (`vduse`, a
/// vendor driver's PCI function, `vdpasim_net`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MgmtDev {
    /// Bus name (`pci`), absent for devices without a bus such as `vduse`.
    pub bus: Option<String>,
    /// Device name (`vduse`, `0000:03:00.2`).
    pub name: String,
    /// Bit N set: can create virtio device id N (bit 1 = net, bit 2 = block).
    pub supported_classes: Option<u64>,
    /// Most virtqueues a device it creates may have.
    pub max_vqs: Option<u32>,
    /// Virtio features its devices may offer.
    pub supported_features: Option<u64>,
}

impl MgmtDev {
    /// The handle iproute2 prints and takes: `bus/name`, or `name` without a bus.
    pub fn handle(&self) -> String {
        match &self.bus {
            Some(bus) => format!("{bus}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// Whether it can create virtio-net devices (virtio device id 1).
    pub fn supports_net(&self) -> bool {
        self.supported_classes.is_some_and(|c| c & (1 << 1) != 0)
    }

    fn from_attrs(attrs: &[Attr<'_>]) -> Result<MgmtDev, VdpaNetlinkError> {
        let mut dev = MgmtDev::default();
        for a in attrs {
            match a.kind {
                attr::MGMTDEV_BUS_NAME => dev.bus = Some(a.as_str()?),
                attr::MGMTDEV_DEV_NAME => dev.name = a.as_str()?,
                attr::MGMTDEV_SUPPORTED_CLASSES => dev.supported_classes = Some(a.as_u64()?),
                attr::DEV_MGMTDEV_MAX_VQS => dev.max_vqs = Some(a.as_u32()?),
                attr::DEV_SUPPORTED_FEATURES => dev.supported_features = Some(a.as_u64()?),
                _ => {}
            }
        }
        if dev.name.is_empty() {
            return Err(VdpaNetlinkError::Malformed(
                "management device without a name".into(),
            ));
        }
        Ok(dev)
    }
}

/// Which vDPA bus driver bound a device, and what it made of it (from sysfs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    /// The bound driver (`vhost_vdpa`, `virtio_vdpa`), `None` when unbound.
    pub driver: Option<String>,
    /// With `vhost_vdpa`: the character device, `/dev/vhost-vdpa-N`.
    pub vhost_vdpa: Option<PathBuf>,
    /// With `virtio_vdpa`: the virtio device (`virtio3`) on the virtio bus.
    pub virtio: Option<String>,
    /// With `virtio_vdpa` and a net device: the netdev names it registered.
    pub netdevs: Vec<String>,
}

impl Binding {
    /// Reads `<sysfs>/bus/vdpa/devices/<name>/`: the `driver` link, a `vhost-vdpa-N`
    /// child, a `virtioN/net/<ifname>` child. `sysfs` is normally `/sys`.
    pub fn read(sysfs: &Path, name: &str) -> Binding {
        let dir = sysfs.join("bus/vdpa/devices").join(name);
        let mut binding = Binding {
            driver: std::fs::read_link(dir.join("driver"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
            ..Binding::default()
        };
        let mut children: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        children.sort();
        for child in children {
            if child.starts_with("vhost-vdpa-") {
                binding.vhost_vdpa = Some(Path::new("/dev").join(&child));
            } else if child
                .strip_prefix("virtio")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            {
                let mut netdevs: Vec<String> = std::fs::read_dir(dir.join(&child).join("net"))
                    .map(|rd| {
                        rd.filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                netdevs.sort();
                binding.netdevs = netdevs;
                binding.virtio = Some(child);
            }
        }
        binding
    }
}

/// A vDPA device on the bus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VdpaDevice {
    /// Its name (for VDUSE: the name given to `VDUSE_CREATE_DEV`).
    pub name: String,
    /// The management device that created it ([`MgmtDev::handle`] form).
    pub mgmtdev: Option<String>,
    /// Virtio device id (1 = net).
    pub device_id: Option<u32>,
    /// Virtio vendor id.
    pub vendor_id: Option<u32>,
    /// Number of virtqueues.
    pub max_vqs: Option<u32>,
    /// Largest virtqueue size.
    pub max_vq_size: Option<u16>,
    /// Smallest virtqueue size (not reported by every kernel).
    pub min_vq_size: Option<u16>,
    /// The bus driver's binding, from sysfs ([`VdpaNetlink::dev_get`] fills it in).
    pub binding: Binding,
}

impl VdpaDevice {
    fn from_attrs(attrs: &[Attr<'_>]) -> Result<VdpaDevice, VdpaNetlinkError> {
        let mut dev = VdpaDevice::default();
        let (mut bus, mut mgmt) = (None, None);
        for a in attrs {
            match a.kind {
                attr::DEV_NAME => dev.name = a.as_str()?,
                attr::MGMTDEV_BUS_NAME => bus = Some(a.as_str()?),
                attr::MGMTDEV_DEV_NAME => mgmt = Some(a.as_str()?),
                attr::DEV_ID => dev.device_id = Some(a.as_u32()?),
                attr::DEV_VENDOR_ID => dev.vendor_id = Some(a.as_u32()?),
                attr::DEV_MAX_VQS => dev.max_vqs = Some(a.as_u32()?),
                attr::DEV_MAX_VQ_SIZE => dev.max_vq_size = Some(a.as_u16()?),
                attr::DEV_MIN_VQ_SIZE => dev.min_vq_size = Some(a.as_u16()?),
                _ => {}
            }
        }
        if dev.name.is_empty() {
            return Err(VdpaNetlinkError::Malformed(
                "vdpa device without a name".into(),
            ));
        }
        dev.mgmtdev = mgmt.map(|name| {
            MgmtDev {
                bus,
                name,
                ..MgmtDev::default()
            }
            .handle()
        });
        Ok(dev)
    }
}

/// The request message for `VDPA_CMD_DEV_NEW` (exposed for tests and tracing).
pub fn dev_new_attrs(name: &str, mgmtdev: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    // A handle "bus/name" names a device with a bus; "vduse" has none.
    if let Some((bus, dev)) = mgmtdev.split_once('/') {
        wire::put_str_attr(&mut attrs, attr::MGMTDEV_BUS_NAME, bus);
        wire::put_str_attr(&mut attrs, attr::MGMTDEV_DEV_NAME, dev);
    } else {
        wire::put_str_attr(&mut attrs, attr::MGMTDEV_DEV_NAME, mgmtdev);
    }
    wire::put_str_attr(&mut attrs, attr::DEV_NAME, name);
    attrs
}

/// An open generic netlink socket with the vdpa family resolved.
#[derive(Debug)]
pub struct VdpaNetlink {
    fd: OwnedFd,
    family: u16,
    seq: u32,
    timeout: Duration,
    sysfs: PathBuf,
}

impl VdpaNetlink {
    /// Opens a socket and resolves the family, with [`DEFAULT_TIMEOUT`] per request.
    pub fn open() -> Result<VdpaNetlink, VdpaNetlinkError> {
        VdpaNetlink::open_with_timeout(DEFAULT_TIMEOUT)
    }

    /// Like [`VdpaNetlink::open`], with `timeout` for every request (at least 1 ms).
    pub fn open_with_timeout(timeout: Duration) -> Result<VdpaNetlink, VdpaNetlinkError> {
        let mut nl = VdpaNetlink::unresolved(timeout)?;
        nl.family = nl.resolve_family(VDPA_GENL_NAME)?;
        Ok(nl)
    }

    /// The socket alone, family not yet resolved.
    fn unresolved(timeout: Duration) -> Result<VdpaNetlink, VdpaNetlinkError> {
        let timeout = timeout.max(Duration::from_millis(1));
        Ok(VdpaNetlink {
            fd: open_socket(timeout)?,
            family: 0,
            seq: initial_seq(),
            timeout,
            sysfs: PathBuf::from("/sys"),
        })
    }

    /// The family id the kernel assigned to `"vdpa"`.
    pub fn family_id(&self) -> u16 {
        self.family
    }

    /// Changes the time one request may take. A `dev_add` on `vduse` waits while the
    /// bus driver probes the device, which waits for the VDUSE daemon's replies (up to
    /// the device's `msg_timeout`, 30 s by default); a request that timed out here may
    /// still complete in the kernel.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout.max(Duration::from_millis(1));
    }

    /// The time one request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// All management devices (`vdpa mgmtdev show`).
    pub fn mgmtdev_list(&mut self) -> Result<Vec<MgmtDev>, VdpaNetlinkError> {
        let replies = self.request(
            "VDPA_CMD_MGMTDEV_GET",
            cmd::MGMTDEV_GET,
            wire::NLM_F_DUMP,
            &[],
        )?;
        replies
            .iter()
            .map(|attrs| MgmtDev::from_attrs(&wire::parse_attrs(attrs)?))
            .collect()
    }

    /// Creates vDPA device `name` on management device `mgmtdev` (`"vduse"`, or a
    /// `bus/name` handle): `vdpa dev add name NAME mgmtdev MGMTDEV`. For VDUSE, `name`
    /// is a device created on `/dev/vduse/control` whose virtqueues are set up (else
    /// the kernel answers EINVAL). The kernel binds a bus driver before it answers; see
    /// [`VdpaNetlink::set_timeout`].
    pub fn dev_add(&mut self, name: &str, mgmtdev: &str) -> Result<(), VdpaNetlinkError> {
        let attrs = dev_new_attrs(name, mgmtdev);
        self.request("VDPA_CMD_DEV_NEW", cmd::DEV_NEW, wire::NLM_F_ACK, &attrs)
            .map(drop)
    }

    /// Deletes vDPA device `name` (`vdpa dev del NAME`); its bus driver unbinds first.
    pub fn dev_del(&mut self, name: &str) -> Result<(), VdpaNetlinkError> {
        let mut attrs = Vec::new();
        wire::put_str_attr(&mut attrs, attr::DEV_NAME, name);
        self.request("VDPA_CMD_DEV_DEL", cmd::DEV_DEL, wire::NLM_F_ACK, &attrs)
            .map(drop)
    }

    /// Device `name` with its [`Binding`] (`ENODEV` from the kernel if there is none).
    pub fn dev_get(&mut self, name: &str) -> Result<VdpaDevice, VdpaNetlinkError> {
        let mut attrs = Vec::new();
        wire::put_str_attr(&mut attrs, attr::DEV_NAME, name);
        let replies = self.request("VDPA_CMD_DEV_GET", cmd::DEV_GET, wire::NLM_F_ACK, &attrs)?;
        let first = replies.first().ok_or_else(|| {
            VdpaNetlinkError::Malformed("VDPA_CMD_DEV_GET: no device in the reply".into())
        })?;
        let mut dev = VdpaDevice::from_attrs(&wire::parse_attrs(first)?)?;
        dev.binding = Binding::read(&self.sysfs, &dev.name);
        Ok(dev)
    }

    /// All vDPA devices with their bindings (`vdpa dev show`).
    pub fn dev_list(&mut self) -> Result<Vec<VdpaDevice>, VdpaNetlinkError> {
        let replies = self.request("VDPA_CMD_DEV_GET", cmd::DEV_GET, wire::NLM_F_DUMP, &[])?;
        replies
            .iter()
            .map(|attrs| {
                let mut dev = VdpaDevice::from_attrs(&wire::parse_attrs(attrs)?)?;
                dev.binding = Binding::read(&self.sysfs, &dev.name);
                Ok(dev)
            })
            .collect()
    }

    /// Resolves a generic netlink family name to its id (`CTRL_CMD_GETFAMILY`).
    fn resolve_family(&mut self, name: &str) -> Result<u16, VdpaNetlinkError> {
        let mut attrs = Vec::new();
        wire::put_str_attr(&mut attrs, wire::CTRL_ATTR_FAMILY_NAME, name);
        let replies = match self.transact(
            "CTRL_CMD_GETFAMILY",
            wire::GENL_ID_CTRL,
            wire::CTRL_CMD_GETFAMILY,
            1,
            wire::NLM_F_ACK,
            &attrs,
        ) {
            Err(VdpaNetlinkError::Kernel { errno, .. }) if errno == libc::ENOENT => {
                return Err(VdpaNetlinkError::FamilyNotFound(name.to_string()))
            }
            other => other?,
        };
        for reply in &replies {
            if let Some(id) = wire::parse_attrs(reply)?
                .iter()
                .find(|a| a.kind == wire::CTRL_ATTR_FAMILY_ID)
            {
                return id.as_u16();
            }
        }
        Err(VdpaNetlinkError::Malformed(
            "CTRL_CMD_GETFAMILY reply without a family id".into(),
        ))
    }

    fn request(
        &mut self,
        op: &'static str,
        cmd: u8,
        flags: u16,
        attrs: &[u8],
    ) -> Result<Vec<Vec<u8>>, VdpaNetlinkError> {
        self.transact(op, self.family, cmd, VDPA_GENL_VERSION, flags, attrs)
    }

    /// Sends one request and collects the attribute streams of its data replies until
    /// the ack (or a dump's end). Replies to other sequence numbers (late answers to a
    /// request that timed out) are skipped.
    fn transact(
        &mut self,
        op: &'static str,
        family: u16,
        cmd: u8,
        version: u8,
        flags: u16,
        attrs: &[u8],
    ) -> Result<Vec<Vec<u8>>, VdpaNetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let req = wire::genl_request(
            family,
            wire::NLM_F_REQUEST | flags,
            seq,
            cmd,
            version,
            attrs,
        );
        self.send(&req)?;
        self.collect(op, seq)
    }

    /// Receives the replies to request `seq` (see [`VdpaNetlink::transact`]).
    fn collect(&mut self, op: &'static str, seq: u32) -> Result<Vec<Vec<u8>>, VdpaNetlinkError> {
        let deadline = Instant::now() + self.timeout;
        let mut data = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if Instant::now() >= deadline {
                return Err(VdpaNetlinkError::Timeout {
                    op,
                    timeout: self.timeout,
                });
            }
            // The receive waits at most for what is left of this request's time.
            set_rcvtimeo(&self.fd, deadline.saturating_duration_since(Instant::now()))?;
            let n = self.recv(&mut buf, op)?;
            for msg in wire::parse_messages(&buf[..n])? {
                match msg {
                    Message::Genl { seq: s, attrs, .. } if s == seq => data.push(attrs.to_vec()),
                    Message::Ack { seq: s } if s == seq => return Ok(data),
                    Message::Done {
                        seq: s, errno: 0, ..
                    } if s == seq => return Ok(data),
                    Message::Error {
                        seq: s,
                        errno,
                        message,
                    }
                    | Message::Done {
                        seq: s,
                        errno,
                        message,
                    } if s == seq => return Err(VdpaNetlinkError::Kernel { op, errno, message }),
                    _ => {}
                }
            }
        }
    }

    fn send(&self, req: &[u8]) -> Result<(), VdpaNetlinkError> {
        // SAFETY: an all-zero sockaddr_nl is valid (pid 0 = the kernel, no groups).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `req` is a live buffer of `req.len()` bytes and `kernel` a
            // sockaddr_nl of the size passed; the fd is open for our lifetime.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    req.as_ptr().cast(),
                    req.len(),
                    0,
                    (&kernel as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(VdpaNetlinkError::Socket {
                    op: "sendto",
                    source: err,
                });
            }
        }
    }

    /// One datagram; `SO_RCVTIMEO` bounds the wait.
    fn recv(&self, buf: &mut [u8], op: &'static str) -> Result<usize, VdpaNetlinkError> {
        loop {
            // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
            let rc =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => {
                    return Err(VdpaNetlinkError::Timeout {
                        op,
                        timeout: self.timeout,
                    })
                }
                _ => {
                    return Err(VdpaNetlinkError::Socket {
                        op: "recv",
                        source: err,
                    })
                }
            }
        }
    }
}

/// A starting sequence number that differs between processes, so that replies meant
/// for another socket's requests never match.
fn initial_seq() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

fn sockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T and its size is passed; the fd is open.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bounds every `recv` on `fd` by `timeout` (at least 1 ms: 0 would mean forever).
fn set_rcvtimeo(fd: &OwnedFd, timeout: Duration) -> Result<(), VdpaNetlinkError> {
    let timeout = timeout.max(Duration::from_millis(1));
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    sockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv).map_err(|source| {
        VdpaNetlinkError::Socket {
            op: "SO_RCVTIMEO",
            source,
        }
    })
}

fn open_socket(timeout: Duration) -> Result<OwnedFd, VdpaNetlinkError> {
    let err = |op: &'static str| VdpaNetlinkError::Socket {
        op,
        source: io::Error::last_os_error(),
    };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            wire::NETLINK_GENERIC,
        )
    };
    if raw < 0 {
        return Err(err("socket"));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_rcvtimeo(&fd, timeout)?;
    // Extended acks carry the kernel's error messages; capped acks keep errors small.
    // Both are best effort (kernels since 4.12 and 4.2 have them).
    let _ = sockopt(&fd, libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, &1i32);
    let _ = sockopt(&fd, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, &1i32);
    // SAFETY: an all-zero sockaddr_nl is valid; pid 0 lets the kernel pick ours.
    let mut local: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    local.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `local` is a sockaddr_nl of the size passed; the fd is open.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&local as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(err("bind"));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests;
