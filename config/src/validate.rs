//! Turns the raw mirror into the effective configuration: applies defaults, validates
//! every value and every combination, and checks that device names and sockets are
//! unique (see [`unique`]). Each error points at the value (or table header) that has
//! to change.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use crate::defaults::{
    default_run_dir, CONTROL_SOCKET_NAME, DEFAULT_LOG_LEVEL, DEFAULT_QUEUE_PAIRS,
    DEFAULT_QUEUE_SIZE, DEFAULT_SOCKET_MODE, DROP_IN_DIR_NAME, MAX_BURST, MAX_BUSY_POLL_US,
    MAX_RX_COALESCE_FRAMES, MAX_RX_COALESCE_USECS, MAX_WEIGHT, MIN_MTU,
};
use crate::error::{ConfigError, ErrorKind, Source};
use crate::fields::{self, IdKind};
use crate::model::{
    Backend, DaemonConfig, DeviceConfig, Frontend, LogFormat, Mode, Polling, SocketPerms,
    SocketRole, Tuning, VdpaDriver, Workers, MAX_QUEUE_PAIRS,
};
use crate::raw::{RawDaemon, RawDevice, RawId};
use crate::unique;

type Span = Range<usize>;

/// Builds the daemon settings from `[daemon]` (absent table: all defaults).
/// `file_dir` is the directory of the main file, if the text is one: the default
/// `include_dir` is `vdpad.d` in it.
pub(crate) fn daemon(
    src: &Source<'_>,
    raw: Option<&Spanned<RawDaemon>>,
    file_dir: Option<&Path>,
) -> Result<DaemonConfig, ConfigError> {
    let empty = RawDaemon::default();
    let (d, header) = match raw {
        Some(table) => (table.get_ref(), Some(table.span())),
        None => (&empty, None),
    };
    let run_dir = match &d.run_dir {
        Some(v) => fields::run_dir(src, v)?,
        None => default_run_dir(),
    };
    let blame = d.run_dir.as_ref().map(Spanned::span).or(header);
    let control_socket = fields::socket_path(
        src,
        "control_socket",
        d.control_socket.as_ref(),
        CONTROL_SOCKET_NAME,
        &run_dir,
        blame,
    )?;
    let log_level = match &d.log_level {
        Some(v) => fields::log_level(src, v)?,
        None => DEFAULT_LOG_LEVEL.to_owned(),
    };
    let log_format = match &d.log_format {
        Some(v) => fields::choice(
            src,
            v,
            "log_format",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        )?,
        None => LogFormat::Text,
    };
    let metrics_listen = d
        .metrics_listen
        .as_ref()
        .map(|v| fields::metrics_listen(src, v))
        .transpose()?;
    let defaults = SocketPerms {
        mode: DEFAULT_SOCKET_MODE,
        owner: None,
        group: None,
    };
    let socket_perms = perms(
        src,
        &d.socket_mode,
        &d.socket_owner,
        &d.socket_group,
        defaults,
    )?;
    let include_dir = match &d.include_dir {
        Some(v) => Some(fields::include_dir(src, v)?),
        None => file_dir.map(|dir| dir.join(DROP_IN_DIR_NAME)),
    };
    let control_socket_mode = match &d.control_socket_mode {
        Some(v) => fields::control_socket_mode(src, v)?,
        None => DEFAULT_SOCKET_MODE,
    };
    let socket_dirs = match &d.socket_dirs {
        Some(v) => fields::socket_dirs(src, v)?,
        None => Vec::new(),
    };
    Ok(DaemonConfig {
        run_dir,
        control_socket,
        log_level,
        log_format,
        socket_perms,
        metrics_listen,
        include_dir,
        control_socket_mode,
        socket_dirs,
    })
}

