//! What two devices may not share: a name, a socket (or the control socket), a host
//! interface (`tap_name` or `netdev`), a PCI function. A clash is reported at the
//! second use, naming the first device and where it is (`file:line:column`, which may
//! be another file when drop-ins are read).

use std::path::Path;

use crate::error::{ConfigError, ErrorKind, Source};
use crate::model::{Backend, DeviceConfig, PciAddress};
use crate::validate::{CheckedDevice, Placed};

/// The host interface a device claims, and the key that names it.
fn ifname(dev: &DeviceConfig) -> Option<(&str, &'static str)> {
    match &dev.backend {
        Backend::Tap { name: Some(n) } => Some((n, "tap_name")),
        Backend::AfPacket { netdev: Some(n) } => Some((n, "netdev")),
        _ => None,
    }
}

/// What a device and another both claim, described for an error message, with its
/// `help:` line and the span of the device to point at.
struct Clash {
    span: std::ops::Range<usize>,
    what: String,
    help: &'static str,
}

/// What `dev` and `other` (of another name) both claim, if anything.
fn clash(dev: &CheckedDevice, other: &DeviceConfig) -> Option<Clash> {
    let d = &dev.config;
    if d.socket == other.socket {
        return Some(Clash {
            span: dev.socket_span.clone(),
            what: format!("socket `{}`", d.socket.display()),
            help: "give each device its own socket path",
        });
    }
    if let (Some((mine, key)), Some((theirs, _))) = (ifname(d), ifname(other)) {
        if mine == theirs {
            return Some(Clash {
                span: dev.ifname_span.clone().unwrap_or(dev.name_span.clone()),
                what: format!("interface `{mine}` (`{key}`)"),
                help: "each device needs a host interface of its own: two devices on one \
                       interface would each see the other's traffic; choose another name",
            });
        }
    }
    if let (Some(mine), Some(theirs)) = (d.pci, other.pci) {
        if mine == theirs {
            return Some(Clash {
                span: dev.pci_span.clone().unwrap_or(dev.name_span.clone()),
                what: format!("PCI function `{mine}`"),
                help: "a PCI function serves one device; use another function (a VF) for \
                       the second device, see `lspci -D`",
            });
        }
    }
    None
}

/// Checks `dev` of `src` against the control socket, the running (`existing`) devices
/// and the devices placed before it.
pub(crate) fn check(
    src: &Source<'_>,
    dev: &CheckedDevice,
    daemon: &crate::model::DaemonConfig,
    existing: &[DeviceConfig],
    earlier: &[Placed<'_>],
) -> Result<(), ConfigError> {
    let fail = |c: Clash, owner: String| {
        let msg = format!("{} is already used by {owner}", c.what);
        Err(src
            .error(ErrorKind::Duplicate, c.span, msg)
            .with_help(c.help))
    };
    let name = &dev.config.name;
    if dev.config.socket == daemon.control_socket {
        return Err(src
            .error(
                ErrorKind::Duplicate,
                dev.socket_span.clone(),
                format!(
                    "socket `{}` is the daemon's control socket",
                    dev.config.socket.display()
                ),
            )
            .with_help("give the device another socket path"));
    }
    if existing.iter().any(|e| &e.name == name) {
        return Err(src
            .error(
                ErrorKind::Duplicate,
                dev.name_span.clone(),
                format!("a device named `{name}` already exists"),
            )
            .with_help("choose another name, or remove the existing device first"));
    }
    if let Some(first) = earlier.iter().find(|p| &p.dev.config.name == name) {
        let at = first.src.location(first.dev.name_span.clone());
        return Err(src
            .error(
                ErrorKind::Duplicate,
                dev.name_span.clone(),
                format!("duplicate device name `{name}`"),
            )
            .with_help(format!(
                "the device at {at} already uses this name; device names must be unique"
            )));
    }
    for e in existing {
        if let Some(c) = clash(dev, e) {
            return fail(c, format!("existing device `{}`", e.name));
        }
    }
    for p in earlier {
        if let Some(c) = clash(dev, &p.dev.config) {
            let at = p.src.location(p.dev.name_span.clone());
            return fail(c, format!("device `{}` at {at}", p.dev.config.name));
        }
    }
    Ok(())
}

/// Checks already-validated devices for clashes with `existing` ones and with each
/// other; errors have no position, only `origin` and the device names.
pub(crate) fn check_without_spans(
    origin: &str,
    control_socket: &Path,
    existing: &[DeviceConfig],
    new: &[DeviceConfig],
) -> Result<(), ConfigError> {
    for (i, dev) in new.iter().enumerate() {
        let fail = |msg: String| Err(ConfigError::unlocated(ErrorKind::Duplicate, origin, msg));
        if dev.socket == control_socket {
            return fail(format!(
                "device `{}`: socket `{}` is the daemon's control socket",
                dev.name,
                dev.socket.display()
            ));
        }
        for other in existing.iter().chain(&new[..i]) {
            if other.name == dev.name {
                return fail(format!("a device named `{}` already exists", other.name));
            }
            let same_if = ifname(dev)
                .zip(ifname(other))
                .filter(|((a, _), (b, _))| a == b)
                .map(|((a, key), _)| format!("interface `{a}` (`{key}`)"));
            let shared = (other.socket == dev.socket)
                .then(|| format!("socket `{}`", dev.socket.display()))
                .or(same_if)
                .or_else(|| same_pci(dev.pci, other.pci).map(|p| format!("PCI function `{p}`")));
            if let Some(what) = shared {
                return fail(format!(
                    "device `{}`: {what} is already used by device `{}`",
                    dev.name, other.name
                ));
            }
        }
    }
    Ok(())
}

fn same_pci(a: Option<PciAddress>, b: Option<PciAddress>) -> Option<PciAddress> {
    a.zip(b).filter(|(a, b)| a == b).map(|(a, _)| a)
}
