//! Operations: client mode (`socket_role = "client"`) as an operator sees it, with
//! vdpa-rig owning the socket the way QEMU does with `server=on` (`--listen`).
//!
//! * While nothing listens, the device waits for its peer without creating the
//!   socket; `vdpactl list`/`stats` show the role, the attempts and the reason, and
//!   the log says it once (not once per attempt), then again when the reason changes
//!   (a regular file in the way, which is left alone).
//! * When the frontend listens, the device connects within its backoff and carries
//!   traffic; a restarted vdpad connects to the next listener; SIGTERM leaves the
//!   frontend's socket in place.
//! * `vdpactl add` takes client devices, and refuses socket permissions on them with
//!   the snippet's position.
//!
//! Run: `cargo test -p vdpad-tests --test operations_client`.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::Value;
use support::operator::*;
use support::tmp::TempDir;

/// A client device `name` on `socket`, after a server loopback device "srv".
fn config(dir: &TempDir, name: &str, socket: &std::path::Path) -> String {
    let mut text = config_toml(dir.path(), &["srv"], None);
    text.push_str(&format!(
        "\n[[device]]\nname = \"{name}\"\nsocket = \"{}\"\nsocket_role = \"client\"\n\
         mode = \"software\"\nbackend = \"loopback\"\nmac = \"52:54:00:00:06:77\"\n",
        socket.display()
    ));
    text
}

/// Polls `list --json` (10 s at most) until device `name` satisfies `ok`.
fn wait_device(v: &Vdpad, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    support::poll(Duration::from_secs(10), Duration::from_millis(100), || {
        Some(v.device(name)).filter(|d| ok(d))
    })
    .unwrap_or_else(|| panic!("{name} never {what}: {}{}", v.device(name), v.tail()))
}

#[test]
fn a_client_device_waits_for_its_peer_then_connects_and_carries_traffic() {
    let dir = TempDir::new("ops-client");
    let qemu_dir = dir.join("qemu");
    std::fs::create_dir_all(&qemu_dir).unwrap();
    let socket = qemu_dir.join("cl.sock");
    let mut v = Vdpad::start_text(&dir, &config(&dir, "cl", &socket), &["srv"], &[], &[]);

    let d = wait_device(&v, "cl", "failed 3 attempts", |d| {
        d["peer"]["failed_attempts"].as_u64() >= Some(3)
    });
    assert_eq!(d["socket_role"], "client");
    assert_eq!(d["socket"], socket.display().to_string());
    assert_eq!(d["state"], "waiting");
    assert_eq!(d["peer"]["state"], "waiting");
    let error = d["peer"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("no socket at the path yet"), "{d}");
    assert!(d["peer"]["retry_in_seconds"].as_f64().is_some(), "{d}");
    assert!(!socket.exists(), "vdpad created the frontend's socket");
    assert_eq!(v.device("srv")["socket_role"], "server");
    assert!(v.device("srv")["peer"].is_null());
    // Said once, not once per attempt.
    let said = |text: &str| v.log_text().lines().filter(|l| l.contains(text)).count();
    assert_eq!(
        said("cannot connect to the frontend's socket"),
        1,
        "{}",
        v.tail()
    );
    let table = v.ctl_ok(&["list"]);
    assert!(table.contains("ROLE"), "{table}");
    assert!(
        table.contains("waiting for peer: ") && table.contains("(client: the frontend listens"),
        "{table}"
    );
    let stats = v.ctl_ok(&["stats", "cl"]);
    assert!(stats.contains("  peer waiting for peer: "), "{stats}");

    // Something that is not a socket: reported once more, for its new reason, and
    // left alone.
    std::fs::write(&socket, b"not a socket").unwrap();
    v.wait_log(&["WARN", "for another reason now", "regular file"]);
    assert_eq!(std::fs::read(&socket).unwrap(), b"not a socket");
    std::fs::remove_file(&socket).unwrap();

    // The frontend listens: the device connects within its backoff; traffic flows.
    let mut rig = rig_listening_on(&socket);
    traffic(&mut rig, 2000);
    let d = v.device("cl");
    assert_eq!(
        (d["state"].as_str(), d["peer"]["state"].as_str()),
        (Some("running"), Some("connected")),
        "{d}"
    );
    assert_eq!(d["peer"]["failed_attempts"], 0, "{d}");
    assert!(v.ctl_ok(&["list"]).contains("connected ("), "{}", v.tail());
    v.wait_log(&[
        "connected to the frontend's socket",
        "peer_pid=",
        "failed_attempts=",
    ]);
    let stats = v.ctl_json(&["stats", "cl"]);
    assert!(sum(&stats, "cl", "packets") >= 4000, "{stats}");

    // A restarted daemon connects to the next listener (the rig cannot replay its
    // setup, QEMU and testpmd do: tests/client_mode_guest.rs).
    let status = v.terminate();
    assert!(status.success(), "{status}{}", v.tail());
    assert!(is_socket(&socket), "vdpad removed the frontend's socket");
    assert!(
        !v.socket("srv").exists(),
        "the server device's socket stays"
    );
    drop(rig);
    let mut v = Vdpad::start_text(&dir, &config(&dir, "cl", &socket), &["srv"], &[], &[]);
    let mut rig = rig_listening_on(&socket);
    traffic(&mut rig, 500);
    let status = v.terminate();
    assert!(status.success(), "{status}{}", v.tail());
    assert!(is_socket(&socket));
}

#[test]
fn client_devices_can_be_added_at_run_time() {
    let dir = TempDir::new("ops-client-add");
    let v = Vdpad::start(&dir, &["srv"]);
    let snippet = dir.join("cl.toml");
    // In run_dir, where run-time sockets may be; the frontend creates it.
    std::fs::write(
        &snippet,
        "[[device]]\nname = \"cl\"\nsocket = \"cl.sock\"\nsocket_role = \"client\"\n",
    )
    .unwrap();
    let added = v.ctl_ok(&["add", "--config", &snippet.to_string_lossy()]);
    assert!(added.contains("added cl"), "{added}");
    let socket = v.socket("cl");
    assert!(!socket.exists(), "vdpad created the frontend's socket");
    let mut rig = rig_listening_on(&socket);
    traffic(&mut rig, 500);
    assert_eq!(v.device("cl")["peer"]["state"], "connected");
    let removed = v.ctl_ok(&["remove", "cl"]);
    assert!(removed.contains("removed cl"), "{removed}");
    assert!(is_socket(&socket), "remove deleted the frontend's socket");
    drop(rig);

    std::fs::write(
        &snippet,
        "[[device]]\nname = \"cl\"\nsocket_role = \"client\"\nsocket_mode = \"0660\"\n",
    )
    .unwrap();
    let out = v.ctl(&["add", "--config", &snippet.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cl.toml:4:15: error: socket_mode does not apply to socket_role = \"client\""),
        "{err}"
    );
}
