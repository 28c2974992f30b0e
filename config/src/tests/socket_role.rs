//! `socket_role`: vdpad listens (server, the default) or connects to a socket the
//! frontend owns (client), in the main file, drop-ins and `vdpactl add` snippets.

use super::{assert_err, assert_round_trip, dev, ok, DEV};
use crate::ErrorKind::{Conflict, InvalidValue, WrongType};
use crate::{Config, DeviceConfig, SocketRole};

#[test]
fn server_is_the_default_and_client_round_trips() {
    let config = ok(DEV);
    assert_eq!(config.devices[0].socket_role, SocketRole::Server);
    let rendered = config.to_string();
    assert!(
        rendered.contains("socket_role = \"server\"\nmode"),
        "{rendered}"
    );
    for (word, role) in [
        ("server", SocketRole::Server),
        ("client", SocketRole::Client),
    ] {
        let config = ok(&dev(&format!("socket_role = \"{word}\"")));
        assert_eq!(config.devices[0].socket_role, role);
        assert_round_trip(&config);
    }
}

#[test]
fn a_client_device_renders_without_socket_permissions() {
    let config = ok(&format!(
        "[daemon]\nsocket_mode = \"0660\"\n{DEV}socket = \"/var/lib/qemu/a.sock\"\nsocket_role = \"client\"\n"
    ));
    let rendered = config.to_string();
    let device = rendered.split("[[device]]").nth(1).unwrap();
    assert!(device.contains("socket_role = \"client\""), "{rendered}");
    assert!(!device.contains("socket_mode"), "{rendered}");
    assert_round_trip(&config);
    // The same through DeviceConfig::to_toml, which `vdpactl add --persist` writes.
    let persisted = config.devices[0].to_toml();
    let back = DeviceConfig::parse_snippet(&persisted, "<persisted>", &config.daemon).unwrap();
    assert_eq!(back, config.devices);
}

#[test]
fn unknown_roles_are_refused_with_a_suggestion() {
    let e = assert_err(
        &dev("socket_role = \"clinet\""),
        InvalidValue,
        3,
        15,
        "unknown socket_role `clinet`, did you mean `client`?",
    );
    assert_eq!(
        e.help(),
        Some("socket_role must be one of \"server\", \"client\"")
    );
    assert_err(
        &dev("socket_role = true"),
        WrongType,
        3,
        15,
        "`socket_role` must be a string",
    );
}

#[test]
fn a_client_sets_no_socket_permissions() {
    for (line, column) in [
        ("socket_mode = \"0660\"", 15),
        ("socket_owner = 0", 16),
        ("socket_group = 0", 16),
    ] {
        let key = line.split(' ').next().unwrap();
        let text = format!("{DEV}socket_role = \"client\"\n{line}\n");
        let e = assert_err(
            &text,
            Conflict,
            4,
            column,
            &format!("{key} does not apply to socket_role = \"client\""),
        );
        assert!(e.help().unwrap().contains(&format!("remove {key}")), "{e}");
    }
    // Inherited [daemon] permissions are fine: they are simply not used.
    let config = ok(&format!(
        "[daemon]\nsocket_mode = \"0660\"\n{DEV}socket_role = \"client\"\n"
    ));
    assert_eq!(config.devices[0].socket_role, SocketRole::Client);
}

#[test]
fn vduse_has_no_socket_role() {
    assert_err(
        &format!("{DEV}frontend = \"vduse\"\nsocket_role = \"client\"\n"),
        Conflict,
        4,
        15,
        "socket_role does not apply to frontend = \"vduse\"",
    );
}

#[test]
fn snippets_take_the_role_and_keep_the_run_time_socket_rules() {
    let config = ok("[daemon]\nrun_dir = \"/r\"\nsocket_dirs = [\"/q\"]\n");
    let added = config
        .with_snippet(
            "[[device]]\nname = \"b\"\nsocket = \"/q/b.sock\"\nsocket_role = \"client\"\n",
            "<snippet>",
        )
        .unwrap();
    let b = added.device("b").unwrap();
    assert_eq!(b.socket_role, SocketRole::Client);
    // A client socket added at run time obeys the same directory rule as a server's:
    // the control socket must not make vdpad connect to arbitrary sockets.
    let e = config
        .with_snippet(
            "[[device]]\nname = \"b\"\nsocket = \"/etc/b.sock\"\nsocket_role = \"client\"\n",
            "<snippet>",
        )
        .unwrap_err();
    assert_eq!((e.line(), e.column()), (Some(3), Some(10)), "{e}");
    // And a client and a server device may not share a socket.
    let e = config
        .with_snippet(
            "[[device]]\nname = \"b\"\n\n[[device]]\nname = \"c\"\nsocket = \"b.sock\"\nsocket_role = \"client\"\n",
            "<snippet>",
        )
        .unwrap_err();
    assert!(e.message().contains("socket `/r/b.sock`"), "{e}");
}

#[test]
fn drop_ins_take_the_role() {
    let dir = std::env::temp_dir().join(format!("vdpad-role-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("vdpad.d")).unwrap();
    std::fs::write(dir.join("vdpad.toml"), "[daemon]\nrun_dir = \"/r\"\n").unwrap();
    std::fs::write(
        dir.join("vdpad.d/vm.toml"),
        "[[device]]\nname = \"vm\"\nsocket_role = \"client\"\nsocket_mode = \"0600\"\n",
    )
    .unwrap();
    let e = Config::from_file(&dir.join("vdpad.toml")).unwrap_err();
    assert!(e.file().ends_with("vdpad.d/vm.toml"), "{e}");
    assert_eq!((e.line(), e.column()), (Some(4), Some(15)), "{e}");
    std::fs::write(
        dir.join("vdpad.d/vm.toml"),
        "[[device]]\nname = \"vm\"\nsocket_role = \"client\"\n",
    )
    .unwrap();
    let config = Config::from_file(&dir.join("vdpad.toml")).unwrap();
    assert_eq!(config.device("vm").unwrap().socket_role, SocketRole::Client);
    let _ = std::fs::remove_dir_all(&dir);
}
