//! Operations: socket safety. Devices added at run time keep their sockets in
//! `run_dir` or `socket_dirs`; no symbolic link is followed and nothing but a stale
//! socket is ever replaced; the control socket has its own mode.
//!
//! Run: `cargo test -p vdpad --test operations_sockets`.

#[path = "support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;

use support::tmp::TempDir;

use support::operator::*;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// `vdpactl add` of a device `name` with `socket = "<socket>"`; returns the output.
fn add(v: &Vdpad, name: &str, socket: &str) -> std::process::Output {
    let snippet = v.dir.join(format!("{name}.snippet.toml"));
    std::fs::write(
        &snippet,
        format!("[[device]]\nname = \"{name}\"\nsocket = \"{socket}\"\n"),
    )
    .unwrap();
    v.ctl(&["add", "--config", &snippet.to_string_lossy()])
}

#[test]
fn runtime_sockets_stay_where_they_are_allowed() {
    let dir = TempDir::new("ops-sockets");
    let extra = dir.join("extra");
    let real = dir.join("real");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::create_dir_all(&real).unwrap();
    std::os::unix::fs::symlink(&real, dir.join("link")).unwrap();
    let mut text = config_toml(dir.path(), &["s1"], None);
    text = text.replacen(
        "control_socket = \"control.sock\"\n",
        &format!(
            "control_socket = \"control.sock\"\nsocket_mode = \"0660\"\nsocket_dirs = [\"{}\", \"{}\"]\n",
            extra.display(),
            dir.join("link").display()
        ),
        1,
    );
    let v = Vdpad::start_text(&dir, &text, &["s1"], &[], &[]);
    // socket_mode opens device sockets, not the control socket.
    assert_eq!(mode(&v.socket("s1")), 0o660);
    assert_eq!(mode(&v.control), 0o600);

    // Allowed: run_dir (relative or absolute) and a socket_dirs entry.
    v.ctl_ok(&["add", "--config", &{
        let p = dir.join("plain.toml");
        std::fs::write(&p, "[[device]]\nname = \"plain\"\n").unwrap();
        p.to_string_lossy().into_owned()
    }]);
    assert!(add(&v, "rel", "rel.sock").status.success());
    let in_extra = extra.join("x.sock");
    let out = add(&v, "inextra", &in_extra.to_string_lossy());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(is_socket(&in_extra));

    // Refused, with the position of the socket value: elsewhere, a subdirectory, `..`.
    for socket in [
        dir.join("elsewhere.sock").to_string_lossy().into_owned(),
        "sub/x.sock".to_owned(),
        "../escape.sock".to_owned(),
        format!("{}/../run/y.sock", extra.display()),
    ] {
        let out = add(&v, "bad", &socket);
        assert_eq!(out.status.code(), Some(1), "{socket}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("bad.snippet.toml:3:10: error: socket"),
            "{}",
            stderr(&out)
        );
    }
    assert!(!dir.join("elsewhere.sock").exists() && !dir.join("escape.sock").exists());

    // A socket_dirs entry that is a symbolic link is not followed.
    let out = add(&v, "vialink", &dir.join("link/z.sock").to_string_lossy());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is a symbolic link"),
        "{}",
        stderr(&out)
    );
    assert!(!real.join("z.sock").exists());

    // Nothing but a stale socket is replaced: a file and a link stay as they were.
    let victim = dir.join("run/victim.sock");
    std::fs::write(&victim, "precious").unwrap();
    let out = add(&v, "victim", "victim.sock");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a socket is in the way"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let target = dir.join("target.txt");
    std::fs::write(&target, "keep").unwrap();
    std::os::unix::fs::symlink(&target, dir.join("run/ln.sock")).unwrap();
    let out = add(&v, "ln", "ln.sock");
    assert_eq!(out.status.code(), Some(1));
    assert!(std::fs::symlink_metadata(dir.join("run/ln.sock"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    // Nothing of the refused requests is running.
    let names = v.names();
    assert_eq!(names, ["inextra", "plain", "rel", "s1"], "{names:?}");
}

#[test]
fn control_socket_mode_is_configurable_and_file_devices_never_replace_files() {
    let dir = TempDir::new("ops-ctlmode");
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::set_permissions(dir.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A device of the file whose socket path holds a regular file: it fails (and is
    // retried), the file is kept.
    std::fs::write(dir.join("run/f2.sock"), "data").unwrap();
    let mut text = config_toml(dir.path(), &["f1", "f2"], None);
    text = text.replacen(
        "control_socket = \"control.sock\"\n",
        "control_socket = \"control.sock\"\ncontrol_socket_mode = \"0660\"\n",
        1,
    );
    let v = Vdpad::start_text(&dir, &text, &["f1"], &[], &[]);
    assert_eq!(mode(&v.control), 0o660);
    assert_eq!(mode(&v.socket("f1")), 0o600);
    let f2 = v.device("f2");
    assert_eq!(f2["state"], "failed", "{f2}");
    assert!(
        f2["last_error"].as_str().unwrap().contains("not a socket"),
        "{f2}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("run/f2.sock")).unwrap(),
        "data"
    );
}
