//! Operations, the service side: the real `vdpad` binary's metrics endpoint, its
//! sd_notify messages, and the shipped examples (sample config, libvirt XML, systemd
//! unit, QEMU script), checked as an operator would use them.
//!
//! All run with a plain `cargo test`, except the one that boots a QEMU guest with the
//! QEMU example (`--include-ignored`, needs the lab). The daemon fixture is shared with
//! tests/operations.rs (tests/support/operator.rs).
//!
//! Run: `cargo test -p vdpad-tests --test operations_service`.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::process::{Spawn, SIGTERM};
use support::tmp::TempDir;

use support::operator::*;

// --------------------------------------------------------------------------------- metrics

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Sends raw `request` to `addr`; returns (status, headers, body).
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_owned(), body.to_owned())
}

fn scrape(addr: SocketAddr) -> String {
    let (status, head, body) = http(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n",
    );
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    assert_eq!(len, body.len());
    check_exposition(&body);
    body
}

/// Checks the text format line by line: HELP and TYPE before each family's samples,
/// valid names, label pairs with escaped values, numeric values, counters `_total`.
fn check_exposition(body: &str) {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut helped = std::collections::HashSet::new();
    let mut typed = std::collections::HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "{line}");
            assert!(helped.insert(name.to_owned()), "HELP twice: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split(' ');
            let (name, kind) = (w.next().unwrap(), w.next().unwrap());
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            }
            assert!(helped.contains(name), "TYPE before HELP: {line}");
            typed.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "{line}");
        assert!(typed.contains_key(name), "sample before its TYPE: {line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("{line}"));
            // name="value" pairs separated by commas; values escape \ " and newline.
            let mut rest = inner;
            while !rest.is_empty() {
                let (label, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(valid_name(label), "{line}");
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => {
                            let (_, c) = chars.next().unwrap();
                            assert!(['\\', '"', 'n'].contains(&c), "bad escape: {line}");
                        }
                        Some((i, '"')) => break i,
                        Some(_) => {}
                        None => panic!("unterminated label value: {line}"),
                    }
                };
                rest = &after[end + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
        }
    }
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{body}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_endpoint_serves_growing_counters() {
    let dir = TempDir::new("ops-metrics");
    // The port was free a moment ago; another process may take it first: retry.
    let (v, addr) = (0..3)
        .find_map(|_| {
            let addr = free_port();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Vdpad::start_with(&dir, &["m"], Some(addr), &[])
            }))
            .ok()
            .map(|v| (v, addr))
        })
        .expect("vdpad with a metrics endpoint");
    let mut rig = rig_on(&v.socket("m"));
    traffic(&mut rig, 3_000);
    let m1 = scrape(addr);
    let tx = "vdpad_queue_packets_total{device=\"m\",queue=\"1\",direction=\"tx\"}";
    let rx = "vdpad_queue_packets_total{device=\"m\",queue=\"0\",direction=\"rx\"}";
    assert!(metric(&m1, tx) >= 3000.0, "{m1}");
    assert!(metric(&m1, rx) >= 3000.0);
    assert_eq!(
        metric(&m1, "vdpad_device_connections_total{device=\"m\"}"),
        1.0
    );
    assert_eq!(
        metric(&m1, "vdpad_device_state{device=\"m\",state=\"running\"}"),
        1.0
    );
    assert_eq!(
        metric(&m1, "vdpad_device_state{device=\"m\",state=\"waiting\"}"),
        0.0
    );
    assert_eq!(metric(&m1, "vdpad_devices"), 1.0);
    assert_eq!(
        metric(
            &m1,
            "vdpad_queue_drops_total{device=\"m\",queue=\"1\",direction=\"tx\",reason=\"oversized\"}"
        ),
        0.0
    );
    assert!(m1.contains("vdpad_device_info{device=\"m\",mode=\"software\",datapath=\"software/loopback\",backend=\"loopback\""));
    assert!(m1.contains("vdpad_device_feature_acked{device=\"m\",feature=\"VERSION_1\"} 1"));
    for family in [
        "vdpad_queue_bytes_total",
        "vdpad_queue_kicks_total",
        "vdpad_queue_interrupts_total",
        "vdpad_queue_interrupts_suppressed_total",
        "vdpad_queue_bursts_total",
        "vdpad_queue_rx_no_buffer_total",
        "vdpad_queue_bad_descriptors_total",
    ] {
        assert!(
            m1.contains(&format!("# TYPE {family} counter\n")),
            "{family}"
        );
    }
    traffic(&mut rig, 3_000);
    let m2 = scrape(addr);
    assert!(metric(&m2, tx) > metric(&m1, tx));
    assert!(
        metric(
            &m2,
            "vdpad_queue_bytes_total{device=\"m\",queue=\"1\",direction=\"tx\"}"
        ) > metric(
            &m1,
            "vdpad_queue_bytes_total{device=\"m\",queue=\"1\",direction=\"tx\"}"
        )
    );

    // Other paths, other methods, oversized and silent requests.
    assert_eq!(http(addr, b"GET /other HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(
        http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0,
        405
    );
    let (status, head, body) = http(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200, "{head}");
    assert!(body.is_empty());
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 16 * 1024));
    big.extend(b"\r\n\r\n");
    assert_eq!(http(addr, &big).0, 431);
    let silent = TcpStream::connect(addr).unwrap();
    let t = Instant::now();
    scrape(addr);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "a silent client delayed a scrape"
    );
    drop(silent);
}

