//! One test per validation rule, asserting the exact line and column reported.

use super::{assert_err, assert_round_trip, err, ok};
use crate::ErrorKind::{
    Conflict, Duplicate, InvalidValue, MissingKey, Syntax, UnknownId, UnknownKey, WrongType,
};

const DEV: &str = "[[device]]\nname = \"a\"\n";

/// A one-device file with `line` as its third line.
fn dev(line: &str) -> String {
    format!("{DEV}{line}\n")
}

#[test]
fn unknown_key_suggests_the_closest() {
    let e = assert_err(
        &dev("queue_szie = 256"),
        UnknownKey,
        3,
        1,
        "unknown key `queue_szie`, did you mean `queue_size`?",
    );
    assert!(e
        .help()
        .unwrap()
        .contains("valid keys in [[device]] are: name, socket,"));
}

#[test]
fn unknown_key_without_a_close_match_lists_valid_keys() {
    let e = assert_err(
        "[daemon]\n  colour = 1\n",
        UnknownKey,
        2,
        3,
        "unknown key `colour` in [daemon]",
    );
    assert_eq!(
        e.help(),
        Some(
            "valid keys in [daemon] are: run_dir, control_socket, log_level, log_format, \
             metrics_listen, socket_mode, socket_owner, socket_group"
        )
    );
}

#[test]
fn device_key_at_top_level_hints_at_the_missing_header() {
    let e = assert_err(
        "queue_size = 256\n",
        UnknownKey,
        1,
        1,
        "unknown key `queue_size` in the top level",
    );
    assert!(
        e.help()
            .unwrap()
            .contains("put it below a [[device]] header"),
        "{e}"
    );
    assert_err("[devices]\n", UnknownKey, 1, 2, "did you mean `device`?");
}

#[test]
fn first_problem_in_file_order_is_reported() {
    let text = "[[device]]\nname = \"a\"\nzzz = 1\naaa = 2\n";
    assert_err(text, UnknownKey, 3, 1, "`zzz`");
}

#[test]
fn wrong_types_point_at_the_value() {
    let e = assert_err(
        &dev("queue_size = \"256\""),
        WrongType,
        3,
        14,
        "`queue_size` must be an integer, not a string",
    );
    assert_eq!(e.help(), Some("remove the quotes: queue_size = 256"));
    assert_err(
        &dev("event_idx = 1"),
        WrongType,
        3,
        13,
        "`event_idx` must be a boolean",
    );
    assert_err(&dev("mtu = 1500.0"), WrongType, 3, 7, "not a float");
    assert_err(
        &dev("socket_owner = true"),
        WrongType,
        3,
        16,
        "a name (string) or a numeric id",
    );
    let e = assert_err(
        "[daemon]\nsocket_mode = 600\n",
        WrongType,
        2,
        15,
        "`socket_mode` must be a string",
    );
    assert!(e.help().unwrap().contains("\"0600\""));
    let e = assert_err(
        "[device]\nname = \"a\"\n",
        WrongType,
        1,
        1,
        "`device` must be an array of tables",
    );
    assert!(e.help().unwrap().contains("double brackets"));
    assert_err("daemon = 1\n", WrongType, 1, 10, "`daemon` must be a table");
    assert_err(
        "device = [1]\n",
        WrongType,
        1,
        11,
        "each `device` entry must be a table",
    );
}

#[test]
fn syntax_errors_have_positions() {
    assert_err(
        "[[device]]\nname = \"a\nmtu = 1\n",
        Syntax,
        2,
        10,
        "invalid TOML",
    );
    let e = assert_err(
        "[[device]]\nname = \"a\"\nname = \"b\"\n",
        Syntax,
        3,
        1,
        "duplicate key `name`",
    );
    assert_eq!(e.help(), Some("each key may appear only once in a table"));
    let text = "[daemon]\n[[device]]\nname = \"a\"\n[daemon]\n";
    let e = assert_err(text, Syntax, 4, 2, "table [daemon] is defined twice");
    assert!(e.help().unwrap().contains("merge"));
}

