//! Whole files: the full example, defaults, path resolution, rendering, reading files.

use std::path::{Path, PathBuf};

use super::{assert_round_trip, ok};
use crate::{
    default_run_dir, Backend, Config, DaemonConfig, DeviceConfig, ErrorKind, Frontend, LogFormat,
    MacAddress, Mode, PciAddress, Polling, SocketPerms, Tuning, Workers, EMBEDDED_DEFAULT_TOML,
};

/// Every key, as in docs/config.md.
pub(super) const FULL_EXAMPLE: &str = r#"
[daemon]
run_dir = "/run/vdpad"
control_socket = "control.sock"
log_level = "info,vdpa=debug"
log_format = "json"
metrics_listen = "127.0.0.1:9464"
socket_mode = "0660"
socket_owner = "root"
socket_group = 0

[[device]]
name = "vm1-net0"
socket = "/run/vdpad/vm1-net0.sock"
mode = "auto"
pci = "0000:3b:00.2"
vm = "vm1"
backend = "af_packet"
netdev = "eth1"
queue_pairs = 4
queue_size = 1024
mac = "52:54:00:12:34:56"
mtu = 9000
event_idx = true
mrg_rxbuf = false
offloads = false
fallback = false
socket_mode = "0600"
socket_owner = 107
socket_group = "root"
burst = 32
weight = 512
busy_poll_us = 50
rx_coalesce_frames = 16
rx_coalesce_usecs = 100
cpus = [2, 3]

[[device]]
name = "vm2-net0"
backend = "tap"
tap_name = "vdpad-tap1"

[[device]]
name = "lab"
pci = "3B:00.3"
"#;

fn perms(mode: u32, owner: Option<u32>, group: Option<u32>) -> SocketPerms {
    SocketPerms { mode, owner, group }
}