/// Socket permissions: each written value overrides the one in `inherited`.
fn perms(
    src: &Source<'_>,
    mode: &Option<Spanned<String>>,
    owner: &Option<Spanned<RawId>>,
    group: &Option<Spanned<RawId>>,
    inherited: SocketPerms,
) -> Result<SocketPerms, ConfigError> {
    Ok(SocketPerms {
        mode: match mode {
            Some(v) => fields::socket_mode(src, v)?,
            None => inherited.mode,
        },
        owner: match owner {
            Some(v) => Some(fields::id(src, v, IdKind::User)?),
            None => inherited.owner,
        },
        group: match group {
            Some(v) => Some(fields::id(src, v, IdKind::Group)?),
            None => inherited.group,
        },
    })
}

/// A validated device and the spans needed to report conflicts with other devices.
#[derive(Debug)]
pub(crate) struct CheckedDevice {
    /// The effective device.
    pub config: DeviceConfig,
    /// Span of the `name` value.
    pub name_span: Span,
    /// Span of the `socket` value, or of `name` when the socket is the default.
    pub socket_span: Span,
    /// Span of the `tap_name` or `netdev` value, if one is set.
    pub ifname_span: Option<Span>,
    /// Span of the `pci` value, if set.
    pub pci_span: Option<Span>,
}

/// A validated device and the text it came from (the main file or a drop-in).
#[derive(Debug)]
pub(crate) struct Placed<'a> {
    /// The file or snippet.
    pub src: Source<'a>,
    /// The device.
    pub dev: CheckedDevice,
}

/// The backend keyword as written, before `tap_name`/`netdev` are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BackendKind {
    Loopback,
    Tap,
    AfPacket,
}

impl BackendKind {
    fn as_str(self) -> &'static str {
        match self {
            BackendKind::Loopback => "loopback",
            BackendKind::Tap => "tap",
            BackendKind::AfPacket => "af_packet",
        }
    }
}

/// Validates one `[[device]]` table against the daemon settings it inherits from.
pub(crate) fn device(
    src: &Source<'_>,
    table: &Spanned<RawDevice>,
    daemon: &DaemonConfig,
) -> Result<CheckedDevice, ConfigError> {
    let d = table.get_ref();
    let Some(name_value) = &d.name else {
        return Err(src
            .error(
                ErrorKind::MissingKey,
                table.span(),
                "this [[device]] has no `name`",
            )
            .with_help("every device needs a unique name, e.g. name = \"vm1-net0\""));
    };
    let name = fields::device_name(src, name_value)?;
    let socket = fields::socket_path(
        src,
        "socket",
        d.socket.as_ref(),
        &format!("{name}.sock"),
        &daemon.run_dir,
        Some(name_value.span()),
    )?;
    let socket_span = d.socket.as_ref().map_or(name_value.span(), Spanned::span);
    let frontend = frontend(src, d)?;
    let socket_role = socket_role(src, d)?;

    let pci = d.pci.as_ref().map(|v| fields::pci(src, v)).transpose()?;
    let default_mode = if pci.is_some() {
        Mode::Auto
    } else {
        Mode::Software
    };
    let mode = match &d.mode {
        Some(v) => fields::choice(
            src,
            v,
            "mode",
            &[
                ("auto", Mode::Auto),
                ("offload", Mode::Offload),
                ("software", Mode::Software),
            ],
        )?,
        None => default_mode,
    };
    if let (Some(v), None) = (&d.mode, pci) {
        if mode != Mode::Software {
            let msg = format!(
                "mode = \"{}\" needs a `pci` address to offload to",
                v.get_ref()
            );
            return Err(src.error(ErrorKind::Conflict, v.span(), msg).with_help(
                "add pci = \"0000:3b:00.2\" (the NIC's address, see `lspci -D`), or use mode = \"software\"",
            ));
        }
    }
    let vm = d.vm.as_ref().map(|v| fields::vm_name(src, v)).transpose()?;
    let backend = backend(src, d, pci.is_some())?;

    let queue_pairs = match &d.queue_pairs {
        Some(v) => fields::int_in(
            src,
            v,
            "queue_pairs",
            1..=MAX_QUEUE_PAIRS,
            "use between 1 and 64 queue pairs (and the same number in QEMU's `queues=`)",
        )?,
        None => DEFAULT_QUEUE_PAIRS,
    };
    let queue_size = match &d.queue_size {
        Some(v) => fields::queue_size(src, v)?,
        None => DEFAULT_QUEUE_SIZE,
    };
    let mac = d.mac.as_ref().map(|v| fields::mac(src, v)).transpose()?;
    let mtu = d
        .mtu
        .as_ref()
        .map(|v| {
            fields::int_in(
                src,
                v,
                "mtu",
                MIN_MTU..=u16::MAX,
                "use an MTU between 68 and 65535, e.g. 1500",
            )
        })
        .transpose()?;
    let max_guest_memory = match &d.max_guest_memory {
        Some(v) => fields::memory_size(src, v, "max_guest_memory")?,
        None => crate::DEFAULT_MAX_GUEST_MEMORY,
    };
    let flag = |v: &Option<Spanned<bool>>| v.as_ref().is_none_or(|b| *b.get_ref());
    let socket_perms = perms(
        src,
        &d.socket_mode,
        &d.socket_owner,
        &d.socket_group,
        daemon.socket_perms,
    )?;
    let tuning = tuning(src, d)?;
    let security = crate::portsec::security(src, d, &backend, mac)?;
    let rates = crate::portsec::rates(src, d)?;
    if let Frontend::Vduse { .. } = frontend {
        vduse_rules(src, d, queue_pairs)?;
    }

    Ok(CheckedDevice {
        config: DeviceConfig {
            name,
            socket,
            frontend,
            socket_role,
            mode,
            pci,
            backend,
            queue_pairs,
            queue_size,
            mac,
            mtu,
            event_idx: flag(&d.event_idx),
            mrg_rxbuf: flag(&d.mrg_rxbuf),
            fallback: flag(&d.fallback),
            socket_perms,
            offloads: flag(&d.offloads),
            vm,
            max_guest_memory,
            tuning,
            security,
            rates,
        },
        name_span: name_value.span(),
        socket_span,
        ifname_span: d.tap_name.as_ref().or(d.netdev.as_ref()).map(Spanned::span),
        pci_span: d.pci.as_ref().map(Spanned::span),
    })
}

