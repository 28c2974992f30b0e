//! Operations: degraded start. Devices that cannot start (a missing interface, a PCI
//! function VFIO cannot open, a socket that cannot be created) are reported — `vdpactl
//! list` state `failed` with the reason, a metric, the log — and retried with backoff
//! while the others run; `vdpad --strict` keeps all-or-nothing.
//!
//! Run: `cargo test -p vdpad --test operations_degraded`.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use support::tmp::TempDir;

use support::operator::*;

/// A free loopback port for the metrics endpoint.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// The configuration: `ok1` runs; `nonet` needs an interface that does not exist,
/// `nopci` a PCI function that does not exist (no fallback), `later` a socket under
/// `blocker`, which is a plain file until the test removes it.
fn config(dir: &TempDir, metrics: SocketAddr) -> String {
    let mut text = config_toml(dir.path(), &["ok1"], Some(metrics));
    text.push_str(
        "\n[[device]]\nname = \"nonet\"\nbackend = \"af_packet\"\nnetdev = \"vdpadnone0\"\n\
         \n[[device]]\nname = \"nopci\"\nmode = \"offload\"\npci = \"0000:ff:1f.7\"\n\
         fallback = false\nbackend = \"loopback\"\n",
    );
    text.push_str(&format!(
        "\n[[device]]\nname = \"later\"\nsocket = \"{}\"\n",
        dir.join("blocker/later.sock").display()
    ));
    text
}

#[test]
fn failed_devices_are_reported_and_retried_while_the_others_run() {
    use std::os::linux::net::SocketAddrExt;
    let dir = TempDir::new("ops-degraded");
    std::fs::write(dir.join("blocker"), "not a directory").unwrap();
    let metrics = free_port();
    // The service manager hears about the failed devices, and about recoveries.
    let name = format!("vdpad-ops-degraded-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let notify = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(70)))
        .unwrap();
    let recv = || {
        let mut buf = [0u8; 4096];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    let socket = format!("@{name}");
    let v = Vdpad::start_text(
        &dir,
        &config(&dir, metrics),
        &["ok1"],
        &[("NOTIFY_SOCKET", &socket)],
        &[],
    );
    let ready = recv();
    assert!(
        ready.contains("STATUS=serving 1 device(s), 3 failed (retrying)"),
        "{ready}"
    );
    let mut rig = rig_on(&v.socket("ok1"));
    traffic(&mut rig, 500);

    let nonet = v.device("nonet");
    assert_eq!(nonet["state"], "failed", "{nonet}");
    assert!(
        nonet["last_error"].as_str().unwrap().contains("vdpadnone0"),
        "{nonet}"
    );
    assert!(
        nonet["start_failure"]["attempts"].as_u64().unwrap() >= 1,
        "{nonet}"
    );
    let nopci = v.device("nopci");
    assert_eq!(nopci["state"], "failed");
    assert!(
        nopci["last_error"]
            .as_str()
            .unwrap()
            .contains("0000:ff:1f.7"),
        "{nopci}"
    );
    assert_eq!(v.device("later")["state"], "failed");
    v.wait_log(&["WARN", "device cannot start; retrying later", "nonet"]);
    let table = v.ctl_ok(&["list"]);
    assert!(
        table.contains("failed") && table.contains("next attempt in"),
        "{table}"
    );
    // stats lists a failed device, without queues.
    let stats = v.ctl_json(&["stats", "nonet"]);
    assert_eq!(stats["stats"][0]["state"], "failed", "{stats}");
    assert_eq!(stats["stats"][0]["queues"].as_array().unwrap().len(), 0);
    let text = v.ctl_ok(&["stats"]);
    assert!(text.contains("nonet  state failed"), "{text}");

    let body = scrape(metrics);
    assert!(
        body.contains("vdpad_device_state{device=\"nonet\",state=\"failed\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("vdpad_device_state{device=\"ok1\",state=\"failed\"} 0"),
        "{body}"
    );
    assert!(
        body.contains("vdpad_device_start_failures_total{device=\"ok1\"} 0"),
        "{body}"
    );
    let failures = |body: &str| -> u64 {
        let prefix = "vdpad_device_start_failures_total{device=\"nonet\"} ";
        body.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|n| n.parse().ok())
            .expect("nonet's failure counter")
    };
    // Retried with backoff: 1 s, then 2 s, ... so a second and third attempt come
    // within 4 s, and not dozens.
    let first = failures(&body);
    std::thread::sleep(Duration::from_millis(3500));
    let later = failures(&scrape(metrics));
    assert!(later > first && later <= first + 3, "{first} -> {later}");

    // Once the cause is gone, the next attempt starts the device.
    std::fs::remove_file(dir.join("blocker")).unwrap();
    let started = support::poll(Duration::from_secs(70), Duration::from_millis(100), || {
        (v.device("later")["state"] == "waiting").then_some(())
    });
    assert!(started.is_some(), "later never started{}", v.tail());
    v.wait_log(&["device started after failing", "later"]);
    let status = recv();
    assert_eq!(
        status.lines().next(),
        Some(&*format!(
            "STATUS=serving 2 device(s), 2 failed (retrying); control socket {}",
            v.control.display()
        ))
    );
    let later = v.device("later");
    assert!(
        later["start_failure"]["attempts"].as_u64().unwrap() >= 1,
        "{later}"
    );
    let mut rig2 = rig_on(&dir.join("blocker/later.sock"));
    traffic(&mut rig2, 200);
    // The original device never stopped.
    traffic(&mut rig, 200);
    // A failed device can be removed like any other.
    v.ctl_ok(&["remove", "nopci"]);
    assert!(!v.names().contains(&"nopci".to_owned()));
}

#[test]
fn strict_start_is_all_or_nothing() {
    let dir = TempDir::new("ops-strict");
    std::fs::write(dir.join("blocker"), "").unwrap();
    let config = dir.join("vdpad.toml");
    std::fs::write(&config, super_config(&dir)).unwrap();
    let out = Command::new("timeout")
        .args(["-k", "5", "30", support::bins::vdpad()])
        .args(["--strict", "--config", &config.to_string_lossy()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("nonet"), "{}", stderr(&out));
    assert!(!is_socket(&dir.join("run/ok1.sock")), "ok1 left listening");
    let help = Command::new(support::bins::vdpad())
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--strict"));
}

fn super_config(dir: &TempDir) -> String {
    config(dir, free_port())
}