// --------------------------------------------------------------------------------- service

#[test]
fn sd_notify_ready_reloading_and_stopping() {
    use std::os::linux::net::SocketAddrExt;
    let dir = TempDir::new("ops-notify");
    let name = format!("vdpad-ops-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let rx = UnixDatagram::bind_addr(&addr).expect("bind the abstract notify socket");
    rx.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let recv = || {
        let mut buf = [0u8; 4096];
        let n = rx.recv(&mut buf).expect("a notification within 15 s");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    let mut v = Vdpad::start_with(
        &dir,
        &["n"],
        None,
        &[("NOTIFY_SOCKET", &format!("@{name}"))],
    );
    let ready = recv();
    let pid = v.pid();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={pid}")), "{ready}");
    assert!(ready.contains("STATUS=serving 1 device(s)"), "{ready}");
    // The sockets exist by the time READY=1 is sent.
    assert!(is_socket(&v.socket("n")) && is_socket(&v.control));

    v.signal(SIGHUP);
    let reloading = recv();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(recv().contains("READY=1"));

    let status = v.terminate();
    assert!(status.success(), "{status}");
    assert!(recv().starts_with("STOPPING=1"));
    assert!(
        !v.control.exists() && !v.socket("n").exists(),
        "sockets left behind"
    );
}

#[test]
fn sample_config_is_valid() {
    let path = workspace().join("tools/examples/vdpad.toml");
    let cfg = vdpad_config::Config::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.daemon.run_dir, Path::new("/run/vdpad"));
    assert_eq!(
        cfg.daemon.control_socket,
        Path::new("/run/vdpad/control.sock")
    );
    assert_eq!(cfg.daemon.socket_perms.mode, 0o600);
    assert_eq!(
        cfg.daemon.metrics_listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    let names: Vec<&str> = cfg.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["vm1-net0", "vm2-net0"]);
    // And the binary agrees.
    let out = Command::new(support::bins::vdpad())
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The attribute `attr='...'` of the first element `<tag ...>` in `xml`; `tag` may go
/// on with the start of its attributes (`driver queues`) to pick one element.
fn xml_attr(xml: &str, tag: &str, attr: &str) -> String {
    let open = format!("<{tag}");
    let start = xml
        .match_indices(&open)
        .map(|(i, _)| i)
        .find(|&i| {
            tag.contains(' ')
                || matches!(xml.as_bytes().get(i + open.len()), Some(b' ' | b'/' | b'>'))
        })
        .unwrap_or_else(|| panic!("no <{tag}>"));
    let end = start + xml[start..].find('>').unwrap();
    let elem = &xml[start..end];
    let key = format!("{attr}='");
    let at = elem
        .find(&key)
        .unwrap_or_else(|| panic!("<{tag}> has no {attr}"))
        + key.len();
    elem[at..at + elem[at..].find('\'').unwrap()].to_owned()
}

/// Minimal well-formedness: every element closed in order (comments skipped).
fn xml_balanced(xml: &str) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = xml;
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = &after[after.find("-->").ok_or("unterminated comment")? + 3..];
            continue;
        }
        let gt = rest.find('>').ok_or("unterminated tag")?;
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        if tag.starts_with('?') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack
                .pop()
                .ok_or(format!("</{name}> without an opening tag"))?;
            if open != name.trim() {
                return Err(format!("<{open}> closed by </{name}>"));
            }
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap_or("").to_owned());
        }
    }
    match stack.pop() {
        None => Ok(()),
        Some(open) => Err(format!("<{open}> never closed")),
    }
}