/// `frontend` and `vdpa_driver`.
fn frontend(src: &Source<'_>, d: &RawDevice) -> Result<Frontend, ConfigError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        VhostUser,
        Vduse,
    }
    let kind = match &d.frontend {
        Some(v) => fields::choice(
            src,
            v,
            "frontend",
            &[("vhost-user", Kind::VhostUser), ("vduse", Kind::Vduse)],
        )?,
        None => Kind::VhostUser,
    };
    let driver = d
        .vdpa_driver
        .as_ref()
        .map(|v| {
            fields::choice(
                src,
                v,
                "vdpa_driver",
                &[
                    ("vhost_vdpa", Some(VdpaDriver::VhostVdpa)),
                    ("virtio_vdpa", Some(VdpaDriver::VirtioVdpa)),
                    ("none", None),
                ],
            )
        })
        .transpose()?;
    match (kind, driver, &d.vdpa_driver) {
        (Kind::VhostUser, _, Some(v)) => Err(src
            .error(
                ErrorKind::Conflict,
                v.span(),
                "vdpa_driver only applies to frontend = \"vduse\"",
            )
            .with_help("remove vdpa_driver, or add frontend = \"vduse\"")),
        (Kind::VhostUser, _, None) => Ok(Frontend::VhostUser),
        (Kind::Vduse, driver, _) => Ok(Frontend::Vduse {
            driver: driver.unwrap_or(Some(VdpaDriver::VhostVdpa)),
        }),
    }
}

