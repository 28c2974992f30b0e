//! Default values, limits, the embedded default configuration, and where sockets go
//! when the file does not say.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::error::ConfigError;
use crate::model::{Backend, Config, DeviceConfig, Frontend, Mode, SocketPerms, SocketRole};

/// Name of the drop-in directory next to the main file (`/etc/vdpad/vdpad.d`).
pub const DROP_IN_DIR_NAME: &str = "vdpad.d";

/// The embedded default configuration (one loopback software device), run by `vdpad`
/// when it is started without `--config`.
pub const EMBEDDED_DEFAULT_TOML: &str = include_str!("default.toml");

/// Origin name used in errors about [`EMBEDDED_DEFAULT_TOML`].
pub const EMBEDDED_DEFAULT_ORIGIN: &str = "<embedded default>";

/// Run directory used when running as root.
pub const ROOT_RUN_DIR: &str = "/run/vdpad";

/// File name of the control socket inside the run directory.
pub const CONTROL_SOCKET_NAME: &str = "control.sock";

/// Default `log_level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// Default socket permission bits (owner read and write).
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Default `queue_pairs`.
pub const DEFAULT_QUEUE_PAIRS: u16 = 1;

/// Default `queue_size`.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;

/// Smallest `queue_size` accepted.
pub const MIN_QUEUE_SIZE: u16 = 2;

/// Default `max_guest_memory`: 64 GiB.
pub const DEFAULT_MAX_GUEST_MEMORY: u64 = 64 << 30;

/// Smallest `max_guest_memory` accepted: 1 MiB.
pub const MIN_MAX_GUEST_MEMORY: u64 = 1 << 20;

/// Largest `max_guest_memory` accepted: 1 PiB (virtually no limit).
pub const MAX_MAX_GUEST_MEMORY: u64 = 1 << 50;

/// Smallest `mtu` accepted (the IPv4 minimum).
pub const MIN_MTU: u16 = 68;

/// Longest device name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Longest socket path, in bytes, that fits in `sockaddr_un.sun_path` (108 bytes
/// including the terminating NUL).
pub const SOCKET_PATH_MAX: usize = 107;

/// Longest network interface name (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;

/// Default `burst`: 16 chains. Measured against 8, 12, 24, 32 and 64 (vhost-net's
/// `VHOST_NET_BATCH`) with DPDK virtio-user and vdpa-rig as guests: publishing every 16
/// frames lets the guest work on the first ones while the rest are copied, and was the
/// only setting faster than DPDK's vhost library in every cell (docs/performance.md).
pub const DEFAULT_BURST: u16 = 16;

/// Largest `burst` accepted.
pub const MAX_BURST: u16 = 1024;

/// Default `busy_poll_us` with `polling = "adaptive"`: the ceiling of the learned
/// budget (docs/software-datapath.md, "Polling").
pub const DEFAULT_ADAPTIVE_POLL_US: u32 = 200;

/// Largest `weight` accepted (the key is obsolete and has no effect).
pub const MAX_WEIGHT: u32 = 65536;

/// Largest `busy_poll_us` accepted (one second).
pub const MAX_BUSY_POLL_US: u32 = 1_000_000;

/// Largest `rx_coalesce_frames` accepted.
pub const MAX_RX_COALESCE_FRAMES: u32 = 65535;

/// Largest `rx_coalesce_usecs` accepted (one second).
pub const MAX_RX_COALESCE_USECS: u32 = 1_000_000;

/// Default `rate_burst_us`: a rate limit's bucket holds 5 ms of traffic.
pub const DEFAULT_RATE_BURST_US: u32 = 5000;

/// Largest packets/s or bits/s limit accepted (one trillion: 1 Tbit/s).
pub const MAX_RATE: u64 = 1_000_000_000_000;

/// Highest CPU number accepted in `cpus`.
pub const MAX_CPU: u16 = 1023;

/// The directory for sockets when the configuration does not set `run_dir`:
///
/// * `/run/vdpad` when running as root (effective uid 0);
/// * otherwise `$XDG_RUNTIME_DIR/vdpad` when that variable is set to an absolute path
///   of an existing directory;
/// * otherwise `/tmp/vdpad-<uid>`.
///
/// The directory itself need not exist; the daemon creates it. (Under `/tmp` the
/// daemon must check that an existing directory belongs to it.)
pub fn default_run_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let xdg = std::env::var_os("XDG_RUNTIME_DIR");
    run_dir_for(euid, xdg.as_deref(), |p| p.is_dir())
}