#[test]
fn integers_beyond_i64_are_rejected_with_position() {
    let text = dev("queue_size = 99999999999999999999");
    assert_err(
        &text,
        InvalidValue,
        3,
        14,
        "the value of `queue_size` is too large",
    );
    assert_err(
        &dev("socket_owner = 0x7fffffffffffffffff"),
        InvalidValue,
        3,
        16,
        "too large",
    );
}

#[test]
fn missing_name_points_at_the_table_header() {
    let e = assert_err(
        "[[device]]\nname = \"a\"\n\n[[device]]\nmtu = 1500\n",
        MissingKey,
        4,
        1,
        "no `name`",
    );
    assert!(e.help().unwrap().contains("name = \"vm1-net0\""));
}

#[test]
fn bad_device_names() {
    assert_err(
        "[[device]]\nname = \"vm 1\"\n",
        InvalidValue,
        2,
        8,
        "contains ' '",
    );
    assert_err(
        "[[device]]\nname = \"\"\n",
        InvalidValue,
        2,
        8,
        "must not be empty",
    );
    let long = format!("[[device]]\nname = \"{}\"\n", "x".repeat(65));
    assert_err(&long, InvalidValue, 2, 8, "65 characters long");
    ok(&format!("[[device]]\nname = \"{}\"\n", "x".repeat(64)));
}

#[test]
fn queue_size_must_be_a_power_of_two_in_range() {
    let e = assert_err(&dev("queue_size = 300"), InvalidValue, 3, 14, "");
    assert_eq!(e.message(), "queue_size = 300 is not a power of two");
    assert_eq!(
        e.help(),
        Some("use a power of two between 2 and 32768, e.g. 256")
    );
    assert_err(
        &dev("queue_size = 65536"),
        InvalidValue,
        3,
        14,
        "queue_size = 65536 is out of range (2..=32768)",
    );
    assert_err(&dev("queue_size = 1"), InvalidValue, 3, 14, "out of range");
    assert_err(
        &dev("queue_size = -256"),
        InvalidValue,
        3,
        14,
        "out of range",
    );
    assert_eq!(ok(&dev("queue_size = 32768")).devices[0].queue_size, 32768);
    assert_eq!(ok(&dev("queue_size = 2")).devices[0].queue_size, 2);
}

#[test]
fn queue_pairs_and_mtu_ranges() {
    assert_err(
        &dev("queue_pairs = 0"),
        InvalidValue,
        3,
        15,
        "queue_pairs = 0 is out of range (1..=64)",
    );
    assert_err(
        &dev("queue_pairs = 65"),
        InvalidValue,
        3,
        15,
        "out of range",
    );
    assert_eq!(ok(&dev("queue_pairs = 64")).devices[0].queue_pairs, 64);
    assert_err(
        &dev("mtu = 67"),
        InvalidValue,
        3,
        7,
        "mtu = 67 is out of range (68..=65535)",
    );
    assert_err(&dev("mtu = 65536"), InvalidValue, 3, 7, "out of range");
    assert_eq!(ok(&dev("mtu = 68")).devices[0].mtu, Some(68));
}

#[test]
fn mac_addresses() {
    let e = assert_err(
        &dev("mac = \"52:54:00:12:34\""),
        InvalidValue,
        3,
        7,
        "is not a MAC address",
    );
    assert!(e.help().unwrap().contains("52:54:00:12:34:56"));
    let e = assert_err(
        &dev("mac = \"01:00:5e:00:00:01\""),
        InvalidValue,
        3,
        7,
        "is a multicast address",
    );
    assert!(e.help().unwrap().contains("first octet even"), "{e}");
    assert_err(
        &dev("mac = \"ff:ff:ff:ff:ff:ff\""),
        InvalidValue,
        3,
        7,
        "multicast",
    );
    assert_err(
        &dev("mac = \"00:00:00:00:00:00\""),
        InvalidValue,
        3,
        7,
        "all zeros",
    );
}

