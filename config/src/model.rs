//! The effective configuration: what the daemon runs after defaults are applied and
//! every value has been validated. Nothing in here can be invalid.

use std::fmt;
use std::path::PathBuf;

/// The whole configuration of one daemon: daemon-wide settings and its devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Daemon-wide settings (`[daemon]`).
    pub daemon: DaemonConfig,
    /// The devices (`[[device]]`), in file order. Names and sockets are unique.
    pub devices: Vec<DeviceConfig>,
}

/// Daemon-wide settings (`[daemon]` table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Directory for sockets; created if missing.
    pub run_dir: PathBuf,
    /// Path of the control socket used by `vdpactl`.
    pub control_socket: PathBuf,
    /// Default log filter (`error`, `warn`, `info`, `debug`, `trace`, or an
    /// `EnvFilter` directive string).
    pub log_level: String,
    /// Log output format.
    pub log_format: LogFormat,
    /// Ownership and mode given to every socket the daemon creates, unless a device
    /// overrides it.
    pub socket_perms: SocketPerms,
    /// Address (`IP:port`) of the Prometheus metrics endpoint, if enabled.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Directory of drop-in files (`*.toml` with `[[device]]` tables) read after the
    /// main file; `vdpactl add --persist` writes there. Default: `vdpad.d` next to
    /// the main file; `None` for text that is not a file (the embedded default).
    pub include_dir: Option<PathBuf>,
    /// Permission bits of the control socket (its own setting: `socket_mode` is for
    /// device sockets); default `0o600`.
    pub control_socket_mode: u32,
    /// Directories besides `run_dir` in which `vdpactl add` may place device sockets.
    pub socket_dirs: Vec<PathBuf>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Owner, group and permission bits applied to a Unix socket after it is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketPerms {
    /// Permission bits, e.g. `0o600`.
    pub mode: u32,
    /// Owner uid to `chown` the socket to, if set.
    pub owner: Option<u32>,
    /// Group gid to `chown` the socket to, if set.
    pub group: Option<u32>,
}

/// How a device chooses its datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Offload when the PCI function has virtio rings, software otherwise.
    Auto,
    /// Hardware offload through VFIO; needs `pci`.
    Offload,
    /// Software datapath with the configured backend.
    Software,
}

/// How the VM (or the host kernel) reaches a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frontend {
    /// A vhost-user socket that QEMU, DPDK or the rig connects to.
    VhostUser,
    /// A VDUSE device (`/dev/vduse/<name>`) on the kernel's vDPA bus.
    Vduse {
        /// The vDPA bus driver vdpad attaches the device to, or `None` to leave the
        /// attaching (`vdpa dev add`) to the operator.
        driver: Option<VdpaDriver>,
    },
}

/// Which side of a vhost-user socket vdpad is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SocketRole {
    /// vdpad creates the socket and listens; QEMU (`-chardev socket,path=...`) connects.
    #[default]
    Server,
    /// QEMU (`-chardev socket,path=...,server=on`) or DPDK virtio-user (`server=1`)
    /// owns and listens on the socket; vdpad connects, and reconnects after either
    /// side restarts. vdpad never creates, removes or changes the socket file.
    Client,
}

/// A vDPA bus driver in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VdpaDriver {
    /// `vhost_vdpa`: `/dev/vhost-vdpa-N` for QEMU `-netdev vhost-vdpa` or DPDK.
    VhostVdpa,
    /// `virtio_vdpa`: the host kernel's own virtio-net netdev (containers).
    VirtioVdpa,
}

/// The host side of the software datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Every frame the guest sends comes back to its own RX queue (tests, benchmarks).
    Loopback,
    /// A tap device; `None` lets the kernel pick the name (`vdpadN`... style prefix).
    Tap {
        /// Tap interface name to create or attach to.
        name: Option<String>,
    },
    /// AF_PACKET on an existing network interface. `None` means "the netdev of the
    /// device's PCI function", resolved at start.
    AfPacket {
        /// Interface name to bind to.
        netdev: Option<String>,
    },
}

/// A PCI address `domain:bus:device.function`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PciAddress {
    /// PCI domain (segment), 0..=0xffff.
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// One vhost-user virtio-net device (`[[device]]` entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Unique device name, `[A-Za-z0-9_.-]`, 1..=64 characters.
    pub name: String,
    /// vhost-user socket path; default `<run_dir>/<name>.sock` (unused by VDUSE).
    pub socket: PathBuf,
    /// vhost-user socket or VDUSE device.
    pub frontend: Frontend,
    /// Whether vdpad listens on `socket` (server) or connects to it (client); always
    /// `Server` for VDUSE, which has no socket.
    pub socket_role: SocketRole,
    /// Datapath selection.
    pub mode: Mode,
    /// PCI function for offload (and the netdev owner for software on a NIC).
    pub pci: Option<PciAddress>,
    /// Software backend (used in software mode and as the offload fallback).
    pub backend: Backend,
    /// Number of RX/TX queue pairs offered (1..=MAX_QUEUE_PAIRS).
    pub queue_pairs: u16,
    /// Maximum ring size accepted from the frontend (power of two, 2..=32768).
    pub queue_size: u16,
    /// MAC address offered with VIRTIO_NET_F_MAC.
    pub mac: Option<MacAddress>,
    /// MTU offered with VIRTIO_NET_F_MTU (68..=65535).
    pub mtu: Option<u16>,
    /// Offer VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// Offer VIRTIO_NET_F_MRG_RXBUF.
    pub mrg_rxbuf: bool,
    /// When offload fails to come up, run the software datapath instead.
    pub fallback: bool,
    /// Socket ownership and mode for this device's socket (unused in client mode:
    /// the socket is the frontend's).
    pub socket_perms: SocketPerms,
    /// Offer checksum and segmentation offloads when the datapath supports them.
    pub offloads: bool,
    /// The VM this device belongs to: devices of one VM share one IOMMU container
    /// (offload); `None` gives the device a container of its own.
    pub vm: Option<String>,
    /// Most guest memory, in bytes, one frontend may have this device map (and, with
    /// offload, pin): a memory table adding up to more is refused.
    pub max_guest_memory: u64,
    /// Software datapath tuning.
    pub tuning: Tuning,
    /// What the device may receive and send (tap and af_packet backends).
    pub security: PortSecurity,
    /// Rate limits (software datapath).
    pub rates: RateLimits,
}