/// `socket_role`: whether vdpad listens on the socket or connects to it. A client
/// never creates the socket, so the keys that set its permissions are refused there.
fn socket_role(src: &Source<'_>, d: &RawDevice) -> Result<SocketRole, ConfigError> {
    let Some(value) = &d.socket_role else {
        return Ok(SocketRole::Server);
    };
    let role = fields::choice(
        src,
        value,
        "socket_role",
        &[
            ("server", SocketRole::Server),
            ("client", SocketRole::Client),
        ],
    )?;
    if role == SocketRole::Server {
        return Ok(role);
    }
    let perm_keys = [
        ("socket_mode", d.socket_mode.as_ref().map(Spanned::span)),
        ("socket_owner", d.socket_owner.as_ref().map(Spanned::span)),
        ("socket_group", d.socket_group.as_ref().map(Spanned::span)),
    ];
    if let Some((key, Some(span))) = perm_keys.into_iter().find(|(_, s)| s.is_some()) {
        return Err(src
            .error(
                ErrorKind::Conflict,
                span,
                format!(
                    "{key} does not apply to socket_role = \"client\": the socket belongs to \
                     the frontend (QEMU or DPDK), vdpad only connects to it"
                ),
            )
            .with_help(format!(
                "remove {key}; set the socket's permissions where it is created (libvirt or \
                 QEMU), or use socket_role = \"server\""
            )));
    }
    Ok(role)
}

/// What a VDUSE device cannot have: socket settings (there is no socket) and more
/// than one queue pair (Linux 6.12's VDUSE refuses the control virtqueue, without
/// which a driver cannot enable more pairs).
fn vduse_rules(src: &Source<'_>, d: &RawDevice, queue_pairs: u16) -> Result<(), ConfigError> {
    let socket_keys = [
        ("socket", d.socket.as_ref().map(Spanned::span)),
        ("socket_role", d.socket_role.as_ref().map(Spanned::span)),
        ("socket_mode", d.socket_mode.as_ref().map(Spanned::span)),
        ("socket_owner", d.socket_owner.as_ref().map(Spanned::span)),
        ("socket_group", d.socket_group.as_ref().map(Spanned::span)),
    ];
    if let Some((key, Some(span))) = socket_keys.into_iter().find(|(_, s)| s.is_some()) {
        return Err(src
            .error(
                ErrorKind::Conflict,
                span,
                format!(
                    "{key} does not apply to frontend = \"vduse\": a VDUSE device has no socket"
                ),
            )
            .with_help(format!(
                "remove {key}; QEMU reaches a VDUSE device through /dev/vhost-vdpa-N"
            )));
    }
    if queue_pairs > 1 {
        let span = d.queue_pairs.as_ref().map_or(0..0, Spanned::span);
        return Err(src
            .error(
                ErrorKind::Conflict,
                span,
                format!("frontend = \"vduse\" serves one queue pair, not {queue_pairs}"),
            )
            .with_help(
                "set queue_pairs = 1: Linux (6.12) refuses VDUSE net devices with a control \
                 virtqueue, and a driver needs one to enable more pairs",
            ));
    }
    // VDUSE gives the device's sysfs directory one entry per virtqueue, `vq0`, `vq1`;
    // the vDPA device of the same name goes into that directory, and the kernel
    // refuses it (EEXIST) when the names collide.
    if let Some(name) = &d.name {
        if (0..2 * queue_pairs).any(|vq| *name.get_ref() == format!("vq{vq}")) {
            return Err(src
                .error(
                    ErrorKind::Conflict,
                    name.span(),
                    format!(
                        "a VDUSE device cannot be named {:?}: the kernel names its virtqueues \
                         so and refuses to add it to the vDPA bus",
                        name.get_ref()
                    ),
                )
                .with_help("choose another name, e.g. \"vm1-net0\""));
        }
    }
    Ok(())
}