#[test]
fn pci_addresses() {
    let e = assert_err(
        &dev("pci = \"3b:00:2\""),
        InvalidValue,
        3,
        7,
        "not a PCI address",
    );
    assert!(e.help().unwrap().contains("lspci -D"));
    assert_err(
        &dev("pci = \"0000:3b:20.0\""),
        InvalidValue,
        3,
        7,
        "device number 0x20 is above 0x1f",
    );
    assert_err(
        &dev("pci = \"0000:3b:00.8\""),
        InvalidValue,
        3,
        7,
        "function number 8 is above 7",
    );
}

#[test]
fn mode_and_backend_keywords() {
    assert_err(
        &dev("mode = \"Software\""),
        InvalidValue,
        3,
        8,
        "unknown mode `Software`, did you mean `software`?",
    );
    let e = assert_err(
        &dev("mode = \"fast\""),
        InvalidValue,
        3,
        8,
        "unknown mode `fast`",
    );
    assert_eq!(
        e.help(),
        Some("mode must be one of \"auto\", \"offload\", \"software\"")
    );
    assert_err(
        &dev("backend = \"af-packet\""),
        InvalidValue,
        3,
        11,
        "did you mean `af_packet`?",
    );
    assert_err(
        &dev("backend = \"af_xdp\""),
        InvalidValue,
        3,
        11,
        "not supported yet",
    );
}

#[test]
fn offload_and_auto_need_pci() {
    let e = assert_err(
        &dev("mode = \"offload\""),
        Conflict,
        3,
        8,
        "mode = \"offload\" needs a `pci` address",
    );
    assert!(e.help().unwrap().contains("mode = \"software\""));
    assert_err(&dev("mode = \"auto\""), Conflict, 3, 8, "needs a `pci`");
    ok(&dev("mode = \"offload\"\npci = \"3b:00.2\""));
}

#[test]
fn tap_name_needs_the_tap_backend() {
    let e = assert_err(
        &dev("tap_name = \"t0\""),
        Conflict,
        3,
        12,
        "the default without `pci`",
    );
    assert_eq!(
        e.help(),
        Some("set backend = \"tap\", or remove `tap_name`")
    );
    assert_err(
        &dev("backend = \"af_packet\"\nnetdev = \"eth0\"\ntap_name = \"t0\""),
        Conflict,
        5,
        12,
        "`tap_name` only applies to backend = \"tap\", but this device's backend is \"af_packet\"",
    );
}

#[test]
fn netdev_needs_the_af_packet_backend() {
    assert_err(
        &dev("backend = \"tap\"\nnetdev = \"eth0\""),
        Conflict,
        4,
        10,
        "`netdev` only applies",
    );
    assert_err(
        &dev("netdev = \"eth0\""),
        Conflict,
        3,
        10,
        "backend is \"loopback\"",
    );
    // With pci the default backend is af_packet, so netdev fits.
    ok(&dev("pci = \"3b:00.2\"\nnetdev = \"eth0\""));
}

#[test]
fn af_packet_needs_netdev_or_pci() {
    let e = assert_err(
        &dev("backend = \"af_packet\""),
        Conflict,
        3,
        11,
        "needs an interface",
    );
    assert!(e.help().unwrap().contains("netdev = \"eth1\""));
    ok(&dev("backend = \"af_packet\"\nnetdev = \"eth1\""));
    ok(&dev(
        "backend = \"af_packet\"\npci = \"3b:00.2\"\nmode = \"software\"",
    ));
}

