//! The `vdpa-rig` binary: exit codes and output, against the in-process fake backend.

mod support;

use std::process::{Command, Output};

use support::backend::{temp_socket, BackendConfig, FakeBackend};

fn rig(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdpa-rig"))
        .args(args)
        .output()
        .expect("run vdpa-rig")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn usage_errors_exit_2() {
    let o = rig(&["--socket", "/nonexistent", "verify", "--packets", "10"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let o = rig(&["verify", "--packets", "10", "--size", "64"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn setup_error_exits_2() {
    let sock = temp_socket("absent");
    let o = rig(&[
        "--socket",
        sock.to_str().unwrap(),
        "--connect-timeout",
        "0.1",
        "verify",
        "--packets",
        "10",
        "--size",
        "64",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("setup failed") && err.contains("cannot connect"),
        "{err}"
    );
}

#[test]
fn bad_option_exits_2() {
    let be = FakeBackend::start(&temp_socket("badopt"), BackendConfig::loopback(1));
    let o = rig(&[
        "--socket",
        be.path.to_str().unwrap(),
        "--queue-size",
        "100",
        "verify",
        "--packets",
        "10",
        "--size",
        "64",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("power of two"));
}

#[test]
fn verify_prints_summary_and_exits_0() {
    let be = FakeBackend::start(&temp_socket("cli-verify"), BackendConfig::loopback(1));
    let o = rig(&[
        "--socket",
        be.path.to_str().unwrap(),
        "--initial-index",
        "65500",
        "verify",
        "--packets",
        "500",
        "--size",
        "64",
    ]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    assert!(
        out.starts_with(
            "verify: sent 500 received 500 lost 0 corrupt 0 reordered 0 dup 0 size 64 time "
        ),
        "{out}"
    );
    assert!(
        out.contains(" Mpps) kicks ") && out.contains(" interrupts "),
        "{out}"
    );
}

#[test]
fn json_outputs() {
    let be = FakeBackend::start(&temp_socket("cli-json"), BackendConfig::loopback(1));
    let o = rig(&[
        "--socket",
        be.path.to_str().unwrap(),
        "--json",
        "verify",
        "--packets",
        "100",
        "--size",
        "60",
        "--size-max",
        "1514",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["passed"], true);
    assert_eq!(v["received"], 100);
    assert_eq!(v["negotiated"]["queue_num"], 1);

    let be = FakeBackend::start(&temp_socket("cli-bench"), BackendConfig::loopback(1));
    let o = rig(&[
        "--socket",
        be.path.to_str().unwrap(),
        "--json",
        "bench",
        "--seconds",
        "0.2",
        "--size",
        "64",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["rx_frames"].as_u64().unwrap() > 0);
    assert_eq!(v["mode"], "interrupt");
    assert!(v.get("pkts_per_kick").is_some() && v.get("pkts_per_interrupt").is_some());
}