/// The software datapath knobs. They are accepted in every mode: an offloaded device
/// uses them when it falls back to software.
fn tuning(src: &Source<'_>, d: &RawDevice) -> Result<Tuning, ConfigError> {
    let defaults = Tuning::default();
    let burst = match &d.burst {
        Some(v) => fields::int_in(
            src,
            v,
            "burst",
            1..=MAX_BURST,
            "use between 1 and 1024 chains per burst; the default 16 suits most loads",
        )?,
        None => defaults.burst,
    };
    let weight = match &d.weight {
        Some(v) => Some(fields::int_in(
            src,
            v,
            "weight",
            1..=MAX_WEIGHT,
            "weight has no effect any more: remove it",
        )?),
        None => None,
    };
    let polling = match &d.polling {
        Some(v) => fields::choice(
            src,
            v,
            "polling",
            &[("adaptive", Polling::Adaptive), ("fixed", Polling::Fixed)],
        )?,
        None => defaults.polling,
    };
    let busy_poll_us = match (&d.busy_poll_us, polling, &d.polling) {
        (Some(v), _, _) => fields::int_in(
            src,
            v,
            "busy_poll_us",
            0..=MAX_BUSY_POLL_US,
            "use 0 (never poll) to 1000000 microseconds, e.g. 50",
        )?,
        (None, Polling::Fixed, Some(p)) => {
            return Err(src
                .error(
                    ErrorKind::Conflict,
                    p.span(),
                    "polling = \"fixed\" without busy_poll_us: a fixed budget needs a value",
                )
                .with_help(
                    "add busy_poll_us = 50 (0 sleeps at once), or use polling = \"adaptive\"",
                ))
        }
        (None, _, _) => defaults.busy_poll_us,
    };
    let rx_coalesce_frames = match &d.rx_coalesce_frames {
        Some(v) => fields::int_in(
            src,
            v,
            "rx_coalesce_frames",
            0..=MAX_RX_COALESCE_FRAMES,
            "use 0 (off) to 65535 frames, e.g. 32",
        )?,
        None => defaults.rx_coalesce_frames,
    };
    let rx_coalesce_usecs = match &d.rx_coalesce_usecs {
        Some(v) => fields::int_in(
            src,
            v,
            "rx_coalesce_usecs",
            0..=MAX_RX_COALESCE_USECS,
            "use 0 (off) to 1000000 microseconds, e.g. 50",
        )?,
        None => defaults.rx_coalesce_usecs,
    };
    if let (Some(frames), 0) = (&d.rx_coalesce_frames, rx_coalesce_usecs) {
        if rx_coalesce_frames > 0 {
            let (msg, help) = match &d.rx_coalesce_usecs {
                None => (
                    format!(
                        "rx_coalesce_frames = {rx_coalesce_frames} without rx_coalesce_usecs: \
                         a lone frame's interrupt could be held forever"
                    ),
                    "add rx_coalesce_usecs = 50 (or another bound)",
                ),
                Some(_) => (
                    format!(
                        "rx_coalesce_frames = {rx_coalesce_frames} with rx_coalesce_usecs = 0: \
                         a lone frame's interrupt could be held forever"
                    ),
                    "set rx_coalesce_usecs = 50 (or another bound)",
                ),
            };
            return Err(src
                .error(ErrorKind::Conflict, frames.span(), msg)
                .with_help(help));
        }
    }
    let cpus = match &d.cpus {
        Some(v) => fields::cpus(src, v)?,
        None => defaults.cpus,
    };
    let workers = match &d.workers {
        Some(v) => fields::choice(
            src,
            v,
            "workers",
            &[("per-pair", Workers::PerPair), ("per-cpu", Workers::PerCpu)],
        )?,
        None => defaults.workers,
    };
    if let (Some(w), Workers::PerCpu, true) = (&d.workers, workers, cpus.is_empty()) {
        return Err(src
            .error(
                ErrorKind::Conflict,
                w.span(),
                "workers = \"per-cpu\" without cpus: a shared thread serves the pairs pinned to its CPU",
            )
            .with_help("add cpus = [2] (the CPUs whose threads serve this device's pairs)"));
    }
    Ok(Tuning {
        burst,
        weight,
        polling,
        busy_poll_us,
        rx_coalesce_frames,
        rx_coalesce_usecs,
        cpus,
        workers,
    })
}

