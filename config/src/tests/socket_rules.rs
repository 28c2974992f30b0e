//! The control socket's own mode, `socket_dirs`, and where sockets of devices added at
//! run time may go.

use std::path::PathBuf;

use super::*;
use ErrorKind::{InvalidValue, WrongType};

fn base(extra: &str) -> Config {
    ok(&format!(
        "[daemon]\nrun_dir = \"/r\"\n{extra}\n[[device]]\nname = \"a\"\n"
    ))
}

#[test]
fn control_socket_mode_is_its_own_setting() {
    let c = base("socket_mode = \"0660\"");
    assert_eq!(
        (c.daemon.socket_perms.mode, c.daemon.control_socket_mode),
        (0o660, 0o600)
    );
    let c = base("control_socket_mode = \"0660\"");
    assert_eq!(
        (c.daemon.socket_perms.mode, c.daemon.control_socket_mode),
        (0o600, 0o660)
    );
    assert_round_trip(&c);
    assert_err(
        "[daemon]\ncontrol_socket_mode = \"0400\"\n",
        InvalidValue,
        2,
        23,
        "control_socket_mode = \"0400\" does not give the socket's owner read and write",
    );
    let e = assert_err(
        "[daemon]\ncontrol_socket_mode = 600\n",
        WrongType,
        2,
        23,
        "must be a string",
    );
    assert!(e.help().unwrap().contains("quoted octal"), "{e}");
}

#[test]
fn socket_dirs_are_absolute_and_listed_once() {
    let c = base("socket_dirs = [\"/s/one\", \"/s/./two\"]");
    assert_eq!(
        c.daemon.socket_dirs,
        [PathBuf::from("/s/one"), PathBuf::from("/s/two")]
    );
    assert_round_trip(&c);
    assert_err(
        "[daemon]\nsocket_dirs = [\"/a\", \"b\"]\n",
        InvalidValue,
        2,
        22,
        "not an absolute path",
    );
    assert_err(
        "[daemon]\nsocket_dirs = [\"/a\", \"/a/\"]\n",
        InvalidValue,
        2,
        22,
        "lists /a twice",
    );
    assert_err(
        "[daemon]\nsocket_dirs = [\"/a/../b\"]\n",
        InvalidValue,
        2,
        16,
        "contains `..`",
    );
    assert_err(
        "[daemon]\nsocket_dirs = [\"/a\", 3]\n",
        WrongType,
        2,
        22,
        "must be a string",
    );
    let e = assert_err(
        "[daemon]\nsocket_dirs = \"/a\"\n",
        WrongType,
        2,
        15,
        "array of strings",
    );
    assert_eq!(
        e.help(),
        Some("write a list, even of one value: socket_dirs = [\"/a\"]")
    );
}

#[test]
fn runtime_sockets_stay_in_run_dir_or_socket_dirs() {
    let c = base("socket_dirs = [\"/s\"]");
    let add = |text: &str| c.with_snippet(text, "<snippet>");
    add("[[device]]\nname = \"b\"\n").unwrap();
    add("[[device]]\nname = \"b\"\nsocket = \"b.sock\"\n").unwrap();
    add("[[device]]\nname = \"b\"\nsocket = \"/r/./b.sock\"\n").unwrap();
    add("[[device]]\nname = \"b\"\nsocket = \"/s/b.sock\"\n").unwrap();
    for (socket, message) in [
        (
            "/etc/b.sock",
            "outside the directories where devices may be added at run time (/r, /s)",
        ),
        ("/r/sub/b.sock", "outside the directories"),
        ("sub/b.sock", "outside the directories"),
        ("../b.sock", "contains `..`"),
        ("/s/../r/b.sock", "contains `..`"),
    ] {
        let e = add(&format!(
            "[[device]]\nname = \"b\"\nsocket = \"{socket}\"\n"
        ))
        .unwrap_err();
        assert_eq!((e.kind(), e.file()), (InvalidValue, "<snippet>"), "{e}");
        assert_eq!((e.line(), e.column()), (Some(3), Some(10)), "{e}");
        assert!(e.message().contains(message), "{socket}: {e}");
        assert!(e.help().unwrap().contains("socket_dirs"), "{e}");
    }
    // The file itself may put sockets anywhere.
    ok("[[device]]\nname = \"b\"\nsocket = \"/etc/b.sock\"\n");
}