/// An IPv4 or IPv6 prefix, e.g. `192.0.2.10/32` or `fe80::/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPrefix {
    /// The address as written.
    pub addr: std::net::IpAddr,
    /// Prefix length (32 or 128 when written without one).
    pub len: u8,
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Port security of one device (see docs/security.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSecurity {
    /// Receive every frame on the interface, not only the device's (`promiscuous`).
    pub promiscuous: bool,
    /// Drop frames the guest sends with a source MAC other than `mac` (`spoof_check`).
    pub spoof_check: bool,
    /// IPv4/IPv6 sources and ARP senders the guest may use; empty: not checked.
    pub allowed_ips: Vec<IpPrefix>,
    /// Multicast groups received; `None`: all multicast.
    pub multicast: Option<Vec<MacAddress>>,
    /// Access VLAN (native VLAN with `trunk_vlans`), 1..=4094.
    pub vlan: Option<u16>,
    /// VLANs the guest sends and receives tagged.
    pub trunk_vlans: Vec<u16>,
    /// This device may share its `netdev` with other devices without the isolation
    /// the configuration checks for (distinct MACs, filtering on).
    pub shared_netdev: bool,
}

impl Default for PortSecurity {
    fn default() -> Self {
        PortSecurity {
            promiscuous: false,
            spoof_check: true,
            allowed_ips: Vec::new(),
            multicast: None,
            vlan: None,
            trunk_vlans: Vec::new(),
            shared_netdev: false,
        }
    }
}

/// Rate limits of one device; 0 is unlimited. Split evenly over its queue pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Guest-to-host packets per second.
    pub tx_pps: u64,
    /// Guest-to-host bits per second.
    pub tx_bps: u64,
    /// Host-to-guest packets per second.
    pub rx_pps: u64,
    /// Host-to-guest bits per second.
    pub rx_bps: u64,
    /// Bucket depth in microseconds at the limit.
    pub burst_us: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            tx_pps: 0,
            tx_bps: 0,
            rx_pps: 0,
            rx_bps: 0,
            burst_us: crate::DEFAULT_RATE_BURST_US,
        }
    }
}

/// Software datapath knobs of one device (see docs/software-datapath.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Chains per pass and direction before the used index is published (1..=1024).
    pub burst: u16,
    /// Obsolete: workers once yielded the CPU after this many frames, which starved
    /// them under EEVDF. Accepted (1..=65536) so older files load; the daemon warns.
    pub weight: Option<u32>,
    /// How a worker decides how long to poll once its rings go idle.
    pub polling: Polling,
    /// Polling budget in microseconds (..=1_000_000): the ceiling of the learned budget
    /// with [`Polling::Adaptive`], the budget itself with [`Polling::Fixed`]. 0 = never
    /// poll.
    pub busy_poll_us: u32,
    /// Hold RX interrupts until this many frames completed (0 = off, ..=65535).
    pub rx_coalesce_frames: u32,
    /// ...or until this many microseconds passed (0 = off, ..=1_000_000).
    pub rx_coalesce_usecs: u32,
    /// CPUs workers are pinned to: pair i on `cpus[i % len]`; empty = no pinning.
    pub cpus: Vec<u16>,
    /// Whether each pair gets a thread of its own or shares its CPU's thread.
    pub workers: Workers,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            burst: crate::DEFAULT_BURST,
            weight: None,
            polling: Polling::Adaptive,
            busy_poll_us: crate::DEFAULT_ADAPTIVE_POLL_US,
            rx_coalesce_frames: 0,
            rx_coalesce_usecs: 0,
            cpus: Vec::new(),
            workers: Workers::PerPair,
        }
    }
}

/// How queue pairs are spread over worker threads (`workers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workers {
    /// A thread per queue pair (the default).
    PerPair,
    /// One thread per CPU in `cpus`, serving every such pair pinned there.
    PerCpu,
}

impl Workers {
    /// The configuration keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Workers::PerPair => "per-pair",
            Workers::PerCpu => "per-cpu",
        }
    }
}

/// How a software worker decides how long to poll its rings after they go idle
/// (`polling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polling {
    /// Learn the budget from the traffic, up to `busy_poll_us` (the default).
    Adaptive,
    /// Poll exactly `busy_poll_us` every time.
    Fixed,
}

impl Polling {
    /// The configuration keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Polling::Adaptive => "adaptive",
            Polling::Fixed => "fixed",
        }
    }
}

/// Largest `queue_pairs` accepted.
pub const MAX_QUEUE_PAIRS: u16 = 64;
/// Largest split-ring size the virtio spec allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;
