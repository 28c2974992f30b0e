//! One test per validation rule of the file's syntax, its keys and types, and a
//! device's identity (name, socket, PCI address, backend), asserting the exact line
//! and column reported.

use super::{assert_err, dev, ok};
use crate::ErrorKind::{
    Conflict, Duplicate, InvalidValue, MissingKey, Syntax, UnknownKey, WrongType,
};

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
             metrics_listen, socket_mode, socket_owner, socket_group, include_dir, control_socket_mode, socket_dirs"
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
    assert!(
        e.help().unwrap().contains("the device at t.toml:2:8"),
        "{e}"
    );
}

#[test]
fn duplicate_sockets_point_at_the_second() {
    let text = "[daemon]\nrun_dir = \"/r\"\n[[device]]\nname = \"a\"\n[[device]]\nname = \"b\"\nsocket = \"a.sock\"\n";
    let e = assert_err(
        text,
        Duplicate,
        7,
        10,
        "socket `/r/a.sock` is already used by device `a` at t.toml:4:8",
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
fn max_guest_memory_is_a_size_with_a_unit_in_range() {
    assert_eq!(
        ok(&dev("max_guest_memory = \"512M\"")).devices[0].max_guest_memory,
        512 << 20
    );
    assert_eq!(
        ok(&dev("max_guest_memory = \"2TiB\"")).devices[0].max_guest_memory,
        2 << 40
    );
    assert_eq!(
        ok(&dev("mtu = 1500")).devices[0].max_guest_memory,
        crate::DEFAULT_MAX_GUEST_MEMORY
    );
    let e = assert_err(
        &dev("max_guest_memory = \"64X\""),
        InvalidValue,
        3,
        20,
        "max_guest_memory = \"64X\" has an unknown unit",
    );
    assert!(e.help().unwrap().contains("e.g. \"64G\""), "{e}");
    assert_err(
        &dev("max_guest_memory = \"1K\""),
        InvalidValue,
        3,
        20,
        "max_guest_memory = \"1K\" is out of range (1M..=1024T)",
    );
    assert_err(
        &dev("max_guest_memory = \"G\""),
        InvalidValue,
        3,
        20,
        "is not a size",
    );
    assert_err(
        &dev("max_guest_memory = \"99999999999T\""),
        InvalidValue,
        3,
        20,
        "is too large",
    );
    assert_err(&dev("max_guest_memory = 64"), WrongType, 3, 20, "");
}