#[test]
fn interface_names() {
    assert_err(
        &dev("backend = \"tap\"\ntap_name = \"a/b\""),
        InvalidValue,
        4,
        12,
        "contains '/'",
    );
    assert_err(
        &dev("backend = \"tap\"\ntap_name = \"sixteen-bytes-xx\""),
        InvalidValue,
        4,
        12,
        "1 to 15 bytes",
    );
    assert_err(
        &dev("netdev = \"eth 1\"\nbackend = \"af_packet\""),
        InvalidValue,
        3,
        10,
        "contains ' '",
    );
    assert_err(
        &dev("backend = \"af_packet\"\nnetdev = \"\""),
        InvalidValue,
        4,
        10,
        "1 to 15 bytes",
    );
}

#[test]
fn duplicate_names_point_at_the_second() {
    let text =
        "[[device]]\nname = \"a\"\n\n[[device]]\nname = \"b\"\n\n[[device]]\n  name = \"a\"\n";
    let e = assert_err(text, Duplicate, 8, 10, "duplicate device name `a`");
    assert!(e.help().unwrap().contains("the device at line 2"), "{e}");
}

#[test]
fn duplicate_sockets_point_at_the_second() {
    let text = "[daemon]\nrun_dir = \"/r\"\n[[device]]\nname = \"a\"\n[[device]]\nname = \"b\"\nsocket = \"a.sock\"\n";
    let e = assert_err(
        text,
        Duplicate,
        7,
        10,
        "socket `/r/a.sock` is already used by device `a` at line 4",
    );
    assert_eq!(e.help(), Some("give each device its own socket path"));
    // The second device's socket is the default one, so the error points at its name.
    let text = "[daemon]\nrun_dir = \"/r\"\n[[device]]\nname = \"a\"\nsocket = \"/r/./b.sock\"\n[[device]]\nname = \"b\"\n";
    assert_err(text, Duplicate, 7, 8, "socket `/r/b.sock` is already used");
}

#[test]
fn device_socket_must_not_be_the_control_socket() {
    let text = "[daemon]\nrun_dir = \"/r\"\n[[device]]\nname = \"a\"\nsocket = \"control.sock\"\n";
    assert_err(text, Duplicate, 5, 10, "is the daemon's control socket");
    assert_err(
        "[[device]]\nname = \"control\"\n",
        Duplicate,
        2,
        8,
        "control socket",
    );
}

#[test]
fn socket_paths_must_fit_in_sockaddr_un() {
    let long = format!("/{}", "s".repeat(106));
    ok(&dev(&format!("socket = \"{long}\"")));
    let e = assert_err(
        &dev(&format!("socket = \"{long}x\"")),
        InvalidValue,
        3,
        10,
        "is 108 bytes long",
    );
    assert!(e.message().contains("at most 107"));
    // A default socket that is too long blames the name, the control socket the run_dir.
    let run_dir = format!("/{}", "r".repeat(90));
    let text = format!(
        "[daemon]\nrun_dir = \"{run_dir}\"\n[[device]]\nname = \"{}\"\n",
        "n".repeat(20)
    );
    let e = assert_err(&text, InvalidValue, 4, 8, "socket path");
    assert!(e.help().unwrap().contains("shorter `run_dir`"));
    let run_dir = format!("/{}", "r".repeat(100));
    assert_err(
        &format!("[daemon]\nrun_dir = \"{run_dir}\"\n"),
        InvalidValue,
        2,
        11,
        "control_socket path",
    );
    assert_err(
        &dev("socket = \"dir/\""),
        InvalidValue,
        3,
        10,
        "names a directory",
    );
    assert_err(
        &dev("socket = \"\""),
        InvalidValue,
        3,
        10,
        "must not be empty",
    );
    assert_err(&dev("socket = \"a\\u0000b\""), InvalidValue, 3, 10, "NUL");
}

#[test]
fn run_dir_must_be_absolute() {
    let e = assert_err(
        "[daemon]\nrun_dir = \"run/vdpad\"\n",
        InvalidValue,
        2,
        11,
        "not an absolute path",
    );
    assert!(e.help().unwrap().contains("/run/vdpad"));
}

