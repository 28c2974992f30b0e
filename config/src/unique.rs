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
    /// Why sharing is not allowed here, when it can be (said after the owner).
    detail: String,
    help: &'static str,
}

/// Why two AF_PACKET devices on the same interface would not be isolated from each
/// other, if they would not: each needs its own MAC and filtering on, unless both
/// opt in with `shared_netdev = true`.
fn shared_netdev_problem(d: &DeviceConfig, other: &DeviceConfig) -> Option<String> {
    let both_af_packet = matches!(d.backend, Backend::AfPacket { .. })
        && matches!(other.backend, Backend::AfPacket { .. });
    if !both_af_packet {
        return Some(String::new());
    }
    if d.security.shared_netdev && other.security.shared_netdev {
        return None;
    }
    let unfiltered = |x: &DeviceConfig| x.mac.is_none() || x.security.promiscuous;
    if unfiltered(d) || unfiltered(other) {
        let who = if unfiltered(d) { &d.name } else { &other.name };
        return Some(format!(
            ", and device `{who}` would receive the other's traffic (it has no `mac`, or \
             promiscuous = true)"
        ));
    }
    if d.mac == other.mac {
        return Some(format!(
            ", with the same mac {}",
            d.mac.expect("filtered devices have one")
        ));
    }
    None
}

/// What `dev` and `other` (of another name) both claim, if anything.
fn clash(dev: &CheckedDevice, other: &DeviceConfig) -> Option<Clash> {
    let d = &dev.config;
    if d.socket == other.socket {
        return Some(Clash {
            span: dev.socket_span.clone(),
            what: format!("socket `{}`", d.socket.display()),
            detail: String::new(),
            help: "give each device its own socket path",
        });
    }
    if let (Some((mine, key)), Some((theirs, _))) = (ifname(d), ifname(other)) {
        let problem = (mine == theirs)
            .then(|| shared_netdev_problem(d, other))
            .flatten();
        if let Some(why) = problem {
            return Some(Clash {
                span: dev.ifname_span.clone().unwrap_or(dev.name_span.clone()),
                what: format!("interface `{mine}` (`{key}`)"),
                detail: why.clone(),
                help: if key == "netdev" && why.is_empty() {
                    "a tap belongs to one device; choose another name"
                } else if key == "netdev" {
                    "devices may share a netdev when each has its own `mac` and filtering on \
                     (promiscuous = false), or when both set shared_netdev = true"
                } else {
                    "each device needs a host interface of its own: two devices on one \
                     interface would each see the other's traffic; choose another name"
                },
            });
        }
    }
    if let (Some(mine), Some(theirs)) = (d.pci, other.pci) {
        if mine == theirs {
            return Some(Clash {
                span: dev.pci_span.clone().unwrap_or(dev.name_span.clone()),
                what: format!("PCI function `{mine}`"),
                detail: String::new(),
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
        let msg = format!("{} is already used by {owner}{}", c.what, c.detail);
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
                .and_then(|((a, key), _)| {
                    shared_netdev_problem(dev, other)
                        .map(|why| (format!("interface `{a}` (`{key}`)"), why))
                });
            let plain = |what: String| (what, String::new());
            let shared = (other.socket == dev.socket)
                .then(|| plain(format!("socket `{}`", dev.socket.display())))
                .or(same_if)
                .or_else(|| {
                    same_pci(dev.pci, other.pci).map(|p| plain(format!("PCI function `{p}`")))
                });
            if let Some((what, why)) = shared {
                return fail(format!(
                    "device `{}`: {what} is already used by device `{}`{why}",
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