#[test]
fn full_example_parses_to_expected_values() {
    let config = ok(FULL_EXAMPLE);
    let daemon = DaemonConfig {
        run_dir: PathBuf::from("/run/vdpad"),
        control_socket: PathBuf::from("/run/vdpad/control.sock"),
        log_level: "info,vdpa=debug".into(),
        log_format: LogFormat::Json,
        socket_perms: perms(0o660, Some(0), Some(0)),
        metrics_listen: Some("127.0.0.1:9464".parse().unwrap()),
        include_dir: None,
        control_socket_mode: 0o600,
        socket_dirs: Vec::new(),
    };
    assert_eq!(config.daemon, daemon);
    let vm1 = DeviceConfig {
        name: "vm1-net0".into(),
        socket: PathBuf::from("/run/vdpad/vm1-net0.sock"),
        frontend: Frontend::VhostUser,
        socket_role: crate::SocketRole::Server,
        mode: Mode::Auto,
        pci: Some(PciAddress {
            domain: 0,
            bus: 0x3b,
            device: 0,
            function: 2,
        }),
        backend: Backend::AfPacket {
            netdev: Some("eth1".into()),
        },
        queue_pairs: 4,
        queue_size: 1024,
        mac: Some(MacAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
        mtu: Some(9000),
        event_idx: true,
        mrg_rxbuf: false,
        fallback: false,
        socket_perms: perms(0o600, Some(107), Some(0)),
        offloads: false,
        vm: Some("vm1".into()),
        max_guest_memory: crate::DEFAULT_MAX_GUEST_MEMORY,
        tuning: Tuning {
            burst: 32,
            weight: Some(512),
            polling: Polling::Adaptive,
            busy_poll_us: 50,
            rx_coalesce_frames: 16,
            rx_coalesce_usecs: 100,
            cpus: vec![2, 3],
            workers: Workers::PerPair,
        },
        security: Default::default(),
        rates: Default::default(),
    };
    assert_eq!(config.devices[0], vm1);
    let vm2 = &config.devices[1];
    assert!(vm2.offloads);
    assert_eq!(vm2.vm, None);
    assert_eq!(vm2.tuning, Tuning::default());
    assert_eq!(vm2.socket, PathBuf::from("/run/vdpad/vm2-net0.sock"));
    assert_eq!(vm2.mode, Mode::Software);
    assert_eq!(
        vm2.backend,
        Backend::Tap {
            name: Some("vdpad-tap1".into())
        }
    );
    // Inherited from [daemon].
    assert_eq!(vm2.socket_perms, perms(0o660, Some(0), Some(0)));
    let lab = &config.devices[2];
    assert_eq!(
        lab.pci.map(|p| p.to_string()).as_deref(),
        Some("0000:3b:00.3")
    );
    assert_eq!(
        (lab.mode, &lab.backend),
        (Mode::Auto, &Backend::AfPacket { netdev: None })
    );
    assert_eq!(config.device("lab"), Some(lab));
}

#[test]
fn device_defaults_without_pci() {
    let config = ok("[daemon]\nrun_dir = \"/srv/v\"\n[[device]]\nname = \"d\"\n");
    let d = &config.devices[0];
    assert_eq!(d.socket, PathBuf::from("/srv/v/d.sock"));
    assert_eq!((d.mode, &d.backend), (Mode::Software, &Backend::Loopback));
    assert_eq!((d.queue_pairs, d.queue_size), (1, 256));
    assert_eq!((d.mac, d.mtu), (None, None));
    assert!(d.event_idx && d.mrg_rxbuf && d.fallback && d.offloads);
    assert_eq!(d.socket_perms, perms(0o600, None, None));
    assert_eq!(d.vm, None);
    let tuning = Tuning {
        burst: 16,
        weight: None,
        polling: Polling::Adaptive,
        busy_poll_us: 200,
        rx_coalesce_frames: 0,
        rx_coalesce_usecs: 0,
        cpus: Vec::new(),
        workers: Workers::PerPair,
    };
    assert_eq!(d.tuning, tuning);
    assert_eq!(config.daemon.log_level, "info");
    assert_eq!(config.daemon.log_format, LogFormat::Text);
    assert_eq!(config.daemon.metrics_listen, None);
}

#[test]
fn empty_file_is_a_daemon_without_devices() {
    let config = ok("");
    assert!(config.devices.is_empty());
    assert_eq!(config.daemon.run_dir, default_run_dir());
    assert_eq!(
        config.daemon.control_socket,
        default_run_dir().join("control.sock")
    );
}

#[test]
fn relative_socket_paths_resolve_against_run_dir() {
    let config = ok(r#"
[daemon]
run_dir = "/srv/vdpad/"
control_socket = "./ctl/control.sock"

[[device]]
name = "a"
socket = "vms/a.sock"

[[device]]
name = "b"
socket = "/var/lib/b.sock"

[[device]]
name = "c"
socket = "./c//x.sock"
"#);
    assert_eq!(config.daemon.run_dir, Path::new("/srv/vdpad"));
    assert_eq!(
        config.daemon.control_socket,
        Path::new("/srv/vdpad/ctl/control.sock")
    );
    let sockets: Vec<&Path> = config.devices.iter().map(|d| d.socket.as_path()).collect();
    assert_eq!(
        sockets,
        [
            Path::new("/srv/vdpad/vms/a.sock"),
            Path::new("/var/lib/b.sock"),
            Path::new("/srv/vdpad/c/x.sock")
        ]
    );
}

#[test]
fn inline_device_array_is_accepted() {
    let config = ok("device = [{ name = \"x\" }, { name = \"y\", queue_pairs = 2 }]\n");
    assert_eq!(config.devices.len(), 2);
    assert_eq!(config.devices[1].queue_pairs, 2);
}

#[test]
fn full_example_round_trips() {
    assert_round_trip(&ok(FULL_EXAMPLE));
}

#[test]
fn unusual_strings_round_trip() {
    let config = ok(r#"
[daemon]
run_dir = "/tmp/we\"ird dir\\ü"
log_level = "vdpad_config::load=trace,warn"

[[device]]
name = "t.1_x-Y"
backend = "tap"

[[device]]
name = "u"
backend = "tap"
tap_name = "t'ap\"1"
"#);
    assert_eq!(config.daemon.run_dir, Path::new("/tmp/we\"ird dir\\ü"));
    assert_eq!(config.devices[0].backend, Backend::Tap { name: None });
    assert_round_trip(&config);
}

/// The port security and rate limit keys of a device with their defaults, as
/// rendered after its tuning.
const PORT_DEFAULTS: &str = "\
promiscuous = false
spoof_check = true
allowed_ips = []
trunk_vlans = []
shared_netdev = false
tx_pps = 0
tx_bps = 0
rx_pps = 0
rx_bps = 0
rate_burst_us = 5000
";

#[test]
fn rendering_spells_out_defaults_canonically() {
    let config = ok("[daemon]\nrun_dir = \"/r\"\n[[device]]\nname = \"n\"\npci = \"3B:1f.7\"\nmac = \"52-54-00-AB-CD-EF\"\n");
    let expected = "\
# vdpad effective configuration (all defaults filled in)

[daemon]
run_dir = \"/r\"
control_socket = \"/r/control.sock\"
log_level = \"info\"
log_format = \"text\"
control_socket_mode = \"0600\"
socket_mode = \"0600\"

[[device]]
name = \"n\"
socket = \"/r/n.sock\"
socket_role = \"server\"
mode = \"auto\"
pci = \"0000:3b:1f.7\"
backend = \"af_packet\"
queue_pairs = 1
queue_size = 256
mac = \"52:54:00:ab:cd:ef\"
max_guest_memory = \"64G\"
event_idx = true
mrg_rxbuf = true
offloads = true
fallback = true
socket_mode = \"0600\"
burst = 16
polling = \"adaptive\"
busy_poll_us = 200
rx_coalesce_frames = 0
rx_coalesce_usecs = 0
cpus = []
workers = \"per-pair\"
";
    assert_eq!(config.to_string(), format!("{expected}{PORT_DEFAULTS}"));
}

#[test]
fn rendering_places_new_keys_next_to_their_relatives() {
    let config = ok(r#"
[daemon]
run_dir = "/r"
metrics_listen = "[0:0::1]:9464"

[[device]]
cpus = [3, 1]
rx_coalesce_usecs = 20
vm = "vm-7"
name = "n"
offloads = false
"#);
    let expected = "\
# vdpad effective configuration (all defaults filled in)

[daemon]
run_dir = \"/r\"
control_socket = \"/r/control.sock\"
log_level = \"info\"
log_format = \"text\"
metrics_listen = \"[::1]:9464\"
control_socket_mode = \"0600\"
socket_mode = \"0600\"

[[device]]
name = \"n\"
socket = \"/r/n.sock\"
socket_role = \"server\"
mode = \"software\"
vm = \"vm-7\"
backend = \"loopback\"
queue_pairs = 1
queue_size = 256
max_guest_memory = \"64G\"
event_idx = true
mrg_rxbuf = true
offloads = false
fallback = true
socket_mode = \"0600\"
burst = 16
polling = \"adaptive\"
busy_poll_us = 200
rx_coalesce_frames = 0
rx_coalesce_usecs = 20
cpus = [3, 1]
workers = \"per-pair\"
";
    assert_eq!(config.to_string(), format!("{expected}{PORT_DEFAULTS}"));
    assert_round_trip(&config);
}

#[test]
fn embedded_default_text_describes_one_loopback_device() {
    assert!(EMBEDDED_DEFAULT_TOML.contains("name = \"vdpad0\""));
    assert_round_trip(&Config::embedded_default());
}

fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vdpad-config-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn from_file_reads_and_names_the_file_in_errors() {
    let dir = scratch_dir("from-file");
    let good = dir.join("good.toml");
    std::fs::write(&good, FULL_EXAMPLE).unwrap();
    let mut expected = ok(FULL_EXAMPLE);
    // Read from a file, the drop-in directory defaults to vdpad.d next to it.
    expected.daemon.include_dir = Some(dir.join("vdpad.d"));
    assert_eq!(Config::from_file(&good).unwrap(), expected);

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[device]]\nname = \"a\"\nqueue_size = 300\n").unwrap();
    let e = Config::from_file(&bad).unwrap_err();
    assert_eq!(e.file(), bad.display().to_string());
    assert_eq!((e.line(), e.column()), (Some(3), Some(14)));
    assert!(e
        .to_string()
        .starts_with(&format!("{}:3:14: error: ", bad.display())));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_file_is_an_io_error_naming_the_file() {
    let path = scratch_dir("missing").join("nope.toml");
    let e = Config::from_file(&path).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(e.file(), path.display().to_string());
    assert_eq!(e.line(), None);
    assert_eq!(
        e.io_error().map(|io| io.kind()),
        Some(std::io::ErrorKind::NotFound)
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!(
            "{}: error: cannot read the configuration file: ",
            path.display()
        )),
        "{shown}"
    );
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
