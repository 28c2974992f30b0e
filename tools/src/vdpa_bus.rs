//! Putting a VDUSE device on the kernel's vDPA bus (vDPA netlink, [`crate::vdpa_netlink`])
//! and binding the bus driver the configuration asks for — what an operator would do
//! with `vdpa dev add name <name> mgmtdev vduse` and sysfs — and taking it off again.
//!
//! Never called from a device's own thread: adding a device makes the kernel probe it,
//! which waits for that thread to answer the device's status requests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{info, warn};
use vdpad_config::VdpaDriver;

use crate::vdpa_netlink::VdpaNetlink;

/// Where vDPA devices appear.
const BUS: &str = "/sys/bus/vdpa";

/// How long a driver may take to bind after the device was added.
const BIND_WAIT: Duration = Duration::from_secs(5);

/// How long adding or deleting a device may take: the kernel waits for the device's
/// own thread to answer the status changes the bus driver makes (VDUSE's message
/// timeout is 30 s).
const NETLINK_WAIT: Duration = Duration::from_secs(35);

/// Why a device could not be attached or detached.
#[derive(Debug, Error)]
pub enum BusError {
    /// The kernel's vDPA management interface refused.
    #[error("vDPA netlink")]
    Netlink(#[from] crate::vdpa_netlink::VdpaNetlinkError),
    /// A command (`modprobe`) could not run or failed.
    #[error("`{command}` failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed, or why it did not run.
        output: String,
    },
    /// A sysfs file could not be written.
    #[error("writing {path}")]
    Sysfs {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The driver did not bind in time.
    #[error("{driver} did not bind {name} within {BIND_WAIT:?} (bound: {bound})")]
    NotBound {
        /// The device.
        name: String,
        /// The driver wanted.
        driver: VdpaDriver,
        /// What is bound instead.
        bound: String,
    },
}

/// What the device became once its driver bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attached {
    /// `vhost_vdpa`: the character device QEMU and DPDK open.
    VhostVdpa(PathBuf),
    /// `virtio_vdpa`: the host kernel's network interface.
    VirtioVdpa(String),
}

impl Attached {
    /// What the driver made of the device, without the QEMU hint: the character
    /// device's path, or `network interface NAME`.
    pub fn short(&self) -> String {
        match self {
            Attached::VhostVdpa(dev) => dev.display().to_string(),
            Attached::VirtioVdpa(ifname) => format!("network interface {ifname}"),
        }
    }
}

impl std::fmt::Display for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attached::VhostVdpa(dev) => write!(
                f,
                "{} (QEMU: -netdev vhost-vdpa,id=n0,vhostdev={} -device virtio-net-pci,netdev=n0; \
                 guest memory must be shared, e.g. memory-backend-memfd,share=on)",
                dev.display(),
                dev.display()
            ),
            Attached::VirtioVdpa(ifname) => write!(f, "network interface {ifname}"),
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), BusError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| BusError::Command {
            command: command.clone(),
            output: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Err(BusError::Command {
        command,
        output: if text.is_empty() {
            out.status.to_string()
        } else {
            text
        },
    })
}

fn write(path: PathBuf, value: &str) -> Result<(), BusError> {
    std::fs::write(&path, value).map_err(|source| BusError::Sysfs { path, source })
}

/// The driver bound to vDPA device `name`, if any.
fn bound_driver(name: &str) -> Option<String> {
    std::fs::read_link(Path::new(BUS).join("devices").join(name).join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Adds VDUSE device `name` to the vDPA bus and binds `driver` to it.
pub fn attach(name: &str, driver: VdpaDriver) -> Result<Attached, BusError> {
    if !Path::new(BUS)
        .join("drivers")
        .join(driver.as_str())
        .exists()
    {
        run("modprobe", &[driver.as_str()])?;
    }
    let dev = Path::new(BUS).join("devices").join(name);
    let taken_over = dev.exists();
    if taken_over {
        // Left on the bus by a vdpad that was killed: rebind its driver, which resets
        // the device and replays the driver's setup to the new vdpad.
        if let Some(bound) = bound_driver(name) {
            write(
                Path::new(BUS).join("drivers").join(&bound).join("unbind"),
                name,
            )?;
        }
    } else {
        VdpaNetlink::open_with_timeout(NETLINK_WAIT)?.dev_add(name, "vduse")?;
    }
    if let Some(other) = bound_driver(name).filter(|d| d != driver.as_str()) {
        write(
            Path::new(BUS).join("drivers").join(&other).join("unbind"),
            name,
        )?;
    }
    if bound_driver(name).is_none() {
        write(dev.join("driver_override"), driver.as_str())?;
        write(
            Path::new(BUS)
                .join("drivers")
                .join(driver.as_str())
                .join("bind"),
            name,
        )?;
    }
    let deadline = Instant::now() + BIND_WAIT;
    loop {
        if let Some(a) = attached_as(name, driver) {
            info!(device = name, %driver, attached = %a, "VDUSE device on the vDPA bus");
            return Ok(a);
        }
        if Instant::now() >= deadline {
            return Err(BusError::NotBound {
                name: name.to_owned(),
                driver,
                bound: bound_driver(name).unwrap_or_else(|| "nothing".into()),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `name` is reachable as once `driver` bound it, or `None` while it is not.
fn attached_as(name: &str, driver: VdpaDriver) -> Option<Attached> {
    if bound_driver(name).as_deref() != Some(driver.as_str()) {
        return None;
    }
    let dev = Path::new(BUS).join("devices").join(name);
    let children = std::fs::read_dir(&dev).ok()?;
    for entry in children.flatten() {
        let child = entry.file_name().to_string_lossy().into_owned();
        match driver {
            VdpaDriver::VhostVdpa if child.starts_with("vhost-vdpa-") => {
                return Some(Attached::VhostVdpa(PathBuf::from("/dev").join(child)));
            }
            VdpaDriver::VirtioVdpa if child.starts_with("virtio") => {
                let net = entry.path().join("net");
                let ifname = std::fs::read_dir(net).ok()?.flatten().next()?;
                return Some(Attached::VirtioVdpa(
                    ifname.file_name().to_string_lossy().into_owned(),
                ));
            }
            _ => {}
        }
    }
    None
}

/// Takes VDUSE device `name` off the vDPA bus (the kernel resets it first). A device
/// that is not on the bus is left alone.
pub fn detach(name: &str) -> Result<(), BusError> {
    if !Path::new(BUS).join("devices").join(name).exists() {
        return Ok(());
    }
    VdpaNetlink::open_with_timeout(NETLINK_WAIT)
        .and_then(|mut nl| nl.dev_del(name))
        .map_err(|e| {
            warn!(device = name, error = %e, "VDUSE device not taken off the vDPA bus");
            BusError::Netlink(e)
        })
}