#[test]
fn libvirt_example_validates() {
    let path = workspace().join("tools/examples/libvirt-vm1.xml");
    let xml = std::fs::read_to_string(&path).unwrap();
    // The libvirt schema when virt-xml-validate is installed (tests/lab/setup.sh
    // installs it), else xmllint's well-formedness check, and always our own.
    if support::lab::which("virt-xml-validate").is_some() {
        let out = Command::new("timeout")
            .args(["60", "virt-xml-validate"])
            .arg(&path)
            .arg("domain")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "virt-xml-validate: {}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
    } else if support::lab::which("xmllint").is_some() {
        eprintln!("virt-xml-validate not installed: checking well-formedness with xmllint only");
        let out = Command::new("xmllint")
            .arg("--noout")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "xmllint: {}", stderr(&out));
    } else {
        eprintln!("neither virt-xml-validate nor xmllint installed: structural checks only");
    }
    xml_balanced(&xml).unwrap_or_else(|e| panic!("{}: {e}", path.display()));

    // What vhost-user needs, consistent with the sample configuration.
    let cfg =
        vdpad_config::Config::from_file(&workspace().join("tools/examples/vdpad.toml")).unwrap();
    let dev = cfg
        .device("vm1-net0")
        .expect("vm1-net0 in the sample config");
    assert_eq!(xml_attr(&xml, "source type='memfd'", "type"), "memfd");
    assert_eq!(xml_attr(&xml, "access", "mode"), "shared");
    assert_eq!(xml_attr(&xml, "interface", "type"), "vhostuser");
    assert_eq!(
        xml_attr(&xml, "source type='unix'", "path"),
        dev.socket.to_string_lossy()
    );
    assert_eq!(xml_attr(&xml, "source type='unix'", "mode"), "client");
    assert_eq!(xml_attr(&xml, "reconnect", "enabled"), "yes");
    assert_eq!(xml_attr(&xml, "model", "type"), "virtio");
    assert_eq!(
        xml_attr(&xml, "driver queues", "queues"),
        dev.queue_pairs.to_string()
    );
    let ring: u16 = xml_attr(&xml, "driver queues", "rx_queue_size")
        .parse()
        .unwrap();
    assert!(ring <= dev.queue_size);
    assert_eq!(
        xml_attr(&xml, "mac", "address"),
        dev.mac.expect("the sample sets a MAC").to_string()
    );
}

