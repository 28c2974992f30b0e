//! Device snippets (`vdpactl add`) and adding devices to a running configuration.

use std::path::Path;

use super::ok;
use crate::{Backend, Config, DeviceConfig, ErrorKind, ADDED_DEVICES_ORIGIN};

fn base() -> Config {
    ok("[daemon]\nrun_dir = \"/r\"\nsocket_mode = \"0660\"\nsocket_group = 0\n\n[[device]]\nname = \"a\"\n")
}

#[test]
fn snippet_devices_get_daemon_defaults() {
    let config = base();
    let snippet = "[[device]]\nname = \"b\"\n\n[[device]]\nname = \"c\"\nsocket = \"vms/c.sock\"\nbackend = \"tap\"\n";
    let devices = DeviceConfig::parse_snippet(snippet, "<snippet>", &config.daemon).unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0].socket, Path::new("/r/b.sock"));
    assert_eq!(devices[0].socket_perms, config.daemon.socket_perms);
    assert_eq!(devices[1].socket, Path::new("/r/vms/c.sock"));
    assert_eq!(devices[1].backend, Backend::Tap { name: None });
}

#[test]
fn snippet_errors_name_the_snippet_and_position() {
    let config = base();
    let e = DeviceConfig::parse_snippet(
        "[[device]]\nname = \"b\"\nqueue_size = 3\n",
        "<vdpactl add>",
        &config.daemon,
    )
    .unwrap_err();
    assert_eq!(e.file(), "<vdpactl add>");
    assert_eq!((e.line(), e.column()), (Some(3), Some(14)));
    assert!(e
        .to_string()
        .starts_with("<vdpactl add>:3:14: error: queue_size = 3 is not a power of two"));
}

#[test]
fn snippet_may_not_hold_a_daemon_table() {
    let config = base();
    let e =
        DeviceConfig::parse_snippet("[daemon]\nrun_dir = \"/x\"\n", "<snippet>", &config.daemon)
            .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnknownKey);
    assert_eq!((e.line(), e.column()), (Some(1), Some(2)));
    assert!(
        e.message()
            .contains("unknown key `daemon` in a device snippet"),
        "{e}"
    );
}

#[test]
fn empty_snippet_is_an_error() {
    let config = base();
    let e = DeviceConfig::parse_snippet("# nothing\n", "<snippet>", &config.daemon).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MissingKey);
    assert_eq!(e.line(), None);
}

#[test]
fn duplicates_within_a_snippet() {
    let config = base();
    let text = "[[device]]\nname = \"b\"\n[[device]]\nname = \"b\"\n";
    let e = DeviceConfig::parse_snippet(text, "<snippet>", &config.daemon).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Duplicate);
    assert_eq!((e.line(), e.column()), (Some(4), Some(8)));
}

#[test]
fn with_snippet_adds_devices() {
    let config = base();
    let bigger = config
        .with_snippet("[[device]]\nname = \"b\"\n", "<snippet>")
        .unwrap();
    let names: Vec<&str> = bigger.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(bigger.daemon, config.daemon);
}

#[test]
fn with_snippet_rejects_existing_names_at_the_snippet_position() {
    let config = base();
    let e = config
        .with_snippet("\n[[device]]\n name = \"a\"\n", "<snippet>")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Duplicate);
    assert_eq!(e.file(), "<snippet>");
    assert_eq!((e.line(), e.column()), (Some(3), Some(9)));
    assert_eq!(e.message(), "a device named `a` already exists");
}

#[test]
fn with_snippet_rejects_existing_sockets() {
    let config = base();
    let e = config
        .with_snippet(
            "[[device]]\nname = \"z\"\nsocket = \"/r/a.sock\"\n",
            "<snippet>",
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Duplicate);
    assert_eq!((e.line(), e.column()), (Some(3), Some(10)));
    assert!(
        e.message().contains("already used by existing device `a`"),
        "{e}"
    );
}

#[test]
fn with_added_devices_checks_uniqueness() {
    let config = base();
    let fresh =
        DeviceConfig::parse_snippet("[[device]]\nname = \"b\"\n", "<s>", &config.daemon).unwrap();
    let bigger = config.with_added_devices(fresh.clone()).unwrap();
    assert_eq!(bigger.devices.len(), 2);

    let e = bigger.with_added_devices(fresh).unwrap_err();
    assert_eq!(
        (e.kind(), e.file(), e.line()),
        (ErrorKind::Duplicate, ADDED_DEVICES_ORIGIN, None)
    );
    assert!(e.message().contains("`b` already exists"));

    let mut clash = config.devices[0].clone();
    clash.name = "other".into();
    let e = config.with_added_devices(vec![clash]).unwrap_err();
    assert!(e.message().contains("is already used by device `a`"), "{e}");

    let mut ctl = config.devices[0].clone();
    ctl.name = "ctl".into();
    ctl.socket = config.daemon.control_socket.clone();
    let e = config.with_added_devices(vec![ctl]).unwrap_err();
    assert!(e.message().contains("control socket"), "{e}");
}