#[test]
fn socket_modes() {
    let cases = [
        ("\"600a\"", "not an octal mode"),
        ("\"0o600\"", "not an octal mode"),
        ("\"60\"", "not an octal mode"),
        ("\"06000\"", "not an octal mode"),
        ("\"0800\"", "not an octal mode"),
        ("\"4600\"", "setuid, setgid or sticky"),
        ("\"1660\"", "setuid, setgid or sticky"),
        (
            "\"0400\"",
            "does not give the socket's owner read and write",
        ),
        (
            "\"0266\"",
            "does not give the socket's owner read and write",
        ),
    ];
    for (mode, msg) in cases {
        assert_err(
            &format!("[daemon]\nsocket_mode = {mode}\n"),
            InvalidValue,
            2,
            15,
            msg,
        );
        assert_err(
            &dev(&format!("socket_mode = {mode}")),
            InvalidValue,
            3,
            15,
            msg,
        );
    }
    let config = ok(&format!(
        "[daemon]\nsocket_mode = \"660\"\n{}",
        dev("socket_mode = \"0777\"")
    ));
    assert_eq!(config.daemon.socket_perms.mode, 0o660);
    assert_eq!(config.devices[0].socket_perms.mode, 0o777);
}

#[test]
fn unknown_user_and_group() {
    let e = assert_err(
        "[daemon]\nsocket_owner = \"vdpad-no-such-user\"\n",
        UnknownId,
        2,
        16,
        "unknown user `vdpad-no-such-user`",
    );
    assert!(e
        .help()
        .unwrap()
        .contains("getent passwd vdpad-no-such-user"));
    assert_err(
        &dev("socket_group = \"vdpad-no-such-group\""),
        UnknownId,
        3,
        16,
        "unknown group",
    );
}

#[test]
fn numeric_ids() {
    let config = ok(&format!(
        "[daemon]\nsocket_owner = \"107\"\nsocket_group = 108\n{DEV}"
    ));
    assert_eq!(config.daemon.socket_perms.owner, Some(107));
    assert_eq!(config.devices[0].socket_perms.group, Some(108));
    assert_err(
        &dev("socket_owner = -1"),
        InvalidValue,
        3,
        16,
        "not a valid user id",
    );
    assert_err(
        &dev("socket_owner = 4294967295"),
        InvalidValue,
        3,
        16,
        "not a valid user id",
    );
    assert_err(
        &dev("socket_group = \"99999999999\""),
        InvalidValue,
        3,
        16,
        "not a valid group id",
    );
}

#[test]
fn log_levels() {
    for good in [
        "info",
        "trace",
        "off",
        "info,vdpa=debug",
        "vdpa::control=trace",
        "my-crate.x",
        "warn,vdpa=3",
    ] {
        assert_eq!(
            ok(&format!("[daemon]\nlog_level = \"{good}\"\n"))
                .daemon
                .log_level,
            good
        );
    }
    let bad = [
        ("\"\"", "must not be empty"),
        ("\",\"", "must not be empty"),
        ("\"INFO\"", "contains 'I'"),
        ("\"info vdpa\"", "contains ' '"),
        (
            "\"vdpa=verbose\"",
            "`vdpa=verbose` is not of the form target=level",
        ),
        ("\"=debug\"", "not of the form"),
        ("\"a=b=debug\"", "not of the form"),
    ];
    for (value, msg) in bad {
        assert_err(
            &format!("[daemon]\nlog_level = {value}\n"),
            InvalidValue,
            2,
            13,
            msg,
        );
    }
}

#[test]
fn log_format() {
    assert_err(
        "[daemon]\nlog_format = \"jsn\"\n",
        InvalidValue,
        2,
        14,
        "did you mean `json`?",
    );
}

