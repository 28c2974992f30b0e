//! Operations: the real `vdpad` and `vdpactl` binaries, driven as an operator would.
//!
//! Each test starts its own daemon (software loopback devices, sockets in a private
//! directory) and checks one part of what an operator does through the control socket:
//! `vdpactl list`, `stats` under traffic from the rig, `add`/`remove` at run time,
//! SIGHUP reload, a bad snippet, the log level, and the control protocol's limits.
//! tests/operations_service.rs covers the metrics endpoint, sd_notify and the examples.
//! All run with a plain `cargo test`.
//!
//! Run: `cargo test -p vdpad-tests --test operations`.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::process::send_signal;
use support::tmp::TempDir;
use vdpad::control::Client;

use support::operator::*;

// ---------------------------------------------------------------------------------

#[test]
fn list_shows_every_device_and_the_control_socket_is_private() {
    let dir = TempDir::new("ops-list");
    let v = Vdpad::start(&dir, &["alpha", "beta"]);

    let mode = std::fs::metadata(&v.control).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");

    let text = v.ctl_ok(&["list"]);
    for needle in [
        "NAME",
        "MODE",
        "STATE",
        "alpha",
        "beta",
        "software/loopback",
        "waiting",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    assert!(
        text.contains("mode           software (mode = \"software\", backend = \"loopback\")"),
        "{text}"
    );

    let list = v.ctl_json(&["list"]);
    assert_eq!(list["ok"], true);
    let devices = list["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    let a = &devices[0];
    assert_eq!(a["name"], "alpha");
    assert_eq!(a["mode"], "software");
    assert_eq!(a["backend"], "loopback");
    assert_eq!(a["datapath"], "software/loopback");
    assert_eq!(a["state"], "waiting");
    assert_eq!(a["queue_pairs"], 1);
    assert_eq!(a["pci"], Value::Null);
    assert_eq!(a["mac"], "52:54:00:00:06:01");
    assert_eq!(a["socket"], v.socket("alpha").to_string_lossy().as_ref());

    // A frontend: the device runs, with negotiated features.
    let mut rig = rig_on(&v.socket("alpha"));
    traffic(&mut rig, 100);
    let a = v.device("alpha");
    assert_eq!(a["state"], "running", "{a}");
    assert_eq!(a["connections"], 1);
    assert_eq!(a["running_pairs"], serde_json::json!([0]));
    let features: Vec<&str> = a["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        features.contains(&"VERSION_1") && features.contains(&"EVENT_IDX"),
        "{features:?}"
    );
    assert!(a["acked_features"].as_str().unwrap().starts_with("0x"));
    let text = v.ctl_ok(&["list"]);
    assert!(
        text.contains("VERSION_1") && text.contains("running: 0"),
        "{text}"
    );

    let version = v.ctl_ok(&["version"]);
    assert!(version.contains("control protocol 1"), "{version}");
}

#[test]
fn stats_grow_under_rig_traffic() {
    let dir = TempDir::new("ops-stats");
    let v = Vdpad::start(&dir, &["lo"]);
    let mut rig = rig_on(&v.socket("lo"));
    traffic(&mut rig, 5_000);
    let s1 = v.ctl_json(&["stats", "lo"]);
    assert!(sum(&s1, "lo", "packets") >= 10_000, "{s1}");
    traffic(&mut rig, 5_000);
    let s2 = v.ctl_json(&["stats", "lo"]);
    for field in ["packets", "bytes", "bursts"] {
        assert!(
            sum(&s2, "lo", field) > sum(&s1, "lo", field),
            "{field} did not grow: {s1} -> {s2}"
        );
    }
    assert!(sum(&s2, "lo", "kicks") >= 1, "{s2}");
    assert!(s2["sampled_at"].as_f64() > s1["sampled_at"].as_f64());
    let q = &s2["stats"][0]["queues"][1];
    assert_eq!(
        (q["queue"].as_u64(), q["direction"].as_str()),
        (Some(1), Some("tx"))
    );
    assert_eq!(q["drops"]["oversized"], 0);
    assert!(q["bad_descriptors"]
        .as_object()
        .unwrap()
        .contains_key("address"));
    assert!(q["packets_per_kick"].as_f64().unwrap() > 1.0, "{q}");

    // One queue only.
    let one = v.ctl_json(&["stats", "lo", "--queue", "1"]);
    let queues = one["stats"][0]["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 1);
    assert_eq!(queues[0]["queue"], 1);

    // Human table.
    let text = v.ctl_ok(&["stats"]);
    for needle in [
        "QUEUE",
        "PACKETS",
        "PKTS/KICK",
        "PKTS/IRQ",
        "DROPS",
        "BAD_DESC",
        "rx",
        "tx",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }

    // --watch: rates from two samples while traffic flows.
    let mut watch = Command::new("timeout")
        .args(["-k", "5", "60", support::bins::vdpactl()])
        .args(["--socket", &v.control.to_string_lossy(), "--json"])
        .args(["stats", "lo", "--watch", "0.3", "--count", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vdpactl --watch");
    let deadline = Instant::now() + Duration::from_secs(30);
    while watch.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "vdpactl --watch did not finish");
        traffic(&mut rig, 2_000);
    }
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let pps: f64 = lines
        .iter()
        .flat_map(|l| l["rates"].as_array().unwrap().iter())
        .map(|r| r["pps"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(pps > 0.0, "no rate above zero: {lines:?}");
    assert!(lines[0]["interval"].as_f64().unwrap() >= 0.25);
    let human = v.ctl_ok(&["stats", "lo", "--watch", "0.2", "--count", "1"]);
    assert!(
        human.contains("--- interval") && human.contains("PPS"),
        "{human}"
    );

    // Unknown device and queue: refused, exit 1.
    let out = v.ctl(&["stats", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no device named \"nope\""),
        "{}",
        stderr(&out)
    );
    let out = v.ctl(&["stats", "lo", "--queue", "9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("has no queue 9"), "{}", stderr(&out));
}

#[test]
fn add_at_run_time_then_traffic_flows() {
    let dir = TempDir::new("ops-add");
    let v = Vdpad::start(&dir, &["first"]);
    let snippet = dir.join("new.toml");
    std::fs::write(&snippet, device_toml("added", 0x20)).unwrap();
    let out = v.ctl_ok(&["add", "--config", &snippet.to_string_lossy()]);
    assert!(
        out.contains("added added: software (software/loopback)"),
        "{out}"
    );
    let sock = v.socket("added");
    assert!(is_socket(&sock));
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(v.names(), ["added", "first"]);
    v.wait_log(&["device added", "added"]);

    let mut rig = rig_on(&sock);
    traffic(&mut rig, 2_000);
    assert_eq!(v.device("added")["state"], "running");

    // Two more at once, with --json.
    let two = dir.join("two.toml");
    std::fs::write(
        &two,
        format!("{}{}", device_toml("x1", 0x21), device_toml("x2", 0x22)),
    )
    .unwrap();
    let r = v.ctl_json(&["add", "--config", &two.to_string_lossy()]);
    assert_eq!(r["added"], serde_json::json!(["x1", "x2"]));
    assert_eq!(r["devices"].as_array().unwrap().len(), 2);
    traffic(&mut rig_on(&v.socket("x2")), 500);

    // The same name again: refused, pointing into the snippet.
    let out = v.ctl(&["add", "--config", &snippet.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:3:8", snippet.display())), "{err}");
    assert!(err.contains("added"), "{err}");
    // And the first device never noticed.
    traffic(&mut rig, 500);
}

#[test]
fn bad_snippet_is_refused_with_its_position_and_nothing_changes() {
    let dir = TempDir::new("ops-bad");
    let v = Vdpad::start(&dir, &["stay"]);
    let bad = dir.join("bad.toml");
    // A valid device, then one with a mistake on line 10, column 14: neither is added.
    std::fs::write(
        &bad,
        format!(
            "{}\n[[device]]\nname = \"broken\"\nqueue_size = 300\n",
            device_toml("good", 0x30)
        ),
    )
    .unwrap();
    let text = std::fs::read_to_string(&bad).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("queue_size = 300"))
        .unwrap()
        + 1;
    let out = v.ctl(&["add", "--config", &bad.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:{line}:14: error:", bad.display())),
        "{err}"
    );
    assert!(err.contains("power of two"), "{err}");
    assert!(
        err.contains("queue_size = 300"),
        "the offending line is shown: {err}"
    );
    assert_eq!(v.names(), ["stay"]);
    assert!(!v.socket("good").exists() && !v.socket("broken").exists());

    // Unknown key, and a [daemon] table: refused too, with JSON for scripts.
    std::fs::write(&bad, "[[device]]\nname = \"z\"\nqueue_szie = 256\n").unwrap();
    let out = v.ctl(&["--json", "add", "--config", &bad.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON refusal on stdout");
    assert_eq!(r["ok"], false);
    assert_eq!(r["code"], "invalid");
    let msg = r["error"].as_str().unwrap();
    assert!(
        msg.contains(":3:1: error: unknown key `queue_szie`"),
        "{msg}"
    );
    std::fs::write(&bad, "[daemon]\nlog_level = \"debug\"\n").unwrap();
    let out = v.ctl(&["add", "--config", &bad.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(v.names(), ["stay"]);
    v.wait_log(&["device snippet refused"]);
}

#[test]
fn remove_stops_a_connected_device_cleanly() {
    let dir = TempDir::new("ops-remove");
    let v = Vdpad::start(&dir, &["gone", "other"]);
    let mut rig = rig_on(&v.socket("gone"));
    traffic(&mut rig, 1_000);
    let mut other = rig_on(&v.socket("other"));
    traffic(&mut other, 100);

    let out = v.ctl_ok(&["remove", "gone"]);
    assert_eq!(out.trim(), "removed gone");
    assert!(!v.socket("gone").exists(), "socket left behind");
    assert_eq!(v.names(), ["other"]);
    // The rig sees the disconnect: its next request gets no answer.
    assert!(
        rig.get_vring_base(0).is_err(),
        "the connection is still served"
    );
    v.wait_log(&["frontend disconnected", "gone"]);
    v.wait_log(&["device removed", "gone"]);

    // Again: refused.
    let out = v.ctl(&["remove", "gone"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no device named \"gone\""),
        "{}",
        stderr(&out)
    );
    // The other device did not notice.
    traffic(&mut other, 1_000);
    assert_eq!(v.device("other")["connections"], 1);
}

#[test]
fn sighup_reload_adds_removes_and_keeps_untouched() {
    let dir = TempDir::new("ops-hup");
    let mut v = Vdpad::start(&dir, &["keep", "old"]);
    let mut rig = rig_on(&v.socket("keep"));
    traffic(&mut rig, 1_000);
    assert_eq!(v.device("keep")["connections"], 1);

    // keep stays byte for byte (same MAC: same position), old goes, new comes.
    let mut text = config_toml(dir.path(), &["keep"], None);
    text.push_str(&device_toml("new", 0x40));
    std::fs::write(&v.config, text).unwrap();
    v.signal(SIGHUP);
    let ok = support::poll(Duration::from_secs(15), Duration::from_millis(50), || {
        (is_socket(&v.socket("new")) && !v.socket("old").exists()).then_some(())
    });
    assert!(ok.is_some(), "reload did not add/remove{}", v.tail());
    let line = v.wait_log(&["configuration reloaded"]);
    assert!(
        line.contains("added=[\"new\"]") && line.contains("removed=[\"old\"]"),
        "{line}"
    );
    assert!(line.contains("unchanged=[\"keep\"]"), "{line}");
    assert_eq!(v.names(), ["keep", "new"]);
    let keep = v.device("keep");
    assert_eq!(keep["connections"], 1, "keep was restarted: {keep}");
    assert_eq!(keep["state"], "running");
    // The same live connection keeps working, and the new device works.
    traffic(&mut rig, 1_000);
    traffic(&mut rig_on(&v.socket("new")), 500);

    // A broken file: nothing changes.
    std::fs::write(&v.config, "[[device]]\nname = \"keep\"\nqueue_size = 3\n").unwrap();
    v.signal(SIGHUP);
    v.wait_log(&["configuration not reloaded, nothing changed"]);
    assert_eq!(v.names(), ["keep", "new"]);
    traffic(&mut rig, 500);
    assert_eq!(v.device("keep")["connections"], 1);
}

#[test]
fn log_level_changes_at_run_time() {
    let dir = TempDir::new("ops-log");
    let v = Vdpad::start(&dir, &["lo"]);
    v.ctl_ok(&["list"]);
    let debug_lines = |v: &Vdpad| {
        v.log_text()
            .lines()
            .filter(|l| l.contains("DEBUG") && l.contains("control request"))
            .count()
    };
    assert_eq!(debug_lines(&v), 0, "debug lines at info level{}", v.tail());
    let out = v.ctl_ok(&["log-level", "debug"]);
    assert_eq!(out.trim(), "log filter now debug");
    v.wait_log(&["log filter changed", "debug"]);
    v.ctl_ok(&["list"]);
    let ok = support::poll(Duration::from_secs(5), Duration::from_millis(50), || {
        (debug_lines(&v) > 0).then_some(())
    });
    assert!(
        ok.is_some(),
        "no debug line after log-level debug{}",
        v.tail()
    );

    // A typo is refused (tracing would take it for a component name and go quiet).
    let out = v.ctl(&["log-level", "debgu"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("`debgu`") && stderr(&out).contains("is not a level"),
        "{}",
        stderr(&out)
    );
    // (A target matches by prefix: `vdpa=debug` would match vdpad's own lines too.)
    let r = v.ctl_json(&["log-level", "info,swpath=debug"]);
    assert_eq!(r["level"], "info,swpath=debug");
    let before = debug_lines(&v);
    v.ctl_ok(&["list"]);
    v.ctl_ok(&["version"]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        debug_lines(&v),
        before,
        "vdpad's own debug lines after info{}",
        v.tail()
    );
}

// --------------------------------------------------------------------------------- protocol

#[test]
fn control_protocol_is_versioned_and_clients_cannot_block_it() {
    let dir = TempDir::new("ops-proto");
    let v = Vdpad::start(&dir, &["p"]);
    let mut c = Client::connect(&v.control, Duration::from_secs(10)).unwrap();
    let ask = |c: &mut Client, line: &str| -> Value {
        serde_json::from_str(&c.request_raw(line).unwrap()).unwrap()
    };
    // Several requests on one connection.
    let r = ask(&mut c, r#"{"version":1,"command":"list"}"#);
    assert_eq!(
        (r["ok"].as_bool(), r["devices"][0]["name"].as_str()),
        (Some(true), Some("p"))
    );
    let r = ask(&mut c, r#"{"version":1,"command":"version"}"#);
    assert_eq!(r["protocol"], 1);
    for (line, code, says) in [
        (
            r#"{"version":2,"command":"list"}"#,
            "unsupported_version",
            "version 2 is not supported",
        ),
        (
            r#"{"command":"list"}"#,
            "unsupported_version",
            "\"version\":1",
        ),
        (
            r#"{"version":1,"command":"reboot"}"#,
            "unknown_command",
            "known commands: list",
        ),
        (
            r#"{"version":1,"command":"stats","devcie":"p"}"#,
            "bad_request",
            "devcie",
        ),
        ("{not json", "bad_json", "not valid JSON"),
        (
            r#"{"version":1,"command":"remove","device":"zz"}"#,
            "not_found",
            "no device named",
        ),
    ] {
        let r = ask(&mut c, line);
        assert_eq!(r["ok"], false, "{line}: {r}");
        assert_eq!(r["code"], code, "{line}: {r}");
        assert!(r["error"].as_str().unwrap().contains(says), "{line}: {r}");
    }

    // A silent client and a client that never reads its answers block nobody.
    let mut silent = UnixStream::connect(&v.control).unwrap();
    silent.write_all(b"{\"version\":1,").unwrap();
    let mut deaf = UnixStream::connect(&v.control).unwrap();
    deaf.set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let req = b"{\"version\":1,\"command\":\"list\"}\n".repeat(200);
    for _ in 0..50 {
        if deaf.write_all(&req).is_err() {
            break;
        }
    }
    let t = Instant::now();
    v.ctl_ok(&["list"]);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "list took {:?}",
        t.elapsed()
    );

    // An oversized request is refused and the client disconnected.
    let mut big = UnixStream::connect(&v.control).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let huge = format!(
        "{{\"version\":1,\"command\":\"add\",\"config\":\"{}\"}}\n",
        "#".repeat(70_000)
    );
    let _ = big.write_all(huge.as_bytes());
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.contains("\"code\":\"too_large\""), "{answer}");
    drop((silent, deaf));

    // More than 16 clients at once: the next is told to try again. (Threads of the
    // clients above may still be finishing, so the refusal may come a little early.)
    drop(c);
    let mut idle: Vec<UnixStream> = Vec::new();
    let refused_at = (1..=17).find(|_| {
        let mut s = UnixStream::connect(&v.control).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(150)))
            .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        idle.push(s);
        answer.contains("\"code\":\"busy\"")
    });
    assert!(
        refused_at.is_some(),
        "17 clients at once, none refused{}",
        v.tail()
    );
    v.wait_log(&["too many clients"]);
    drop(idle);
    let ok = support::poll(Duration::from_secs(10), Duration::from_millis(100), || {
        v.ctl(&["list"]).status.success().then_some(())
    });
    assert!(
        ok.is_some(),
        "the control socket did not recover{}",
        v.tail()
    );
}

#[test]
fn control_socket_is_not_stolen_and_a_stale_one_is_replaced() {
    let dir = TempDir::new("ops-steal");
    let mut v = Vdpad::start(&dir, &["one"]);
    // A second daemon configured with the same control socket refuses to start.
    let other = TempDir::new("ops-steal2");
    let config = other.join("vdpad.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nrun_dir = \"{}\"\ncontrol_socket = \"{}\"\n{}",
            other.join("run").display(),
            v.control.display(),
            device_toml("two", 2)
        ),
    )
    .unwrap();
    let out = Command::new("timeout")
        .args(["-k", "5", "30", support::bins::vdpad(), "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("is in use by another process"), "{err}");
    assert!(
        !other.join("run/two.sock").exists(),
        "its devices were not stopped"
    );
    assert_eq!(v.names(), ["one"]);

    // A crash leaves the socket behind; the next daemon replaces it.
    let pid = v.pid();
    send_signal(pid, libc::SIGKILL).unwrap();
    let mut p = v.proc.take().unwrap();
    p.wait_timeout(Duration::from_secs(10))
        .expect("vdpad survived SIGKILL");
    assert!(is_socket(&v.control), "the crash should leave the socket");
    assert_eq!(
        vdpactl(&["--socket", &v.control.to_string_lossy(), "list"])
            .status
            .code(),
        Some(2)
    );
    drop(v);
    let v = Vdpad::start(&dir, &["one"]);
    let ok = support::poll(Duration::from_secs(15), Duration::from_millis(50), || {
        v.ctl(&["list"]).status.success().then_some(())
    });
    assert!(
        ok.is_some(),
        "the stale control socket was not replaced{}",
        v.tail()
    );
    v.wait_log(&["control socket listening"]);
}

#[test]
fn vdpactl_usage_and_connection_errors_exit_2() {
    let dir = TempDir::new("ops-usage");
    let missing = dir.join("nothing.sock");
    let out = vdpactl(&["--socket", &missing.to_string_lossy(), "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot connect to the control socket"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("is vdpad running?"),
        "{}",
        stderr(&out)
    );
    assert_eq!(vdpactl(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(vdpactl(&["stats", "--count", "2"]).status.code(), Some(2));
    let out = vdpactl(&[
        "--socket",
        &missing.to_string_lossy(),
        "add",
        "--config",
        &dir.join("absent.toml").to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
    let help = vdpactl(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for cmd in ["list", "stats", "add", "remove", "log-level"] {
        assert!(text.contains(cmd), "{cmd} missing from --help");
    }
}