/// The software backend, with `tap_name`/`netdev` checked against it.
fn backend(src: &Source<'_>, d: &RawDevice, has_pci: bool) -> Result<Backend, ConfigError> {
    let kind = match &d.backend {
        Some(v) if v.get_ref() == "af_xdp" => {
            return Err(src
                .error(
                    ErrorKind::InvalidValue,
                    v.span(),
                    "backend `af_xdp` is not supported yet",
                )
                .with_help("use backend = \"af_packet\" on the same interface"));
        }
        Some(v) => fields::choice(
            src,
            v,
            "backend",
            &[
                ("loopback", BackendKind::Loopback),
                ("tap", BackendKind::Tap),
                ("af_packet", BackendKind::AfPacket),
            ],
        )?,
        None if has_pci => BackendKind::AfPacket,
        None => BackendKind::Loopback,
    };
    let actual = match &d.backend {
        Some(_) => format!("backend is \"{}\"", kind.as_str()),
        None if has_pci => "backend is \"af_packet\" (the default with `pci`)".to_owned(),
        None => "backend is \"loopback\" (the default without `pci`)".to_owned(),
    };
    let misplaced = |value: &Spanned<String>, key: &str, wanted: BackendKind| {
        let msg = format!(
            "`{key}` only applies to backend = \"{}\", but this device's {actual}",
            wanted.as_str()
        );
        src.error(ErrorKind::Conflict, value.span(), msg)
            .with_help(format!(
                "set backend = \"{}\", or remove `{key}`",
                wanted.as_str()
            ))
    };
    if let (Some(v), false) = (&d.tap_name, kind == BackendKind::Tap) {
        return Err(misplaced(v, "tap_name", BackendKind::Tap));
    }
    if let (Some(v), false) = (&d.netdev, kind == BackendKind::AfPacket) {
        return Err(misplaced(v, "netdev", BackendKind::AfPacket));
    }
    Ok(match kind {
        BackendKind::Loopback => Backend::Loopback,
        BackendKind::Tap => Backend::Tap {
            name: d
                .tap_name
                .as_ref()
                .map(|v| fields::ifname(src, v, "tap_name"))
                .transpose()?,
        },
        BackendKind::AfPacket => {
            let netdev = d
                .netdev
                .as_ref()
                .map(|v| fields::ifname(src, v, "netdev"))
                .transpose()?;
            if let (None, false, Some(v)) = (&netdev, has_pci, &d.backend) {
                return Err(src
                    .error(
                        ErrorKind::Conflict,
                        v.span(),
                        "backend = \"af_packet\" needs an interface: set `netdev` or `pci`",
                    )
                    .with_help(
                        "add netdev = \"eth1\" (the host interface to attach to), or pci = \"...\" \
                         to use that NIC's interface",
                    ));
            }
            Backend::AfPacket { netdev }
        }
    })
}

/// Validates `tables` in order and checks each device's name, socket, interface and
/// PCI function against the control socket, the `existing` devices, and the devices
/// before it.
pub(crate) fn devices(
    src: &Source<'_>,
    tables: &[Spanned<RawDevice>],
    daemon: &DaemonConfig,
    existing: &[DeviceConfig],
) -> Result<Vec<DeviceConfig>, ConfigError> {
    let mut placed: Vec<Placed<'_>> = Vec::with_capacity(tables.len());
    add_devices(src, tables, daemon, existing, &mut placed)?;
    Ok(placed.into_iter().map(|p| p.dev.config).collect())
}

/// Validates `tables` of `src` and appends them to `placed` (devices of earlier
/// sources), checking each against everything before it.
pub(crate) fn add_devices<'a>(
    src: &Source<'a>,
    tables: &[Spanned<RawDevice>],
    daemon: &DaemonConfig,
    existing: &[DeviceConfig],
    placed: &mut Vec<Placed<'a>>,
) -> Result<(), ConfigError> {
    for table in tables {
        let dev = device(src, table, daemon)?;
        unique::check(src, &dev, daemon, existing, placed)?;
        placed.push(Placed { src: *src, dev });
    }
    Ok(())
}
