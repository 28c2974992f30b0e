//! Operations: drop-in files. Devices in `vdpad.d/` next to the configuration file
//! start with the daemon; `vdpactl add --persist` writes one, `remove --persist`
//! deletes it; SIGHUP and a restart keep what is persisted.
//!
//! Run: `cargo test -p vdpad --test operations_dropin`.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use support::tmp::TempDir;

use support::operator::*;

fn wait_socket(v: &Vdpad, name: &str) {
    let path = v.socket(name);
    let ok = support::poll(Duration::from_secs(10), Duration::from_millis(20), || {
        is_socket(&path).then_some(())
    });
    assert!(
        ok.is_some(),
        "{} did not appear{}",
        path.display(),
        v.tail()
    );
}

#[test]
fn persisted_devices_survive_reload_and_restart() {
    let dir = TempDir::new("ops-dropin");
    let drop_dir = dir.join("vdpad.d");
    std::fs::create_dir_all(&drop_dir).unwrap();
    std::fs::write(drop_dir.join("early.toml"), device_toml("early", 9)).unwrap();
    let mut v = Vdpad::start(&dir, &["main1"]);
    wait_socket(&v, "early");
    assert_eq!(v.names(), ["early", "main1"]);
    // --check-config names the drop-ins it read.
    let out = std::process::Command::new(support::bins::vdpad())
        .args(["--check-config", &v.config.to_string_lossy()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("#   {}", drop_dir.join("early.toml").display())),
        "{text}"
    );
    assert!(text.contains("name = \"early\""), "{text}");

    // add --persist: running, and written to vdpad.d/<name>.toml.
    let snippet = dir.join("vm3.toml");
    std::fs::write(&snippet, format!("# vm3's NIC{}", device_toml("vm3", 3))).unwrap();
    let out = v.ctl_ok(&["add", "--persist", "--config", &snippet.to_string_lossy()]);
    let file = drop_dir.join("vm3.toml");
    assert!(
        out.contains(&format!("persisted in {}", file.display())),
        "{out}{}",
        v.tail()
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("# vm3's NIC") && text.contains("name = \"vm3\""),
        "{text}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&drop_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Two devices in one snippet: one file each, every default spelled out.
    let pair = dir.join("pair.toml");
    std::fs::write(
        &pair,
        format!("{}{}", device_toml("p1", 4), device_toml("p2", 5)),
    )
    .unwrap();
    let out = v.ctl_ok(&["add", "--persist", "--config", &pair.to_string_lossy()]);
    assert!(out.contains("p1.toml") && out.contains("p2.toml"), "{out}");
    assert!(std::fs::read_to_string(drop_dir.join("p2.toml"))
        .unwrap()
        .contains("burst = "));
    // Without --persist, nothing is written.
    let temp = dir.join("temp.toml");
    std::fs::write(&temp, device_toml("temp", 6)).unwrap();
    v.ctl_ok(&["add", "--config", &temp.to_string_lossy()]);
    assert!(!drop_dir.join("temp.toml").exists());

    // SIGHUP: persisted devices stay untouched, the unpersisted one goes.
    v.signal(SIGHUP);
    let line = v.wait_log(&["configuration reloaded"]);
    assert!(line.contains("removed=[\"temp\"]"), "{line}");
    for name in ["early", "vm3", "p1", "p2", "main1"] {
        assert!(line.contains(&format!("\"{name}\"")), "{name} in {line}");
    }
    assert!(
        line.contains("restarted=[]") && line.contains("added=[]"),
        "{line}"
    );

    // remove --persist of a device from the main file: refused, nothing changes.
    let out = v.ctl(&["remove", "--persist", "main1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no drop-in of its own"),
        "{}",
        stderr(&out)
    );
    assert!(v.names().contains(&"main1".to_owned()));

    // remove --persist: gone, and the file with it.
    let out = v.ctl_ok(&["remove", "--persist", "p1"]);
    assert!(
        out.contains("deleted") && !drop_dir.join("p1.toml").exists(),
        "{out}"
    );

    // Restart: the drop-ins come back, the removed one does not.
    assert!(v.terminate().success());
    let v = Vdpad::start(&dir, &["main1"]);
    for name in ["early", "vm3", "p2"] {
        wait_socket(&v, name);
    }
    assert_eq!(v.names(), ["early", "main1", "p2", "vm3"]);
    // A drop-in whose device is not running can still be deleted.
    v.ctl_ok(&["remove", "vm3"]);
    v.ctl_ok(&["remove", "--persist", "vm3"]);
    assert!(!drop_dir.join("vm3.toml").exists());
    let out = v.ctl(&["remove", "--persist", "vm3"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_bad_drop_in_fails_check_config_naming_it() {
    let dir = TempDir::new("ops-dropin-bad");
    let drop_dir = dir.join("vdpad.d");
    std::fs::create_dir_all(&drop_dir).unwrap();
    std::fs::write(drop_dir.join("bad.toml"), "[[device]]\nname = \"main1\"\n").unwrap();
    let config = dir.join("vdpad.toml");
    std::fs::write(&config, config_toml(dir.path(), &["main1"], None)).unwrap();
    let out = std::process::Command::new(support::bins::vdpad())
        .args(["--check-config", &config.to_string_lossy()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}:2:8: error: duplicate device name `main1`",
            drop_dir.join("bad.toml").display()
        )),
        "{err}"
    );
}