#[test]
fn systemd_unit_verifies() {
    let path = workspace().join("tools/systemd/vdpad.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/sbin/vdpad --config /etc/vdpad/vdpad.toml",
        "RuntimeDirectory=vdpad",
        "ProtectSystem=strict",
        "ReadWritePaths=/run/vdpad",
        "ReadWritePaths=/etc/vdpad/vdpad.d",
        "ConfigurationDirectory=vdpad vdpad/vdpad.d",
        "DeviceAllow=/dev/vfio/vfio rw",
        "DeviceAllow=char-vfio rw",
        "DeviceAllow=/dev/net/tun rw",
        "LimitMEMLOCK=infinity",
        "NoNewPrivileges=yes",
    ] {
        assert!(has(line), "{} lacks {line:?}", path.display());
    }
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet");
    for cap in ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_CHOWN"] {
        assert!(caps.split_whitespace().any(|c| c == cap), "{cap} missing");
    }
    assert!(
        !has("PrivateDevices=yes"),
        "PrivateDevices hides /dev/vfio and /dev/net/tun"
    );
    // The sample configuration's run_dir is the one the unit lets vdpad write.
    let cfg =
        vdpad_config::Config::from_file(&workspace().join("tools/examples/vdpad.toml")).unwrap();
    assert_eq!(cfg.daemon.run_dir, Path::new("/run/vdpad"));

    // systemd's own check, with ExecStart pointing at the binary under test.
    if support::lab::which("systemd-analyze").is_none() {
        eprintln!("systemd-analyze not installed: structural checks only");
        return;
    }
    let dir = TempDir::new("ops-unit");
    let copy = dir.join("vdpad.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/sbin/vdpad", support::bins::vdpad()),
    )
    .unwrap();
    let out = Command::new("timeout")
        .args(["60", "systemd-analyze", "verify"])
        .arg(&copy)
        .output()
        .unwrap();
    let complaints: Vec<String> = stderr(&out)
        .lines()
        .filter(|l| l.contains("vdpad.service"))
        .map(String::from)
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify ({}): {complaints:#?}\n{}",
        out.status,
        stderr(&out)
    );
}

#[test]
fn qemu_example_is_a_valid_script() {
    let path = workspace().join("tools/examples/qemu-vm1.sh");
    let out = Command::new("sh").arg("-n").arg(&path).output().unwrap();
    assert!(out.status.success(), "sh -n: {}", stderr(&out));
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg =
        vdpad_config::Config::from_file(&workspace().join("tools/examples/vdpad.toml")).unwrap();
    let dev = cfg.device("vm1-net0").unwrap();
    assert!(text.contains(&format!("VDPAD_SOCKET:-{}}}", dev.socket.display())));
    assert!(text.contains(&format!("VM_QUEUES:-{}}}", dev.queue_pairs)));
    assert!(text.contains("share=on") && text.contains("reconnect-ms="));
    // A dry run with `echo` as QEMU shows the options it would get.
    let out = Command::new("sh")
        .arg(&path)
        .arg("-nographic")
        .env("QEMU", "echo")
        .env("VDPAD_SOCKET", "/x/y.sock")
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    for part in [
        "-machine q35,accel=kvm:tcg,memory-backend=mem",
        "memory-backend-memfd,id=mem,size=4G,share=on",
        "socket,id=vdpad0,path=/x/y.sock,reconnect-ms=1000",
        "vhost-user,id=net0,chardev=vdpad0,queues=2",
        "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,mq=on,vectors=6",
        "-nographic",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }
    // A QEMU older than 9.2 (Debian 12's 7.2) gets reconnect= instead of reconnect-ms=.
    let dir = TempDir::new("ops-qemu-old");
    let fake = dir.join("qemu-7.2");
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)'; exit 0; }\necho \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new("sh")
        .arg(&path)
        .env("QEMU", &fake)
        .env("VDPAD_SOCKET", "/x/y.sock")
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains("socket,id=vdpad0,path=/x/y.sock,reconnect=1 ")
            && !line.contains("reconnect-ms"),
        "QEMU 7.2 got {line}"
    );
}

