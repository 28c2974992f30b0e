//! Operations, the command lines themselves: output into a closed pipe, exit statuses,
//! log priorities for the journal. The real `vdpad` and `vdpactl` binaries.
//!
//! Run: `cargo test -p vdpad --test operations_cli`.

#[path = "support/mod.rs"]
mod support;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output, Stdio};

use support::tmp::TempDir;

use support::operator::*;

/// Runs `program ARGS` with standard output a pipe whose reader is already gone, as
/// in `program ARGS | head` after head exited: every write fails with EPIPE.
fn into_closed_pipe(program: &str, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new("timeout")
        .args(["-k", "5", "60", program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run")
}

#[test]
fn output_into_a_closed_pipe_does_not_panic() {
    let dir = TempDir::new("cli-pipe");
    let config = dir.join("vdpad.toml");
    std::fs::write(&config, config_toml(dir.path(), &["p1", "p2"], None)).unwrap();
    let config = config.to_string_lossy().into_owned();

    let out = into_closed_pipe(support::bins::vdpad(), &["--check-config", &config]);
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // An invalid file still fails, pipe or not.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[device]]\nname = \"x\"\nqueue_size = 300\n").unwrap();
    let out = into_closed_pipe(
        support::bins::vdpad(),
        &["--check-config", &bad.to_string_lossy()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.toml:3:14"), "{}", stderr(&out));

    let v = Vdpad::start(&dir, &["p1", "p2"]);
    let socket = v.control.to_string_lossy().into_owned();
    for args in [
        &["list"][..],
        &["--json", "list"],
        &["stats"],
        &["stats", "--watch", "0.05", "--count", "3"],
        &["version"],
    ] {
        let out = into_closed_pipe(
            support::bins::vdpactl(),
            &[&["--socket", &socket][..], args].concat(),
        );
        assert!(
            !stderr(&out).contains("panicked"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    // A refusal stays a refusal.
    let out = into_closed_pipe(
        support::bins::vdpactl(),
        &["--socket", &socket, "--json", "remove", "nope"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn exit_statuses_are_documented_and_kept() {
    let help = Command::new(support::bins::vdpad())
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for line in [
        "Exit status:",
        "  0  stopped cleanly",
        "  1  the daemon could not",
        "  2  the configuration is invalid",
    ] {
        assert!(text.contains(line), "--help lacks {line:?}:\n{text}");
    }
    let doc = std::fs::read_to_string(workspace().join("docs/operations.md")).unwrap();
    assert!(doc.contains("## vdpad's exit status"), "docs/operations.md");

    let dir = TempDir::new("cli-exit");
    let missing = dir.join("absent.toml");
    let run = |args: &[&str]| {
        Command::new("timeout")
            .args(["-k", "5", "30", support::bins::vdpad()])
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(
        run(&["--config", &missing.to_string_lossy()]).status.code(),
        Some(2)
    );
    assert_eq!(run(&["--frobnicate"]).status.code(), Some(2));
    // A run directory that cannot be one: a plain file in its place.
    let file = dir.join("notadir");
    std::fs::write(&file, "").unwrap();
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nrun_dir = \"{}\"\n[[device]]\nname = \"x\"\n",
            file.display()
        ),
    )
    .unwrap();
    let out = run(&["--config", &config.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn journal_lines_carry_their_priority() {
    let dir = TempDir::new("cli-journal");
    // The fixture's log file is vdpad's stderr; it keeps its inode when reopened.
    let log = dir.join("vdpad.log");
    std::fs::write(&log, "").unwrap();
    let m = std::fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", m.dev(), m.ino());
    let mut v = Vdpad::start_with(&dir, &["j1"], None, &[("JOURNAL_STREAM", &stream)]);
    // A refused snippet is a warning with a multi-line message.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[device]]\nname = \"j2\"\nqueue_size = 300\n").unwrap();
    assert_eq!(
        v.ctl(&["add", "--config", &bad.to_string_lossy()])
            .status
            .code(),
        Some(1)
    );
    v.wait_log(&["<4>", "snippet refused"]);
    assert!(v.terminate().success());
    let text = v.log_text();
    let started = text
        .lines()
        .find(|l| l.contains("vdpad starting"))
        .expect("start line");
    assert!(started.starts_with("<6>"), "{started:?}");
    // No timestamp: the journal adds its own.
    assert!(
        started.starts_with("<6> INFO") || started.starts_with("<6>INFO"),
        "{started:?}"
    );
    let refused: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("snippet refused"))
        .take(3)
        .collect();
    assert!(
        refused.len() == 3 && refused.iter().all(|l| l.starts_with("<4>")),
        "{refused:?}"
    );
    // Every line the daemon wrote has a priority.
    for line in text.lines() {
        assert!(line.starts_with('<'), "line without a priority: {line:?}");
    }

    // Without JOURNAL_STREAM (or with one that is not stderr), plain lines.
    let dir = TempDir::new("cli-nojournal");
    let mut v = Vdpad::start_with(&dir, &["j1"], None, &[("JOURNAL_STREAM", "1:1")]);
    assert!(v.terminate().success());
    let text = v.log_text();
    let started = text
        .lines()
        .find(|l| l.contains("vdpad starting"))
        .expect("start line");
    assert!(!started.starts_with('<'), "{started:?}");
}

#[test]
fn man_pages_and_completions_are_generated_from_the_clap_definitions() {
    let dir = TempDir::new("cli-gen");
    let gen = |what: &str, out: &std::path::Path| {
        let o = Command::new(support::bins::vdpad_gen())
            .args([what, &out.to_string_lossy()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let man = dir.join("man");
    let listed = gen("man", &man);
    for page in [
        "vdpad.8",
        "vdpactl.8",
        "vdpactl-add.8",
        "vdpactl-remove.8",
        "vdpactl-stats.8",
    ] {
        assert!(listed.contains(page), "{page} not listed: {listed}");
    }
    let vdpad = std::fs::read_to_string(man.join("vdpad.8")).unwrap();
    assert!(vdpad.contains(".TH vdpad 8"), "{vdpad}");
    // Every option of the binary is in its page (roff escapes the dashes).
    for flag in ["config", "check\\-config", "log\\-level", "strict"] {
        assert!(
            vdpad.contains(&format!("\\-\\-{flag}")),
            "vdpad.8 lacks --{flag}"
        );
    }
    assert!(
        vdpad.contains("Exit status"),
        "vdpad.8 lacks the exit statuses"
    );
    let add = std::fs::read_to_string(man.join("vdpactl-add.8")).unwrap();
    assert!(
        add.contains("\\fBvdpactl add\\fR") && add.contains("\\-\\-persist"),
        "{add}"
    );
    // If man(1) is there, the pages render.
    if support::lab::which("man").is_some() {
        let o = Command::new("man")
            .arg("-l")
            .arg(man.join("vdpactl.8"))
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("vdpactl"));
    }

    let comp = dir.join("completions");
    gen("completions", &comp);
    for (file, needle) in [
        ("vdpad.bash", "--check-config"),
        ("vdpactl.bash", "--persist"),
        ("_vdpad", "--strict"),
        ("_vdpactl", "log-level"),
        ("vdpad.fish", "check-config"),
        ("vdpactl.fish", "persist"),
    ] {
        let text = std::fs::read_to_string(comp.join(file)).unwrap();
        assert!(text.contains(needle), "{file} lacks {needle}");
    }
    let o = Command::new("bash")
        .arg("-n")
        .arg(comp.join("vdpactl.bash"))
        .output()
        .unwrap();
    assert!(o.status.success(), "bash -n: {}", stderr(&o));
}

#[test]
fn nics_lists_this_hosts_network_functions() {
    let out = vdpactl(&["--json", "nics"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nics = v["nics"].as_array().expect("nics");
    // Every function sysfs calls a network controller is listed, with a plan.
    let mut expected: Vec<String> = std::fs::read_dir("/sys/bus/pci/devices")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("class"))
                        .is_ok_and(|c| c.trim().starts_with("0x02"))
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    expected.sort();
    let listed: Vec<String> = nics
        .iter()
        .map(|n| n["pci"].as_str().unwrap().to_owned())
        .collect();
    for pci in &expected {
        assert!(listed.contains(pci), "{pci} missing from {listed:?}");
    }
    for n in nics {
        let plan = n["plan"].as_str().unwrap();
        assert!(
            ["offload", "software", "fallback", "none"].contains(&plan),
            "{n}"
        );
        assert!(!n["detail"].as_str().unwrap().is_empty(), "{n}");
    }
    let table = vdpactl(&["nics"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.starts_with("PCI ") || text.starts_with("no PCI network functions"),
        "{text}"
    );
    // A sysfs directory that does not exist is a usage error.
    assert_eq!(
        vdpactl(&["nics", "--sysfs", "/nonexistent/sysfs"])
            .status
            .code(),
        Some(2)
    );
}
