//! One test per validation rule of the daemon's keys (run directory, socket
//! ownership, logging, metrics), asserting the exact line and column reported.

use super::{assert_err, assert_round_trip, dev, err, ok, DEV};
use crate::ErrorKind::{InvalidValue, UnknownId, UnknownKey, WrongType};

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