/// The lab's guest boots with `tools/examples/qemu-vm1.sh` against a running vdpad:
/// the guest's ARP requests go out through vdpad's loopback and come back, and vdpactl
/// sees the device running with traffic on both rings.
#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn qemu_example_attaches_a_guest() {
    let lab = support::lab::Lab::require();
    let dir = TempDir::new("ops-qemu");
    // The device of the example: vm1-net0 with two queue pairs.
    let mut text = config_toml(dir.path(), &[], None);
    text.push_str(
        "\n[[device]]\nname = \"vm1-net0\"\nbackend = \"loopback\"\nqueue_pairs = 2\nmac = \"52:54:00:12:34:56\"\n",
    );
    let config = dir.join("vdpad.toml");
    std::fs::write(&config, &text).unwrap();
    let log = dir.join("vdpad.log");
    let mut v = Vdpad {
        dir: dir.path().to_path_buf(),
        control: dir.join("run/control.sock"),
        log: log.clone(),
        config: config.clone(),
        proc: Some(
            Spawn::new("vdpad", support::bins::vdpad(), &log)
                .args(["--config", &config.to_string_lossy()])
                .limit(Duration::from_secs(600))
                .cpu(Some(0))
                .env("NO_COLOR", "1")
                .start()
                .unwrap(),
        ),
    };
    let sock = v.socket("vm1-net0");
    let up = support::poll(Duration::from_secs(15), Duration::from_millis(20), || {
        (is_socket(&sock) && is_socket(&v.control)).then_some(())
    });
    assert!(up.is_some(), "vdpad did not start{}", v.tail());

    let script = dir.join("guest.sh");
    std::fs::write(
        &script,
        r#"set -u
s=/sys/class/net/eth0/statistics
ip link set eth0 up
ip addr add 192.0.2.2/24 dev eth0
i=0
while [ $i -lt 15 ]; do
  ping -c 1 -W 1 192.0.2.1 >/dev/null 2>&1
  i=$((i + 1))
done
echo "OPS-GUEST rx=$(cat $s/rx_packets) tx=$(cat $s/tx_packets)"
"#,
    )
    .unwrap();
    let console = dir.join("console.log");
    let append = format!(
        "console=ttyS0 quiet panic=-1 lab.script=/host{}",
        script.display()
    );
    let example = workspace().join("tools/examples/qemu-vm1.sh");
    let mut qemu = Spawn::new("qemu-vm1.sh", "sh", &console)
        .args([
            example.to_string_lossy().as_ref(),
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
            &lab.kernel.to_string_lossy(),
            "-initrd",
            &lab.initrd.to_string_lossy(),
            "-append",
            &append,
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .env("QEMU", &lab.qemu.to_string_lossy())
        .env("VDPAD_SOCKET", &sock.to_string_lossy())
        .env("VM_MEM", "1G")
        .env("VM_CPUS", "1")
        // The lab's /dev/kvm (if any) is not usable for nested guests.
        .env("VM_ACCEL", "tcg")
        .env("VM_QUEUES", "2")
        .env("VM_NIC_EXTRA", ",romfile=")
        .limit(Duration::from_secs(300))
        .cpu(Some(1))
        .start()
        .unwrap();
    let line = support::poll(Duration::from_secs(240), Duration::from_millis(200), || {
        let text = support::read_log(&console);
        if let Some(l) = text.lines().find(|l| l.starts_with("OPS-GUEST ")) {
            return Some(Ok(l.trim_end().to_owned()));
        }
        if let Some(status) = qemu.try_wait() {
            return Some(Err(format!("QEMU exited ({status})")));
        }
        None
    })
    .unwrap_or_else(|| Err("timeout".into()))
    .unwrap_or_else(|e| panic!("guest: {e}{}{}", support::log_tail(&console, 40), v.tail()));
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
    };
    assert!(field("tx") > 0 && field("rx") > 0, "guest counters: {line}");
    // While the guest is up: vdpactl shows it.
    let dev = v.device("vm1-net0");
    assert!(dev["connections"].as_u64() >= Some(1), "{dev}");
    let stats = v.ctl_json(&["stats", "vm1-net0"]);
    assert!(sum(&stats, "vm1-net0", "packets") > 0, "{stats}");
    qemu.stop(SIGTERM, Duration::from_secs(10));
    assert!(v.terminate().success());
}