/// The pure decision behind [`default_run_dir`]: `euid` is the effective uid,
/// `xdg_runtime_dir` the value of `XDG_RUNTIME_DIR`, and `is_dir` tells whether a
/// path is an existing directory.
pub(crate) fn run_dir_for(
    euid: u32,
    xdg_runtime_dir: Option<&OsStr>,
    is_dir: impl Fn(&Path) -> bool,
) -> PathBuf {
    if euid == 0 {
        return PathBuf::from(ROOT_RUN_DIR);
    }
    if let Some(xdg) = xdg_runtime_dir.map(Path::new) {
        // The XDG base directory spec says relative values are to be ignored.
        if xdg.is_absolute() && is_dir(xdg) {
            return xdg.join("vdpad");
        }
    }
    PathBuf::from(format!("/tmp/vdpad-{euid}"))
}

impl Config {
    /// The embedded default configuration ([`EMBEDDED_DEFAULT_TOML`]), with its socket
    /// in [`default_run_dir`].
    pub fn embedded_default() -> Config {
        Self::try_embedded_default().expect("the embedded default configuration is valid")
    }

    /// Like [`Config::embedded_default`], but returns the error instead of panicking
    /// (only possible if the default run directory is too long for a socket path).
    pub fn try_embedded_default() -> Result<Config, ConfigError> {
        Config::from_toml_str(EMBEDDED_DEFAULT_TOML, EMBEDDED_DEFAULT_ORIGIN)
    }
}

impl DeviceConfig {
    /// A software loopback device named `name` on `socket`, with every other key at
    /// the default a configuration file gets: the starting point for devices built in
    /// code (tests, tools) rather than read from a file.
    pub fn software_loopback(name: &str, socket: PathBuf) -> DeviceConfig {
        DeviceConfig {
            name: name.to_owned(),
            socket,
            frontend: Frontend::VhostUser,
            socket_role: SocketRole::Server,
            mode: Mode::Software,
            pci: None,
            backend: Backend::Loopback,
            queue_pairs: DEFAULT_QUEUE_PAIRS,
            queue_size: DEFAULT_QUEUE_SIZE,
            mac: None,
            mtu: None,
            event_idx: true,
            mrg_rxbuf: true,
            fallback: true,
            socket_perms: SocketPerms {
                mode: DEFAULT_SOCKET_MODE,
                owner: None,
                group: None,
            },
            offloads: true,
            vm: None,
            max_guest_memory: DEFAULT_MAX_GUEST_MEMORY,
            tuning: Default::default(),
            security: Default::default(),
            rates: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, MacAddress, Mode};

    #[test]
    fn root_uses_run_vdpad_even_with_xdg() {
        let dir = run_dir_for(0, Some(OsStr::new("/run/user/0")), |_| true);
        assert_eq!(dir, PathBuf::from("/run/vdpad"));
    }

    #[test]
    fn non_root_uses_existing_xdg_runtime_dir() {
        let dir = run_dir_for(1000, Some(OsStr::new("/run/user/1000")), |p| {
            p == Path::new("/run/user/1000")
        });
        assert_eq!(dir, PathBuf::from("/run/user/1000/vdpad"));
    }

    #[test]
    fn non_root_falls_back_to_tmp() {
        let missing = run_dir_for(1000, Some(OsStr::new("/run/user/1000")), |_| false);
        assert_eq!(missing, PathBuf::from("/tmp/vdpad-1000"));
        let unset = run_dir_for(1000, None, |_| true);
        assert_eq!(unset, PathBuf::from("/tmp/vdpad-1000"));
        let relative = run_dir_for(1000, Some(OsStr::new("run/user")), |_| true);
        assert_eq!(relative, PathBuf::from("/tmp/vdpad-1000"));
    }

    #[test]
    fn embedded_default_is_one_loopback_device() {
        let config = Config::embedded_default();
        assert_eq!(config.daemon.run_dir, default_run_dir());
        assert_eq!(
            config.daemon.control_socket,
            default_run_dir().join("control.sock")
        );
        let [dev] = config.devices.as_slice() else {
            panic!("expected one device, got {:?}", config.devices);
        };
        assert_eq!(dev.name, "vdpad0");
        assert_eq!(dev.socket, default_run_dir().join("vdpad0.sock"));
        assert_eq!(dev.mode, Mode::Software);
        assert_eq!(dev.backend, Backend::Loopback);
        assert_eq!((dev.queue_pairs, dev.queue_size), (1, 256));
        assert!(dev.event_idx && dev.mrg_rxbuf);
        assert_eq!(dev.mac, Some(MacAddress([0x52, 0x54, 0, 0, 0, 1])));
    }

    #[test]
    fn embedded_default_round_trips_through_display() {
        let config = Config::embedded_default();
        let rendered = config.to_string();
        let again =
            Config::from_toml_str(&rendered, "<rendered>").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, config);
    }
}