#[test]
fn error_display_reads_like_a_compiler_diagnostic() {
    let e = err("[[device]]\nname = \"vm1-net0\"\nqueue_size = 300\n");
    let expected = "t.toml:3:14: error: queue_size = 300 is not a power of two\n\
                    \x20 help: use a power of two between 2 and 32768, e.g. 256\n\
                    \x20 |\n\
                    3 | queue_size = 300\n\
                    \x20 |              ^^^";
    assert_eq!(e.to_string(), expected);
}

#[test]
fn metrics_listen_addresses() {
    for (text, shown) in [
        ("127.0.0.1:9464", "127.0.0.1:9464"),
        ("0.0.0.0:1", "0.0.0.0:1"),
        ("[::1]:9464", "[::1]:9464"),
        ("[fe80:0::1%2]:65535", "[fe80::1%2]:65535"),
    ] {
        let config = ok(&format!("[daemon]\nmetrics_listen = \"{text}\"\n"));
        let addr = config.daemon.metrics_listen.expect("set");
        assert_eq!(addr.to_string(), shown);
        assert_round_trip(&config);
    }
    let cases = [
        ("127.0.0.1", "has no port"),
        ("::1", "IPv6 address without a port"),
        ("::1:99999", "must be written in brackets"),
        ("localhost:9464", "`localhost` is not an IP address"),
        ("*:9464", "`*` is not an IP address"),
        (":9464", "has no IP address before the port"),
        (
            "[127.0.0.1]:9464",
            "only IPv6 addresses are written in brackets",
        ),
        ("127.0.0.1:65536", "port 65536 is out of range (1..=65535)"),
        ("127.0.0.1:http", "`http` is not a port number"),
        ("127.0.0.1:", "is not of the form IP:port"),
        ("127.0.0.1:0", "has port 0"),
        ("[::]:0", "has port 0"),
        ("", "is not of the form IP:port"),
    ];
    for (value, msg) in cases {
        let e = assert_err(
            &format!("[daemon]\nlog_level = \"info\"\nmetrics_listen = \"{value}\"\n"),
            InvalidValue,
            3,
            18,
            msg,
        );
        assert!(e.help().unwrap().contains("\"127.0.0.1:9464\""), "{e}");
    }
    let e = assert_err(
        "[daemon]\nmetrics_listen = 9464\n",
        WrongType,
        2,
        18,
        "`metrics_listen` must be a string, not an integer",
    );
    assert_eq!(
        e.help(),
        Some("put the value in double quotes, e.g. metrics_listen = \"127.0.0.1:9464\"")
    );
    assert_err(
        &dev("metrics_listen = \"127.0.0.1:9464\""),
        UnknownKey,
        3,
        1,
        "unknown key `metrics_listen` in [[device]]",
    );
}

#[test]
fn offloads_switch() {
    assert!(ok(DEV).devices[0].offloads);
    let config = ok(&dev("offloads = false"));
    assert!(!config.devices[0].offloads);
    assert_round_trip(&config);
    let e = assert_err(
        &dev("offloads = \"false\""),
        WrongType,
        3,
        12,
        "`offloads` must be a boolean (true or false), not a string",
    );
    assert_eq!(e.help(), Some("remove the quotes: offloads = true"));
    assert_err(
        &dev("offload = true"),
        UnknownKey,
        3,
        1,
        "did you mean `offloads`?",
    );
}

#[test]
fn vm_names() {
    let config = ok(&format!(
        "{}\n[[device]]\nname = \"b\"\nvm = \"vm.1_A-b\"\npci = \"3b:00.2\"\n",
        dev("vm = \"vm.1_A-b\"")
    ));
    assert_eq!(config.devices[0].vm.as_deref(), Some("vm.1_A-b"));
    assert_eq!(config.devices[1].vm, config.devices[0].vm);
    assert_round_trip(&config);
    let e = assert_err(
        &dev("vm = \"vm 1\""),
        InvalidValue,
        3,
        6,
        "vm name `vm 1` contains ' ', which is not allowed",
    );
    assert_eq!(
        e.help(),
        Some("use 1 to 64 letters, digits, '_', '.' or '-', e.g. \"vm1\"")
    );
    assert_err(&dev("vm = \"a/b\""), InvalidValue, 3, 6, "contains '/'");
    assert_err(
        &dev("vm = \"\""),
        InvalidValue,
        3,
        6,
        "vm name must not be empty",
    );
    assert_err(
        &dev(&format!("vm = \"{}\"", "v".repeat(65))),
        InvalidValue,
        3,
        6,
        "vm name is 65 characters long",
    );
    ok(&dev(&format!("vm = \"{}\"", "v".repeat(64))));
    assert_err(&dev("vm = 1"), WrongType, 3, 6, "`vm` must be a string");
}

#[test]
fn tuning_values_parse_and_round_trip() {
    let config = ok(&dev(
        "burst = 1\nweight = 65536\nbusy_poll_us = 1000000\nrx_coalesce_frames = 65535\n\
         rx_coalesce_usecs = 1000000\ncpus = [1023, 0, 7]",
    ));
    let t = &config.devices[0].tuning;
    assert_eq!((t.burst, t.weight, t.busy_poll_us), (1, 65536, 1_000_000));
    assert_eq!(
        (t.rx_coalesce_frames, t.rx_coalesce_usecs),
        (65535, 1_000_000)
    );
    assert_eq!(t.cpus, [1023, 0, 7]);
    assert_round_trip(&config);
    let config = ok(&dev(
        "burst = 1024\nweight = 1\nrx_coalesce_usecs = 1\ncpus = []",
    ));
    let t = &config.devices[0].tuning;
    assert_eq!((t.burst, t.weight, t.rx_coalesce_usecs), (1024, 1, 1));
    assert!(t.cpus.is_empty());
    assert_round_trip(&config);
    // Time alone bounds the wait, so usecs without frames is fine.
    assert_eq!(
        ok(&dev("rx_coalesce_usecs = 50")).devices[0]
            .tuning
            .rx_coalesce_frames,
        0
    );
}

#[test]
fn tuning_applies_in_every_mode() {
    for mode in ["offload", "auto", "software"] {
        let config = ok(&dev(&format!(
            "mode = \"{mode}\"\npci = \"3b:00.2\"\nburst = 16\ncpus = [4]"
        )));
        assert_eq!(config.devices[0].tuning.burst, 16);
        assert_eq!(config.devices[0].tuning.cpus, [4]);
    }
}

#[test]
fn tuning_ranges() {
    let cases = [
        ("burst = 0", 9, "burst = 0 is out of range (1..=1024)"),
        ("burst = 1025", 9, "burst = 1025 is out of range (1..=1024)"),
        ("weight = 0", 10, "weight = 0 is out of range (1..=65536)"),
        (
            "weight = 65537",
            10,
            "weight = 65537 is out of range (1..=65536)",
        ),
        (
            "busy_poll_us = -1",
            16,
            "busy_poll_us = -1 is out of range (0..=1000000)",
        ),
        ("busy_poll_us = 1000001", 16, "out of range (0..=1000000)"),
        (
            "rx_coalesce_frames = 65536",
            22,
            "rx_coalesce_frames = 65536 is out of range (0..=65535)",
        ),
        (
            "rx_coalesce_usecs = 1000001",
            21,
            "rx_coalesce_usecs = 1000001 is out of range (0..=1000000)",
        ),
        ("rx_coalesce_usecs = -5", 21, "out of range"),
    ];
    for (line, column, msg) in cases {
        let e = assert_err(&dev(line), InvalidValue, 3, column, msg);
        assert!(e.help().unwrap().starts_with("use "), "{e}");
    }
    assert_err(
        &dev("burst = 99999999999999999999"),
        InvalidValue,
        3,
        9,
        "the value of `burst` is too large",
    );
    let e = assert_err(
        &dev("weight = \"256\""),
        WrongType,
        3,
        10,
        "`weight` must be an integer, not a string",
    );
    assert_eq!(e.help(), Some("remove the quotes: weight = 256"));
    assert_err(&dev("busy_poll_us = 1.5"), WrongType, 3, 16, "not a float");
    assert_err(
        &dev("bust = 64"),
        UnknownKey,
        3,
        1,
        "unknown key `bust`, did you mean `burst`?",
    );
    let e = assert_err(
        "burst = 64\n",
        UnknownKey,
        1,
        1,
        "unknown key `burst` in the top level",
    );
    assert!(e.help().unwrap().contains("[[device]]"), "{e}");
}

#[test]
fn coalesce_frames_need_a_time_bound() {
    let e = assert_err(
        &dev("mtu = 1500\nrx_coalesce_frames = 32"),
        Conflict,
        4,
        22,
        "rx_coalesce_frames = 32 without rx_coalesce_usecs",
    );
    assert_eq!(
        e.help(),
        Some("add rx_coalesce_usecs = 50 (or another bound)")
    );
    let e = assert_err(
        &dev("rx_coalesce_usecs = 0\nrx_coalesce_frames = 8"),
        Conflict,
        4,
        22,
        "rx_coalesce_frames = 8 with rx_coalesce_usecs = 0",
    );
    assert_eq!(
        e.help(),
        Some("set rx_coalesce_usecs = 50 (or another bound)")
    );
    // Zero frames is "off" and needs no bound; a range error comes before the conflict.
    ok(&dev("rx_coalesce_frames = 0"));
    assert_err(
        &dev("rx_coalesce_frames = 70000"),
        InvalidValue,
        3,
        22,
        "out of range",
    );
    ok(&dev("rx_coalesce_frames = 32\nrx_coalesce_usecs = 50"));
}

#[test]
fn cpu_lists() {
    let e = assert_err(
        &dev("cpus = [0, 1024]"),
        InvalidValue,
        3,
        12,
        "CPU 1024 in `cpus` is out of range (0..=1023)",
    );
    assert!(e.help().unwrap().contains("lscpu"), "{e}");
    assert_err(&dev("cpus = [-1]"), InvalidValue, 3, 9, "CPU -1 in `cpus`");
    let e = assert_err(
        &dev("cpus = [2, 3,\n  5, 3]"),
        InvalidValue,
        4,
        6,
        "CPU 3 is listed twice in `cpus` (first as element 2)",
    );
    assert!(e.help().unwrap().starts_with("list each CPU once"), "{e}");
    let e = assert_err(
        &dev("cpus = [1, \"2\"]"),
        WrongType,
        3,
        12,
        "each element of `cpus` must be an integer, not a string",
    );
    assert_eq!(e.help(), Some("remove the quotes: cpus = [2, 3]"));
    let e = assert_err(
        &dev("cpus = [1, 2.0]"),
        WrongType,
        3,
        12,
        "each element of `cpus` must be an integer, not a float",
    );
    assert_eq!(e.help(), Some("for example: cpus = [2, 3]"));
    assert_err(&dev("cpus = [[1]]"), WrongType, 3, 9, "not an array");
    assert_err(
        &dev("cpus = [0, 0x7fffffffffffffffff]"),
        InvalidValue,
        3,
        12,
        "an element of `cpus` is too large",
    );
    let e = assert_err(
        &dev("cpus = 2"),
        WrongType,
        3,
        8,
        "`cpus` must be an array of integers, not an integer",
    );
    assert_eq!(
        e.help(),
        Some("write a list, even of one value: cpus = [2]")
    );
    let e = assert_err(
        &dev("cpus = \"0-3\""),
        WrongType,
        3,
        8,
        "`cpus` must be an array of integers, not a string",
    );
    assert_eq!(
        e.help(),
        Some("write a list of integers, e.g. cpus = [2, 3]")
    );
}
